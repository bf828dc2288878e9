//! The build: resolve, plan, then run every step the store lacks, in
//! order, each under its key's lock, and publish the image and manifest.
//! It owns the order of effects, not how any one of them is done (that is
//! the stages'), and never draws progress (it reports through
//! [`crate::report::Reporter`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

pub use super::Options;
use super::publish::publish;
use super::resolve::{Resolved, facts, python_of, suite_urls};
use crate::debs;
use crate::fetch;
use crate::lock::model::Wheel;
use crate::paths::{synced_copy, tmp_beside};
use crate::plan::{self, Plan, Step, StepKind};
use crate::recipe::{LayerKind, Recipe};
use crate::report::Reporter;
use crate::slots::Slots;
use crate::stages::{image, layer, rootfs, run, tools_env, wheels};
use crate::store::{self, Store};
use crate::tools::ToolsEnv;

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

/// Take what the store lacks of these pinned blobs from the substituters
/// (each checked by its sha256), before anything is downloaded.
fn from_caches<'s>(cx: &Ctx, shas: impl IntoIterator<Item = &'s str>) {
    let Some(sub) = cx.subst else {
        return;
    };
    let missing: BTreeSet<&str> = shas
        .into_iter()
        .filter(|sha| !cx.store.blob(sha).exists())
        .collect();
    let got = missing.iter().filter(|sha| sub.blob(cx.store, sha)).count();
    if got > 0 {
        tracing::info!("{got} pinned files substituted");
    }
}

/// Put the pinned .debs in the store, unless there.
fn fetch_pins(cx: &Ctx, pins: &[crate::lock::model::Deb]) -> Result<()> {
    from_caches(cx, pins.iter().map(|d| d.sha256.as_str()));
    let urls = || suite_urls(cx.recipe);
    let got = debs::fetch_all(cx.store, pins, &urls, fetch_jobs(), cx.opts.offline, cx.rep)?;
    if got.files > 0 {
        tracing::info!(
            "fetched {} .debs ({} bytes) in {:.1}s",
            got.files,
            got.bytes,
            got.seconds
        );
    }
    Ok(())
}

/// What every step of one build needs.
struct Ctx<'a> {
    recipe: &'a Recipe,
    plan: &'a Plan,
    resolved: &'a Resolved,
    opts: Options,
    store: &'a Store,
    rep: &'a dyn Reporter,
    subst: Option<&'a super::cache::Substituter>,
    /// The rootfs's local repository, when it was made ahead (while the
    /// tools were unpacked); the rootfs step makes it otherwise.
    repo: std::sync::Mutex<Option<tempfile::TempDir>>,
}

/// Put the pinned .debs in the store (unless there) and make a local
/// repository of them under the store's tmp/; returns it and its source line.
fn pinned_repo(
    cx: &Ctx,
    pins: &[crate::lock::model::Deb],
    suite: &str,
) -> Result<tempfile::TempDir> {
    let store = cx.store;
    fetch_pins(cx, pins)?;
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
    debs::local_repo(store, pins, dir.path(), suite)?;
    Ok(dir)
}

/// Download everything `recipe` pins into the store: .debs (`jobs` at
/// once), wheels, fetch layers. For `mimg store fetch`.
pub fn prefetch(
    recipe: &Recipe,
    store: &Store,
    jobs: usize,
    rep: &dyn Reporter,
) -> Result<debs::Fetched> {
    let t0 = Instant::now();
    let opts = Options::default();
    let r = facts(recipe, opts, Some(store))?;
    let all: Vec<crate::lock::model::Deb> = r
        .facts
        .rootfs_debs
        .iter()
        .chain(&r.facts.tools_debs)
        .cloned()
        .collect();
    let mut got = debs::fetch_all(store, &all, &|| suite_urls(recipe), jobs, false, rep)?;
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

/// What a build did.
pub struct Outcome {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub built: usize,
    pub substituted: usize,
    /// How many substituters this build asked (0: none configured, or
    /// nothing to build).
    pub substituters: usize,
    pub reused: usize,
    pub sha256: String,
    /// The image step's key.
    pub key: String,
    /// Every step in plan order: what it did.
    pub steps: Vec<StepRun>,
}

/// One step of a build, for `--json`.
#[derive(Debug, serde::Serialize)]
pub struct StepRun {
    pub label: String,
    pub key: String,
    /// Made by this build (else substituted or reused from the store).
    pub built: bool,
    /// The cache it was taken from, when substituted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substituted_from: Option<String>,
    pub seconds: f64,
}

/// What became of one step in a build.
#[derive(Debug, Clone)]
enum Made {
    Reused,
    Built(f64),
    Substituted {
        url: String,
        bytes: u64,
        seconds: f64,
    },
}

impl Made {
    fn seconds(&self) -> f64 {
        match self {
            Made::Reused => 0.0,
            Made::Built(s) | Made::Substituted { seconds: s, .. } => *s,
        }
    }
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
    let subst = if plan.steps.iter().all(|s| store.has(&s.key)) {
        None
    } else {
        super::cache::Substituter::configured(opts)?
    };
    // What became of each step, by key: a step made again after it was
    // found damaged counts once, as built.
    let mut ran: BTreeMap<String, Made> = BTreeMap::new();
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Where a freshly made image is copied while the store commits it.
    let copied = tmp_beside(&out_dir.join(format!("{}.qcow2", recipe.name.as_str())));
    let mut fresh_copy = false;
    let mut tally = |step: &Step, r: Made| {
        match &r {
            Made::Reused => rep.step_done(step, true, 0.0),
            Made::Built(s) => rep.step_done(step, false, *s),
            Made::Substituted {
                url,
                bytes,
                seconds,
            } => rep.step_substituted(step, url, *bytes, *seconds),
        }
        ran.insert(step.key.to_string(), r);
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
    let cx = Ctx {
        recipe,
        plan: &plan,
        resolved: &resolved,
        opts,
        store,
        rep,
        subst: subst.as_ref(),
        repo: Default::default(),
    };
    let cx = &cx;
    // Without substituters, the layers that need nothing of the steps
    // before them (files, fetch, pip: all but run layers) are made while
    // the rootfs is installed, which keeps one core of two busy at most.
    let independent = if cx.subst.is_none() {
        independent_layers(recipe, &plan, store)
    } else {
        Vec::new()
    };
    let ahead = ahead(plan.steps.len(), cx.subst.is_none(), &independent);
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| -> Result<()> {
        // Steps in a cache are taken side by side, ahead of the loop below
        // (one needs nothing of the steps before it): while one streams
        // in and is hashed, the next is on its way.
        if cx.subst.is_some() {
            for _ in 0..SUBSTITUTE_JOBS.min(plan.steps.len()) {
                sc.spawn(|| substitute_ahead(cx, &plan.steps, &next, &ahead));
            }
        }
        // The rootfs is installed by the tools: when both are missing, the
        // rootfs's pinned .debs are fetched, and their local repository
        // made, while the tools are unpacked.
        let mut prefetch = None;
        if !store.has(&tools_step.key)
            && plan.steps.get(1).is_some_and(|s| {
                !store.has(&s.key) && !cx.subst.is_some_and(|c| c.may_have(s.key.as_str()))
            })
        {
            prefetch = Some(sc.spawn(|| -> Result<()> {
                let suite = recipe.base.suite.as_str();
                let repo = pinned_repo(cx, &resolved.facts.rootfs_debs, suite)?;
                *cx.repo.lock().unwrap_or_else(|e| e.into_inner()) = Some(repo);
                Ok(())
            }));
        }
        // Stops the worker below early when the loop ends with an error.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        // Run layers made on a thread of their own (see `deferrable`),
        // waited for before the first step that needs them.
        let mut deferred: Vec<usize> = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            if deferred
                .iter()
                .any(|&d| needs(recipe, step, &plan.steps[d]))
            {
                for d in std::mem::take(&mut deferred) {
                    let dstep = &plan.steps[d];
                    let r = match ahead.wait(d) {
                        Some(r) => r,
                        // It failed there: made again here, which says why.
                        None => ensure(cx, dstep, None)?,
                    };
                    tally(dstep, r);
                }
            }
            if step.kind != StepKind::Tools
                && let Some(h) = prefetch.take()
            {
                h.join()
                    .map_err(|_| anyhow::anyhow!("fetching the rootfs's .debs panicked"))??;
            }
            // Started with the first step after the tools (the rootfs):
            // every slot it fills is waited for after that.
            if i == 1 && !independent.is_empty() {
                let (steps, ahead, stop) = (&plan.steps, &ahead, &stop);
                let independent = &independent;
                sc.spawn(move || build_ahead(cx, steps, independent, ahead, stop));
            }
            rep.step_started(step);
            if let Some(r) = ahead.wait(i) {
                tally(step, r);
                continue;
            }
            if cx.subst.is_none() && !store.has(&step.key) && deferrable(recipe, step) {
                let (ahead, stop) = (&ahead, &stop);
                sc.spawn(move || make_into(cx, step, i, ahead, stop));
                deferred.push(i);
                continue;
            }
            let copy_out = (step.kind == StepKind::Image).then_some(("disk.qcow2", &*copied));
            let r = match ensure(cx, step, copy_out) {
                Err(e) if step.kind != StepKind::Tools && damaged(&e, &tools_step.key) => {
                    // A damaged tools environment is never used: made again,
                    // then the step with it.
                    warn_damaged(e.root_cause());
                    store.remove_damaged(&tools_step.key)?;
                    rep.step_started(tools_step);
                    let t = ensure(cx, tools_step, None)?;
                    tally(tools_step, t);
                    rep.step_started(step);
                    ensure(cx, step, copy_out)?
                }
                r => r?,
            };
            if matches!(r, Made::Built(_)) && copy_out.is_some() {
                fresh_copy = true;
            }
            tally(step, r);
        }
        if let Some(h) = prefetch.take() {
            h.join()
                .map_err(|_| anyhow::anyhow!("fetching the rootfs's .debs panicked"))??;
        }
        // The image, last, waited for every deferred run layer.
        debug_assert!(deferred.is_empty());
        Ok(())
    })?;
    tracing::debug!("build: steps done at {:.2}s", t0.elapsed().as_secs_f64());
    let fresh = fresh_copy.then_some(copied.as_path());
    let built = ran.values().filter(|b| matches!(b, Made::Built(_))).count();
    let substituted = ran
        .values()
        .filter(|b| matches!(b, Made::Substituted { .. }))
        .count();
    let reused = ran.len() - built - substituted;
    let made = |s: &Step| ran.get(s.key.as_str()).cloned().unwrap_or(Made::Reused);
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            let r = made(s);
            StepRun {
                label: s.label.clone(),
                key: s.key.to_string(),
                built: matches!(r, Made::Built(_)),
                substituted_from: match &r {
                    Made::Substituted { url, .. } => Some(url.clone()),
                    _ => None,
                },
                seconds: r.seconds(),
            }
        })
        .collect();
    let record = store::Build {
        image: plan.image().key.clone(),
        steps: plan
            .steps
            .iter()
            .map(|s| store::BuiltStep {
                label: s.label.clone(),
                key: s.key.clone(),
                built: matches!(made(s), Made::Built(_)),
            })
            .collect(),
    };
    if let Err(e) = store.record_build(recipe.name.as_str(), record) {
        // Only `mimg why` reads it: the build itself is done.
        eprintln!("warning: the build history was not written: {e}");
    }
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
        substituted,
        substituters: subst.as_ref().map_or(0, |s| s.len()),
        reused,
        sha256,
        key: plan.image().key.to_string(),
        steps,
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

/// How many steps are taken from the substituters at once.
const SUBSTITUTE_JOBS: usize = 3;

/// The steps taken from the substituters ahead of the build loop: slot `i`
/// is filled once step `i` was tried, with what was made of it (`None`:
/// not taken; the loop reuses or builds it).
type Ahead = Slots<Option<Made>>;

/// `done`: nothing is taken ahead (no substituters), every slot filled
/// but those of the steps in `built_ahead` (see [`build_ahead`]).
fn ahead(n: usize, done: bool, built_ahead: &[usize]) -> Ahead {
    Slots::full(n, |i| (done && !built_ahead.contains(&i)).then_some(None))
}

/// The layer steps (by index) that need no step before them and that the
/// store lacks: files, fetch and pip layers (a run layer runs in the tree
/// made so far).
fn independent_layers(recipe: &Recipe, plan: &Plan, store: &Store) -> Vec<usize> {
    plan.steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !store.has(&s.key))
        .filter(|(_, s)| {
            layer_kind(recipe, s).is_some_and(|k| {
                matches!(
                    k,
                    LayerKind::Files { .. } | LayerKind::Fetch { .. } | LayerKind::Pip { .. }
                )
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// What a layer step makes (none for the tools, the rootfs and the image).
fn layer_kind<'r>(recipe: &'r Recipe, step: &Step) -> Option<&'r LayerKind> {
    if step.kind != StepKind::Layer {
        return None;
    }
    step.layers
        .first()
        .and_then(|n| recipe.layer(n))
        .map(|l| &l.kind)
}

/// A run layer whose tree holds no other run layer's output (`sees`
/// without `run`): all it runs over is made by the time the loop reaches
/// it, and no step needs it until [`needs`] says so, so it is made on a
/// thread of its own while the loop goes on (the next such layer, the
/// image's pieces). recipes/layers/postgresql.toml's template and the
/// bytecode layer are made side by side so.
fn deferrable(recipe: &Recipe, step: &Step) -> bool {
    layer_kind(recipe, step).is_some_and(|k| matches!(k, LayerKind::Run { .. }) && !k.run_sees(k))
}

/// Whether `step` uses what the run layer step `run` made: the image
/// does, and a run layer whose tree holds it.
fn needs(recipe: &Recipe, step: &Step, run: &Step) -> bool {
    if step.kind == StepKind::Image {
        return true;
    }
    match (layer_kind(recipe, step), layer_kind(recipe, run)) {
        (Some(k), Some(r)) => k.run_sees(r),
        _ => false,
    }
}

/// Make step `i` into its slot; one that fails (or that `stop` keeps from
/// starting) leaves it empty-handed (`None`): the loop makes it again and
/// says why it failed, in its turn.
fn make_into(cx: &Ctx, step: &Step, i: usize, ahead: &Ahead, stop: &AtomicBool) {
    let r = if stop.load(Ordering::Relaxed) {
        None
    } else {
        ensure(cx, step, None).ok()
    };
    ahead.put(i, r);
}

/// A worker making the `independent` steps, in plan order, into their
/// slots (see [`make_into`]).
fn build_ahead(cx: &Ctx, steps: &[Step], independent: &[usize], ahead: &Ahead, stop: &AtomicBool) {
    for &i in independent {
        make_into(cx, &steps[i], i, ahead, stop);
    }
}

/// A worker taking steps from the substituters, in plan order.
fn substitute_ahead(cx: &Ctx, steps: &[Step], next: &AtomicUsize, ahead: &Ahead) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(step) = steps.get(i) else {
            return;
        };
        let r = substitute(cx, step).unwrap_or_else(|e| {
            eprintln!("warning: step {} not substituted: {e:#}", step.label);
            None
        });
        ahead.put(i, r);
    }
}

/// `step` from the first substituter with a good entry of it, unless the
/// store has it.
fn substitute(cx: &Ctx, step: &Step) -> Result<Option<Made>> {
    let (Some(c), store) = (cx.subst, cx.store) else {
        return Ok(None);
    };
    let t0 = Instant::now();
    if store.has(&step.key) {
        return Ok(None);
    }
    let _lock = store.lock(&step.key)?;
    if store.has(&step.key) {
        return Ok(None);
    }
    let Some((pending, got)) = c.step(store, step) else {
        return Ok(None);
    };
    store.commit_checked(pending, got.meta)?;
    Ok(Some(Made::Substituted {
        url: got.url,
        bytes: got.bytes,
        seconds: t0.elapsed().as_secs_f64(),
    }))
}

/// Make `step` unless the store has it (the substituters were asked
/// before, by [`substitute_ahead`]). With `copy_out` (an output's name, a destination), that output is also
/// copied to the destination while the store hashes and syncs the step: the
/// image is published without a second pass over it after the commit.
fn ensure(cx: &Ctx, step: &Step, copy_out: Option<(&str, &Path)>) -> Result<Made> {
    let t0 = Instant::now();
    let store = cx.store;
    if store.has(&step.key) {
        return Ok(Made::Reused);
    }
    let _lock = store.lock(&step.key)?;
    if store.has(&step.key) {
        // Another build made it while we waited.
        return Ok(Made::Reused);
    }
    let pending = store.begin(&step.key)?;
    let extra = run_step(cx, step, pending.dir())
        .with_context(|| format!("step {} ({})", step.label, step.key.short()))?;
    let secs = t0.elapsed().as_secs_f64();
    let Some((name, dest)) = copy_out else {
        store.commit(pending, step, secs, extra)?;
        return Ok(Made::Built(secs));
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
    Ok(Made::Built(secs))
}

fn run_step(cx: &Ctx, step: &Step, dir: &Path) -> Result<serde_json::Value> {
    let Ctx {
        recipe,
        plan,
        resolved,
        opts,
        store,
        ..
    } = *cx;
    let epoch = plan.epoch;
    let facts = &resolved.facts;
    match step.kind {
        StepKind::Tools => {
            fetch_pins(cx, &facts.tools_debs)?;
            let mut debs = Vec::new();
            for d in &facts.tools_debs {
                let data = store
                    .read_blob(&d.sha256, d.file_name())?
                    .with_context(|| {
                        format!("pinned package {} {} left the store", d.name, d.version)
                    })?;
                debs.push((d.file_name().to_string(), data));
            }
            tools_env::build(&debs, dir)?;
            Ok(json!(null))
        }
        StepKind::Rootfs => {
            let suite = recipe.base.suite.as_str();
            let ready = cx.repo.lock().unwrap_or_else(|e| e.into_inner()).take();
            let repo = match ready {
                Some(r) => r,
                None => pinned_repo(cx, &facts.rootfs_debs, suite)?,
            };
            let (tools, tools_check) = tools_of(cx);
            let pkgs = rootfs::build(recipe, &tools, repo.path(), epoch, dir)?;
            tools_check.wait()?;
            debs::check_installed(&facts.rootfs_debs, &pkgs)?;
            Ok(json!({ "packages": pkgs }))
        }
        StepKind::Layer => {
            let name = &step.layers[0];
            let l = recipe.layer(name).expect("planned from the recipe");
            let tree = if let LayerKind::Run { script, .. } = &l.kind {
                // The tree it runs in is exactly what its key's `over`
                // names (the rootfs and layer steps, in plan order).
                let over = &step.inputs["over"];
                let before: Vec<&Step> = plan
                    .steps
                    .iter()
                    .filter(|s| s.kind == StepKind::Layer)
                    .filter(|s| {
                        over.as_array()
                            .is_some_and(|o| o.iter().any(|k| k.as_str() == Some(s.key.as_str())))
                    })
                    .collect();
                let tars = image::stored_tars(recipe, plan, store, &before)?;
                let base = image::merge_tars(&tars);
                let mut checks = vec![];
                checks.extend(tars.into_iter().map(|t| t.check));
                let (tools, tools_check) = tools_of(cx);
                checks.push(tools_check);
                let made = base.and_then(|base| {
                    run::run(&tools, &base, script, epoch, dir)
                        .with_context(|| format!("layer `{name}`"))
                });
                // A damaged input says so before what it made is judged.
                for c in checks {
                    c.wait()?;
                }
                made?
            } else if let LayerKind::Pip { venv, python, .. } = &l.kind {
                let py = python_of(recipe, python)?;
                let wheels = resolved
                    .wheels
                    .get(name)
                    .context("pip layer without resolved wheels")?;
                from_caches(cx, wheels.iter().map(|w| w.sha256.as_str()));
                prefetch_wheels(store, wheels, &py, opts)?;
                let mut files = Vec::new();
                for w in wheels {
                    files.push((w.file.clone(), wheel_blob(store, w, &py, opts)?));
                }
                wheels::venv_tree(venv.as_str(), &py, &files, epoch)
                    .with_context(|| format!("layer `{name}`"))?
            } else {
                if let LayerKind::Fetch { sha256, .. } = &l.kind {
                    from_caches(cx, [sha256.as_str()]);
                }
                let blobs = |url: &str, sha: &crate::recipe::Sha256Hex| blob(store, url, sha, opts);
                layer::layer_tree(l, epoch, &blobs)?
            };
            tree.write(crate::paths::create(dir.join("layer.tar"))?)?;
            // What the layer holds, path by path, for the manifest (`mimg
            // diff`); a pip layer is told by its wheels instead.
            if matches!(l.kind, LayerKind::Pip { .. }) {
                Ok(json!(null))
            } else {
                Ok(json!({ "listing": tree.listing() }))
            }
        }
        StepKind::Image => {
            let (tools, tools_check) = tools_of(cx);
            image::image(recipe, plan, step, store, &tools, tools_check, dir)?;
            Ok(json!(null))
        }
    }
}

/// The tools environment of the plan. The tools write bytes: their tree
/// is checked against its listing while they run (wait for the check
/// before what they made is kept).
fn tools_of(cx: &Ctx) -> (ToolsEnv, store::Check) {
    let tools_key = &cx.plan.steps[0].key;
    (
        ToolsEnv::new(cx.store.path(tools_key).join("root")),
        cx.store.check_tree(tools_key, "root"),
    )
}

/// Which steps of a plan the store has.
pub fn cached(plan: &Plan, store: &Store) -> Vec<bool> {
    plan.steps.iter().map(|s| store.has(&s.key)).collect()
}
