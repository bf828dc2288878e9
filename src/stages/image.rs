//! The image step: merge the stored tars (rootfs, then each layer) and the
//! boot files into one tree, write the GPT, the EFI system partition and
//! GRUB, make the ext4 root from the tree (mkfs.ext4 from the tools
//! environment) and convert the raw disk to qcow2. It reads step outputs
//! through the store's checks and writes only into its own directory.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::scratch::Scratch;
use super::{boot, disk, filesystem, qcow2, run, tarball::Tree};
use crate::plan::{Plan, Step, StepKind};
use crate::recipe::{BootMode, Recipe};
use crate::store::{self, Store};
use crate::tools::ToolsEnv;

pub fn image(
    recipe: &Recipe,
    plan: &Plan,
    step: &Step,
    store: &Store,
    tools: &ToolsEnv,
    tools_check: store::Check,
    dir: &Path,
) -> Result<()> {
    let epoch = plan.epoch;
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!("image: {what} at {:.2}s", t0.elapsed().as_secs_f64());
    // The stored tars, rootfs first; their sha256s are checked on other
    // threads while the image is made, and waited for before it is kept.
    let layer_steps: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Layer)
        .collect();
    let tars = stored_tars(recipe, plan, store, &layer_steps)?;
    phase("stored tars read");
    let root_uuid = step.key.derive_uuid("root filesystem");
    let bytes = tars.iter().map(|t| t.bytes.len() as u64).sum();
    let scratch = Scratch::new(bytes, dir)?;
    let raw_path = scratch.path().join("disk.raw");
    // The GPT, the EFI system partition and GRUB do not depend on the tree:
    // written while it is merged.
    let (tree, parts) = std::thread::scope(|s| {
        let parts = s.spawn(|| disk_parts(recipe, step, tools, dir, &raw_path, &root_uuid, epoch));
        let tree = merged_tree(&tars, &root_uuid, epoch);
        phase("tree merged");
        let parts = parts
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the disk's partitions panicked")));
        (tree, parts)
    });
    // From here the tars' bytes live only as long as the tree does.
    let mut checks: Vec<store::Check> = vec![tools_check];
    checks.extend(tars.into_iter().map(|t| t.check));
    let tree = match tree {
        Ok(t) => t,
        Err(e) => {
            // A tar that does not parse may be damaged in the store: say so.
            for check in checks {
                check.wait()?;
            }
            return Err(e);
        }
    };
    parts?;
    phase("gpt, esp and grub written");
    let layout = disk::Layout::new(recipe.disk.size);
    filesystem::mkfs(
        tools,
        scratch.path(),
        &tree,
        layout.root.0,
        layout.root.1 - layout.root.0,
        &root_uuid,
        epoch,
    )?;
    phase("mkfs.ext4 done");
    drop(tree);
    qcow2::convert(tools, scratch.path(), dir, epoch, recipe.disk.compress)?;
    phase("qcow2 written");
    drop(scratch);
    for check in checks {
        check.wait()?;
    }
    Ok(())
}

/// One stored tar of the tree: the rootfs, a layer's, or a run layer's
/// difference; its sha256 is checked meanwhile (wait for `check`).
pub struct StoredTar {
    pub bytes: bytes::Bytes,
    pub check: store::Check,
    /// A run layer's difference (whiteouts; directories replaced).
    pub diff: bool,
}

/// The rootfs tar and those of `layers` (layer steps of `plan`), in order.
pub fn stored_tars(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    layers: &[&Step],
) -> Result<Vec<StoredTar>> {
    let rootfs_key = &plan.step(StepKind::Rootfs).expect("planned").key;
    let (bytes, check) = store.read_output(rootfs_key, "rootfs.tar")?;
    let mut tars = vec![StoredTar {
        bytes,
        check,
        diff: false,
    }];
    for s in layers {
        let (bytes, check) = store.read_output(&s.key, "layer.tar")?;
        let diff = recipe.layers.iter().any(|l| {
            s.layers.first().is_some_and(|n| n == l.name.as_str())
                && matches!(l.kind, crate::recipe::LayerKind::Run { .. })
        });
        tars.push(StoredTar { bytes, check, diff });
    }
    Ok(tars)
}

/// The tree of stored tars merged in order (see [`filesystem::merge`] and
/// [`run::apply`]).
pub fn merge_tars(tars: &[StoredTar]) -> Result<Tree> {
    let mut tree: Option<Tree> = None;
    for t in tars {
        let layer = Tree::read_bytes(&t.bytes)?;
        match &mut tree {
            None => tree = Some(layer),
            Some(base) if t.diff => run::apply(base, layer),
            Some(base) => filesystem::merge(base, layer),
        }
    }
    let mut tree = tree.expect("the rootfs is always read");
    tree.fix_hardlinks();
    Ok(tree)
}

/// The image's tree: the rootfs, the layers in order, then the boot files.
fn merged_tree(tars: &[StoredTar], root_uuid: &str, epoch: u64) -> Result<Tree> {
    let mut tree = merge_tars(tars)?;
    let (kernel, initrd) = boot::kernel(&tree)?;
    filesystem::merge(
        &mut tree,
        boot::boot_layer(root_uuid, &kernel, &initrd, epoch),
    );
    tree.fix_hardlinks();
    Ok(tree)
}

/// Write the raw disk's size, GPT, EFI system partition and (for BIOS)
/// GRUB's boot code into `raw_path`; the root partition is left for mkfs.
fn disk_parts(
    recipe: &Recipe,
    step: &Step,
    tools: &ToolsEnv,
    dir: &Path,
    raw_path: &Path,
    root_uuid: &str,
    epoch: u64,
) -> Result<()> {
    let layout = disk::Layout::new(recipe.disk.size);
    let mut raw = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(raw_path)?;
    raw.set_len(layout.size)?;
    let guids = disk::Guids {
        disk: step.key.derive("disk"),
        bios: step.key.derive("bios boot partition"),
        esp: step.key.derive("efi system partition"),
        root: step.key.derive("root partition"),
    };
    disk::write_gpt(&mut raw, &layout, &guids)?;

    let mut esp_files: Vec<(&str, Vec<u8>)> = Vec::new();
    if recipe.disk.boot.contains(&BootMode::Uefi) {
        esp_files.push((
            "EFI/BOOT/BOOTX64.EFI",
            boot::efi_img(tools, dir, root_uuid, epoch)?,
        ));
    }
    let vol = u32::from_le_bytes(
        step.key.derive("esp volume id")[..4]
            .try_into()
            .expect("4 bytes"),
    );
    let refs: Vec<(&str, &[u8])> = esp_files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let esp = disk::esp_image(layout.esp.1 - layout.esp.0, vol, &refs)?;
    raw.seek(SeekFrom::Start(layout.esp.0))?;
    raw.write_all(&esp)?;

    if recipe.disk.boot.contains(&BootMode::Bios) {
        let core_lba = layout.bios.0 / disk::SECTOR;
        let mut core = boot::core_img(tools, dir, root_uuid, epoch)?;
        boot::patch_core(&mut core, core_lba)?;
        raw.seek(SeekFrom::Start(layout.bios.0))?;
        raw.write_all(&core)?;
        let mut mbr = vec![0u8; 512];
        raw.seek(SeekFrom::Start(0))?;
        std::io::Read::read_exact(&mut raw, &mut mbr)?;
        boot::patch_mbr(&mut mbr, &boot::boot_img(tools)?, core_lba);
        raw.seek(SeekFrom::Start(0))?;
        raw.write_all(&mbr)?;
    }
    // The raw disk is scratch (converted, then removed): no fsync.
    Ok(())
}
