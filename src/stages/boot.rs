//! Booting: GRUB for BIOS and UEFI, and the files the root needs to boot
//! (`/etc/fstab`, `/boot/grub/grub.cfg`).
//!
//! No grub-install (it wants a block device): grub-mkimage from the tools
//! environment makes a core image with an early config that finds the root
//! by filesystem UUID; for BIOS we place `boot.img` in the MBR and
//! `core.img` in the BIOS boot partition and patch their block pointers the
//! way grub-install's setup does; for UEFI the image is
//! `/EFI/BOOT/BOOTX64.EFI` on the EFI system partition.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::tarball::{Entry, Kind, Tree};
use crate::tools::{self, ToolsEnv};

/// Modules built into both core images.
const MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "serial",
    "terminal",
    "configfile",
    "echo",
    "test",
    "gzio",
    "minicmd",
    "sleep",
];

/// The newest kernel and its initrd under /boot, as image paths.
pub fn kernel(tree: &Tree) -> Result<(String, String)> {
    let mut best: Option<String> = None;
    for p in tree.paths() {
        if let Some(v) = p.strip_prefix("boot/vmlinuz-")
            && matches!(tree.get(&p).map(|e| &e.kind), Some(Kind::File(_)))
            && best.as_ref().is_none_or(|b| version_lt(b, v))
        {
            best = Some(v.to_string());
        }
    }
    let Some(v) = best else {
        bail!("the image has no kernel in /boot (add e.g. linux-image-cloud-amd64 to an apt layer)")
    };
    let initrd = format!("boot/initrd.img-{v}");
    if tree.get(&initrd).is_none() {
        bail!("the image has /boot/vmlinuz-{v} but no /{initrd} (is initramfs-tools installed?)");
    }
    Ok((format!("/boot/vmlinuz-{v}"), format!("/{initrd}")))
}

/// Compare kernel versions by their numeric runs.
fn version_lt(a: &str, b: &str) -> bool {
    let nums = |s: &str| {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    nums(a) < nums(b)
}

/// `/boot/grub/grub.cfg`: serial and VGA console, root by UUID.
pub fn grub_cfg(root_uuid: &str, kernel: &str, initrd: &str) -> String {
    format!(
        "# Written by mimg.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=1\n\
         set default=0\n\
         menuentry 'Debian' {{\n\
         \tsearch --no-floppy --fs-uuid --set=root {root_uuid}\n\
         \tlinux {kernel} root=UUID={root_uuid} ro console=tty0 console=ttyS0,115200n8\n\
         \tinitrd {initrd}\n\
         }}\n"
    )
}

/// `/etc/fstab`: the root by UUID.
pub fn fstab(root_uuid: &str) -> String {
    format!("# Written by mimg.\nUUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
}

/// The files the boot layer adds to the root.
pub fn boot_layer(root_uuid: &str, kernel: &str, initrd: &str, mtime: u64) -> Tree {
    let mut t = Tree::default();
    t.insert(
        "etc/fstab",
        Entry::file(fstab(root_uuid).into_bytes(), 0o644, mtime),
    );
    t.insert(
        "boot/grub/grub.cfg",
        Entry::file(
            grub_cfg(root_uuid, kernel, initrd).into_bytes(),
            0o644,
            mtime,
        ),
    );
    t.add_parents(mtime);
    t
}

fn early_cfg(root_uuid: &str) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"
    )
}

/// Run grub-mkimage for `format` in the tools environment; returns the image.
fn mkimage(
    tools: &ToolsEnv,
    work: &Path,
    format: &str,
    extra: &[&str],
    root_uuid: &str,
    epoch: u64,
) -> Result<Vec<u8>> {
    crate::paths::write(work.join("early.cfg"), early_cfg(root_uuid))?;
    let mut cmd = tools.command("grub-mkimage", work, epoch)?;
    cmd.args([
        "-O",
        format,
        "-o",
        "/mnt/grub.img",
        "-c",
        "/mnt/early.cfg",
        "-p",
        "/boot/grub",
    ])
    .args(MODULES)
    .args(extra);
    tools::run(cmd, "grub-mkimage")?;
    let img = std::fs::read(work.join("grub.img")).context("reading grub-mkimage's output")?;
    crate::paths::remove_file(work.join("grub.img"))?;
    crate::paths::remove_file(work.join("early.cfg"))?;
    Ok(img)
}

/// The BIOS core image (for the BIOS boot partition).
pub fn core_img(tools: &ToolsEnv, work: &Path, root_uuid: &str, epoch: u64) -> Result<Vec<u8>> {
    mkimage(tools, work, "i386-pc", &["biosdisk"], root_uuid, epoch)
}

/// The UEFI loader (for /EFI/BOOT/BOOTX64.EFI).
pub fn efi_img(tools: &ToolsEnv, work: &Path, root_uuid: &str, epoch: u64) -> Result<Vec<u8>> {
    mkimage(
        tools,
        work,
        "x86_64-efi",
        &["fat", "efi_gop", "efi_uga"],
        root_uuid,
        epoch,
    )
}

/// GRUB's `boot.img` from the tools environment.
pub fn boot_img(tools: &ToolsEnv) -> Result<Vec<u8>> {
    let p = tools.root().join("usr/lib/grub/i386-pc/boot.img");
    let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if b.len() != 512 {
        bail!("{} is {} bytes, not 512", p.display(), b.len());
    }
    Ok(b)
}

/// Offsets in boot.img and diskboot.img (grub-core/boot/i386/pc/*.S).
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const BPB: std::ops::Range<usize> = 0x03..0x5a;
const MBR_CODE_END: usize = 0x1b8;
const BLOCKLIST: usize = 0x200 - 12;

/// Put boot.img's code into `mbr` (keeping its partition table) pointing at
/// core.img at `core_lba`, as grub-install does for a hard disk.
pub fn patch_mbr(mbr: &mut [u8], boot: &[u8], core_lba: u64) {
    let mut code = boot[..MBR_CODE_END].to_vec();
    code[BPB].copy_from_slice(&mbr[BPB]);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xff;
    // Replace the jump over the drive check with two nops (hard disk).
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    mbr[..MBR_CODE_END].copy_from_slice(&code);
}

/// Tell core.img's first sector (diskboot) where the rest of it lies.
pub fn patch_core(core: &mut Vec<u8>, core_lba: u64) -> Result<()> {
    core.resize(core.len().div_ceil(512) * 512, 0);
    let sectors = (core.len() / 512) as u64;
    if sectors > 2048 {
        bail!("GRUB core image is {sectors} sectors; the BIOS boot partition holds 2048");
    }
    let b = &mut core[BLOCKLIST..BLOCKLIST + 12];
    b[0..8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    b[8..10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    b[10..12].copy_from_slice(&0x820u16.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_snapshot() {
        insta::assert_snapshot!(grub_cfg(
            "0b3f2a8e-1111-4222-8333-444455556666",
            "/boot/vmlinuz-6.12.0-1-cloud-amd64",
            "/boot/initrd.img-6.12.0-1-cloud-amd64"
        ));
    }

    #[test]
    fn newest_kernel_wins() {
        let mut t = Tree::default();
        for v in [
            "6.1.0-9-cloud-amd64",
            "6.12.0-1-cloud-amd64",
            "6.2.0-1-cloud-amd64",
        ] {
            t.insert(&format!("boot/vmlinuz-{v}"), Entry::file(vec![1], 0o644, 0));
            t.insert(
                &format!("boot/initrd.img-{v}"),
                Entry::file(vec![1], 0o644, 0),
            );
        }
        assert_eq!(kernel(&t).unwrap().0, "/boot/vmlinuz-6.12.0-1-cloud-amd64");
        assert!(
            kernel(&Tree::default())
                .unwrap_err()
                .to_string()
                .contains("no kernel")
        );
    }

    #[test]
    fn mbr_and_core_patching() {
        let mut mbr = vec![0u8; 512];
        mbr[0x1be] = 0xee;
        mbr[510] = 0x55;
        let boot = vec![0xabu8; 512];
        patch_mbr(&mut mbr, &boot, 2048);
        assert_eq!(&mbr[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(mbr[0x1be], 0xee, "partition table kept");
        assert_eq!(mbr[0x10], 0, "BPB kept from the disk");
        let mut core = vec![0u8; 1000];
        patch_core(&mut core, 2048).unwrap();
        assert_eq!(core.len(), 1024);
        assert_eq!(&core[500..508], &2049u64.to_le_bytes());
        assert_eq!(&core[508..510], &1u16.to_le_bytes());
    }
}
