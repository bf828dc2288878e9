//! The filesystem step: merge the rootfs and layer trees and make ext4
//! straight from the tar stream with the tools environment's mkfs.ext4
//! (e2fsprogs >= 1.47.1 reads a tarball on stdin with `-d -`).
//!
//! Why from a tar and not a directory: a directory on the host carries the
//! host's owners (rootless builds cannot even create them), atimes and
//! ctimes; a tar carries exactly what we wrote. With `SOURCE_DATE_EPOCH`,
//! a fixed `-U` and `-E hash_seed=` the result is byte-stable.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::tarball::{Kind, PathKey, Tree};
use crate::tools::{self, ToolsEnv};

/// Lay `layer` over `base`: a directory present in both keeps the base's
/// metadata; anything else replaces what was there (a directory replaced by
/// a non-directory takes its contents with it).
pub fn merge(base: &mut Tree, layer: Tree) {
    for (k, e) in layer.entries {
        match base.entries.get(&k) {
            Some(old) if old.kind == Kind::Dir && e.kind == Kind::Dir => continue,
            Some(old) if old.kind == Kind::Dir => {
                let prefix = format!("{}/", k.path());
                let doomed: Vec<PathKey> = base
                    .entries
                    .keys()
                    .filter(|p| p.path().starts_with(&prefix))
                    .cloned()
                    .collect();
                for d in doomed {
                    base.entries.remove(&d);
                }
            }
            _ => {}
        }
        base.entries.insert(k, e);
    }
}

/// Make an ext4 filesystem of `bytes` at byte `offset` of `work/disk.raw`
/// from `tree`.
pub fn mkfs(
    tools: &ToolsEnv,
    work: &Path,
    tree: &Tree,
    offset: u64,
    bytes: u64,
    uuid: &str,
    epoch: u64,
) -> Result<()> {
    let mut cmd = tools.command("mkfs.ext4", work, epoch)?;
    cmd.args([
        "-q", "-F", "-d", "-", "-L", "root", "-b", "4096", "-I", "256", "-U", uuid,
    ])
    .arg("-E")
    // The raw file is new and sparse: its unwritten blocks read as zeros,
    // so mkfs need not write the journal's (same bytes, less written).
    .arg(format!(
        "hash_seed={uuid},offset={offset},root_owner=0:0,assume_storage_prezeroed=1"
    ))
    .arg("/mnt/disk.raw")
    .arg(format!("{}k", bytes / 1024));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("cannot start mkfs.ext4 in the tools environment")?;
    let stdin = child.stdin.take().expect("piped");
    let writer = std::thread::scope(|s| {
        let h = s.spawn(move || -> std::io::Result<()> {
            let t0 = std::time::Instant::now();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
            tree.write(&mut w)?;
            let r = w.flush();
            tracing::debug!(
                "mkfs: tar stream written in {:.2}s",
                t0.elapsed().as_secs_f64()
            );
            r
        });
        let res = tools::wait(child, "mkfs.ext4");
        (h.join(), res)
    });
    match writer {
        (_, Err(e)) => Err(e.into()),
        (Ok(Err(e)), Ok(())) => bail!("writing the tar stream to mkfs.ext4: {e}"),
        (Err(_), _) => bail!("the tar writer panicked"),
        (Ok(Ok(())), Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tarball::Entry;
    use super::*;

    #[test]
    fn merge_keeps_base_dirs_and_replaces_files() {
        let mut base = Tree::default();
        base.insert("etc", Entry::dir(0o700, 1));
        base.insert("etc/motd", Entry::file(b"old".to_vec(), 0o644, 1));
        base.insert("srv", Entry::dir(0o755, 1));
        base.insert("srv/x", Entry::file(b"x".to_vec(), 0o644, 1));
        let mut layer = Tree::default();
        layer.insert("etc", Entry::dir(0o755, 2));
        layer.insert("etc/motd", Entry::file(b"new".to_vec(), 0o644, 2));
        layer.insert("srv", Entry::file(b"now a file".to_vec(), 0o644, 2));
        merge(&mut base, layer);
        assert_eq!(base.get("etc").unwrap().mode, 0o700);
        assert_eq!(
            base.get("etc/motd").unwrap().kind,
            Kind::File(b"new".to_vec().into())
        );
        assert!(base.get("srv/x").is_none());
    }
}
