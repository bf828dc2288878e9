//! The rootfs step: mmdebstrap installs every apt layer's packages from the
//! recipe's suites, applies the layers up to the last `run` layer through
//! mmdebstrap hooks, and the result is scrubbed and rewritten as a
//! canonical tar (see [`super::tarball`]).
//!
//! Scrubbed, because they are host facts, secrets or clocks: ssh host keys,
//! the snakeoil certificate, logs, apt lists and caches, ldconfig's
//! aux-cache, the random seed, PostgreSQL clusters, device nodes (devtmpfs provides them), the
//! host's hostname and resolv.conf, and the mirror URL in apt's sources.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::layer::layer_tree;
use super::tarball::{Entry, Kind, Tree};
use crate::recipe::{Layer, LayerKind, Recipe};
use crate::tools;

use crate::lock::model::Package;

/// Build the rootfs tar into `out/rootfs.tar` from the local repository
/// of pinned .debs at `source` (an apt source line); returns the installed
/// packages.
pub fn build(
    recipe: &Recipe,
    head: &[Layer],
    source: &str,
    epoch: u64,
    out: &Path,
    blobs: super::layer::Blobs,
) -> Result<Vec<Package>> {
    // As root, mmdebstrap makes a directory and GNU tar, run by mimg with
    // mmdebstrap's own tar options, streams it into the tree: mmdebstrap's
    // tar format does the same through a pipe and a copy, ~6 s slower here.
    // Rootless (unshare mode), only mmdebstrap can read what it made: its
    // tar format. Both give the same tree.
    let as_dir = tools::is_root();
    let (format, raw) = if as_dir {
        ("directory", out.join("mmdebstrap.root"))
    } else {
        ("tar", out.join("mmdebstrap.tar"))
    };
    let mut cmd = tools::mmdebstrap(epoch)?;
    // dpkg's fsyncs buy nothing here: the tree is read back into the
    // canonical tar, which the store syncs when it commits the step.
    cmd.arg("--variant=apt")
        .arg(format!("--format={format}"))
        .arg("--dpkgopt=force-unsafe-io");
    // The local repository is one suite: `name/suite` becomes `name`.
    let inc: Vec<String> = crate::plan::includes(recipe)
        .into_iter()
        .map(|p| p.split('/').next().unwrap_or(&p).to_string())
        .collect();
    if !inc.is_empty() {
        cmd.arg(format!("--include={}", inc.join(",")));
    }
    for (i, l) in head.iter().enumerate() {
        match &l.kind {
            LayerKind::Apt { .. } => {}
            LayerKind::Run { script } => {
                let f = out.join(format!("run-{i}.sh"));
                crate::paths::write(&f, script)?;
                cmd.arg(format!("--customize-hook=copy-in {} /tmp", f.display()));
                cmd.arg(format!(
                    "--customize-hook=unshare -n chroot \"$1\" /bin/sh -e /tmp/run-{i}.sh"
                ));
                cmd.arg(format!("--customize-hook=rm -f \"$1/tmp/run-{i}.sh\""));
            }
            _ => {
                let f = out.join(format!("layer-{i}.tar"));
                layer_tree(l, epoch, blobs)?.write(crate::paths::create(&f)?)?;
                cmd.arg(format!("--customize-hook=tar-in {} /", f.display()));
            }
        }
    }
    cmd.arg(recipe.base.suite.as_str()).arg(&raw).arg(source);
    let t0 = std::time::Instant::now();
    let phase =
        |what: &str| tracing::debug!("rootfs: {what} at {:.2}s", t0.elapsed().as_secs_f64());
    tools::run(cmd, "mmdebstrap").map_err(explain)?;
    phase("mmdebstrap done");

    let mut tree = if as_dir {
        let t = tar_directory(&raw, epoch)?;
        fs::remove_dir_all(&raw).with_context(|| format!("cannot remove {}", raw.display()))?;
        t
    } else {
        let t = Tree::read(fs::File::open(&raw).context("reading mmdebstrap's tar")?)
            .context("reading mmdebstrap's tar")?;
        crate::paths::remove_file(&raw)?;
        t
    };
    for i in 0..head.len() {
        let _ = fs::remove_file(out.join(format!("run-{i}.sh")));
        let _ = fs::remove_file(out.join(format!("layer-{i}.tar")));
    }
    phase("tar read");
    scrub(&mut tree, recipe, epoch);
    tree.fix_hardlinks();
    tree.clamp(epoch);
    let packages = installed(&tree)?;
    let f = crate::paths::create(out.join("rootfs.tar"))?;
    let mut w = std::io::BufWriter::new(f);
    tree.write(&mut w)?;
    std::io::Write::flush(&mut w)?;
    phase("canonical tar written");
    Ok(packages)
}

/// The options of mmdebstrap's own tar run (mmdebstrap 1.x) that decide
/// what the tree holds, so a directory read this way is the tree its tar
/// format carries. (Its `--mtime`/`--clamp-mtime` is `Tree::clamp`, run
/// on both paths; pax header names are not content.)
const MMDEBSTRAP_TAR_OPTIONS: &[&str] = &[
    "--sort=name",
    "--numeric-owner",
    "--one-file-system",
    "--format=pax",
    "--xattrs",
    "-c",
    "--exclude=./dev",
];

/// Read the directory `root` into a tree through GNU tar.
fn tar_directory(root: &Path, epoch: u64) -> Result<Tree> {
    let mut child = tools::tar(epoch)?
        .args(MMDEBSTRAP_TAR_OPTIONS)
        .arg("-C")
        .arg(root)
        .arg(".")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start tar")?;
    let stdout = child.stdout.take().expect("piped");
    // Read on a second thread: `wait` drains tar's stderr meanwhile.
    // The tree ends at tar's end-of-archive blocks, but GNU tar pads its
    // output to whole records after them: read to the end, or a late write
    // of that padding meets a closed pipe (SIGPIPE; seen once in CI).
    let reader = std::thread::spawn(move || {
        let mut r = std::io::BufReader::with_capacity(1 << 20, stdout);
        let tree = Tree::read(&mut r);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        tree
    });
    let waited = tools::wait(child, "tar");
    let tree = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the tar reader panicked"))?;
    // A tree that did not parse says why; tar's own failure comes second.
    let tree = tree.context("reading mmdebstrap's directory")?;
    waited.context("reading mmdebstrap's directory")?;
    Ok(tree)
}

/// Turn mmdebstrap's failure into one that names the cause. (It installs
/// from the local repository of pinned .debs: no mirror is involved.)
fn explain(e: tools::ToolError) -> anyhow::Error {
    if let tools::ToolError::Failed { stderr, .. } = &e {
        if let Some(named) = crate::debs::package_error(stderr) {
            return named;
        }
        if stderr.contains("subuid") || stderr.contains("newuidmap") {
            return anyhow::anyhow!(
                "{e}\nhint: a rootless build needs ranges in /etc/subuid and /etc/subgid for this user (and the uidmap package)"
            );
        }
    }
    anyhow::Error::new(e)
}

const DROP_PREFIXES: &[&str] = &[
    "dev/",
    "var/log/",
    "var/lib/apt/lists/",
    "var/cache/apt/",
    "tmp/",
    "run/",
];
const DROP_EXACT: &[&str] = &[
    "var/cache/ldconfig/aux-cache",
    "var/lib/systemd/random-seed",
    "etc/ssl/private/ssl-cert-snakeoil.key",
    "etc/ssl/certs/ssl-cert-snakeoil.pem",
    "var/lib/dpkg/available-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/passwd-",
    "etc/group-",
    "etc/subuid-",
    "etc/subgid-",
    // Owned by _apt only when apt could reach the build root as _apt (which
    // depends on the host path's permissions); apt makes them when needed.
    "var/cache/apt/archives/partial",
    "var/lib/apt/lists/partial",
    // mimg's --dpkgopt (force-unsafe-io): a build setting, not the image's.
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
];

/// Remove what must not be in an image, replace what names the host.
pub fn scrub(tree: &mut Tree, recipe: &Recipe, mtime: u64) {
    let paths: Vec<String> = tree.paths().collect();
    for p in paths {
        let e = tree.get(&p).expect("listed");
        let is_dir = e.kind == Kind::Dir;
        let dropped_prefix =
            DROP_PREFIXES.iter().any(|d| p.starts_with(d)) && !(is_dir && keep_dir(&p));
        let ssh_key = p.starts_with("etc/ssh/ssh_host_");
        let snakeoil_link = matches!(&e.kind, Kind::Symlink(t) if t.contains("ssl-cert-snakeoil"));
        // A PostgreSQL cluster has a random system identifier: it is made at
        // first boot on the data disk, never at build time.
        let pg_cluster = (p.starts_with("var/lib/postgresql/") || p.starts_with("etc/postgresql/"))
            && p.split('/').count() >= 4;
        let cache_file = (p.starts_with("var/cache/")
            && (p.ends_with(".bin") || p.ends_with("-old")))
            || p.ends_with(".pyc") && p.contains("__pycache__/");
        if dropped_prefix
            || pg_cluster
            || ssh_key
            || snakeoil_link
            || cache_file
            || DROP_EXACT.contains(&p.as_str())
        {
            tree.remove(&p);
        }
    }
    // mmdebstrap's tar format adds its own ./dev, the directory has the
    // host's: neither is content (devtmpfs mounts over it), one fixed entry.
    tree.insert("dev", Entry::dir(0o755, mtime));
    let file = |text: &str| Entry::file(text.as_bytes().to_vec(), 0o644, mtime);
    tree.insert("etc/hostname", file("localhost\n"));
    tree.insert("etc/resolv.conf", file(""));
    tree.insert(
        "etc/machine-id",
        Entry {
            mode: 0o444,
            ..file("")
        },
    );
    tree.insert(
        "etc/apt/sources.list",
        file(&format!(
            "# Written by mimg. The mirror is configuration, not image content:\n# list mirror URLs, one per line, in /etc/apt/mirrors/debian.list\ndeb mirror+file:/etc/apt/mirrors/debian.list {} {}\n",
            recipe.base.suite,
            recipe.base.components.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" ")
        )),
    );
    if tree.get("etc/apt/mirrors").is_none() {
        tree.insert("etc/apt/mirrors", Entry::dir(0o755, mtime));
    }
    tree.insert(
        "etc/apt/mirrors/debian.list",
        file("# one Debian mirror URL per line\n"),
    );
}

/// Directories under dropped prefixes that packages expect to exist.
fn keep_dir(p: &str) -> bool {
    !p.starts_with("dev/")
}

/// The installed packages, from dpkg's status file.
pub fn installed(tree: &Tree) -> Result<Vec<Package>> {
    let Some(Entry {
        kind: Kind::File(data),
        ..
    }) = tree.get("var/lib/dpkg/status")
    else {
        bail!("the rootfs has no /var/lib/dpkg/status")
    };
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut f = BTreeMap::new();
        for line in block.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                f.insert(k, v);
            }
        }
        if f.get("Status").is_some_and(|s| s.ends_with(" installed"))
            && let (Some(n), Some(v)) = (f.get("Package"), f.get("Version"))
        {
            out.push(Package {
                name: n.to_string(),
                version: v.to_string(),
                arch: f.get("Architecture").unwrap_or(&"").to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_is_read() {
        let mut t = Tree::default();
        t.insert(
            "var/lib/dpkg/status",
            Entry::file(b"Package: b\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2\n\nPackage: a\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: a0\nStatus: install ok installed\nArchitecture: all\nVersion: 1:0.1-2\n".to_vec(), 0o644, 0),
        );
        let p = installed(&t).unwrap();
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a0", "b"]
        );
        assert_eq!(p[0].version, "1:0.1-2");
    }
}
