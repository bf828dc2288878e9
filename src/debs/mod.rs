//! Pinned Debian packages: every .deb of a rootfs or of the tools
//! environment, by pool path, size and sha256.
//!
//! Resolving ([`resolve`], at lock time and for unlocked builds): each
//! suite's `InRelease` is fetched and its signature checked with `gpgv`
//! against the suite's keyring (a bad signature is an error). The host's
//! apt then resolves, in a private directory with an empty dpkg status, the
//! package set the way mmdebstrap's `apt` variant installs it: the
//! essential set first (`dist-upgrade`), then the requested packages over
//! it. Each chosen .deb is pinned from the signed indices.
//!
//! Installing ([`fetch_all`], [`local_repo`]): exactly the pinned files are
//! downloaded into the store (in parallel, each checked while streaming) and
//! mmdebstrap installs from a local repository made of them, so a locked
//! build does not depend on what the mirror serves that day, nor on the
//! network once the store has the files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

pub mod archive;

use crate::fetch;
use crate::lock::model::Deb;
use crate::lock::model::Package;
use crate::store::Store;
use crate::tools;

/// The keyring Debian suites are checked against unless a source names one.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian mirror's keyring: `$MIMG_DEBIAN_KEYRING` (configuration, like
/// the mirror), else Debian's archive keyring.
pub fn debian_keyring() -> PathBuf {
    match std::env::var_os("MIMG_DEBIAN_KEYRING") {
        Some(k) if !k.is_empty() => PathBuf::from(k),
        _ => PathBuf::from(DEBIAN_KEYRING),
    }
}

/// One suite to resolve from: where it is and whose key signs it.
#[derive(Debug, Clone)]
pub struct AptSource {
    pub suite: String,
    pub components: Vec<String>,
    /// Base URL (transport only).
    pub url: String,
    pub keyring: PathBuf,
    /// apt's `check-valid-until` for this source.
    pub check_valid_until: bool,
}

/// What a resolution found.
pub struct Resolution {
    pub debs: Vec<Deb>,
    /// Each suite's `InRelease` as verified: sha256 and date.
    pub releases: BTreeMap<String, fetch::Release>,
    /// Held versions that are no longer in the indices (`--update PKG`).
    pub unheld: Vec<String>,
}

/// Resolve `includes` (names, or `name/suite`), over the essential set
/// when `essential` (mmdebstrap's `apt` variant; else its `extract`
/// variant: the includes and their dependencies only). `hold` pins
/// name -> version where the indices still have it.
pub fn resolve(
    sources: &[AptSource],
    includes: &[String],
    essential: bool,
    hold: &BTreeMap<String, String>,
) -> Result<Resolution> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut releases = BTreeMap::new();
    for s in sources {
        let r = fetch::release(&s.url, &s.suite)?;
        let f = d.join(format!("{}.InRelease", s.suite));
        crate::paths::write(&f, &r.bytes)?;
        tools::gpgv(&s.keyring, &f).map_err(|e| {
            anyhow!(
                "the InRelease of suite `{}` ({}/dists/{}/InRelease) is not validly signed by a key in {}:\n{}\nhint: check the mirror, or name the right keyring for this source in the recipe",
                s.suite,
                s.url,
                s.suite,
                s.keyring.display(),
                e
            )
        })?;
        releases.insert(s.suite.clone(), r);
    }
    let conf = AptDir::new(d, sources, hold)?;
    tools::apt_get(&conf.config, &["update"]).map_err(|e| anyhow!("apt-get update: {e}"))?;
    // apt must have read the very release files checked above.
    for s in sources {
        let got = conf.lists_file(&format!("_dists_{}_InRelease", s.suite))?;
        let sum = hex::encode(Sha256::digest(fs::read(&got)?));
        if sum != releases[&s.suite].sha256 {
            bail!(
                "the mirror's {} release changed while resolving (sha256 {} then {sum})\nhint: run the command again",
                s.suite,
                releases[&s.suite].sha256
            );
        }
    }
    let index = conf.index(sources)?;

    // Phase 1: the essential set and apt, from an empty status.
    let out = if essential {
        tools::apt_get(&conf.config, &["-q", "-y", "--print-uris", "dist-upgrade"])
            .map_err(|e| anyhow!("apt-get (essential set): {e}"))?
    } else {
        String::new()
    };
    let mut chosen = BTreeMap::new();
    let mut status = String::new();
    for name in uri_files(&out) {
        let (suite, stanza) = index
            .get(&name)
            .ok_or_else(|| anyhow!("apt chose {name}, which no index lists"))?;
        status.push_str(&installed_stanza(stanza));
        let d = deb_of(suite, stanza)?;
        chosen.insert(d.name.clone(), d);
    }
    // Phase 2: the requested packages over the essential set.
    if !includes.is_empty() {
        crate::paths::write(&conf.status, status)?;
        let mut args = vec!["-q", "-y", "--print-uris", "install"];
        args.extend(includes.iter().map(String::as_str));
        let out = tools::apt_get(&conf.config, &args).map_err(|e| explain(e, includes))?;
        for name in uri_files(&out) {
            let (suite, stanza) = index
                .get(&name)
                .ok_or_else(|| anyhow!("apt chose {name}, which no index lists"))?;
            // A package of the essential set moved to another version
            // (from a named source) replaces its first choice.
            let d = deb_of(suite, stanza)?;
            chosen.insert(d.name.clone(), d);
        }
    }
    let mut debs: Vec<Deb> = chosen.into_values().collect();
    debs.sort();
    let unheld = hold
        .iter()
        .filter(|(n, v)| debs.iter().any(|d| &d.name == *n && &d.version != *v))
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    Ok(Resolution {
        debs,
        releases,
        unheld,
    })
}

/// apt's "unable to locate" and friends in `stderr` (of apt-get or
/// mmdebstrap), said plainly.
pub fn package_error(stderr: &str) -> Option<anyhow::Error> {
    for line in stderr.lines() {
        if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            return Some(anyhow!(
                "unknown package `{}`: no suite of the recipe has it\nhint: check the name in the recipe's apt layers (`apt-cache policy NAME`)",
                rest.trim()
            ));
        }
        if line.contains("has no installation candidate")
            || line.contains("Couldn't find any package")
        {
            return Some(anyhow!(
                "{}\nhint: check the package names in the recipe's apt layers",
                line.trim().trim_start_matches("E: ")
            ));
        }
    }
    None
}

/// apt's failure while resolving, said plainly.
fn explain(e: tools::ToolError, includes: &[String]) -> anyhow::Error {
    if let tools::ToolError::Failed { stderr, .. } = &e {
        if let Some(named) = package_error(stderr) {
            return named;
        }
        // `name/suite` with a suite no source has.
        if let Some(line) = stderr.lines().find(|l| l.contains("not found")) {
            return anyhow!(
                "{}\nhint: check the package names in the recipe's apt layers",
                line.trim().trim_start_matches("E: ")
            );
        }
        if stderr.contains("unmet dependencies") || stderr.contains("held broken packages") {
            return anyhow!(
                "apt cannot install {} together:\n{stderr}",
                includes.join(", ")
            );
        }
    }
    anyhow!("apt-get: {e}")
}

/// A private apt configuration: its own lists, cache and dpkg status.
struct AptDir {
    config: PathBuf,
    lists: PathBuf,
    status: PathBuf,
}

impl AptDir {
    fn new(d: &Path, sources: &[AptSource], hold: &BTreeMap<String, String>) -> Result<AptDir> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
        ] {
            crate::paths::create_dir_all(d.join(sub))?;
        }
        let status = d.join("status");
        crate::paths::write(&status, "")?;
        let mut list = String::new();
        for s in sources {
            list.push_str(&format!(
                "deb [signed-by={}{}] {} {} {}\n",
                s.keyring.display(),
                if s.check_valid_until {
                    ""
                } else {
                    " check-valid-until=no"
                },
                s.url,
                s.suite,
                s.components.join(" ")
            ));
        }
        crate::paths::write(d.join("sources.list"), list)?;
        let mut prefs = String::new();
        // A named source gives only what is asked of it by name
        // (`pkg/suite`) and what that needs beyond the base suite, as
        // backports do (NotAutomatic): it never upgrades the rest.
        for s in sources.iter().skip(1) {
            for field in ["n", "a"] {
                prefs.push_str(&format!(
                    "Package: *\nPin: release {field}={}\nPin-Priority: 100\n\n",
                    s.suite
                ));
            }
        }
        for (n, v) in hold {
            prefs.push_str(&format!(
                "Package: {n}\nPin: version {v}\nPin-Priority: 1001\n\n"
            ));
        }
        crate::paths::write(d.join("etc/preferences"), prefs)?;
        let q = |p: &Path| p.display().to_string();
        let config = d.join("apt.conf");
        fs::write(
            &config,
            format!(
                "Dir::State \"{d}\";\nDir::State::Lists \"{d}/lists\";\nDir::State::Status \"{status}\";\n\
                 Dir::Cache \"{d}/cache\";\nDir::Etc \"{d}/etc\";\nDir::Etc::SourceList \"{d}/sources.list\";\n\
                 Dir::Etc::Trusted \"/dev/null\";\nAPT::Architecture \"amd64\";\nAPT::Architectures \"amd64\";\n\
                 APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\nAcquire::Retries \"3\";\n\
                 APT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\n",
                d = q(d),
                status = q(&status),
            ),
        )?;
        Ok(AptDir {
            config,
            lists: d.join("lists"),
            status,
        })
    }

    fn lists_file(&self, suffix: &str) -> Result<PathBuf> {
        fs::read_dir(&self.lists)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .ok_or_else(|| anyhow!("apt-get update left no *{suffix} file"))
    }

    /// Every package stanza apt read, by .deb file name, with its suite.
    fn index(&self, sources: &[AptSource]) -> Result<HashMap<String, (String, String)>> {
        let mut out = HashMap::new();
        for e in fs::read_dir(&self.lists)?.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if !fname.ends_with("_Packages") {
                continue;
            }
            let Some(suite) = sources
                .iter()
                .map(|s| &s.suite)
                .find(|s| fname.contains(&format!("_dists_{s}_")))
            else {
                continue;
            };
            let text = crate::paths::read_to_string(e.path())?;
            for stanza in text.split("\n\n") {
                if let Some(f) = field(stanza, "Filename") {
                    let base = f.rsplit('/').next().unwrap_or(f).to_string();
                    out.entry(base)
                        .or_insert_with(|| (suite.clone(), stanza.trim().to_string()));
                }
            }
        }
        Ok(out)
    }
}

/// The value of a one-line field of a control stanza.
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn deb_of(suite: &str, stanza: &str) -> Result<Deb> {
    let get = |k: &str| {
        field(stanza, k)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("an index stanza has no {k}: field"))
    };
    Ok(Deb {
        name: get("Package")?,
        version: get("Version")?,
        arch: get("Architecture")?,
        suite: suite.to_string(),
        path: get("Filename")?,
        sha256: get("SHA256")?,
        size: get("Size")?.parse().context("Size: field")?,
    })
}

/// A stanza as dpkg's status file has it once installed.
fn installed_stanza(stanza: &str) -> String {
    let mut s = String::new();
    for (i, line) in stanza.lines().enumerate() {
        s.push_str(line);
        s.push('\n');
        if i == 0 {
            s.push_str("Status: install ok installed\n");
        }
    }
    s.push('\n');
    s
}

/// The .deb file names of `apt-get --print-uris` output.
fn uri_files(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix('\''))
        .filter_map(|l| l.split('\'').next())
        .map(|url| percent_decode(url.rsplit('/').next().unwrap_or(url)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a fetch went: files downloaded, bytes, seconds.
#[derive(Debug, Default)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Put every pinned .deb the store lacks into it: `jobs` downloads at once,
/// each checked while streaming. `urls` gives each suite's base URL; it is
/// asked only when something must be downloaded (an offline build with a
/// full store needs no mirror configured).
pub fn fetch_all(
    store: &Store,
    debs: &[Deb],
    urls: &dyn Fn() -> Result<BTreeMap<String, String>>,
    jobs: usize,
    offline: bool,
    rep: &dyn crate::report::Reporter,
) -> Result<Fetched> {
    let t0 = std::time::Instant::now();
    let mut seen = BTreeSet::new();
    let missing: Vec<&Deb> = debs
        .iter()
        .filter(|d| seen.insert(&d.sha256) && !store.blob(&d.sha256).exists())
        .collect();
    if missing.is_empty() {
        return Ok(Fetched::default());
    }
    if offline {
        let d = missing[0];
        bail!(
            "--offline: {} {} ({}, sha256 {}) is not in the store, nor {} other pinned .deb(s)\nhint: `mimg store add {}` with a copy of it, or run `mimg store fetch RECIPE` on a machine with network and copy the store",
            d.name,
            d.version,
            d.path,
            d.sha256,
            missing.len() - 1,
            d.file_name()
        );
    }
    let urls = urls()?;
    let total: u64 = missing.iter().map(|d| d.size).sum();
    rep.download_started(&format!("{} .debs", missing.len()), total);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..jobs.max(1).min(missing.len()) {
            sc.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = missing.get(i) else { break };
                    if let Err(e) = fetch_one(store, d, &urls, rep) {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().expect("lock").get_or_insert(e);
                    }
                }
            });
        }
    });
    rep.download_done();
    if let Some(e) = first_err.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(Fetched {
        files: missing.len(),
        bytes: total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn fetch_one(
    store: &Store,
    d: &Deb,
    urls: &BTreeMap<String, String>,
    rep: &dyn crate::report::Reporter,
) -> Result<()> {
    let base = urls
        .get(&d.suite)
        .ok_or_else(|| anyhow!("no source for suite `{}` (pinned {})", d.suite, d.name))?;
    let url = format!("{base}/{}", d.path);
    let tmp = store.blob_tmp(&d.sha256);
    let last = std::cell::Cell::new(0u64);
    let progress = |got: u64, _total: Option<u64>| {
        rep.downloaded(got.saturating_sub(last.get()));
        last.set(got);
    };
    if let Err(e) = fetch::download(&url, &d.sha256, &tmp, &progress) {
        let _ = fs::remove_file(&tmp);
        if let fetch::DownloadError::Failed { reason, .. } = &e
            && reason.contains("onnect")
        {
            bail!(
                "cannot reach the Debian mirror or source of suite `{}` at {base}: {reason}\nhint: check the network or MIMG_DEBIAN_MIRROR; a store filled by `mimg store fetch RECIPE` builds with --offline",
                d.suite
            );
        }
        return Err(anyhow!(e).context(format!(
            "pinned package {} {} ({}) could not be fetched",
            d.name, d.version, d.path
        )));
    }
    store.put_blob(&tmp, &d.sha256)?;
    Ok(())
}

/// Make a local apt repository of exactly `debs` (hard links into the
/// store, each re-hashed) at `dir`, as suite `suite` (component `main`,
/// unsigned: mmdebstrap reads it `[trusted=yes]`).
pub fn local_repo(store: &Store, debs: &[Deb], dir: &Path, suite: &str) -> Result<()> {
    // apt reads the repository as another uid (mmdebstrap's unshare mode
    // maps the caller to root and apt's `_apt` to a subordinate uid): its
    // modes are set here, never left to the caller's umask.
    let pool = dir.join("pool");
    let bin = dir.join("dists").join(suite).join("main/binary-amd64");
    for d in [
        dir.to_path_buf(),
        pool.clone(),
        dir.join("dists"),
        dir.join("dists").join(suite),
        dir.join("dists").join(suite).join("main"),
        bin.clone(),
    ] {
        crate::paths::create_dir_all(&d)?;
        set_mode(&d, 0o755)?;
    }
    let mut packages = String::new();
    for d in debs {
        let blob = store.blob(&d.sha256);
        let data = store
            .read_blob(&d.sha256, d.file_name())?
            .with_context(|| {
                format!(
                    "pinned package {} {} (sha256 {}) is not in the store",
                    d.name, d.version, d.sha256
                )
            })?;
        let control = control_of(&data).with_context(|| format!("reading {}", d.file_name()))?;
        let dest = pool.join(d.file_name());
        if fs::hard_link(&blob, &dest).is_err() {
            crate::paths::write(&dest, &data)?;
        }
        set_mode(&dest, 0o644)?;
        packages.push_str(control.trim_end());
        packages.push_str(&format!(
            "\nFilename: pool/{}\nSize: {}\nSHA256: {}\n\n",
            d.file_name(),
            data.len(),
            d.sha256
        ));
    }
    crate::paths::write(bin.join("Packages"), &packages)?;
    set_mode(&bin.join("Packages"), 0o644)?;
    let release = format!(
        "Origin: mimg\nLabel: mimg\nSuite: {suite}\nCodename: {suite}\nDate: Thu, 01 Jan 1970 00:00:00 UTC\nArchitectures: amd64 all\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        hex::encode(Sha256::digest(packages.as_bytes())),
        packages.len()
    );
    let rel = dir.join("dists").join(suite).join("Release");
    crate::paths::write(&rel, release)?;
    set_mode(&rel, 0o644)?;
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", p.display()))
}

/// The `control` file of a .deb (an ar archive holding control.tar.*).
pub fn control_of(deb: &[u8]) -> Result<String> {
    let (name, data) = archive::member(deb, "control.tar")?;
    let mut ar = archive::tar_reader(&name, data)?;
    for e in ar.entries()? {
        let mut e = e?;
        let p = e.path()?.to_string_lossy().into_owned();
        if p == "./control" || p == "control" {
            let mut s = String::new();
            e.read_to_string(&mut s)?;
            return Ok(s);
        }
    }
    bail!("control.tar has no control file")
}

/// Compare what mmdebstrap installed with what was pinned.
pub fn check_installed(pinned: &[Deb], installed: &[Package]) -> Result<()> {
    let want: BTreeSet<(&str, &str)> = pinned
        .iter()
        .map(|d| (d.name.as_str(), d.version.as_str()))
        .collect();
    let got: BTreeSet<(&str, &str)> = installed
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let extra: Vec<String> = got
        .difference(&want)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    let unused: Vec<String> = want
        .difference(&got)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if extra.is_empty() && unused.is_empty() {
        return Ok(());
    }
    bail!(
        "the installed packages differ from the pinned set: installed but not pinned: [{}]; pinned but not installed: [{}]\nhint: this is a bug in mimg's resolution; please report it with the recipe",
        extra.join(", "),
        unused.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::model::set_hash;

    #[test]
    fn print_uris_are_read() {
        let out = "Reading package lists...\n'http://m/debian/pool/main/g/glibc/libc6_2.41-12%2bdeb13u5_amd64.deb' libc6_2.41-12+deb13u5_amd64.deb 2850108 MD5Sum:3c\n";
        assert_eq!(uri_files(out), ["libc6_2.41-12+deb13u5_amd64.deb"]);
    }

    #[test]
    fn stanzas_become_pins_and_status() {
        let s = "Package: a\nVersion: 1:2-3\nArchitecture: all\nFilename: pool/main/a/a_2-3_all.deb\nSize: 10\nSHA256: ab";
        let d = deb_of("trixie", s).unwrap();
        assert_eq!(d.version, "1:2-3");
        assert_eq!(d.file_name(), "a_2-3_all.deb");
        assert!(installed_stanza(s).starts_with("Package: a\nStatus: install ok installed\n"));
        assert!(deb_of("trixie", "Package: a").is_err());
    }

    #[test]
    fn set_hash_follows_content() {
        let d = deb_of(
            "t",
            "Package: a\nVersion: 1\nArchitecture: all\nFilename: p/a.deb\nSize: 1\nSHA256: 00",
        )
        .unwrap();
        let mut e = d.clone();
        e.sha256 = "01".into();
        assert_ne!(set_hash(&[d.clone()]), set_hash(&[e]));
        let mut f = d.clone();
        f.suite = "other".into();
        assert_eq!(set_hash(&[d]), set_hash(&[f]), "the suite is transport");
    }
}
