//! A `run` layer's step: its script runs in the tree made so far (the
//! rootfs and every layer before it), without network, and what it changed
//! is kept as a deterministic tar: the entries it added or changed, and a
//! whiteout (`DIR/.wh.NAME`, as in OCI layers) for each path it removed.
//!
//! Everything happens in one sandbox of the tools environment: its GNU tar
//! unpacks the tree into a tmpfs, its `chroot` runs the script there as
//! root (proc and dev mounted, its own /tmp, the script read from a file
//! descriptor so it never lands in the tree), its tar reads back what the
//! script may have changed: every entry whose change time (ctime, which
//! no program can set) is after the unpacking, with the list of every path
//! that is left (for what was removed). The rest is the base, as it was:
//! the tree after the script is the base with those entries laid over it,
//! and the difference is taken from that, as from a whole tree read back
//! (the same bytes), without reading back a gigabyte that did not change.
//! No host program touches the tree; rootless, the files keep their owners
//! through the sandbox's user namespace.

use std::path::Path;
use std::process::Stdio;

use anyhow::Result;

use super::tarball::{Entry, Kind, PathKey, Tree};
use crate::tools::ToolsEnv;

/// What the driver says last when the script (not the driver) failed.
const SCRIPT_FAILED: &str = "mimg: the run layer's script failed";

/// The prefix of a whiteout's file name.
pub const WHITEOUT: &str = ".wh.";

/// What runs in the tools sandbox: unpack, run the layer's script
/// chrooted, unmount, stream the tree out.
const DRIVER: &str = r#"set -e
r=/tmp/root
mkdir -m 0755 $r
tar -C $r -x -p --numeric-owner --xattrs --xattrs-include='*' -f /tmp/in/base.tar
# Whatever changes from here on gets a later ctime than the stamp's mtime;
# the pause puts the first change on a later tick of the kernel's clock.
touch /tmp/stamp
sleep 0.05
mkdir -p $r/proc $r/dev $r/tmp
mount -t proc proc $r/proc
mount --rbind /dev $r/dev
mount -t tmpfs -o mode=1777 tmpfs $r/tmp
status=0
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 TZ=UTC HOME=/root \
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" SYSTEMD_OFFLINE=1 \
    chroot $r /bin/sh -e /dev/fd/3 3</mnt/run.sh </dev/null >&2 || status=$?
umount -l $r/tmp $r/proc
umount -l $r/dev
if [ $status -ne 0 ]; then
    echo "mimg: the run layer's script failed" >&2
    exit $status
fi
cd $r
find . -xdev -print0 >/mnt/paths
find . -xdev -cnewer /tmp/stamp -print0 |
    tar -c --null --no-recursion -T - --numeric-owner --xattrs --xattrs-include='*' --format=pax
"#;

/// Run `script` over `base` (the tree so far); returns the difference.
/// `dir` is the step's directory (scratch files are removed again).
pub fn run(tools: &ToolsEnv, base: &Tree, script: &str, epoch: u64, dir: &Path) -> Result<Tree> {
    // The tree so far goes to the sandbox as a tar in scratch space
    // (memory where there is room, see `Scratch`): a gigabyte that would
    // otherwise be written to the disk only to be read once.
    let size: u64 = base
        .entries
        .values()
        .map(|e| match &e.kind {
            Kind::File(b) => b.len() as u64 + 1024,
            _ => 1024,
        })
        .sum();
    let t0 = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!("run: {what} at {:.2}s", t0.elapsed().as_secs_f64());
    let scratch = super::scratch::Scratch::new(size, dir)?;
    let base_tar = scratch.path().join("base.tar");
    let script_file = dir.join("run.sh");
    {
        let f = crate::paths::create(&base_tar)?;
        let mut w = std::io::BufWriter::new(f);
        base.write(&mut w)?;
        std::io::Write::flush(&mut w)?;
    }
    phase("base tar written");
    crate::paths::write(&script_file, script)?;
    let paths_file = dir.join("paths");
    // Writable: the driver leaves the list of paths there.
    let sandbox = tools
        .sandbox(epoch)
        .tmpfs("/tmp")
        .bind(dir, "/mnt", true)
        .bind(scratch.path(), "/tmp/in", false);
    let changed = sandbox
        .spawn(&["/bin/sh", "-c", DRIVER], Stdio::piped(), "run layer")
        .map_err(anyhow::Error::new)
        .and_then(|child| super::rootfs::read_tar_of(child, "run layer"));
    phase("script run, changes read back");
    let paths = std::fs::read(&paths_file);
    drop(scratch);
    let _ = std::fs::remove_file(&script_file);
    let _ = std::fs::remove_file(&paths_file);
    let changed = changed.map_err(explain)?;
    let mut after = after_script(base, changed, &paths?);
    super::rootfs::drop_volatile(&mut after, true);
    after.fix_hardlinks();
    after.clamp(epoch);
    let d = diff(base, &after, epoch);
    phase("difference taken");
    Ok(d)
}

/// The tree after the script: `base` without the paths that are no longer
/// there (`paths`: every path left, NUL-separated, as find prints them),
/// with the entries the script changed (`changed`) laid over it.
fn after_script(base: &Tree, changed: Tree, paths: &[u8]) -> Tree {
    let left: std::collections::BTreeSet<PathKey> = paths
        .split(|b| *b == 0)
        .filter_map(|p| super::tarball::clean_path(&String::from_utf8_lossy(p)))
        .map(|p| PathKey::new(&p))
        .collect();
    let mut after = Tree::default();
    for (k, e) in &base.entries {
        if left.contains(k) {
            after.entries.insert(k.clone(), e.clone());
        }
    }
    for (k, e) in changed.entries {
        after.entries.insert(k, e);
    }
    after
}

/// The script's failure said plainly, with its output's last lines and
/// what a run layer can and cannot do.
fn explain(e: anyhow::Error) -> anyhow::Error {
    let failed = e
        .chain()
        .find_map(|c| match c.downcast_ref::<crate::tools::ToolError>() {
            Some(crate::tools::ToolError::Failed { status, stderr, .. })
                if stderr.contains(SCRIPT_FAILED) =>
            {
                Some((
                    status.code(),
                    stderr.replace(&format!("{SCRIPT_FAILED}\n"), ""),
                ))
            }
            _ => None,
        });
    match failed {
        Some((code, out)) => anyhow::anyhow!(
            "its script failed (exit status {}); its last lines of output:\n{}\nhint: a run layer runs as root in the tree so far, with no network: what it needs must come from the layers before it (apt, files, fetch, pip)",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "by a signal".into()),
            out.trim_end()
        ),
        None => e,
    }
}

/// What turns `before` into `after`: every entry of `after` that differs,
/// and a whiteout for each path of `before` that `after` lacks (one for a
/// removed directory, none for what was under it).
pub fn diff(before: &Tree, after: &Tree, epoch: u64) -> Tree {
    let mut out = Tree::default();
    for (k, e) in &after.entries {
        if before.entries.get(k) != Some(e) {
            out.entries.insert(k.clone(), e.clone());
        }
    }
    let mut gone: Option<String> = None;
    for k in before.entries.keys() {
        if after.entries.contains_key(k) {
            continue;
        }
        let p = k.path();
        if gone
            .as_ref()
            .is_some_and(|g| p.starts_with(&format!("{g}/")))
        {
            continue;
        }
        let (parent, name) = match p.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), p.as_str()),
        };
        out.insert(
            &format!("{parent}{WHITEOUT}{name}"),
            Entry::file(Vec::new(), 0o644, epoch),
        );
        gone = Some(p.clone());
    }
    out
}

/// Apply a run layer's difference to `base`: whiteouts remove their path
/// (and what is under it), every other entry replaces what is there
/// (directories too: a run layer may change a directory's owner or mode).
pub fn apply(base: &mut Tree, diff: Tree) {
    for (k, e) in diff.entries {
        let p = k.path();
        let name = p.rsplit('/').next().unwrap_or(&p);
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            let dir = &p[..p.len() - name.len()];
            remove_all(base, &format!("{dir}{target}"));
            continue;
        }
        if let Some(old) = base.entries.get(&k)
            && old.kind == Kind::Dir
            && e.kind != Kind::Dir
        {
            remove_all(base, &p);
        }
        base.entries.insert(k, e);
    }
}

fn remove_all(t: &mut Tree, path: &str) {
    let prefix = format!("{path}/");
    let doomed: Vec<PathKey> = t
        .entries
        .range(PathKey::new(path)..)
        .map(|(k, _)| k.clone())
        .take_while(|k| {
            let p = k.path();
            p == path || p.starts_with(&prefix)
        })
        .collect();
    for d in doomed {
        t.entries.remove(&d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str) -> Entry {
        Entry::file(s.as_bytes().to_vec(), 0o644, 1)
    }

    #[test]
    fn a_diff_applied_gives_the_tree_after() {
        let mut before = Tree::default();
        for d in ["etc", "etc/a", "srv", "srv/old", "var"] {
            before.insert(d, Entry::dir(0o755, 1));
        }
        before.insert("etc/a/x", file("x"));
        before.insert("etc/keep", file("k"));
        before.insert("srv/old/f", file("f"));
        before.insert("var/gone", file("g"));
        let mut after = before.clone();
        after.insert("etc/a/x", file("x2"));
        after.insert("etc/new", file("n"));
        after.remove("srv/old/f");
        after.remove("srv/old");
        after.remove("var/gone");
        after.insert(
            "var",
            Entry {
                uid: 7,
                ..Entry::dir(0o750, 1)
            },
        );
        let d = diff(&before, &after, 1);
        assert_eq!(
            d.paths().collect::<Vec<_>>(),
            ["etc/a/x", "etc/new", "srv/.wh.old", "var", "var/.wh.gone"]
        );
        let mut applied = before.clone();
        apply(&mut applied, d);
        assert_eq!(applied.entries, after.entries);
        // Nothing changed, nothing kept.
        assert!(diff(&after, &after, 1).entries.is_empty());
    }

    #[test]
    fn a_file_over_a_directory_removes_what_was_in_it() {
        let mut base = Tree::default();
        base.insert("a", Entry::dir(0o755, 1));
        base.insert("a/b", file("b"));
        base.insert("ab", file("ab"));
        let mut d = Tree::default();
        d.insert("a", file("now a file"));
        apply(&mut base, d);
        assert_eq!(base.paths().collect::<Vec<_>>(), ["a", "ab"]);
    }
}
