//! The build: gather facts, plan, then run every step the store lacks, in
//! order, each under its key's lock, and publish the image and manifest.
//!
//! The operations layer between the CLI and the stages: it owns the order
//! of effects, not how any one of them is done.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::debs::{self, AptSource};
use crate::fetch;
use crate::lock;
use crate::plan::{self, Facts, Plan, Step, StepKind, TOOLS_SUITE};
use crate::recipe::{BootMode, LayerKind, Recipe};
use crate::stages::scratch::Scratch;
use crate::stages::wheels::{self, Wheel};
use crate::stages::{boot, disk, filesystem, layer, qcow2, rootfs, tarball::Tree, tools_env};
use crate::store::{self, Store};
use crate::tools::ToolsEnv;

/// Progress of a build, for people; the CLI decides how to show it.
pub trait Reporter {
    fn step_started(&self, step: &Step);
    fn step_done(&self, step: &Step, cached: bool, seconds: f64);
}

/// How a build may reach the network.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Never touch the network; fail naming the first thing missing.
    pub offline: bool,
    /// Fail when the recipe changed since its lock (or has none).
    pub locked: bool,
}

/// Content hashes of the recipe's local inputs (`files` layers).
pub fn contents(recipe: &Recipe) -> Result<BTreeMap<String, String>> {
    let mut c = BTreeMap::new();
    for l in &recipe.layers {
        if let Some(h) = layer::content_hash(l)? {
            c.insert(l.name.to_string(), h);
        }
    }
    Ok(c)
}

/// The apt sources of a recipe's rootfs: the base suite from the Debian
/// mirror, then each extra source (its own URL and keyring, if named).
pub fn apt_sources(recipe: &Recipe, mirror: &str) -> Vec<AptSource> {
    let comps = |c: &[crate::recipe::Component]| c.iter().map(|c| c.to_string()).collect();
    let mut v = vec![AptSource {
        suite: recipe.base.suite.to_string(),
        components: comps(&recipe.base.components),
        url: mirror.to_string(),
        keyring: debs::debian_keyring(),
    }];
    for s in recipe.sources.values() {
        if v.iter().any(|x| x.suite == s.suite.as_str()) {
            continue;
        }
        v.push(AptSource {
            suite: s.suite.to_string(),
            components: comps(&s.components),
            url: s.url.clone().unwrap_or_else(|| mirror.to_string()),
            keyring: s.keyring.clone().unwrap_or_else(debs::debian_keyring),
        });
    }
    v
}

fn tools_sources(mirror: &str) -> Vec<AptSource> {
    vec![AptSource {
        suite: TOOLS_SUITE.to_string(),
        components: vec!["main".into()],
        url: mirror.to_string(),
        keyring: debs::debian_keyring(),
    }]
}

/// Which URL each suite's pinned .debs are downloaded from.
fn suite_urls(recipe: &Recipe) -> Result<BTreeMap<String, String>> {
    let mirror = fetch::debian_mirror()?;
    Ok(apt_sources(recipe, &mirror)
        .into_iter()
        .chain(tools_sources(&mirror))
        .map(|s| (s.suite, s.url))
        .collect())
}

/// Versions to keep while resolving (`mimg lock --update PKG...`).
#[derive(Debug, Default)]
pub struct Holds {
    pub rootfs: BTreeMap<String, String>,
    pub tools: BTreeMap<String, String>,
}

/// Live facts: every suite's InRelease (signature checked), and the .debs
/// of the rootfs and of the tools environment resolved against them.
/// Returns the held versions that could not be kept.
pub fn live_facts(recipe: &Recipe, holds: &Holds) -> Result<(Facts, Vec<String>)> {
    let mirror = fetch::debian_mirror()?;
    let sources = apt_sources(recipe, &mirror);
    let tsources = tools_sources(&mirror);
    let includes = rootfs::includes(recipe);
    let tools_includes: Vec<String> = plan::TOOLS_PACKAGES.iter().map(|s| s.to_string()).collect();
    let (root, tools) = std::thread::scope(|sc| {
        let t = sc.spawn(|| debs::resolve(&tsources, &tools_includes, false, &holds.tools));
        let r = debs::resolve(&sources, &includes, true, &holds.rootfs);
        (r, t.join().expect("tools resolution does not panic"))
    });
    let root = root.context("resolving the rootfs packages")?;
    let tools = tools.context("resolving the tools environment's packages")?;
    let mut f = Facts {
        contents: contents(recipe)?,
        epoch: root.releases[recipe.base.suite.as_str()].epoch,
        tools_epoch: tools.releases[TOOLS_SUITE].epoch,
        rootfs_debs: root.debs,
        tools_debs: tools.debs,
        ..Facts::default()
    };
    for (s, r) in root.releases.iter().chain(tools.releases.iter()) {
        f.releases.insert(s.clone(), r.sha256.clone());
    }
    let mut unheld = root.unheld;
    unheld.extend(tools.unheld);
    Ok((f, unheld))
}

/// The Python version of a pip layer.
pub fn python_of(recipe: &Recipe, python: &str) -> Result<String> {
    if !python.is_empty() {
        return Ok(python.to_string());
    }
    wheels::suite_python(recipe.base.suite.as_str())
        .map(str::to_string)
        .with_context(|| format!("cannot tell the Python version of suite `{}`; set `python = \"3.X\"` in the pip layer", recipe.base.suite))
}

/// Resolve every pip layer's requirements to wheels with the host's pip,
/// putting each wheel in the store when one is given (`mimg plan` gives
/// none: it writes nothing). `hold` keeps name -> version (as pip
/// constraints; `mimg lock --update PKG`).
pub fn resolve_pip(
    recipe: &Recipe,
    store: Option<&Store>,
    hold: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<Wheel>>> {
    let mut out = BTreeMap::new();
    for l in &recipe.layers {
        if let LayerKind::Pip {
            requirements,
            python,
            ..
        } = &l.kind
        {
            let py = python_of(recipe, python)?;
            let dir = tempfile::tempdir()?;
            let cons = tempfile::NamedTempFile::new()?;
            let text: String = hold.iter().map(|(n, v)| format!("{n}=={v}\n")).collect();
            fs::write(cons.path(), text)?;
            crate::tools::pip_download(requirements, &py, false, Some(cons.path()), dir.path())
                .with_context(|| format!("resolving pip layer `{}`", l.name))?;
            let mut wheels = Vec::new();
            for e in fs::read_dir(dir.path())?.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let sum = match store {
                    Some(store) => store.add_file(&e.path())?,
                    None => store::hash_file(&e.path())
                        .with_context(|| format!("cannot read {}", e.path().display()))?,
                };
                wheels.push(Wheel::from_file(&file, &sum.sha256)?);
            }
            wheels.sort_by(|a, b| a.file.cmp(&b.file));
            out.insert(l.name.to_string(), wheels);
        }
    }
    Ok(out)
}

/// Download every locked wheel the store lacks with one pip call (pip
/// resolves nothing: `--no-deps`, exact versions); each is checked by
/// [`wheel_blob`] as it is used.
fn prefetch_wheels(store: &Store, wheels: &[Wheel], python: &str, opts: Options) -> Result<()> {
    let missing: Vec<&Wheel> = wheels
        .iter()
        .filter(|w| !store.blob(&w.sha256).exists())
        .collect();
    if missing.is_empty() || opts.offline {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let reqs: Vec<String> = missing
        .iter()
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect();
    crate::tools::pip_download(&reqs, python, true, None, dir.path())
        .context("downloading locked wheels")?;
    for w in missing {
        let p = dir.path().join(&w.file);
        if p.exists() {
            let sum = store.add_file(&p)?;
            if sum.sha256 != w.sha256 {
                store.remove_blob(&sum.sha256);
                bail!(
                    "the sha256 of {} did not match: expected {}, got {}\nhint: the index serves another file under that name; check the lock",
                    w.file,
                    w.sha256,
                    sum.sha256
                );
            }
        }
    }
    Ok(())
}

/// A locked wheel's bytes: from the store, else downloaded again and checked.
fn wheel_blob(store: &Store, w: &Wheel, python: &str, opts: Options) -> Result<Vec<u8>> {
    let path = store.blob(&w.sha256);
    if !path.exists() {
        if opts.offline {
            bail!(
                "--offline: wheel {} (sha256 {}) is not in the store\nhint: `mimg store add {}` with a copy of it",
                w.file,
                w.sha256,
                w.file
            );
        }
        let dir = tempfile::tempdir()?;
        crate::tools::pip_download(
            &[format!("{}=={}", w.name, w.version)],
            python,
            true,
            None,
            dir.path(),
        )?;
        let got = dir.path().join(&w.file);
        if !got.exists() {
            bail!(
                "pip did not download {} again\nhint: `mimg store add {}` with a copy of it",
                w.file,
                w.file
            );
        }
        let sum = store.add_file(&got)?;
        if sum.sha256 != w.sha256 {
            store.remove_blob(&sum.sha256);
            bail!(
                "the sha256 of {} did not match: expected {}, got {}",
                w.file,
                w.sha256,
                sum.sha256
            );
        }
    }
    store
        .read_blob(&w.sha256, &w.file)?
        .with_context(|| format!("wheel {} left the store while building", w.file))
}

/// What a build pins: plan facts (with every .deb) and the wheels of pip layers.
pub struct Resolved {
    pub facts: Facts,
    pub wheels: BTreeMap<String, Vec<Wheel>>,
}

fn pip_requirements(recipe: &Recipe) -> BTreeMap<String, Vec<String>> {
    recipe
        .layers
        .iter()
        .filter_map(|l| match &l.kind {
            LayerKind::Pip { requirements, .. } => Some((l.name.to_string(), requirements.clone())),
            _ => None,
        })
        .collect()
}

/// The facts a plan needs: from the recipe's lock; else from the lock of
/// a recipe it extends (when that pins every suite it uses); else live.
/// Pip layers no lock covers are resolved live with pip (online only),
/// their wheels put in `store` when one is given. With a lock that covers
/// the recipe this reads local files only: no network, no store.
pub fn facts(recipe: &Recipe, opts: Options, store: Option<&Store>) -> Result<Resolved> {
    let mut r = facts_of_inputs(recipe, opts, store)?;
    r.facts.host_tools = crate::tools::host_versions(&host_tool_names());
    Ok(r)
}

/// Every host program whose version enters a key.
fn host_tool_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = plan::HOST_TOOLS_FOR_TOOLS
        .iter()
        .chain(plan::HOST_TOOLS_FOR_ROOTFS)
        .copied()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Says (on stderr) that the facts are being resolved over the network.
fn say_resolving(recipe: &Recipe, what: &str) {
    eprintln!("resolving {} live ({what})", recipe.name);
}

fn facts_of_inputs(recipe: &Recipe, opts: Options, store: Option<&Store>) -> Result<Resolved> {
    let own = lock::read(recipe)?;
    if let Some(l) = &own
        && !l.pins_debs_of(recipe)
        && (opts.locked || opts.offline)
    {
        bail!(
            "{} does not pin the .debs of the recipe as it is now (its apt layers or sources changed, or the lock predates .deb pinning)\nhint: run `mimg lock {}` while online",
            recipe.lock_path().display(),
            recipe.name
        );
    }
    if own.is_none() && opts.locked {
        bail!(
            "{} has no lock ({} missing); --locked needs one\nhint: run `mimg lock {}` while online",
            recipe.name,
            recipe.lock_path().display(),
            recipe.name
        );
    }
    let chosen = match own {
        Some(l) => Some(l),
        None => lock::read_inherited(recipe)?.filter(|l| l.pins_debs_of(recipe)),
    };
    let reqs = pip_requirements(recipe);
    let mut wheels = BTreeMap::new();
    let mut unresolved = Vec::new();
    for (name, r) in &reqs {
        match &chosen {
            Some(l) if l.pip_requirements.get(name) == Some(r) && l.pip.contains_key(name) => {
                wheels.insert(name.clone(), l.pip[name].clone());
            }
            _ => unresolved.push(name.clone()),
        }
    }
    if !unresolved.is_empty() {
        if opts.offline || opts.locked {
            bail!(
                "pip layer `{}` has no locked wheels for its requirements\nhint: run `mimg lock {}` while online",
                unresolved[0],
                recipe.name
            );
        }
        say_resolving(
            recipe,
            &format!("pip layer `{}` has no locked wheels", unresolved[0]),
        );
        let live = resolve_pip(recipe, store, &BTreeMap::new())?;
        for n in unresolved {
            wheels.insert(n.clone(), live[&n].clone());
        }
    }
    let mut c = contents(recipe)?;
    for (name, w) in &wheels {
        c.insert(name.clone(), lock::wheels_hash(w));
    }
    match chosen {
        Some(l) if l.pins_debs_of(recipe) => {
            let f = lock::facts(&l, c);
            if opts.locked {
                let changes = lock::changes(&l, recipe, &f);
                if !changes.is_empty() {
                    bail!(
                        "{} is out of date (--locked): {}\nhint: run `mimg lock {}` and commit the lock",
                        recipe.lock_path().display(),
                        changes.join("; "),
                        recipe.name
                    );
                }
            }
            Ok(Resolved { facts: f, wheels })
        }
        None if opts.offline => bail!(
            "{} has no lock ({} missing); --offline needs one\nhint: run `mimg lock {}` while online",
            recipe.name,
            recipe.lock_path().display(),
            recipe.name
        ),
        // No lock, or one whose .debs the recipe has outgrown: resolve now.
        _ => {
            say_resolving(recipe, "no lock pins its .debs as the recipe is now");
            let (mut f, _) = live_facts(recipe, &Holds::default())?;
            f.contents = c;
            Ok(Resolved { facts: f, wheels })
        }
    }
}

/// Put the pinned .debs in the store (unless there) and make a local
/// repository of them under the store's tmp/; returns it and its source line.
fn pinned_repo(
    recipe: &Recipe,
    pins: &[debs::Deb],
    suite: &str,
    store: &Store,
    opts: Options,
) -> Result<(tempfile::TempDir, String)> {
    let urls = || suite_urls(recipe);
    let got = debs::fetch_all(store, pins, &urls, fetch_jobs(), opts.offline)?;
    if got.files > 0 {
        tracing::info!(
            "fetched {} .debs ({} bytes) in {:.1}s",
            got.files,
            got.bytes,
            got.seconds
        );
    }
    // Rootless, apt reads the repository as a subordinate uid: where the
    // store lies under a private directory, the repository goes to the
    // system's temporary directory instead (hard links where it can).
    let base = if crate::tools::is_root() || crate::tools::reachable_by_others(&store.tmp_dir()) {
        store.tmp_dir()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("mimg-repo-{}-", std::process::id()))
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a directory in {}", base.display()))?;
    let line = debs::local_repo(store, pins, dir.path(), suite)?;
    Ok((dir, line))
}

/// Download everything `recipe` pins into the store: .debs (`jobs` at
/// once), wheels, fetch layers. For `mimg store fetch`.
pub fn prefetch(recipe: &Recipe, store: &Store, jobs: usize) -> Result<debs::Fetched> {
    let t0 = Instant::now();
    let opts = Options::default();
    let r = facts(recipe, opts, Some(store))?;
    let all: Vec<debs::Deb> = r
        .facts
        .rootfs_debs
        .iter()
        .chain(&r.facts.tools_debs)
        .cloned()
        .collect();
    let mut got = debs::fetch_all(store, &all, &|| suite_urls(recipe), jobs, false)?;
    for l in &recipe.layers {
        match &l.kind {
            LayerKind::Pip { python, .. } => {
                let py = python_of(recipe, python)?;
                let wheels = &r.wheels[l.name.as_str()];
                let n = wheels
                    .iter()
                    .filter(|w| !store.blob(&w.sha256).exists())
                    .count();
                prefetch_wheels(store, wheels, &py, opts)?;
                got.files += n;
            }
            LayerKind::Fetch { url, sha256, .. } if !store.blob(sha256.as_str()).exists() => {
                got.bytes += blob(store, url, sha256, opts)?.len() as u64;
                got.files += 1;
            }
            _ => {}
        }
    }
    got.seconds = t0.elapsed().as_secs_f64();
    Ok(got)
}

/// How many downloads run at once: `MIMG_FETCH_JOBS`, else 8.
pub fn fetch_jobs() -> usize {
    std::env::var("MIMG_FETCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(8)
}

/// The bytes of a pinned file: from the store (re-hashed), or downloaded into it.
pub fn blob(
    store: &Store,
    url: &str,
    sha: &crate::recipe::Sha256Hex,
    opts: Options,
) -> Result<Vec<u8>> {
    let name = url.rsplit('/').next().unwrap_or(url);
    let path = store.blob(sha.as_str());
    if let Some(data) = store.read_blob(sha.as_str(), name)? {
        return Ok(data);
    }
    if opts.offline {
        bail!(
            "--offline: {name} (sha256 {sha}) is not in the store\nhint: `mimg store add FILE` with a copy of it"
        );
    }
    let tmp = store.blob_tmp(sha.as_str());
    let shown = std::cell::Cell::new(0u64);
    let progress = |got: u64, total: Option<u64>| {
        if got - shown.get() >= 8 << 20 {
            shown.set(got);
            tracing::info!("{name}: {} of {:?} bytes", got, total);
        }
    };
    if let Err(e) = fetch::download(url, sha.as_str(), &tmp, &progress) {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    store.put_blob(&tmp, sha.as_str())?;
    Ok(fs::read(&path)?)
}

/// The manifest written beside an image (format version 1).
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub recipe: String,
    /// The image step's key: a pure function of every input.
    pub recipe_key: String,
    pub epoch: u64,
    pub image: store::FileSum,
    pub steps: Vec<ManifestStep>,
    pub packages: Vec<rootfs::Package>,
    pub sizes: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestStep {
    pub label: String,
    pub key: String,
}

/// What a build did.
pub struct Outcome {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub built: usize,
    pub reused: usize,
    pub sha256: String,
}

/// Build `recipe` into `out_dir`.
pub fn build(
    recipe: &Recipe,
    store: &Store,
    out_dir: &Path,
    rep: &dyn Reporter,
    opts: Options,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let resolved = facts(recipe, opts, Some(store))?;
    let facts = &resolved.facts;
    let plan = plan::plan(recipe, facts);
    tracing::debug!("build: planned at {:.2}s", t0.elapsed().as_secs_f64());
    // Whether each step was built (true) or reused, by key: a step made
    // again after it was found damaged counts once, as built.
    let mut ran: BTreeMap<String, bool> = BTreeMap::new();
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Where a freshly made image is copied while the store commits it.
    let copied = tmp_beside(&out_dir.join(format!("{}.qcow2", recipe.name.as_str())));
    let mut fresh_copy = false;
    let mut tally = |step: &Step, r: Option<f64>| {
        ran.insert(step.key.to_string(), r.is_some());
        rep.step_done(step, r.is_none(), r.unwrap_or(0.0));
    };
    let tools_step = &plan.steps[0];
    if store.has(&plan.image().key) && store.has(&tools_step.key) {
        // Nothing will use the tools environment (the image is there): it
        // is checked all the same, so a damaged one is made again now,
        // not found out by a later build.
        if let Err(e) = store.check_tree(&tools_step.key, "root").wait() {
            warn_damaged(&e);
            store.remove_damaged(&tools_step.key)?;
        }
    }
    std::thread::scope(|sc| -> Result<()> {
        // The tools environment does not depend on the rootfs: when both
        // are missing, make them at once (two mmdebstrap runs).
        let mut early = None;
        if tools_step.kind == StepKind::Tools
            && !store.has(&tools_step.key)
            && plan.steps.get(1).is_some_and(|s| !store.has(&s.key))
        {
            rep.step_started(tools_step);
            early =
                Some(sc.spawn(|| ensure(tools_step, recipe, &plan, &resolved, opts, store, None)));
        }
        for step in &plan.steps {
            if step.kind == StepKind::Tools && early.is_some() {
                continue;
            }
            if step.kind == StepKind::Image
                && let Some(h) = early.take()
            {
                let r = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("the tools step panicked"))??;
                tally(tools_step, r);
            }
            rep.step_started(step);
            let copy_out = (step.kind == StepKind::Image).then_some(("disk.qcow2", &*copied));
            let r = match ensure(step, recipe, &plan, &resolved, opts, store, copy_out) {
                Err(e) if step.kind == StepKind::Image && damaged(&e, &tools_step.key) => {
                    // A damaged tools environment is never used: made again,
                    // then the image with it.
                    warn_damaged(e.root_cause());
                    store.remove_damaged(&tools_step.key)?;
                    rep.step_started(tools_step);
                    let t = ensure(tools_step, recipe, &plan, &resolved, opts, store, None)?;
                    tally(tools_step, t);
                    rep.step_started(step);
                    ensure(step, recipe, &plan, &resolved, opts, store, copy_out)?
                }
                r => r?,
            };
            if r.is_some() && copy_out.is_some() {
                fresh_copy = true;
            }
            tally(step, r);
        }
        Ok(())
    })?;
    tracing::debug!("build: steps done at {:.2}s", t0.elapsed().as_secs_f64());
    let fresh = fresh_copy.then_some(copied.as_path());
    let built = ran.values().filter(|b| **b).count();
    let reused = ran.len() - built;
    let published = publish(recipe, &plan, store, out_dir, fresh);
    if let Some(tmp) = fresh {
        // Gone when publish renamed it into place; else a leftover.
        let _ = fs::remove_file(tmp);
    }
    let (image, manifest, sha256) = published?;
    tracing::debug!("build: published at {:.2}s", t0.elapsed().as_secs_f64());
    Ok(Outcome {
        image,
        manifest,
        built,
        reused,
        sha256,
    })
}

/// Say that a store entry is damaged and is made again.
fn warn_damaged(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    eprintln!(
        "warning: {}; making it again",
        text.lines().next().unwrap_or_default()
    );
}

/// Whether `e` says that the store entry `key` is damaged.
fn damaged(e: &anyhow::Error, key: &plan::StepKey) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<store::StoreError>(),
            Some(store::StoreError::Damaged { key: k, .. }) if k == key.as_str())
    })
}

/// Make `step` unless the store has it: `None` when reused, else the seconds it took.
/// With `copy_out` (an output's name, a destination), that output is also
/// copied to the destination while the store hashes and syncs the step: the
/// image is published without a second pass over it after the commit.
fn ensure(
    step: &Step,
    recipe: &Recipe,
    plan: &Plan,
    resolved: &Resolved,
    opts: Options,
    store: &Store,
    copy_out: Option<(&str, &Path)>,
) -> Result<Option<f64>> {
    let t0 = Instant::now();
    if store.has(&step.key) {
        return Ok(None);
    }
    let _lock = store.lock(&step.key)?;
    if store.has(&step.key) {
        // Another build made it while we waited.
        return Ok(None);
    }
    let pending = store.begin(&step.key)?;
    let extra = run_step(step, recipe, plan, resolved, opts, store, pending.dir())
        .with_context(|| format!("step {} ({})", step.label, step.key.short()))?;
    let secs = t0.elapsed().as_secs_f64();
    let Some((name, dest)) = copy_out else {
        store.commit(pending, step, secs, extra)?;
        return Ok(Some(secs));
    };
    // Opened before the commit renames the directory it is in.
    let from = pending.dir().join(name);
    let mut src =
        fs::File::open(&from).with_context(|| format!("cannot read {}", from.display()))?;
    std::thread::scope(|s| -> Result<()> {
        let copy = s.spawn(move || synced_copy(&mut src, &from, dest));
        let committed = store.commit(pending, step, secs, extra);
        let copied = copy
            .join()
            .map_err(|_| anyhow::anyhow!("the copy of {name} panicked"))?;
        committed?;
        copied
    })
    .inspect_err(|_| {
        let _ = fs::remove_file(dest);
    })?;
    Ok(Some(secs))
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    step: &Step,
    recipe: &Recipe,
    plan: &Plan,
    resolved: &Resolved,
    opts: Options,
    store: &Store,
    dir: &Path,
) -> Result<serde_json::Value> {
    let epoch = plan.epoch;
    let facts = &resolved.facts;
    match step.kind {
        StepKind::Tools => {
            let (_repo, line) = pinned_repo(recipe, &facts.tools_debs, TOOLS_SUITE, store, opts)?;
            tools_env::build(&line, facts.tools_epoch, dir)?;
            Ok(json!(null))
        }
        StepKind::Rootfs => {
            let head = plan::head_len(recipe);
            let suite = recipe.base.suite.as_str();
            let (_repo, line) = pinned_repo(recipe, &facts.rootfs_debs, suite, store, opts)?;
            let blobs = |url: &str, sha: &crate::recipe::Sha256Hex| blob(store, url, sha, opts);
            let pkgs = rootfs::build(recipe, &recipe.layers[..head], &line, epoch, dir, &blobs)?;
            debs::check_installed(&facts.rootfs_debs, &pkgs)?;
            Ok(json!({ "packages": pkgs }))
        }
        StepKind::Layer => {
            let name = &step.layers[0];
            let l = recipe
                .layers
                .iter()
                .find(|l| l.name.as_str() == name)
                .expect("planned from the recipe");
            let tree = if let LayerKind::Pip { venv, python, .. } = &l.kind {
                let py = python_of(recipe, python)?;
                let wheels = resolved
                    .wheels
                    .get(name)
                    .context("pip layer without resolved wheels")?;
                prefetch_wheels(store, wheels, &py, opts)?;
                let mut files = Vec::new();
                for w in wheels {
                    files.push((w.file.clone(), wheel_blob(store, w, &py, opts)?));
                }
                wheels::venv_tree(venv.as_str(), &py, &files, epoch)
                    .with_context(|| format!("layer `{name}`"))?
            } else {
                let blobs = |url: &str, sha: &crate::recipe::Sha256Hex| blob(store, url, sha, opts);
                layer::layer_tree(l, epoch, &blobs)?
            };
            tree.write(fs::File::create(dir.join("layer.tar"))?)?;
            Ok(json!(null))
        }
        StepKind::Image => {
            let tools_key = &plan.steps[0].key;
            let tools = ToolsEnv::new(store.path(tools_key).join("root"));
            // The tools write the image's bytes: their tree is checked against
            // its listing while they run, and waited for before the image is kept.
            let tools_check = store.check_tree(tools_key, "root");
            image(recipe, plan, step, store, &tools, tools_check, dir)?;
            Ok(json!(null))
        }
    }
}

fn image(
    recipe: &Recipe,
    plan: &Plan,
    step: &Step,
    store: &Store,
    tools: &ToolsEnv,
    tools_check: store::Check,
    dir: &Path,
) -> Result<()> {
    let epoch = plan.epoch;
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!("image: {what} at {:.2}s", t0.elapsed().as_secs_f64());
    // The stored tars, rootfs first; their sha256s are checked on other
    // threads while the image is made, and waited for before it is kept.
    let rootfs_key = &plan.step(StepKind::Rootfs).expect("planned").key;
    let mut tars = vec![store.read_output(rootfs_key, "rootfs.tar")?];
    for s in plan.steps.iter().filter(|s| s.kind == StepKind::Layer) {
        tars.push(store.read_output(&s.key, "layer.tar")?);
    }
    phase("stored tars read");
    let root_uuid = step.key.derive_uuid("root filesystem");
    let bytes = tars.iter().map(|(t, _)| t.len() as u64).sum();
    let scratch = Scratch::new(bytes, dir)?;
    let raw_path = scratch.path().join("disk.raw");
    // The GPT, the EFI system partition and GRUB do not depend on the tree:
    // written while it is merged.
    let (tree, parts) = std::thread::scope(|s| {
        let parts = s.spawn(|| disk_parts(recipe, step, tools, dir, &raw_path, &root_uuid, epoch));
        let tree = merged_tree(&tars, &root_uuid, epoch);
        phase("tree merged");
        let parts = parts
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the disk's partitions panicked")));
        (tree, parts)
    });
    // From here the tars' bytes live only as long as the tree does.
    let mut checks: Vec<store::Check> = vec![tools_check];
    checks.extend(tars.into_iter().map(|(_, c)| c));
    let tree = match tree {
        Ok(t) => t,
        Err(e) => {
            // A tar that does not parse may be damaged in the store: say so.
            for check in checks {
                check.wait()?;
            }
            return Err(e);
        }
    };
    parts?;
    phase("gpt, esp and grub written");
    let layout = disk::Layout::new(recipe.disk.size);
    filesystem::mkfs(
        tools,
        scratch.path(),
        &tree,
        layout.root.0,
        layout.root.1 - layout.root.0,
        &root_uuid,
        epoch,
    )?;
    phase("mkfs.ext4 done");
    drop(tree);
    qcow2::convert(tools, scratch.path(), dir, epoch)?;
    phase("qcow2 written");
    drop(scratch);
    for check in checks {
        check.wait()?;
    }
    Ok(())
}

/// The image's tree: the rootfs, the layers in order, then the boot files.
fn merged_tree(tars: &[(bytes::Bytes, store::Check)], root_uuid: &str, epoch: u64) -> Result<Tree> {
    let mut tree: Option<Tree> = None;
    for (data, _) in tars {
        let t = Tree::read_bytes(data)?;
        match &mut tree {
            None => tree = Some(t),
            Some(base) => filesystem::merge(base, t),
        }
    }
    let mut tree = tree.expect("the rootfs is always read");
    let (kernel, initrd) = boot::kernel(&tree)?;
    filesystem::merge(
        &mut tree,
        boot::boot_layer(root_uuid, &kernel, &initrd, epoch),
    );
    tree.fix_hardlinks();
    Ok(tree)
}

/// Write the raw disk's size, GPT, EFI system partition and (for BIOS)
/// GRUB's boot code into `raw_path`; the root partition is left for mkfs.
fn disk_parts(
    recipe: &Recipe,
    step: &Step,
    tools: &ToolsEnv,
    dir: &Path,
    raw_path: &Path,
    root_uuid: &str,
    epoch: u64,
) -> Result<()> {
    let layout = disk::Layout::new(recipe.disk.size);
    let mut raw = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(raw_path)?;
    raw.set_len(layout.size)?;
    let guids = disk::Guids {
        disk: step.key.derive("disk"),
        bios: step.key.derive("bios boot partition"),
        esp: step.key.derive("efi system partition"),
        root: step.key.derive("root partition"),
    };
    disk::write_gpt(&mut raw, &layout, &guids)?;

    let mut esp_files: Vec<(&str, Vec<u8>)> = Vec::new();
    if recipe.disk.boot.contains(&BootMode::Uefi) {
        esp_files.push((
            "EFI/BOOT/BOOTX64.EFI",
            boot::efi_img(tools, dir, root_uuid, epoch)?,
        ));
    }
    let vol = u32::from_le_bytes(
        step.key.derive("esp volume id")[..4]
            .try_into()
            .expect("4 bytes"),
    );
    let refs: Vec<(&str, &[u8])> = esp_files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let esp = disk::esp_image(layout.esp.1 - layout.esp.0, vol, &refs)?;
    raw.seek(SeekFrom::Start(layout.esp.0))?;
    raw.write_all(&esp)?;

    if recipe.disk.boot.contains(&BootMode::Bios) {
        let core_lba = layout.bios.0 / disk::SECTOR;
        let mut core = boot::core_img(tools, dir, root_uuid, epoch)?;
        boot::patch_core(&mut core, core_lba)?;
        raw.seek(SeekFrom::Start(layout.bios.0))?;
        raw.write_all(&core)?;
        let mut mbr = vec![0u8; 512];
        raw.seek(SeekFrom::Start(0))?;
        std::io::Read::read_exact(&mut raw, &mut mbr)?;
        boot::patch_mbr(&mut mbr, &boot::boot_img(tools)?, core_lba);
        raw.seek(SeekFrom::Start(0))?;
        raw.write_all(&mbr)?;
    }
    // The raw disk is scratch (converted, then removed): no fsync.
    Ok(())
}

/// Local record of what was last copied to the output directory, so a
/// no-op build does not copy the image again. Not part of any output.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Published {
    key: String,
    size: u64,
    mtime_ns: i128,
}

fn file_stamp(p: &Path) -> Option<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).ok()?;
    Some((
        m.len(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

/// Copy the image and write the manifest into `out_dir`, unless they are
/// already there. `fresh`: a synced copy of the image made beside it while
/// the store committed it (renamed into place instead of copying again).
fn publish(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    out_dir: &Path,
    fresh: Option<&Path>,
) -> Result<(PathBuf, PathBuf, String)> {
    let name = recipe.name.as_str();
    let img = out_dir.join(format!("{name}.qcow2"));
    let man = out_dir.join(format!("{name}.manifest.json"));
    let stamp = out_dir.join(format!(".{name}.published"));
    let key = &plan.image().key;
    let meta = store.meta(key)?;
    let sum = meta
        .files
        .get("disk.qcow2")
        .cloned()
        .context("the image step has no disk.qcow2")?;

    let up_to_date = fs::read(&stamp)
        .ok()
        .and_then(|b| serde_json::from_slice::<Published>(&b).ok())
        .zip(file_stamp(&img))
        .is_some_and(|(p, (size, mtime_ns))| {
            p == Published {
                key: key.to_string(),
                size,
                mtime_ns,
            }
        })
        && man.is_file();
    if up_to_date {
        return Ok((img, man, sum.sha256));
    }

    let rootfs_key = &plan.step(StepKind::Rootfs).expect("planned").key;
    let rmeta = store.meta(rootfs_key)?;
    let packages: Vec<rootfs::Package> =
        serde_json::from_value(rmeta.extra["packages"].clone()).unwrap_or_default();
    let mut sizes = BTreeMap::new();
    sizes.insert("disk".to_string(), recipe.disk.size);
    sizes.insert("qcow2".to_string(), sum.size);
    if let Some(r) = rmeta.files.get("rootfs.tar") {
        sizes.insert("rootfs_tar".to_string(), r.size);
    }
    let manifest = Manifest {
        version: 1,
        recipe: name.to_string(),
        recipe_key: key.to_string(),
        epoch: plan.epoch,
        image: sum.clone(),
        steps: plan
            .steps
            .iter()
            .map(|s| ManifestStep {
                label: s.label.clone(),
                key: s.key.to_string(),
            })
            .collect(),
        packages,
        sizes,
    };
    match fresh {
        Some(tmp) => fs::rename(tmp, &img)
            .with_context(|| format!("cannot rename into {}", img.display()))?,
        None => atomic_copy(&store.path(key).join("disk.qcow2"), &img)?,
    }
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    atomic_write(&man, &text)?;
    if let Some((size, mtime_ns)) = file_stamp(&img) {
        let p = Published {
            key: key.to_string(),
            size,
            mtime_ns,
        };
        atomic_write(&stamp, &serde_json::to_vec(&p)?)?;
    }
    Ok((img, man, sum.sha256))
}

fn tmp_beside(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Write `data` to `p` by temp file, fsync and rename.
pub fn atomic_write(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_beside(p);
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, p).with_context(|| format!("cannot rename into {}", p.display()))?;
    Ok(())
}

fn atomic_copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_beside(to);
    let mut src =
        fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    synced_copy(&mut src, from, &tmp)?;
    fs::rename(&tmp, to).with_context(|| format!("cannot rename into {}", to.display()))?;
    Ok(())
}

/// Copy the open file `src` (read from `from`) to a new file `dest` with
/// its permissions, and sync it.
fn synced_copy(src: &mut fs::File, from: &Path, dest: &Path) -> Result<()> {
    let fail = || format!("cannot copy {} to {}", from.display(), dest.display());
    let mut f = fs::File::create(dest).with_context(fail)?;
    std::io::copy(src, &mut f).with_context(fail)?;
    f.set_permissions(src.metadata()?.permissions())
        .with_context(fail)?;
    f.sync_all().with_context(fail)?;
    Ok(())
}

/// Which steps of a plan the store has.
pub fn cached(plan: &Plan, store: &Store) -> Vec<bool> {
    plan.steps.iter().map(|s| store.has(&s.key)).collect()
}
