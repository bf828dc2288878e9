//! The tools step: a Debian root (suite and packages fixed in
//! [`crate::plan`]) holding every tool that writes image bytes, unpacked by
//! mimg itself from the pinned .debs (each one's `data.tar`; nothing is
//! configured, no maintainer script runs: the tools only run), into the
//! store as `root/`. No host tool takes part, so the host's mmdebstrap,
//! dpkg or tar versions cannot reach it.
//!
//! Paths under `/bin`, `/sbin` and `/lib*` land under `/usr` (the merged
//! /usr layout of the suite), which the top-level links then point to.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::debs::archive;

/// Make the tools root at `out/root` from `debs` (file name, bytes), in order.
pub fn build(debs: &[(String, Vec<u8>)], out: &Path) -> Result<()> {
    let root = out.join("root");
    crate::paths::create_dir_all(&root)?;
    for (name, data) in debs {
        unpack_deb(data, &root).with_context(|| format!("unpacking {name}"))?;
    }
    // What base-files and dpkg would have made: the merged-/usr links and
    // the mount points of the sandboxes (crate::tools::sandbox).
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
    for d in ["dev", "proc", "tmp", "mnt", "repo", "root"] {
        crate::paths::create_dir_all(root.join(d))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        crate::paths::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    }
    Ok(())
}

/// Where a path of a package's tree goes under the root: relative, without
/// `.` or `..`, with the merged-/usr directories moved under `usr/`.
/// `None` for the root itself; an error for a path that leaves the root.
fn place(path: &Path) -> Result<Option<PathBuf>> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{} leaves the root", path.display())
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if matches!(
        parts[0].as_str(),
        "bin" | "sbin" | "lib" | "lib64" | "lib32" | "libx32"
    ) {
        parts.insert(0, "usr".into());
    }
    Ok(Some(parts.iter().collect()))
}

fn unpack_deb(deb: &[u8], root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (member, data) = archive::member(deb, "data.tar")?;
    let mut ar = archive::tar_reader(&member, data)?;
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let Some(rel) = place(&path)? else { continue };
        let dest = root.join(&rel);
        if let Some(parent) = dest.parent() {
            crate::paths::create_dir_all(parent)?;
        }
        let mode = e.header().mode()? & 0o7777;
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                if !dest.is_dir() {
                    remove(&dest)?;
                    fs::create_dir(&dest)?;
                }
                crate::paths::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove(&dest)?;
                let mut f = crate::paths::create(&dest)?;
                io::copy(&mut e, &mut f)?;
                f.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name()?.context("a link without a target")?;
                remove(&dest)?;
                std::os::unix::fs::symlink(&target, &dest)?;
            }
            tar::EntryType::Link => {
                let target = e.link_name()?.context("a link without a target")?;
                let Some(t) = place(&target)? else {
                    bail!("{} links to the root", path.display())
                };
                remove(&dest)?;
                crate::paths::hard_link(root.join(t), &dest)?;
            }
            // Device nodes and fifos: bwrap provides /dev.
            _ => {}
        }
    }
    Ok(())
}

/// Remove what is at `p` (a file or link; a directory only if empty).
fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir(p),
        Ok(_) => fs::remove_file(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_placed_under_usr_and_never_outside() {
        let p = |s: &str| place(Path::new(s)).unwrap();
        assert_eq!(p("./bin/sh"), Some(PathBuf::from("usr/bin/sh")));
        assert_eq!(p("./lib64/ld.so"), Some(PathBuf::from("usr/lib64/ld.so")));
        assert_eq!(
            p("./usr/sbin/mke2fs"),
            Some(PathBuf::from("usr/sbin/mke2fs"))
        );
        assert_eq!(
            p("./etc/mke2fs.conf"),
            Some(PathBuf::from("etc/mke2fs.conf"))
        );
        assert_eq!(p("./"), None);
        assert!(place(Path::new("./usr/../../etc/passwd")).is_err());
    }
}
