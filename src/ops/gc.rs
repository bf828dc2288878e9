//! `mimg store gc`: remove the steps no kept manifest names and the blobs
//! no recipe pins, and the leftovers of dead processes in `tmp/`.
//!
//! What is kept is decided from files first; a file that cannot be read or
//! parsed (a `--keep` directory, a manifest, a recipe, a lock) stops gc
//! before anything is removed, since what it would have kept is unknown.
//! The removal runs under the store-wide lock taken exclusive, so no build
//! is running (each holds it shared) and none starts until gc is done.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::recipe::LayerKind;
use crate::store::Store;

/// Where gc looks for what to keep.
pub struct Keep {
    /// Directories of image manifests (`*.manifest.json`) whose steps are kept.
    pub manifest_dirs: Vec<PathBuf>,
    /// Whether a missing manifest directory is fine (the default `images`).
    pub missing_ok: bool,
    /// The recipes directory: every recipe's fetch layers and lock pins are kept.
    pub recipes: PathBuf,
}

/// One entry gc removed or kept, and why.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// `step`, `blob` or `tmp`.
    pub kind: &'static str,
    /// A step key, a blob's sha256 or a tmp/ name.
    pub name: String,
    /// A step's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub bytes: u64,
    /// Why it is kept or removed.
    pub why: String,
}

/// What gc did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub removed: Vec<Entry>,
    pub kept: Vec<Entry>,
}

impl Report {
    pub fn bytes_removed(&self) -> u64 {
        self.removed.iter().map(|e| e.bytes).sum()
    }
}

/// Run gc over the store at `root`.
pub fn gc(root: &Path, keep: &Keep, dry_run: bool) -> Result<Report> {
    let store = Store::at(root);
    let _exclusive = store.exclusive()?;
    let steps = kept_steps(keep)?;
    let blobs = pinned_blobs(&keep.recipes)?;
    let mut report = Report {
        dry_run,
        removed: Vec::new(),
        kept: Vec::new(),
    };
    for key in store.keys()? {
        let (label, bytes) = match store.meta(&key) {
            Ok(m) => (Some(m.label), m.files.values().map(|f| f.size).sum()),
            Err(_) => (None, 0),
        };
        let entry = |why: String| Entry {
            kind: "step",
            name: key.to_string(),
            label: label.clone(),
            bytes,
            why,
        };
        match steps.get(key.as_str()) {
            Some(by) => report
                .kept
                .push(entry(format!("named by {}", by.display()))),
            None => {
                if !dry_run {
                    store.remove_step(&key);
                }
                report
                    .removed
                    .push(entry("named by no kept manifest".into()));
            }
        }
    }
    for b in store.blobs()? {
        let bytes = fs::metadata(store.blob(&b)).map(|m| m.len()).unwrap_or(0);
        let entry = |why: String| Entry {
            kind: "blob",
            name: b.clone(),
            label: None,
            bytes,
            why,
        };
        match blobs.get(&b) {
            Some(by) => report.kept.push(entry(format!("pinned by {by}"))),
            None => {
                if !dry_run {
                    store.remove_blob(&b);
                }
                report
                    .removed
                    .push(entry("pinned by no recipe or lock".into()));
            }
        }
    }
    for p in store.tmp_entries()? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !dry_run {
            store.remove_tmp(&p);
        }
        report.removed.push(Entry {
            kind: "tmp",
            name,
            label: None,
            bytes: du(&p),
            why: "left by a process that is gone (no running build holds the store)".into(),
        });
    }
    Ok(report)
}

/// Step key -> the manifest that names it.
fn kept_steps(keep: &Keep) -> Result<BTreeMap<String, PathBuf>> {
    let mut steps = BTreeMap::new();
    for dir in &keep.manifest_dirs {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && keep.missing_ok => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read {} (a --keep directory); nothing was removed\nhint: name directories of image manifests that exist and can be read",
                        dir.display()
                    )
                });
            }
        };
        let mut manifests = Vec::new();
        for e in rd {
            let e =
                e.with_context(|| format!("cannot list {}; nothing was removed", dir.display()))?;
            if e.file_name().to_string_lossy().ends_with(".manifest.json") {
                manifests.push(e.path());
            }
        }
        manifests.sort();
        for p in manifests {
            let text = fs::read(&p)
                .with_context(|| format!("cannot read {}; nothing was removed", p.display()))?;
            let m: crate::ops::publish::Manifest = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not an image manifest; nothing was removed\nhint: gc cannot tell which steps it keeps; fix or remove it",
                    p.display()
                )
            })?;
            for s in m.steps {
                steps.entry(s.key).or_insert_with(|| p.clone());
            }
        }
    }
    Ok(steps)
}

/// Blob sha256 -> what pins it: every recipe's fetch layers, its lock's
/// .debs and wheels.
fn pinned_blobs(recipes: &Path) -> Result<BTreeMap<String, String>> {
    let mut pins = BTreeMap::new();
    let rd = match fs::read_dir(recipes) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "the recipes directory {} does not exist; nothing was removed\nhint: gc keeps the files recipes pin; run it where `recipes/` is, or pass --recipes DIR",
                recipes.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read {}; nothing was removed", recipes.display())
            });
        }
    };
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for e in rd {
        let e =
            e.with_context(|| format!("cannot list {}; nothing was removed", recipes.display()))?;
        if e.path().extension().is_some_and(|x| x == "toml") {
            files.insert(e.path());
        }
    }
    for path in files {
        let r = crate::recipe::load(&path).with_context(|| {
            format!(
                "cannot load recipe {}; nothing was removed\nhint: gc keeps what each recipe pins and cannot tell what this one does; fix it or move it out of the recipes directory",
                path.display()
            )
        })?;
        for l in &r.layers {
            if let LayerKind::Fetch { sha256, .. } = &l.kind {
                pins.entry(sha256.to_string())
                    .or_insert_with(|| format!("{} (layer {})", path.display(), l.name));
            }
        }
        let lock = crate::lock::read(&r).with_context(|| {
            format!(
                "cannot read the lock of {}; nothing was removed",
                path.display()
            )
        })?;
        if let Some(lock) = lock {
            let by = r.lock_path().display().to_string();
            let debs = lock.debs.rootfs.iter().chain(&lock.debs.tools);
            for sha in debs
                .map(|d| &d.sha256)
                .chain(lock.pip.values().flatten().map(|w| &w.sha256))
            {
                pins.entry(sha.clone()).or_insert_with(|| by.clone());
            }
        }
    }
    Ok(pins)
}

/// Bytes under `p` (a file or a tree), for the report.
fn du(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}
