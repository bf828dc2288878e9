//! `mimg lock RECIPE [--update [PKG...]]`: pin what a build would look up live.

use anyhow::Result;

use super::Cli;

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
    /// Print what was written as JSON (path, counts, and the new pins).
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store()?;
    let l = crate::ops::lock::lock(&recipe, &store, a.update.as_deref())?;
    for u in &l.unheld {
        eprintln!("note: {u} is no longer in the archive's index; its pin moved on");
    }
    let lock = &l.lock;
    let wheels = lock.pip.values().map(Vec::len).sum::<usize>();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "lock": l.path,
                "recipe": lock.recipe,
                "unchanged": l.unchanged,
                "epoch": lock.epoch,
                "tools_epoch": lock.tools_epoch,
                "suites": lock.releases.keys().collect::<Vec<_>>(),
                "rootfs_debs": lock.debs.rootfs.len(),
                "tools_debs": lock.debs.tools.len(),
                "wheels": wheels,
                "layers": lock.layers.len(),
                "changed_debs": l.changed_debs,
                "unheld": l.unheld,
                "seconds": l.seconds,
            }))?
        );
        return Ok(());
    }
    if l.changed_debs > 0 {
        println!(
            "{} pinned .debs are new or at a new version",
            l.changed_debs
        );
    }
    println!(
        "{} {}: epoch {}, {} suites, {} rootfs and {} tools .debs, {wheels} wheels, {} layers, in {:.2}s",
        l.path.display(),
        if l.unchanged { "unchanged" } else { "written" },
        lock.epoch,
        lock.releases.len(),
        lock.debs.rootfs.len(),
        lock.debs.tools.len(),
        lock.layers.len(),
        l.seconds
    );
    Ok(())
}
