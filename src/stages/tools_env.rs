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
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

use crate::debs::archive;
use crate::slots::Slots;

/// Make the tools root at `out/root` from `debs` (file name, bytes), in order.
/// Their data.tars are decompressed side by side (one thread per core);
/// they are unpacked one after the other, in the given order, so a path two
/// packages hold is always the later one's.
pub fn build(debs: &[(String, Vec<u8>)], out: &Path) -> Result<()> {
    let root = out.join("root");
    crate::paths::create_dir_all(&root)?;
    let slots: Slots<Result<Vec<u8>>> = Slots::new(debs.len());
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((_, data)) = debs.get(i) else { break };
                    let tar = std::panic::catch_unwind(|| data_tar(data)).unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("decompressing the data.tar panicked"))
                    });
                    slots.put(i, tar);
                }
            });
        }
        let result = (|| {
            for (i, (name, _)) in debs.iter().enumerate() {
                slots
                    .wait(i)
                    .and_then(|t| unpack(&t, &root))
                    .with_context(|| format!("unpacking {name}"))?;
            }
            Ok(())
        })();
        // On an error, the workers take no further package.
        next.store(debs.len(), Ordering::SeqCst);
        result
    })?;
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

/// A .deb's data.tar, decompressed.
fn data_tar(deb: &[u8]) -> Result<Vec<u8>> {
    let (member, data) = archive::member(deb, "data.tar")?;
    let mut tar = Vec::new();
    io::Read::read_to_end(&mut archive::decoder(&member, data)?, &mut tar)?;
    Ok(tar)
}

/// Unpack a package's data.tar under `root`.
fn unpack(tar: &[u8], root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut ar = tar::Archive::new(tar);
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

    /// A .deb of one uncompressed data.tar holding `files` (path, content).
    fn deb(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut d = b"!<arch>\n".to_vec();
        d.extend(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "data.tar/",
                0,
                0,
                0,
                100644,
                tar.len()
            )
            .as_bytes(),
        );
        d.extend(&tar);
        d
    }

    #[test]
    fn debs_unpack_in_order_though_decompressed_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        // The first is the largest: it is decompressed last, unpacked first.
        let big = vec![7u8; 8 << 20];
        let debs = vec![
            (
                "a.deb".to_string(),
                deb(&[("etc/x", b"first"), ("usr/share/big", &big)]),
            ),
            (
                "b.deb".to_string(),
                deb(&[("etc/x", b"second"), ("bin/tool", b"#!")]),
            ),
            ("c.deb".to_string(), deb(&[("etc/y", b"third")])),
        ];
        build(&debs, dir.path()).unwrap();
        let root = dir.path().join("root");
        assert_eq!(fs::read(root.join("etc/x")).unwrap(), b"second");
        assert_eq!(fs::read(root.join("etc/y")).unwrap(), b"third");
        assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"#!");
        assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"#!");
        let broken = vec![
            debs[0].clone(),
            ("broken.deb".to_string(), b"!<arch>\n".to_vec()),
        ];
        let e = build(&broken, tempfile::tempdir().unwrap().path()).unwrap_err();
        assert!(format!("{e:#}").contains("unpacking broken.deb"), "{e:#}");
    }

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
