//! Layers other than apt: each becomes a [`Tree`] placed at its target.
//!
//! A `files` layer copies a tree from the repository: directories 0755,
//! files 0755 when any execute bit is set on the host and 0644 otherwise,
//! symlinks as they are, owner root, mtime the build epoch. Host owners,
//! modes beyond the execute bit, and times never reach the image. When
//! `from` is a single file it lands at `to`, or at `/NAME` when `to` is `/`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::tarball::{Entry, Kind, Tree};
use crate::recipe::{Layer, LayerKind};

/// The tree of a `files` layer.
pub fn files_tree(from: &Path, to: &str, mtime: u64) -> Result<Tree> {
    let mut t = Tree::default();
    let md =
        fs::symlink_metadata(from).with_context(|| format!("cannot read {}", from.display()))?;
    let to = to.trim_matches('/');
    if md.is_dir() {
        walk(from, to, mtime, &mut t)?;
        if !to.is_empty() {
            t.insert(to, Entry::dir(0o755, mtime));
        }
    } else {
        let name = from.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let dest = if to.is_empty() {
            name.to_string()
        } else {
            to.to_string()
        };
        t.insert(&dest, host_entry(from, mtime)?);
    }
    t.add_parents(mtime);
    Ok(t)
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn walk(dir: &Path, at: &str, mtime: u64, t: &mut Tree) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("{}: file name is not UTF-8: {n:?}", dir.display()))?;
        let p = e.path();
        let path = join(at, &name);
        if e.file_type()?.is_dir() {
            t.insert(&path, Entry::dir(0o755, mtime));
            walk(&p, &path, mtime, t)?;
        } else {
            t.insert(&path, host_entry(&p, mtime)?);
        }
    }
    Ok(())
}

fn host_entry(p: &Path, mtime: u64) -> Result<Entry> {
    let md = fs::symlink_metadata(p)?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(p)?
            .to_str()
            .map(str::to_string)
            .with_context(|| format!("{}: link target is not UTF-8", p.display()))?;
        Ok(Entry {
            kind: Kind::Symlink(target),
            ..Entry::dir(0o777, mtime)
        })
    } else if ft.is_file() {
        let data = fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let mode = if md.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        Ok(Entry::file(data, mode, mtime))
    } else {
        bail!(
            "{}: only files, directories and symlinks can go into a layer",
            p.display()
        )
    }
}

/// Gives the bytes of a pinned file (from the store, or fetched into it).
pub type Blobs<'a> = &'a dyn Fn(&str, &crate::recipe::Sha256Hex) -> Result<Vec<u8>>;

/// The tree a layer adds (not for `apt` layers, the rootfs's, nor `run`
/// layers, which act on the tree: [`super::run`]).
pub fn layer_tree(layer: &Layer, mtime: u64, blobs: Blobs) -> Result<Tree> {
    match &layer.kind {
        LayerKind::Files { from, to } => {
            files_tree(from, to.as_str(), mtime).with_context(|| format!("layer `{}`", layer.name))
        }
        LayerKind::Fetch {
            url,
            sha256,
            to,
            strip,
            unpack,
            mode,
        } => {
            let data = blobs(url, sha256).with_context(|| format!("layer `{}`", layer.name))?;
            let name = url.rsplit('/').next().unwrap_or(url);
            let kind = if *unpack {
                crate::recipe::archive_kind(url)
            } else {
                None
            };
            let p = super::fetched::Placement {
                name,
                to: to.as_str(),
                strip: *strip,
                unpack: kind,
                mode: *mode,
            };
            super::fetched::tree(&data, &p, mtime)
                .with_context(|| format!("layer `{}`", layer.name))
        }
        LayerKind::Pip { .. } => {
            bail!(
                "layer `{}`: `pip` layers are not built yet (they need `mimg lock`, not written yet)",
                layer.name
            )
        }
        LayerKind::Apt { .. } | LayerKind::Run { .. } => {
            unreachable!("apt layers are the rootfs step; run layers run over a tree (stages::run)")
        }
    }
}

/// Content hash of a layer's inputs on the host (for its step key), and
/// the listing it hashes (path -> sha256 or kind, for `mimg why`).
pub fn content_hash(layer: &Layer) -> Result<Option<(String, BTreeMap<String, String>)>> {
    use sha2::{Digest, Sha256};
    match &layer.kind {
        LayerKind::Files { .. } => {
            let no_blobs = |_: &str, _: &crate::recipe::Sha256Hex| -> Result<Vec<u8>> {
                unreachable!("files layers fetch nothing")
            };
            let tree = layer_tree(layer, 0, &no_blobs)?;
            let bytes = tree.write(Vec::new())?;
            Ok(Some((hex::encode(Sha256::digest(&bytes)), tree.listing())))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_metadata_does_not_leak() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/x")).unwrap();
        fs::write(d.path().join("etc/x/a"), "a").unwrap();
        fs::write(d.path().join("etc/run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(
            d.path().join("etc/run.sh"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::set_permissions(d.path().join("etc/x/a"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("x/a", d.path().join("etc/l")).unwrap();
        let t = files_tree(d.path(), "/", 7).unwrap();
        assert_eq!(
            t.paths().collect::<Vec<_>>(),
            ["etc", "etc/l", "etc/run.sh", "etc/x", "etc/x/a"]
        );
        assert_eq!(t.get("etc/run.sh").unwrap().mode, 0o755);
        assert_eq!(t.get("etc/x/a").unwrap().mode, 0o644);
        assert!(t.entries.values().all(|e| e.uid == 0 && e.mtime == 7));
        let moved = files_tree(d.path(), "/srv/www", 7).unwrap();
        assert!(moved.get("srv").is_some() && moved.get("srv/www/etc/x/a").is_some());
        let single = files_tree(&d.path().join("etc/x/a"), "/", 7).unwrap();
        assert_eq!(single.paths().collect::<Vec<_>>(), ["a"]);
    }
}
