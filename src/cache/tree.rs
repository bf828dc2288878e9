//! An output directory of a step (the tools environment's `root/`) carried
//! as one tar: entries sorted by path, numeric owners, mode, no times, so
//! the same tree gives the same tar (and the same blob) on every push.
//! Unpacked, the tree is checked against the listing the signed meta
//! names (`NAME.tree`): every path, type, mode, file sha256 and link target.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Write the tree at `root` as a tar to `out`.
pub fn pack(root: &Path, out: impl Write) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    walk(root, PathBuf::new(), &mut paths)?;
    paths.sort();
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    for rel in paths {
        let full = root.join(&rel);
        let md = fs::symlink_metadata(&full)?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mtime(0);
        let ft = md.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel, fs::read_link(&full)?)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            b.append_data(&mut h, &rel, fs::File::open(&full)?)?;
        } else {
            return Err(io::Error::other(format!(
                "{} is neither file, directory nor link: a cache cannot carry it",
                full.display()
            )));
        }
    }
    b.into_inner()?.flush()
}

fn walk(root: &Path, rel: PathBuf, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(root.join(&rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        out.push(r.clone());
        if is_dir {
            walk(root, r, out)?;
        }
    }
    Ok(())
}

/// Unpack a tar made by [`pack`] into `dest` (created). The files are the
/// caller's, as those of a tree this process made itself would be (the
/// tools environment is unpacked by mimg as the user who builds).
pub fn unpack(tar: impl Read, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    let mut a = tar::Archive::new(tar);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(false);
    a.set_preserve_mtime(false);
    a.set_unpack_xattrs(false);
    a.set_overwrite(false);
    a.unpack(dest)
}

/// Whether two tree listings (`store::tree_listing`) agree but for the
/// owners column (a rootless unpack owns every file).
pub fn same_but_owners(a: &str, b: &str) -> bool {
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split('\t').collect();
                if f.len() == 5 {
                    f.remove(3);
                }
                f.join("\t")
            })
            .collect()
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_packs_to_the_same_bytes_and_unpacks_to_its_listing() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        fs::create_dir(root.join("ro")).unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        pack(&root, &mut one).unwrap();
        pack(&root, &mut two).unwrap();
        assert_eq!(one, two);
        let back = d.path().join("back");
        unpack(&one[..], &back).unwrap();
        let (a, b) = (
            crate::store::tree_listing(&root).unwrap(),
            crate::store::tree_listing(&back).unwrap(),
        );
        assert_eq!(a, b);
        assert!(same_but_owners(&a, &a.replace("\t0:0\t", "\t1000:1000\t")));
        assert!(!same_but_owners(&a, &a.replace("0755", "0775")));
        fs::set_permissions(back.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
