//! Resolve: the facts a plan needs (every pinned .deb, wheel, release file
//! and epoch), from the recipe's lock where it covers the recipe, else
//! live from the mirror and the package index. With a covering lock it
//! reads local files only: no network, no store.

use std::collections::BTreeMap;
use std::fs;

use anyhow::{Context, Result, bail};

use crate::debs::{self, AptSource};
use crate::fetch;
use crate::lock;
use crate::lock::model::Wheel;
use crate::plan::{self, Facts, TOOLS_SUITE};
use crate::recipe::{LayerKind, Recipe};
use crate::stages::{layer, wheels};
use crate::store::{self, Store};

pub use super::Options;

/// The [`plan::Contents`] of a recipe's `files` layers, read from the host.
pub fn contents(recipe: &Recipe) -> Result<plan::Contents> {
    let mut c = plan::Contents {
        hashes: BTreeMap::new(),
        details: BTreeMap::new(),
    };
    for l in &recipe.layers {
        if let Some((h, listing)) = layer::content_hash(l)? {
            c.hashes.insert(l.name.to_string(), h);
            c.details.insert(l.name.to_string(), listing);
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
        check_valid_until: true,
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
            check_valid_until: s.check_valid_until,
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
        check_valid_until: true,
    }]
}

/// Which URL each suite's pinned .debs are downloaded from.
pub fn suite_urls(recipe: &Recipe) -> Result<BTreeMap<String, String>> {
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
    let includes = crate::plan::includes(recipe);
    let tools_includes: Vec<String> = plan::TOOLS_PACKAGES.iter().map(|s| s.to_string()).collect();
    let (root, tools) = std::thread::scope(|sc| {
        let t = sc.spawn(|| debs::resolve(&tsources, &tools_includes, false, &holds.tools));
        let r = debs::resolve(&sources, &includes, true, &holds.rootfs);
        (r, t.join().expect("tools resolution does not panic"))
    });
    let root = root.context("resolving the rootfs packages")?;
    let tools = tools.context("resolving the tools environment's packages")?;
    let c = contents(recipe)?;
    let mut f = Facts {
        contents: c.hashes,
        details: c.details,
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
            crate::paths::write(cons.path(), text)?;
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
    facts_of_inputs(recipe, opts, store)
}

/// Says (on stderr) that the facts are being resolved over the network.
fn say_resolving(recipe: &Recipe, what: &str) {
    eprintln!("resolving {} live ({what})", recipe.name);
}

fn facts_of_inputs(recipe: &Recipe, opts: Options, store: Option<&Store>) -> Result<Resolved> {
    let own = lock::read(recipe)?;
    if let Some(l) = &own
        && !crate::ops::pins::pins_debs_of(l, recipe)
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
        None => lock::read_inherited(recipe)?.filter(|l| crate::ops::pins::pins_debs_of(l, recipe)),
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
        c.hashes.insert(name.clone(), lock::wheels_hash(w));
        c.details.insert(name.clone(), plan::wheel_detail(w));
    }
    match chosen {
        Some(l) if crate::ops::pins::pins_debs_of(&l, recipe) => {
            let f = crate::ops::pins::facts(&l, c);
            if opts.locked {
                let changes = crate::ops::pins::changes(&l, recipe, &f);
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
            f.contents = c.hashes;
            f.details = c.details;
            Ok(Resolved { facts: f, wheels })
        }
    }
}
