//! `mimg lock`: pin what a build would look up live, keeping what may be
//! kept. Without `--update`, a lock whose half (rootfs or tools) still
//! matches its inputs keeps that half's pins, and wheels are kept while
//! their requirements are those they were resolved from; `--update` with
//! no names resolves everything again; `--update PKG...` holds every other
//! pin at its version (the archive permitting) and moves only those.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::lock::Lock;
use crate::ops::resolve::Holds;
use crate::recipe::Recipe;
use crate::store::Store;

/// What `mimg lock` wrote.
pub struct Locked {
    pub path: PathBuf,
    pub lock: Lock,
    /// The lock on disk was already this one.
    pub unchanged: bool,
    /// Pinned .debs that are new or at a new version.
    pub changed_debs: usize,
    /// Held versions the archive no longer has (their pins moved on).
    pub unheld: Vec<String>,
    pub seconds: f64,
}

/// Write the lock of `recipe`; `update`: `None` keeps what may be kept,
/// `Some([])` refreshes all, `Some(names)` only those packages.
pub fn lock(recipe: &Recipe, store: &Store, update: Option<&[String]>) -> Result<Locked> {
    let t0 = std::time::Instant::now();
    let recipe = recipe.clone();
    let old = crate::lock::read(&recipe)?;
    let named: BTreeSet<String> = update.into_iter().flatten().cloned().collect();
    if !named.is_empty() {
        let Some(o) = &old else {
            bail!(
                "{} has no lock to update packages in\nhint: run `mimg lock {}` first",
                recipe.name,
                recipe.name
            );
        };
        for n in &named {
            let pinned = o
                .debs
                .rootfs
                .iter()
                .chain(&o.debs.tools)
                .any(|d| &d.name == n)
                || o.pip
                    .values()
                    .flatten()
                    .any(|w| w.name.eq_ignore_ascii_case(n));
            if !pinned {
                bail!(
                    "`{n}` is not pinned in {} (neither a .deb nor a wheel)\nhint: `mimg lock {} --update` refreshes everything",
                    recipe.lock_path().display(),
                    recipe.name
                );
            }
        }
    }
    let keep =
        |l: &&crate::lock::Lock| update.is_none() && crate::ops::pins::pins_debs_of(l, &recipe);
    let (mut facts, unheld) = match old.as_ref().filter(keep) {
        // Without --update keep the pinned archive state.
        Some(o) => (
            crate::ops::pins::facts(o, crate::ops::resolve::contents(&recipe)?),
            Vec::new(),
        ),
        None => {
            let mut holds = Holds::default();
            if let Some(o) = old.as_ref().filter(|_| !named.is_empty()) {
                let held = |ds: &[crate::lock::model::Deb]| -> BTreeMap<String, String> {
                    ds.iter()
                        .filter(|d| !named.contains(&d.name))
                        .map(|d| (d.name.clone(), d.version.clone()))
                        .collect()
                };
                holds.rootfs = held(&o.debs.rootfs);
                holds.tools = held(&o.debs.tools);
            }
            let (mut f, unheld) = crate::ops::resolve::live_facts(&recipe, &holds)?;
            // Without --update, a half that still matches its inputs keeps its pins.
            if let Some(o) = old.as_ref().filter(|_| update.is_none()) {
                // (`releases` then records today's release files, read for the other half.)
                if o.apt_inputs == crate::ops::pins::apt_inputs(&recipe)
                    && !o.debs.rootfs.is_empty()
                {
                    f.rootfs_debs = o.debs.rootfs.clone();
                    f.epoch = o.epoch;
                }
                if o.tools_inputs == crate::ops::pins::tools_inputs() && !o.debs.tools.is_empty() {
                    f.tools_debs = o.debs.tools.clone();
                    f.tools_epoch = o.tools_epoch;
                }
            }
            (f, unheld)
        }
    };
    let reqs: BTreeMap<String, Vec<String>> = recipe
        .layers
        .iter()
        .filter_map(|l| match &l.kind {
            crate::recipe::LayerKind::Pip { requirements, .. } => {
                Some((l.name.to_string(), requirements.clone()))
            }
            _ => None,
        })
        .collect();
    let pip = match &old {
        // Keep the wheels while the requirements are those they were resolved from.
        Some(o)
            if update.is_none()
                && o.pip_requirements == reqs
                && reqs.keys().all(|k| o.pip.contains_key(k)) =>
        {
            o.pip.clone()
        }
        Some(o) if !named.is_empty() => {
            let hold = o
                .pip
                .values()
                .flatten()
                .filter(|w| !named.iter().any(|n| n.eq_ignore_ascii_case(&w.name)))
                .map(|w| (w.name.clone(), w.version.clone()))
                .collect();
            crate::ops::resolve::resolve_pip(&recipe, Some(store), &hold)?
        }
        _ => crate::ops::resolve::resolve_pip(&recipe, Some(store), &BTreeMap::new())?,
    };
    for (name, wheels) in &pip {
        facts
            .contents
            .insert(name.clone(), crate::lock::wheels_hash(wheels));
    }
    let mut lock = crate::ops::pins::make(&recipe, &facts);
    lock.pip = pip;
    lock.pip_requirements = reqs;
    let path = crate::lock::write(&recipe, &lock)?;
    let unchanged = old.as_ref() == Some(&lock);
    let changed_debs = old.as_ref().map_or(0, |o| {
        let before: BTreeSet<(&str, &str)> = o
            .debs
            .rootfs
            .iter()
            .chain(&o.debs.tools)
            .map(|d| (d.name.as_str(), d.version.as_str()))
            .collect();
        lock.debs
            .rootfs
            .iter()
            .chain(&lock.debs.tools)
            .filter(|d| !before.contains(&(d.name.as_str(), d.version.as_str())))
            .count()
    });
    Ok(Locked {
        path,
        lock,
        unchanged,
        changed_debs,
        unheld,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
