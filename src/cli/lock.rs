//! `mimg lock RECIPE [--update [PKG...]]`: pin what a build would look up live.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

use super::Cli;
use crate::ops::resolve::Holds;

/// Write NAME.lock beside the recipe: every .deb (rootfs and tools
/// environment) and wheel by sha256, the release files' hashes (their
/// signatures checked), the build epoch and the layers' hashes.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Refresh the lock against today's archive and index: all of it, or
    /// only the named packages (.debs or wheels), keeping every other pin
    /// that the archive still has.
    #[arg(long, num_args = 0.., value_name = "PKG")]
    update: Option<Vec<String>>,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let recipe = cli.recipe(&a.recipe)?;
    let old = crate::lock::read(&recipe)?;
    let store = cli.store()?;
    let named: BTreeSet<String> = a.update.iter().flatten().cloned().collect();
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
    let keep = |l: &&crate::lock::Lock| a.update.is_none() && l.pins_debs_of(&recipe);
    let (mut facts, unheld) = match old.as_ref().filter(keep) {
        // Without --update keep the pinned archive state.
        Some(o) => (
            crate::lock::facts(o, crate::ops::resolve::contents(&recipe)?),
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
            if let Some(o) = old.as_ref().filter(|_| a.update.is_none()) {
                // (`releases` then records today's release files, read for the other half.)
                if o.apt_inputs == crate::lock::apt_inputs(&recipe) && !o.debs.rootfs.is_empty() {
                    f.rootfs_debs = o.debs.rootfs.clone();
                    f.epoch = o.epoch;
                }
                if o.tools_inputs == crate::lock::tools_inputs() && !o.debs.tools.is_empty() {
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
            if a.update.is_none()
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
            crate::ops::resolve::resolve_pip(&recipe, Some(&store), &hold)?
        }
        _ => crate::ops::resolve::resolve_pip(&recipe, Some(&store), &BTreeMap::new())?,
    };
    for (name, wheels) in &pip {
        facts
            .contents
            .insert(name.clone(), crate::lock::wheels_hash(wheels));
    }
    let mut lock = crate::lock::make(&recipe, &facts);
    lock.pip = pip;
    lock.pip_requirements = reqs;
    let p = crate::lock::write(&recipe, &lock)?;
    let what = if old.as_ref() == Some(&lock) {
        "unchanged"
    } else {
        "written"
    };
    for u in &unheld {
        eprintln!("note: {u} is no longer in the archive's index; its pin moved on");
    }
    if let Some(o) = &old {
        let before: BTreeSet<(&str, &str)> = o
            .debs
            .rootfs
            .iter()
            .chain(&o.debs.tools)
            .map(|d| (d.name.as_str(), d.version.as_str()))
            .collect();
        let changed = lock
            .debs
            .rootfs
            .iter()
            .chain(&lock.debs.tools)
            .filter(|d| !before.contains(&(d.name.as_str(), d.version.as_str())))
            .count();
        if changed > 0 {
            println!("{changed} pinned .debs are new or at a new version");
        }
    }
    println!(
        "{} {what}: epoch {}, {} suites, {} rootfs and {} tools .debs, {} wheels, {} layers, in {:.2}s",
        p.display(),
        lock.epoch,
        lock.releases.len(),
        lock.debs.rootfs.len(),
        lock.debs.tools.len(),
        lock.pip.values().map(Vec::len).sum::<usize>(),
        lock.layers.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
