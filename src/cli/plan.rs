//! `mimg plan RECIPE`: every step, its key and whether the store has it.

use anyhow::Result;

use super::Cli;

/// Show the steps of a build and which are cached; runs nothing and writes
/// nothing. With a lock that covers the recipe it reads local files only
/// (no network); without one it says so and resolves over the network.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Print the plan as JSON (steps with their inputs).
    #[arg(long)]
    json: bool,
    /// Plan from the lock only; never touch the network.
    #[arg(long)]
    offline: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store_to_read();
    let resolved = crate::ops::resolve::facts(
        &recipe,
        crate::ops::build::Options {
            offline: a.offline,
            ..Default::default()
        },
        None,
    )?;
    let plan = crate::plan::plan(&recipe, &resolved.facts);
    let cached = crate::ops::build::cached(&plan, &store);
    if a.json {
        let steps: Vec<_> = plan
            .steps
            .iter()
            .zip(&cached)
            .map(|(s, c)| serde_json::json!({ "label": s.label, "kind": s.kind, "key": s.key, "cached": c, "inputs": s.inputs }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "recipe": plan.recipe, "epoch": plan.epoch, "steps": steps })
            )?
        );
        return Ok(());
    }
    println!("recipe {} (epoch {})", plan.recipe, plan.epoch);
    for (s, c) in plan.steps.iter().zip(&cached) {
        let layers = if s.layers.is_empty() {
            String::new()
        } else {
            format!("  [{}]", s.layers.join(", "))
        };
        println!(
            "  {:<20} {}  {}{}",
            s.label,
            s.key,
            if *c { "cached" } else { "to build" },
            layers
        );
    }
    let n = cached.iter().filter(|c| !**c).count();
    println!("{n} of {} steps to build", plan.steps.len());
    Ok(())
}
