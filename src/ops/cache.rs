//! Binary caches: `mimg cache push` (a store's steps and pinned blobs to a
//! cache, signed), `mimg cache verify` (every entry and blob of a cache
//! checked), and the substitution a build does ([`Substituter`]): a step
//! the store lacks is taken from a cache when a trusted key signed its
//! entry and every byte matches, else built. A cache that is down, slow
//! or wrong never fails a build: it is named in a warning and the step is
//! built. The layout is drawn in [`crate::cache`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Options;
use crate::cache::keys::{PublicKey, SecretKey};
use crate::cache::remote::{self, Remote, RemoteError};
use crate::cache::{self, Entry, config::Config, tree};
use crate::plan::Step;
use crate::recipe::{LayerKind, Recipe};
use crate::store::{FileSum, Meta, Pending, Store};

/// Three tries, with a pause between, for one request to a cache.
fn retry<T>(what: impl Fn() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
    let mut last = None;
    for attempt in 0..3u64 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300 * attempt));
        }
        match what() {
            Ok(v) => return Ok(v),
            Err(e @ (RemoteError::BadUrl { .. } | RemoteError::ReadOnly { .. })) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }
    fn sum(self) -> FileSum {
        FileSum {
            sha256: hex::encode(self.hash.finalize()),
            size: self.size,
        }
    }
}

// ---------------------------------------------------------------- push

/// What `mimg cache push` did.
#[derive(Debug, Default, Serialize)]
pub struct Pushed {
    pub url: String,
    pub steps_uploaded: usize,
    pub steps_skipped: usize,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    /// Pinned blobs the store does not hold (never fetched here: the
    /// steps that used them were reused), so not pushed.
    pub blobs_absent: usize,
    pub bytes_uploaded: u64,
    pub seconds: f64,
    /// Each step pushed or found: label, key, and whether it was uploaded.
    pub steps: Vec<PushedStep>,
}

#[derive(Debug, Serialize)]
pub struct PushedStep {
    pub recipe: String,
    pub label: String,
    pub key: String,
    pub uploaded: bool,
}

/// One piece of content to put under `blobs/`.
struct Upload {
    sha256: String,
    size: u64,
    /// The file to send, and whether it is a temporary tar to remove.
    from: PathBuf,
    temporary: bool,
}

/// Push the steps of the last build of each recipe, and the blobs their
/// locks and recipes pin, to the cache at `url`, signing each entry with
/// `key`; `jobs` uploads at once.
pub fn push(
    store: &Store,
    url: &str,
    recipes: &[Recipe],
    key: &SecretKey,
    jobs: usize,
    note: &(dyn Fn(&str) + Sync),
) -> Result<Pushed> {
    let t0 = Instant::now();
    let remote = remote::open(url)?;
    if remote.read_only() {
        return Err(RemoteError::ReadOnly {
            url: url.to_string(),
        }
        .into());
    }
    let remote = &*remote;
    let mut out = Pushed {
        url: url.to_string(),
        ..Pushed::default()
    };
    if !retry(|| remote.exists(cache::INFO))? {
        retry(|| remote.put_bytes(cache::INFO, cache::info().as_bytes()))
            .with_context(|| format!("cannot write to the cache {url}"))?;
    }
    // Steps, in build order, once each.
    let mut steps: Vec<(String, crate::plan::StepKey, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut pinned: BTreeMap<String, String> = BTreeMap::new();
    for r in recipes {
        let name = r.name.as_str();
        let last = store.history(name)?.pop().with_context(|| {
            format!(
                "this store has no build of {name}\nhint: `mimg build {name}` with this store first"
            )
        })?;
        for s in last.steps {
            if seen.insert(s.key.clone()) {
                steps.push((name.to_string(), s.key, s.label));
            }
        }
        for (sha, what) in pinned_blobs(r, store) {
            pinned.entry(sha).or_insert(what);
        }
    }
    // Which entries the cache has: those steps are skipped whole.
    let mut entries = Vec::new();
    let mut uploads: BTreeMap<String, Upload> = BTreeMap::new();
    for (recipe, k, label) in &steps {
        let uploaded = !retry(|| remote.exists(&cache::entry_path(k.as_str())))?;
        out.steps.push(PushedStep {
            recipe: recipe.clone(),
            label: label.clone(),
            key: k.to_string(),
            uploaded,
        });
        if !uploaded {
            out.steps_skipped += 1;
            continue;
        }
        let meta = store
            .meta(k)
            .with_context(|| format!("step {label} of {recipe}'s last build"))?;
        let meta_text = std::fs::read_to_string(store.path(k).join("meta.json"))?;
        for (name, sum) in &meta.files {
            uploads.entry(sum.sha256.clone()).or_insert(Upload {
                sha256: sum.sha256.clone(),
                size: sum.size,
                from: store.path(k).join(name),
                temporary: false,
            });
        }
        let mut trees = BTreeMap::new();
        for name in meta.trees.keys() {
            if let Err(e) = store.check_tree(k, name).wait() {
                bail!("{e}");
            }
            let tmp = store
                .tmp_dir()
                .join(format!("push-{k}-{name}.{}.tar", std::process::id()));
            let mut w = Hashing::new(std::io::BufWriter::new(crate::paths::create(&tmp)?));
            tree::pack(&store.path(k).join(name), &mut w)
                .with_context(|| format!("packing {name}/ of step {label}"))?;
            w.flush()?;
            let sum = w.sum();
            trees.insert(name.clone(), sum.clone());
            uploads.insert(
                sum.sha256.clone(),
                Upload {
                    sha256: sum.sha256,
                    size: sum.size,
                    from: tmp,
                    temporary: true,
                },
            );
        }
        let mut entry = Entry::new(meta_text, trees)?;
        entry.sign(key)?;
        entries.push((label.clone(), k.to_string(), meta, entry));
        out.steps_uploaded += 1;
    }
    for (sha, _) in pinned {
        let p = store.blob(&sha);
        match std::fs::metadata(&p) {
            Ok(md) => {
                uploads.entry(sha.clone()).or_insert(Upload {
                    sha256: sha,
                    size: md.len(),
                    from: p,
                    temporary: false,
                });
            }
            Err(_) => out.blobs_absent += 1,
        }
    }
    // Blobs first (every one an entry names), then the entries.
    let queue = Mutex::new(uploads.into_values().collect::<Vec<Upload>>());
    let (up, skipped, bytes) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0));
    let failed = Mutex::new(Vec::<String>::new());
    let total = queue.lock().expect("lock").len();
    note(&format!(
        "pushing to {url}: {} steps, {total} blobs to check",
        out.steps_uploaded
    ));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some(u) = queue.lock().expect("lock").pop() else {
                        return;
                    };
                    let res = push_blob(remote, &u);
                    if u.temporary {
                        let _ = std::fs::remove_file(&u.from);
                    }
                    match res {
                        Ok(true) => {
                            up.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(u.size, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().expect("lock").push(format!("{e:#}")),
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().expect("lock");
    if let Some(first) = failed.first() {
        bail!(
            "{} of {total} uploads failed; no entry was written. First: {first}\nhint: run the push again: what is there is skipped",
            failed.len()
        );
    }
    for (label, k, meta, entry) in &entries {
        let text = serde_json::to_vec_pretty(entry).expect("entries serialise");
        retry(|| remote.put_bytes(&cache::entry_path(k), &text))
            .with_context(|| format!("writing the entry of step {label}"))?;
        let size: u64 = meta.files.values().map(|f| f.size).sum::<u64>()
            + entry.trees.values().map(|t| t.size).sum::<u64>();
        note(&format!(
            "  pushed {label:<20} {}  {:.1} MiB",
            &k[..12],
            size as f64 / (1 << 20) as f64
        ));
    }
    out.blobs_uploaded = up.into_inner();
    out.blobs_skipped = skipped.into_inner();
    out.bytes_uploaded = bytes.into_inner();
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Upload one blob unless the cache has it; its local file is re-hashed
/// first (a damaged store entry is never spread). True when uploaded.
fn push_blob(remote: &dyn Remote, u: &Upload) -> Result<bool> {
    let path = cache::blob_path(&u.sha256);
    if retry(|| remote.exists(&path))? {
        return Ok(false);
    }
    let sum = crate::store::hash_file(&u.from)
        .with_context(|| format!("cannot read {}", u.from.display()))?;
    if sum.sha256 != u.sha256 || sum.size != u.size {
        bail!(
            "{} has sha256 {}, the store records {}\nhint: `mimg store verify`, then build again",
            u.from.display(),
            sum.sha256,
            u.sha256
        );
    }
    retry(|| remote.put_file(&path, &u.from))?;
    Ok(true)
}

/// The sha256 of every blob `recipe` pins (its lock's .debs and wheels,
/// its fetch layers' files), with a name for people.
fn pinned_blobs(recipe: &Recipe, store: &Store) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in &recipe.layers {
        if let LayerKind::Fetch { url, sha256, .. } = &l.kind {
            out.push((sha256.as_str().to_string(), url.clone()));
        }
    }
    let opts = Options {
        offline: true,
        ..Options::default()
    };
    match super::resolve::facts(recipe, opts, Some(store)) {
        Ok(r) => {
            for d in r.facts.rootfs_debs.iter().chain(&r.facts.tools_debs) {
                out.push((d.sha256.clone(), d.file_name().to_string()));
            }
            for ws in r.wheels.values() {
                for w in ws {
                    out.push((w.sha256.clone(), w.file.clone()));
                }
            }
        }
        Err(e) => eprintln!(
            "warning: {}: its pinned .debs and wheels are not pushed: {e:#}",
            recipe.name
        ),
    }
    out
}

// ---------------------------------------------------------------- verify

/// What `mimg cache verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    pub url: String,
    pub entries: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Each problem: which entry or blob, and what is wrong.
    pub bad: Vec<String>,
    pub seconds: f64,
}

/// Check every entry's signature (against `trusted`) and meta, and
/// re-hash every blob of the cache at `url`.
pub fn verify(url: &str, trusted: &[PublicKey], jobs: usize) -> Result<Verified> {
    let t0 = Instant::now();
    let remote = remote::open(url)?;
    let remote = &*remote;
    let prefix = format!("v{}/", cache::VERSION);
    let entries = retry(|| remote.list(&format!("{prefix}steps/")))
        .with_context(|| format!("cannot list the cache {url}"))?;
    let blobs = retry(|| remote.list(&format!("{prefix}blobs/")))?;
    let have: BTreeSet<&str> = blobs.iter().filter_map(|b| b.rsplit('/').next()).collect();
    let mut out = Verified {
        url: url.to_string(),
        entries: entries.len(),
        blobs: blobs.len(),
        ..Verified::default()
    };
    for path in &entries {
        let key = path
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or(path);
        let entry = match read_entry(remote, key) {
            Ok(Some(Ok(e))) => e,
            Ok(None) => continue,
            Ok(Some(Err(e))) | Err(e) => {
                out.bad.push(format!("{path}: {e}"));
                continue;
            }
        };
        match entry.check(key, trusted) {
            Ok((meta, _)) => {
                let named = meta
                    .files
                    .values()
                    .map(|f| &f.sha256)
                    .chain(entry.trees.values().map(|t| &t.sha256));
                for sha in named {
                    if !have.contains(sha.as_str()) {
                        out.bad.push(format!(
                            "{path} (step {}): blob {sha} is missing",
                            meta.label
                        ));
                    }
                }
            }
            Err(e) => out.bad.push(format!("{path}: {e}")),
        }
    }
    let queue = Mutex::new(blobs.clone());
    let bad = Mutex::new(Vec::new());
    let bytes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some(path) = queue.lock().expect("lock").pop() else {
                        return;
                    };
                    let name = path.rsplit('/').next().unwrap_or(&path).to_string();
                    let res = retry(|| remote.get(&path))
                        .map_err(|e| e.to_string())
                        .and_then(|r| {
                            let mut h = Hashing::new(r.ok_or("it vanished")?);
                            io::copy(&mut h, &mut io::sink()).map_err(|e| e.to_string())?;
                            Ok(h.sum())
                        });
                    match res {
                        Ok(sum) => {
                            bytes.fetch_add(sum.size, Ordering::Relaxed);
                            if sum.sha256 != name {
                                bad.lock()
                                    .expect("lock")
                                    .push(format!("{path}: its content has sha256 {}", sum.sha256));
                            }
                        }
                        Err(e) => bad.lock().expect("lock").push(format!("{path}: {e}")),
                    }
                }
            });
        }
    });
    out.bad.extend(bad.into_inner().expect("lock"));
    out.bad.sort();
    out.bytes = bytes.into_inner();
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The entry of `key`: `Err` when the cache failed (down, cut off),
/// `Ok(None)` when it has none, `Ok(Some(Err))` when what it has is not an
/// entry.
fn read_entry(remote: &dyn Remote, key: &str) -> Result<Option<Result<Entry, String>>, String> {
    let Some(r) = retry(|| remote.get(&cache::entry_path(key))).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut text = Vec::new();
    r.take(64 << 20)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading it: {e}"))?;
    Ok(Some(
        serde_json::from_slice(&text).map_err(|e| format!("it is not an entry: {e}")),
    ))
}

// ---------------------------------------------------------------- substitute

/// One substituter of a build.
struct Source {
    remote: Box<dyn Remote>,
    /// Set when it failed (down, cut, too slow): not asked again this build.
    down: AtomicBool,
}

/// The caches a build takes steps and pinned blobs from.
pub struct Substituter {
    sources: Vec<Source>,
    trusted: Vec<PublicKey>,
}

/// A step taken from a cache.
pub struct Substituted {
    pub meta: Meta,
    pub url: String,
    pub bytes: u64,
}

impl Substituter {
    /// How many caches it asks.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// The substituters configured (environment, config file); `None` when
    /// there are none. A URL that does not parse is named in a warning.
    pub fn configured(opts: Options) -> Result<Option<Substituter>> {
        if opts.no_substitute {
            return Ok(None);
        }
        let cfg = Config::load()?;
        let mut sources = Vec::new();
        for url in &cfg.substituters {
            if opts.offline && !url.starts_with("file://") {
                continue;
            }
            match remote::open(url) {
                Ok(r) => sources.push(Source {
                    remote: r,
                    down: AtomicBool::new(false),
                }),
                Err(e) => eprintln!("warning: substituter not used: {e}"),
            }
        }
        if sources.is_empty() {
            return Ok(None);
        }
        if cfg.trusted_keys.is_empty() {
            eprintln!(
                "warning: no trusted keys (MIMG_TRUSTED_KEYS): steps are not substituted, pinned files are\nhint: set MIMG_TRUSTED_KEYS to the public key line of the key that signs the cache"
            );
        }
        Ok(Some(Substituter {
            sources,
            trusted: cfg.trusted_keys,
        }))
    }

    fn up(&self) -> impl Iterator<Item = &Source> {
        self.sources
            .iter()
            .filter(|s| !s.down.load(Ordering::Relaxed))
    }

    /// Mark a source down and say so, once.
    fn fail(&self, s: &Source, e: &dyn std::fmt::Display) {
        if !s.down.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: substituter {} failed ({e}); building without it",
                s.remote.url()
            );
        }
    }

    /// Whether some substituter has an entry for `key` (a hint for what to
    /// prefetch; nothing is checked).
    pub fn may_have(&self, key: &str) -> bool {
        !self.trusted.is_empty()
            && self
                .up()
                .any(|s| s.remote.exists(&cache::entry_path(key)).unwrap_or(false))
    }

    /// A pending store entry of `step` (whose lock the caller holds) filled
    /// from the first cache holding a good entry of it. `None` (after a
    /// warning naming what was wrong) when none does: the caller builds it.
    pub fn step(&self, store: &Store, step: &Step) -> Option<(Pending, Substituted)> {
        if self.trusted.is_empty() {
            return None;
        }
        for s in self.up() {
            let url = s.remote.url();
            let refused = |why: &dyn std::fmt::Display| {
                eprintln!(
                    "warning: {url}: the entry of step {} ({}) is refused: {why}; building it",
                    step.label,
                    step.key.short()
                );
            };
            let entry = match read_entry(&*s.remote, step.key.as_str()) {
                Ok(Some(Ok(e))) => e,
                Ok(None) => continue,
                Ok(Some(Err(why))) => {
                    refused(&why);
                    continue;
                }
                Err(e) => {
                    self.fail(s, &e);
                    continue;
                }
            };
            let meta = match entry.check(step.key.as_str(), &self.trusted) {
                Ok((m, _)) => m,
                Err(e) => {
                    refused(&e);
                    continue;
                }
            };
            if meta.version != crate::store::META_VERSION || meta.inputs != step.inputs {
                refused(&"it was made by another version of mimg");
                continue;
            }
            let pending = match store.begin(&step.key) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("warning: {e}");
                    return None;
                }
            };
            // A failed attempt's files go with `pending` when it is dropped.
            match fill(&*s.remote, &entry, &meta, pending.dir()) {
                Ok(bytes) => {
                    if let Some(meta) = local_meta(meta, pending.dir()) {
                        let got = Substituted {
                            meta,
                            url: url.to_string(),
                            bytes,
                        };
                        return Some((pending, got));
                    }
                }
                Err(Fill::Remote(e)) => self.fail(s, &e),
                Err(Fill::Bad(why)) => refused(&why),
            }
        }
        None
    }

    /// Put the blob with `sha256` into the store from the first cache that
    /// has it; true when it did.
    pub fn blob(&self, store: &Store, sha256: &str) -> bool {
        for s in self.up() {
            let tmp = store.blob_tmp(sha256);
            let got = retry(|| s.remote.get(&cache::blob_path(sha256)));
            let res = match got {
                Ok(None) => continue,
                Ok(Some(r)) => copy_checked(r, &tmp, sha256, None),
                Err(e) => Err(Fill::Remote(e.to_string())),
            };
            match res {
                Ok(_) => {
                    if store.put_blob(&tmp, sha256).is_ok() {
                        return true;
                    }
                }
                Err(Fill::Remote(e)) => self.fail(s, &e),
                Err(Fill::Bad(why)) => eprintln!(
                    "warning: {}: blob {sha256} is refused: {why}",
                    s.remote.url()
                ),
            }
            let _ = std::fs::remove_file(&tmp);
        }
        false
    }
}

/// Why an entry's content could not be used.
enum Fill {
    /// The cache failed (down, cut, too slow).
    Remote(String),
    /// The cache answered with the wrong thing.
    Bad(String),
}

/// Download every output of `entry` into `dir`, each checked against the
/// sha256 and size the signed meta names; returns the bytes read.
fn fill(remote: &dyn Remote, entry: &Entry, meta: &Meta, dir: &Path) -> Result<u64, Fill> {
    let mut bytes = 0;
    for (name, want) in &meta.files {
        if name.contains('/') || name.starts_with('.') {
            return Err(Fill::Bad(format!("it names an output `{name}`")));
        }
        let r = retry(|| remote.get(&cache::blob_path(&want.sha256)))
            .map_err(|e| Fill::Remote(e.to_string()))?
            .ok_or_else(|| Fill::Bad(format!("its output {name} is missing")))?;
        copy_checked(r, &dir.join(name), &want.sha256, Some(name))?;
        bytes += want.size;
    }
    for (name, listing) in &meta.trees {
        if name.contains('/') || name.starts_with('.') {
            return Err(Fill::Bad(format!("it names a tree `{name}`")));
        }
        let tar = &entry.trees[name];
        let r = retry(|| remote.get(&cache::blob_path(&tar.sha256)))
            .map_err(|e| Fill::Remote(e.to_string()))?
            .ok_or_else(|| Fill::Bad(format!("the tar of its tree {name}/ is missing")))?;
        let mut h = Hashing::new(r);
        let dest = dir.join(name);
        let unpacked = tree::unpack(&mut h, &dest);
        // What is left of the stream counts too (tar stops at its end marker).
        let drained = io::copy(&mut h, &mut io::sink());
        let sum = h.sum();
        if sum.sha256 != tar.sha256 {
            return Err(match (unpacked, drained) {
                (Err(e), _) | (_, Err(e)) if sum.size < tar.size => Fill::Remote(e.to_string()),
                _ => Fill::Bad(format!(
                    "the tar of {name}/ has sha256 {}, the signed entry names {}",
                    sum.sha256, tar.sha256
                )),
            });
        }
        unpacked.map_err(|e| Fill::Bad(format!("its tree {name}/ does not unpack: {e}")))?;
        let recorded = std::fs::read_to_string(dir.join(format!("{name}.tree")))
            .map_err(|e| Fill::Bad(format!("{name}.tree: {e}")))?;
        if hex::encode(Sha256::digest(recorded.as_bytes())) != *listing {
            return Err(Fill::Bad(format!(
                "{name}.tree is not the listing its meta names"
            )));
        }
        let now = crate::store::tree_listing(&dest).map_err(|e| Fill::Bad(e.to_string()))?;
        if !tree::same_but_owners(&recorded, &now) {
            return Err(Fill::Bad(format!(
                "its tree {name}/ is not the one {name}.tree lists"
            )));
        }
        bytes += tar.size;
    }
    Ok(bytes)
}

/// The meta of a substituted step as this store holds it: where a
/// rootless unpack changed the owners of a tree, its listing is this
/// store's (the files, modes and links are the signed ones: checked).
fn local_meta(mut meta: Meta, dir: &Path) -> Option<Meta> {
    for (name, listing) in meta.trees.iter_mut() {
        let now = crate::store::tree_listing(&dir.join(name)).ok()?;
        let sha = hex::encode(Sha256::digest(now.as_bytes()));
        if &sha != listing {
            let file = format!("{name}.tree");
            crate::paths::write(dir.join(&file), &now).ok()?;
            meta.files.insert(
                file,
                FileSum {
                    sha256: sha.clone(),
                    size: now.len() as u64,
                },
            );
            *listing = sha;
        }
    }
    Some(meta)
}

/// Stream `r` into `dest`, hashing; an error unless it has `sha256`.
fn copy_checked(
    r: Box<dyn Read + Send>,
    dest: &Path,
    sha256: &str,
    name: Option<&str>,
) -> Result<u64, Fill> {
    let mut h = Hashing::new(r);
    let mut f = std::fs::File::create(dest).map_err(|e| Fill::Remote(e.to_string()))?;
    io::copy(&mut h, &mut f).map_err(|e| Fill::Remote(e.to_string()))?;
    let sum = h.sum();
    if sum.sha256 != sha256 {
        let _ = std::fs::remove_file(dest);
        return Err(Fill::Bad(format!(
            "{} has sha256 {}, the signed entry names {sha256}",
            name.unwrap_or("it"),
            sum.sha256
        )));
    }
    Ok(sum.size)
}

// ---------------------------------------------------------------- keygen

/// Make a cache signing key named `name`: `out` (the secret key, mode
/// 0600, never replacing a file) and `out.pub` (the public key line).
/// Returns the public file and its line.
pub fn keygen(name: &str, out: &Path) -> Result<(PathBuf, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate(name)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (a key that exists is never replaced)",
                out.display()
            )
        })?;
    f.write_all(format!("{}\n", key.line()).as_bytes())?;
    f.sync_all()?;
    let line = key.public().line();
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    crate::paths::atomic_write(&pub_path, format!("{line}\n").as_bytes())?;
    Ok((pub_path, line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{StepKey, StepKind};

    fn step() -> Step {
        let mut inputs = BTreeMap::new();
        inputs.insert("n".into(), serde_json::json!(1));
        Step {
            kind: StepKind::Layer,
            label: "layer:x".into(),
            key: StepKey::compute("layer", &inputs),
            inputs,
            layers: vec![],
            detail: BTreeMap::new(),
        }
    }

    fn substituter(dir: &Path, key: &SecretKey) -> Substituter {
        Substituter {
            sources: vec![Source {
                remote: remote::open(&format!("file://{}", dir.display())).unwrap(),
                down: AtomicBool::new(false),
            }],
            trusted: vec![key.public()],
        }
    }

    #[test]
    fn a_step_round_trips_through_a_directory_cache_and_a_wrong_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::open(&d.path().join("a")).unwrap();
        let st = step();
        {
            let _l = a.lock(&st.key).unwrap();
            let p = a.begin(&st.key).unwrap();
            std::fs::write(p.dir().join("layer.tar"), b"layer bytes").unwrap();
            a.commit(p, &st, 0.1, serde_json::Value::Null).unwrap();
        }
        let key = SecretKey::generate("t-1").unwrap();
        let cache = d.path().join("cache");
        // Push by hand what `push` does for one step: blobs, then the entry.
        let r = remote::open(&format!("file://{}", cache.display())).unwrap();
        let meta = a.meta(&st.key).unwrap();
        for (name, sum) in &meta.files {
            r.put_file(&cache::blob_path(&sum.sha256), &a.path(&st.key).join(name))
                .unwrap();
        }
        let text = std::fs::read_to_string(a.path(&st.key).join("meta.json")).unwrap();
        let mut e = Entry::new(text, BTreeMap::new()).unwrap();
        e.sign(&key).unwrap();
        let entry_path = cache.join(cache::entry_path(st.key.as_str()));
        r.put_bytes(
            &cache::entry_path(st.key.as_str()),
            &serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();

        let b = Store::open(&d.path().join("b")).unwrap();
        let sub = substituter(&cache, &key);
        let (pending, got) = sub.step(&b, &st).expect("substituted");
        b.commit_checked(pending, got.meta).unwrap();
        assert_eq!(
            std::fs::read(b.path(&st.key).join("layer.tar")).unwrap(),
            b"layer bytes"
        );
        assert!(b.verify().unwrap().is_empty());

        // A malformed entry is refused, and the cache stays in use: it is
        // not down, and a blob still comes from it.
        std::fs::write(&entry_path, b"{ not json").unwrap();
        let c = Store::open(&d.path().join("c")).unwrap();
        assert!(sub.step(&c, &st).is_none());
        assert!(!sub.sources[0].down.load(Ordering::Relaxed));
        let sha = &meta.files["layer.tar"].sha256;
        assert!(sub.blob(&c, sha));
        assert_eq!(std::fs::read(c.blob(sha)).unwrap(), b"layer bytes");
        // A blob whose bytes are not its name is refused.
        std::fs::write(cache.join(cache::blob_path(sha)), b"other bytes").unwrap();
        let e2 = Store::open(&d.path().join("e")).unwrap();
        assert!(!sub.blob(&e2, sha));
        assert!(!e2.blob(sha).exists());
    }
}
