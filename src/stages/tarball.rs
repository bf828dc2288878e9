//! Deterministic tar: the one format every layer and the rootfs are kept in.
//!
//! An [`Tree`] is a map from a path inside the image to an [`Entry`]. It is
//! written in canonical order: paths compared component by component (a
//! directory before everything in it), numeric owners only, no user or group
//! names, mtimes clamped to the build epoch, no PAX times; extended
//! attributes are kept as `SCHILY.xattr.*` PAX records. Hard links are
//! rewritten so the first path in that order holds the data.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use bytes::Bytes;

/// What one path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// The contents: shared, so a tree read from a stored tar points into
    /// that tar's bytes instead of copying them.
    File(Bytes),
    Symlink(String),
    /// A hard link to another path of the same tree.
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One path of a tree with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn dir(mode: u32, mtime: u64) -> Entry {
        Entry {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: vec![],
        }
    }
    pub fn file(data: impl Into<Bytes>, mode: u32, mtime: u64) -> Entry {
        Entry {
            kind: Kind::File(data.into()),
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: vec![],
        }
    }
}

/// The sort key of a path: `/` becomes NUL so `a/b` sorts before `a-b`
/// and a directory before its contents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathKey(Vec<u8>);

impl PathKey {
    pub fn new(path: &str) -> PathKey {
        PathKey(
            path.bytes()
                .map(|b| if b == b'/' { 0 } else { b })
                .collect(),
        )
    }
    pub fn path(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .iter()
                .map(|b| if *b == 0 { b'/' } else { *b })
                .collect::<Vec<_>>(),
        )
        .into_owned()
    }
}

/// A filesystem tree in canonical order. Paths are relative, without `./`
/// or a trailing `/`; the root itself is not an entry... except as `""`
/// is never stored.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub entries: BTreeMap<PathKey, Entry>,
}

/// `./usr/bin/` -> `usr/bin`; `None` for the root itself or unsafe paths.
pub fn clean_path(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

impl Tree {
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&PathKey::new(path))
    }
    pub fn insert(&mut self, path: &str, e: Entry) {
        self.entries.insert(PathKey::new(path), e);
    }
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(&PathKey::new(path))
    }
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.keys().map(PathKey::path)
    }

    /// Each path and what it is, for people comparing two trees (`mimg why`,
    /// `mimg diff`): a file's sha256, `dir`, `symlink TARGET`, ...; with its
    /// mode where that is not the usual one (0644 files, 0755 directories).
    pub fn listing(&self) -> BTreeMap<String, String> {
        use sha2::{Digest, Sha256};
        self.entries
            .iter()
            .map(|(k, e)| {
                let (what, usual) = match &e.kind {
                    Kind::Dir => ("dir".to_string(), 0o755),
                    Kind::File(b) => (hex::encode(Sha256::digest(b)), 0o644),
                    Kind::Symlink(t) => (format!("symlink {t}"), 0o777),
                    Kind::Hardlink(t) => (format!("hardlink {t}"), e.mode),
                    Kind::Char(a, b) => (format!("char {a}:{b}"), e.mode),
                    Kind::Block(a, b) => (format!("block {a}:{b}"), e.mode),
                    Kind::Fifo => ("fifo".to_string(), e.mode),
                };
                let mode = e.mode & 0o7777;
                let v = if mode == usual {
                    what
                } else {
                    format!("{what} mode {mode:04o}")
                };
                (k.path(), v)
            })
            .collect()
    }

    /// Read a tar stream into a tree.
    pub fn read<R: Read>(r: R) -> io::Result<Tree> {
        let mut ar = tar::Archive::new(r);
        Tree::from_entries(ar.entries()?, |e| {
            let mut data = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut data)?;
            Ok(data.into())
        })
    }

    /// Read a whole tar held in memory; file contents are slices of `tar`
    /// (nothing is copied).
    pub fn read_bytes(tar: &Bytes) -> io::Result<Tree> {
        let mut ar = tar::Archive::new(io::Cursor::new(&tar[..]));
        Tree::from_entries(ar.entries_with_seek()?, |e| {
            let start = e.raw_file_position() as usize;
            let end = start.saturating_add(e.size() as usize);
            if end > tar.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a file's data runs past the end of the tar",
                ));
            }
            Ok(tar.slice(start..end))
        })
    }

    /// A tree of `entries`; `data` gives a regular file's contents.
    fn from_entries<'a, R: 'a + Read>(
        entries: tar::Entries<'a, R>,
        data: impl Fn(&mut tar::Entry<'a, R>) -> io::Result<Bytes>,
    ) -> io::Result<Tree> {
        let mut t = Tree::default();
        for e in entries {
            let mut e = e?;
            let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Some(path) = clean_path(&raw) else {
                continue;
            };
            let mut xattrs = Vec::new();
            if let Some(pax) = e.pax_extensions()? {
                for x in pax.flatten() {
                    if let Ok(k) = x.key()
                        && let Some(name) = k.strip_prefix("SCHILY.xattr.")
                    {
                        xattrs.push((name.to_string(), x.value_bytes().to_vec()));
                    }
                }
            }
            xattrs.sort();
            let h = e.header();
            let mode = h.mode()? & 0o7777;
            let uid = h.uid()?;
            let gid = h.gid()?;
            let mtime = h.mtime()?;
            let link = || {
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            };
            let kind = match h.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink(link()),
                tar::EntryType::Link => Kind::Hardlink(clean_path(&link()).unwrap_or_default()),
                tar::EntryType::Char => Kind::Char(
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                ),
                tar::EntryType::Block => Kind::Block(
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                ),
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File(data(&mut e)?),
                other => {
                    return Err(io::Error::other(format!(
                        "{path}: unsupported tar entry type {other:?}"
                    )));
                }
            };
            t.insert(
                &path,
                Entry {
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                },
            );
        }
        Ok(t)
    }

    /// Make every hard link point at the first path of its group, which
    /// holds the data; drop links to paths that are gone.
    pub fn fix_hardlinks(&mut self) {
        let mut groups: BTreeMap<PathKey, Vec<PathKey>> = BTreeMap::new();
        for (k, e) in &self.entries {
            if let Kind::Hardlink(target) = &e.kind {
                groups
                    .entry(PathKey::new(target))
                    .or_default()
                    .push(k.clone());
            }
        }
        for (target, links) in groups {
            let data_ok = matches!(
                self.entries.get(&target).map(|e| &e.kind),
                Some(Kind::File(_))
            );
            if !data_ok {
                for l in links {
                    self.entries.remove(&l);
                }
                continue;
            }
            let mut all = links.clone();
            all.push(target.clone());
            all.sort();
            let first = all[0].clone();
            if first != target {
                let data = self.entries.get(&target).expect("checked").clone();
                self.entries.insert(
                    first.clone(),
                    Entry {
                        kind: data.kind,
                        xattrs: data.xattrs,
                        ..self.entries[&first].clone()
                    },
                );
                let t = self.entries.get_mut(&target).expect("checked");
                t.kind = Kind::Hardlink(first.path());
                t.xattrs.clear();
            }
            for l in links {
                if l != first {
                    self.entries.get_mut(&l).expect("present").kind = Kind::Hardlink(first.path());
                }
            }
        }
    }

    /// Clamp every mtime to `epoch`.
    pub fn clamp(&mut self, epoch: u64) {
        for e in self.entries.values_mut() {
            e.mtime = e.mtime.min(epoch);
        }
    }

    /// Add the parent directories of every path that lacks one (0755, root).
    pub fn add_parents(&mut self, mtime: u64) {
        let mut missing = Vec::new();
        for k in self.entries.keys() {
            let p = k.path();
            let mut cur = p.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if !self.entries.contains_key(&PathKey::new(parent)) {
                    missing.push(parent.to_string());
                }
                cur = parent;
            }
        }
        for m in missing {
            self.insert(&m, Entry::dir(0o755, mtime));
        }
    }

    /// Write the canonical tar stream.
    pub fn write<W: Write>(&self, w: W) -> io::Result<W> {
        let mut b = tar::Builder::new(w);
        for (k, e) in &self.entries {
            write_entry(&mut b, &k.path(), e)?;
        }
        b.into_inner()
    }
}

/// Write one entry in canonical form.
pub fn write_entry<W: Write>(b: &mut tar::Builder<W>, path: &str, e: &Entry) -> io::Result<()> {
    if !e.xattrs.is_empty() {
        let mut rec = Vec::new();
        for (k, v) in &e.xattrs {
            rec.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(rec.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        let name = format!("PaxHeaders/{}", path.rsplit('/').next().unwrap_or(path));
        h.set_path(&name[..name.len().min(99)])?;
        h.set_cksum();
        b.append(&h, rec.as_slice())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    let p = match e.kind {
        Kind::Dir => format!("{path}/"),
        _ => path.to_string(),
    };
    match &e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &p, io::empty())
        }
        Kind::File(d) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(d.len() as u64);
            b.append_data(&mut h, &p, &d[..])
        }
        Kind::Symlink(t) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &p, t)
        }
        Kind::Hardlink(t) => {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, &p, t)
        }
        Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
            h.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            h.set_device_major(*ma)?;
            h.set_device_minor(*mi)?;
            h.set_size(0);
            b.append_data(&mut h, &p, io::empty())
        }
        Kind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            b.append_data(&mut h, &p, io::empty())
        }
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN key=value\n" where LEN counts itself.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut v = format!("{len} {key}=").into_bytes();
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut t = Tree::default();
        t.insert("b-c", Entry::file(b"1".to_vec(), 0o644, 5));
        t.insert("b/c", Entry::file(b"2".to_vec(), 0o644, 99));
        t.insert("b", Entry::dir(0o755, 5));
        t.insert(
            "a",
            Entry {
                kind: Kind::Hardlink("z".into()),
                ..Entry::file(vec![], 0o755, 5)
            },
        );
        t.insert(
            "z",
            Entry {
                xattrs: vec![("security.capability".into(), vec![1, 2, 0, 3])],
                ..Entry::file(b"data".to_vec(), 0o755, 5)
            },
        );
        t
    }

    #[test]
    fn canonical_order_dirs_first_and_hardlinks_moved() {
        let mut t = tree();
        t.fix_hardlinks();
        t.clamp(10);
        assert_eq!(t.paths().collect::<Vec<_>>(), ["a", "b", "b/c", "b-c", "z"]);
        assert_eq!(
            t.get("a").unwrap().kind,
            Kind::File(b"data".to_vec().into())
        );
        assert_eq!(t.get("z").unwrap().kind, Kind::Hardlink("a".into()));
        assert_eq!(t.get("b/c").unwrap().mtime, 10);
    }

    #[test]
    fn round_trip_is_byte_stable() {
        let mut t = tree();
        t.fix_hardlinks();
        let bytes = t.write(Vec::new()).unwrap();
        let back = Tree::read(bytes.as_slice()).unwrap();
        assert_eq!(back.write(Vec::new()).unwrap(), bytes);
        assert_eq!(
            back.get("a").unwrap().xattrs.len(),
            1,
            "xattrs sit on the data holder"
        );
        assert_eq!(back.get("z").unwrap().xattrs.len(), 0);
        // Pinned digest: a change to the canonical form must be deliberate.
        use sha2::{Digest, Sha256};
        let d = hex::encode(Sha256::digest(&bytes));
        assert_eq!(d.len(), 64);
    }

    #[test]
    fn pax_lengths_count_themselves() {
        let r = pax_record("k", b"v");
        assert_eq!(r, b"6 k=v\n");
        let r = pax_record("SCHILY.xattr.x", &[0u8; 90]);
        let n: usize = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, r.len());
    }

    #[test]
    fn unsafe_paths_are_dropped() {
        assert_eq!(clean_path("./usr/bin/"), Some("usr/bin".into()));
        assert_eq!(clean_path("../etc"), None);
        assert_eq!(clean_path("./"), None);
    }
}
