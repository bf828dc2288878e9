//! The rootfs step: the tools environment's mmdebstrap installs every apt
//! layer's packages from the pinned .debs, and the result is scrubbed and
//! rewritten as a canonical tar (see [`super::tarball`]). No host program
//! touches the tree: the host only runs the sandbox.
//!
//! Scrubbed, because they are host facts, secrets or clocks: ssh host keys,
//! the snakeoil certificate, logs, apt lists and caches, ldconfig's
//! aux-cache, the random seed, PostgreSQL clusters, device nodes (devtmpfs provides them), the
//! host's hostname and resolv.conf, and the mirror URL in apt's sources.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::tarball::{Entry, Kind, Tree};
use crate::recipe::Recipe;
use crate::tools::{self, ToolsEnv};

use crate::lock::model::Package;

/// Where the local repository of pinned .debs is seen inside the sandbox.
pub const REPO: &str = "/repo";

/// mmdebstrap's customize hook that makes the initramfs of each kernel
/// (see `build`).
const INITRAMFS_HOOK: &str = "--customize-hook=chroot \"$1\" /bin/sh -c '\
    unset INITRD; command -v update-initramfs >/dev/null || exit 0; \
    for k in /boot/vmlinuz-*; do [ -e \"$k\" ] || continue; v=${k#/boot/vmlinuz-}; \
    update-initramfs -c -k \"$v\" || exit 1; \
    if command -v linux-update-symlinks >/dev/null; then linux-update-symlinks install \"$v\" \"$k\" || exit 1; fi; \
    done' >&2";

/// Build the rootfs tar into `out/rootfs.tar`: the tools environment's
/// mmdebstrap (in its sandbox, as root there, with no network) installs
/// the recipe's packages from the local repository of pinned .debs at
/// `repo` (suite `suite`) and streams the tree as a tar, which mimg reads,
/// scrubs and rewrites canonically. Returns the installed packages.
pub fn build(
    recipe: &Recipe,
    tools_env: &ToolsEnv,
    repo: &Path,
    epoch: u64,
    out: &Path,
) -> Result<Vec<Package>> {
    let suite = recipe.base.suite.as_str();
    // The local repository is one suite: `name/suite` becomes `name`.
    let inc: Vec<String> = crate::plan::includes(recipe)
        .into_iter()
        .map(|p| p.split('/').next().unwrap_or(&p).to_string())
        .collect();
    let include = format!("--include={}", inc.join(","));
    let source = format!("deb [trusted=yes] copy://{REPO} {suite} main");
    let mut argv = vec![
        "mmdebstrap",
        "--mode=root",
        "--quiet",
        "--variant=apt",
        "--format=tar",
        // dpkg's fsyncs buy nothing here: the tree is read back into the
        // canonical tar, which the store syncs when it commits the step.
        "--dpkgopt=force-unsafe-io",
        // One initramfs, made once every package is configured. The kernel
        // package's hook would make one when the kernel is configured
        // (INITRD=No, set below, tells it not to), and initramfs-tools'
        // trigger would make it again at the end: the first is thrown
        // away. The trigger finds no initramfs to update; this hook makes
        // one per kernel, as the kernel's hook would, then the /initrd.img
        // links the kernel's postinst makes when there is one. The hook's
        // output goes to stderr: stdout is the tar.
        INITRAMFS_HOOK,
        // No py3compile while packages are configured: the rootfs keeps no
        // bytecode (see `scrub`; recipes/layers/bytecode.toml makes it
        // reproducibly), so every .pyc the packages' postinsts would make
        // is thrown away. Their postinsts skip it when there is no
        // py3compile: it is diverted aside once the essential packages are
        // in, and put back before the tar is made.
        "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename \
         --divert /usr/bin/py3compile.mimg --add /usr/bin/py3compile >&2",
        "--customize-hook=chroot \"$1\" dpkg-divert --quiet --local --rename \
         --remove /usr/bin/py3compile >&2",
    ];
    if !inc.is_empty() {
        argv.push(&include);
    }
    argv.extend([suite, "-", source.as_str()]);
    let t0 = std::time::Instant::now();
    let phase =
        |what: &str| tracing::debug!("rootfs: {what} at {:.2}s", t0.elapsed().as_secs_f64());
    // mmdebstrap's work directory is a tmpfs of the sandbox: whatever uids
    // own its files, it is gone with the sandbox, even when killed.
    let sandbox = tools_env
        .sandbox(epoch)
        .tmpfs("/tmp")
        .env("TMPDIR", "/tmp")
        .env("INITRD", "No")
        .bind(repo, REPO, false);
    let child = sandbox
        .spawn(&argv, Stdio::piped(), "mmdebstrap")
        .map_err(explain)?;
    let mut tree =
        read_tar_of(child, "mmdebstrap").map_err(|e| match e.downcast::<tools::ToolError>() {
            Ok(t) => explain(t),
            Err(e) => e,
        })?;
    phase("mmdebstrap done, tar read");
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

/// Read the tar a sandboxed child writes to its standard output.
pub fn read_tar_of(mut child: std::process::Child, tool: &str) -> Result<Tree> {
    let stdout = child.stdout.take().expect("piped");
    // Read on a second thread: `wait` drains the child's stderr meanwhile.
    // The tree ends at tar's end-of-archive blocks, but GNU tar pads its
    // output to whole records after them: read to the end, or a late write
    // of that padding meets a closed pipe (SIGPIPE; seen once in CI).
    let reader = std::thread::spawn(move || {
        let mut r = std::io::BufReader::with_capacity(1 << 20, stdout);
        let tree = Tree::read(&mut r);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        tree
    });
    let waited = tools::wait(child, tool);
    let tree = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the tar reader panicked"))?;
    // The tool's own failure says more than a tar cut short.
    waited?;
    tree.with_context(|| format!("reading the tar {tool} wrote"))
}

/// Turn mmdebstrap's failure into one that names the cause. (It installs
/// from the local repository of pinned .debs: no mirror is involved.)
fn explain(e: tools::ToolError) -> anyhow::Error {
    if let tools::ToolError::Failed { stderr, .. } = &e
        && let Some(named) = crate::debs::package_error(stderr)
    {
        return named;
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
    // Every .pyc of the packages goes, hash-based ones too: dpkg's
    // py3compile makes checked-hash ones when SOURCE_DATE_EPOCH is set,
    // in parallel, so their bytes are not the same in every build.
    drop_volatile(tree, false);
    fixed_files(tree, recipe, mtime);
}

/// Remove what must not be in an image: host facts, secrets, clocks,
/// caches (also from what a `run` layer adds). With `keep_hash_pyc`,
/// PEP 552 hash-based bytecode stays (a run layer made it on purpose:
/// recipes/layers/bytecode.toml); timestamp-based bytecode always goes.
pub fn drop_volatile(tree: &mut Tree, keep_hash_pyc: bool) {
    let paths: Vec<String> = tree.paths().collect();
    for p in paths {
        let e = tree.get(&p).expect("listed");
        let is_dir = e.kind == Kind::Dir;
        let dropped_prefix =
            DROP_PREFIXES.iter().any(|d| p.starts_with(d)) && !(is_dir && keep_dir(&p));
        let ssh_key = p.starts_with("etc/ssh/ssh_host_");
        let snakeoil_link = matches!(&e.kind, Kind::Symlink(t) if t.contains("ssl-cert-snakeoil"));
        // A PostgreSQL cluster has a random identity (system identifier,
        // authentication nonce): a VM's lives on its data disk. The image's
        // template (recipes/layers/postgresql.toml) is elsewhere, with none.
        let pg_cluster = (p.starts_with("var/lib/postgresql/") || p.starts_with("etc/postgresql/"))
            && p.split('/').count() >= 4;
        let cache_file = (p.starts_with("var/cache/")
            && (p.ends_with(".bin") || p.ends_with("-old")))
            || p.ends_with(".pyc")
                && p.contains("__pycache__/")
                && !(keep_hash_pyc && hash_based_pyc(&e.kind));
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
}

/// Whether a `.pyc` is PEP 552 hash-based (its flags word, after the magic
/// number, has bit 0): its bytes follow from its source, not from an mtime,
/// so it may stay (recipes/layers/bytecode.toml makes them). Timestamp-based
/// ones (dpkg's postinst, an import at build time) record the build's clock.
fn hash_based_pyc(kind: &Kind) -> bool {
    match kind {
        Kind::File(b) => b.len() >= 16 && b[4] & 1 == 1,
        _ => false,
    }
}

/// The files every rootfs gets in place of the build host's.
fn fixed_files(tree: &mut Tree, recipe: &Recipe, mtime: u64) {
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

    #[test]
    fn hash_based_bytecode_stays_and_timestamped_bytecode_goes() {
        let pyc = |flags: u8| {
            let mut b = vec![0xf3, 0x0d, 0x0d, 0x0a, flags, 0, 0, 0];
            b.extend_from_slice(&[7; 16]);
            Entry::file(b, 0o644, 0)
        };
        let mut t = Tree::default();
        t.insert("usr/lib/python3.13/__pycache__/os.cpython-313.pyc", pyc(3));
        t.insert("usr/lib/python3.13/__pycache__/re.cpython-313.pyc", pyc(1));
        t.insert(
            "usr/lib/python3/dist-packages/__pycache__/x.cpython-313.pyc",
            pyc(0),
        );
        t.insert(
            "usr/lib/python3/dist-packages/__pycache__/short.cpython-313.pyc",
            Entry::file(vec![1, 2, 3], 0o644, 0),
        );
        let mut rootfs = t.clone();
        drop_volatile(&mut rootfs, false);
        assert_eq!(rootfs.paths().filter(|p| p.ends_with(".pyc")).count(), 0);
        drop_volatile(&mut t, true);
        let kept: Vec<String> = t.paths().filter(|p| p.ends_with(".pyc")).collect();
        assert_eq!(
            kept,
            [
                "usr/lib/python3.13/__pycache__/os.cpython-313.pyc",
                "usr/lib/python3.13/__pycache__/re.cpython-313.pyc"
            ]
        );
    }
}
