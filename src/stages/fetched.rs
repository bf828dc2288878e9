//! `fetch` layers: a pinned file, placed as it is or unpacked, as a [`Tree`].
//!
//! Extraction never writes outside `to`: an absolute name, a `..`
//! component, a link whose target leaves `to`, or an entry under a symlink
//! of the same archive is an error naming the entry, not something skipped.
//! Owners become root, modes become 0755 (executables, directories) or
//! 0644, times become the build epoch.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::tarball::{Entry, Kind, Tree};

/// How a fetched file is laid into the image.
pub struct Placement<'a> {
    pub name: &'a str,
    pub to: &'a str,
    pub strip: u32,
    pub unpack: Option<&'static str>,
    pub mode: Option<u32>,
}

/// The tree of a fetched file's bytes.
pub fn tree(data: &[u8], p: &Placement, mtime: u64) -> Result<Tree> {
    let to = p.to.trim_matches('/').to_string();
    let mut t = Tree::default();
    match p.unpack {
        None => {
            if to.is_empty() {
                bail!("{}: `to` must name a file when `unpack = false`", p.name);
            }
            t.insert(
                &to,
                Entry::file(data.to_vec(), p.mode.unwrap_or(0o644), mtime),
            );
        }
        Some("tar.gz") => tar_entries(
            tar::Archive::new(flate2::read::GzDecoder::new(data)),
            p,
            &to,
            mtime,
            &mut t,
        )?,
        Some("tar.xz") => tar_entries(
            tar::Archive::new(xz2::read::XzDecoder::new(data)),
            p,
            &to,
            mtime,
            &mut t,
        )?,
        Some("zip") => zip_entries(data, p, &to, mtime, &mut t)?,
        Some(other) => bail!("{}: cannot unpack `{other}`", p.name),
    }
    if !to.is_empty() && t.get(&to).is_none() {
        t.insert(&to, Entry::dir(0o755, mtime));
    }
    t.add_parents(mtime);
    check_no_entry_under_symlink(&t, p.name)?;
    Ok(t)
}

/// The path of an archive member inside the image, or `None` when `strip`
/// removes it entirely; an error for names that leave the target.
fn place(raw: &str, p: &Placement, to: &str) -> Result<Option<String>> {
    if raw.starts_with('/') {
        bail!(
            "{}: archive entry `{raw}` has an absolute name; refusing to unpack",
            p.name
        );
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        bail!(
            "{}: archive entry `{raw}` contains `..`; refusing to unpack",
            p.name
        );
    }
    if parts.len() <= p.strip as usize {
        return Ok(None);
    }
    let rel = parts[p.strip as usize..].join("/");
    Ok(Some(if to.is_empty() {
        rel
    } else {
        format!("{to}/{rel}")
    }))
}

/// Whether `target` of a symlink at `at` stays inside `to`.
fn link_inside(at: &str, target: &str, to: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut stack: Vec<&str> = at.split('/').collect();
    stack.pop();
    let base = if to.is_empty() {
        0
    } else {
        to.split('/').count()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if stack.len() <= base {
                    return false;
                }
                stack.pop();
            }
            c => stack.push(c),
        }
    }
    true
}

fn mode_of(exec: bool) -> u32 {
    if exec { 0o755 } else { 0o644 }
}

fn tar_entries<R: Read>(
    mut ar: tar::Archive<R>,
    p: &Placement,
    to: &str,
    mtime: u64,
    t: &mut Tree,
) -> Result<()> {
    for e in ar
        .entries()
        .with_context(|| format!("{}: not a readable archive", p.name))?
    {
        let mut e = e.with_context(|| format!("{}: damaged archive", p.name))?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let Some(path) = place(&raw, p, to)? else {
            continue;
        };
        let mode = e.header().mode().unwrap_or(0o644);
        let kind = match e.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut d = Vec::new();
                e.read_to_end(&mut d)
                    .with_context(|| format!("{}: damaged archive at `{raw}`", p.name))?;
                Kind::File(d.into())
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                if !link_inside(&path, &target, to) {
                    bail!(
                        "{}: symlink `{raw}` points outside the target (`{target}`); refusing to unpack",
                        p.name
                    );
                }
                Kind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                match place(&target, p, to)? {
                    Some(tp) => Kind::Hardlink(tp),
                    None => bail!(
                        "{}: hard link `{raw}` points outside the target; refusing to unpack",
                        p.name
                    ),
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => bail!(
                "{}: archive entry `{raw}` is a {other:?}; only files, directories and links are allowed",
                p.name
            ),
        };
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink(_) => 0o777,
            _ => mode_of(mode & 0o111 != 0),
        };
        t.insert(
            &path,
            Entry {
                kind,
                mode,
                uid: 0,
                gid: 0,
                mtime,
                xattrs: vec![],
            },
        );
    }
    t.fix_hardlinks();
    Ok(())
}

fn zip_entries(data: &[u8], p: &Placement, to: &str, mtime: u64, t: &mut Tree) -> Result<()> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(data))
        .with_context(|| format!("{}: not a readable zip file", p.name))?;
    for i in 0..z.len() {
        let mut f = z
            .by_index(i)
            .with_context(|| format!("{}: damaged zip", p.name))?;
        let raw = f
            .name()
            .map(|n| n.to_string())
            .with_context(|| format!("{}: zip entry name is not readable", p.name))?;
        let Some(path) = place(&raw, p, to)? else {
            continue;
        };
        if f.is_dir() {
            t.insert(&path, Entry::dir(0o755, mtime));
        } else if f.is_symlink() {
            bail!("{}: zip entry `{raw}` is a symlink; not supported", p.name);
        } else {
            let exec = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
            let mut d = Vec::new();
            f.read_to_end(&mut d)?;
            t.insert(&path, Entry::file(d, mode_of(exec), mtime));
        }
    }
    Ok(())
}

/// An entry below a symlink would be written through it.
fn check_no_entry_under_symlink(t: &Tree, name: &str) -> Result<()> {
    let links: std::collections::BTreeSet<String> = t
        .entries
        .iter()
        .filter(|(_, e)| matches!(e.kind, Kind::Symlink(_)))
        .map(|(k, _)| k.path())
        .collect();
    for p in t.paths() {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if links.contains(parent) {
                bail!(
                    "{name}: archive entry `{p}` would be written through the symlink `{parent}`; refusing to unpack"
                );
            }
            cur = parent;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(if *ty == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            // Raw names, as a hostile archive would have them.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn place_at<'a>(to: &'a str, strip: u32) -> Placement<'a> {
        Placement {
            name: "x.tar.gz",
            to,
            strip,
            unpack: Some("tar.gz"),
            mode: None,
        }
    }

    #[test]
    fn strip_and_place() {
        let d = tgz(&[
            ("riot-v1/", tar::EntryType::Directory, b"", ""),
            ("riot-v1/index.html", tar::EntryType::Regular, b"<html>", ""),
            ("riot-v1/i18n/en.json", tar::EntryType::Regular, b"{}", ""),
        ]);
        let t = tree(&d, &place_at("/var/www/element", 1), 9).unwrap();
        assert_eq!(
            t.get("var/www/element/index.html").unwrap().kind,
            Kind::File(b"<html>".to_vec().into())
        );
        assert!(t.get("var/www/element/i18n/en.json").is_some());
        assert!(t.get("var/www/element/riot-v1").is_none());
        assert!(t.entries.values().all(|e| e.mtime == 9 && e.uid == 0));
    }

    #[test]
    fn hostile_archives_are_refused() {
        for (what, entries) in [
            (
                "dot-dot",
                vec![("a/../../etc/passwd", tar::EntryType::Regular, &b"x"[..], "")],
            ),
            (
                "absolute",
                vec![("/etc/passwd", tar::EntryType::Regular, &b"x"[..], "")],
            ),
            (
                "symlink out",
                vec![("a/evil", tar::EntryType::Symlink, &b""[..], "/etc")],
            ),
            (
                "relative symlink out",
                vec![("a/evil", tar::EntryType::Symlink, &b""[..], "../../../etc")],
            ),
            (
                "write through symlink",
                vec![
                    ("a/l", tar::EntryType::Symlink, &b""[..], "sub"),
                    ("a/l/f", tar::EntryType::Regular, &b"x"[..], ""),
                ],
            ),
            (
                "hardlink out",
                vec![("a/h", tar::EntryType::Link, &b""[..], "../etc/shadow")],
            ),
        ] {
            let d = tgz(&entries);
            let e = tree(&d, &place_at("/srv/x", 0), 0);
            assert!(e.is_err(), "{what} accepted");
        }
        // A link that stays inside is fine.
        let d = tgz(&[
            ("a/", tar::EntryType::Directory, b"", ""),
            ("a/f", tar::EntryType::Regular, b"x", ""),
            ("a/l", tar::EntryType::Symlink, b"", "f"),
        ]);
        assert!(tree(&d, &place_at("/srv/x", 0), 0).is_ok());
    }

    #[test]
    fn a_plain_file_gets_its_mode() {
        let p = Placement {
            name: "bin",
            to: "/usr/local/bin/matterbridge",
            strip: 0,
            unpack: None,
            mode: Some(0o755),
        };
        let t = tree(b"ELF", &p, 0).unwrap();
        assert_eq!(t.get("usr/local/bin/matterbridge").unwrap().mode, 0o755);
        assert!(t.get("usr/local/bin").is_some());
    }
}
