//! `mimg lock RECIPE [--update]`: pin what a build looks up live.

use anyhow::Result;

use super::Cli;

/// Write NAME.lock beside the recipe: release hashes, build epoch, layer hashes.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Refresh an existing lock against today's archive.
    #[arg(long)]
    update: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let recipe = cli.recipe(&a.recipe)?;
    let old = crate::lock::read(&recipe)?;
    let mut facts = crate::build::live_facts(&recipe)?;
    let store = cli.store()?;
    let reqs: std::collections::BTreeMap<String, Vec<String>> = recipe
        .layers
        .iter()
        .filter_map(|l| match &l.kind {
            crate::recipe::LayerKind::Pip { requirements, .. } => {
                Some((l.name.to_string(), requirements.clone()))
            }
            _ => None,
        })
        .collect();
    let pip = match (&old, a.update) {
        // Keep the wheels while the requirements are those they were resolved from.
        (Some(o), false)
            if o.pip_requirements == reqs && reqs.keys().all(|k| o.pip.contains_key(k)) =>
        {
            o.pip.clone()
        }
        _ => crate::build::resolve_pip(&recipe, &store)?,
    };
    for (name, wheels) in &pip {
        facts
            .contents
            .insert(name.clone(), crate::lock::wheels_hash(wheels));
    }
    let mut lock = crate::lock::make(&recipe, &facts);
    lock.pip = pip;
    lock.pip_requirements = reqs;
    if let (Some(old), false) = (&old, a.update) {
        // Without --update keep the pinned archive state; refresh only the
        // record of the recipe's own inputs.
        lock.epoch = old.epoch;
        lock.tools_epoch = old.tools_epoch;
        for (suite, sha) in &old.releases {
            lock.releases.insert(suite.clone(), sha.clone());
        }
    }
    let p = crate::lock::write(&recipe, &lock)?;
    let what = if old.as_ref() == Some(&lock) {
        "unchanged"
    } else {
        "written"
    };
    println!(
        "{} {what}: epoch {}, {} suites, {} layers, in {:.2}s",
        p.display(),
        lock.epoch,
        lock.releases.len(),
        lock.layers.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
