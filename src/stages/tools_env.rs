//! The tools step: a Debian root (suite and packages fixed in
//! [`crate::plan`]) holding every tool that writes image bytes, made by the
//! host's mmdebstrap from the pinned .debs (unpacked only: the tools run,
//! nothing is configured) and unpacked into the store as `root/`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::plan::{TOOLS_PACKAGES, TOOLS_SUITE};
use crate::tools;

/// Make the tools root at `out/root` from the local repository of pinned
/// .debs at `source` (an apt source line).
pub fn build(source: &str, epoch: u64, out: &Path) -> Result<()> {
    let tar = out.join("tools.tar");
    let mut cmd = tools::mmdebstrap(epoch)?;
    cmd.arg("--variant=extract")
        .arg("--format=tar")
        .arg(format!("--include={}", TOOLS_PACKAGES.join(",")));
    cmd.arg(TOOLS_SUITE).arg(&tar).arg(source);
    tools::run(cmd, "mmdebstrap (tools environment)")?;
    let root = out.join("root");
    fs::create_dir_all(&root)?;
    unpack(&tar, &root).context("unpacking the tools environment")?;
    fs::remove_file(&tar)?;
    // What dpkg and base-files would have made: the merged-/usr links and
    // the mount points bwrap needs.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if fs::symlink_metadata(root.join(link)).is_err() {
            std::os::unix::fs::symlink(target, root.join(link))?;
        }
    }
    for d in ["dev", "proc", "tmp", "mnt"] {
        fs::create_dir_all(root.join(d))?;
    }
    Ok(())
}

/// Unpack without device nodes (bwrap provides /dev) and without owners
/// (a rootless build cannot set them; the tools only need to run).
fn unpack(tar: &Path, root: &Path) -> Result<()> {
    let mut ar = tar::Archive::new(fs::File::open(tar)?);
    ar.set_preserve_ownerships(false);
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    for e in ar.entries()? {
        let mut e = e?;
        let t = e.header().entry_type();
        if matches!(
            t,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        e.unpack_in(root)?;
    }
    Ok(())
}
