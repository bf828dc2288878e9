//! `mimg why RECIPE`: the input that differs from the last build, for each
//! step to build (or built by the last build).

use anyhow::Result;

use super::Cli;

/// Say, for each step the store lacks (or, when the recipe is built as it
/// is, each step its last build made), which input differs from the build
/// before: `layer:synapse: wheel twisted 24.10.0 -> 25.5.0`. Runs nothing,
/// writes nothing; with a lock, reads local files only.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    /// Plan from the lock only; never touch the network.
    #[arg(long)]
    offline: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store_to_read();
    let w = crate::ops::why::why(
        &recipe,
        &store,
        crate::ops::Options {
            offline: a.offline,
            ..Default::default()
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(());
    }
    let against = match &w.against {
        Some(k) => format!("the build of image {}", &k[..12]),
        None => "no earlier build".to_string(),
    };
    match (w.mode, w.steps.is_empty()) {
        ("built", true) => println!(
            "{}: built as it is now; its last build made no step",
            w.recipe
        ),
        ("built", false) => println!(
            "{}: built as it is now; the last build made {} step(s), against {against}:",
            w.recipe,
            w.steps.len()
        ),
        (_, true) => println!("{}: every step is in the store; nothing to build", w.recipe),
        (_, false) => println!(
            "{}: {} step(s) to build, against {against}:",
            w.recipe,
            w.steps.len()
        ),
    }
    for s in &w.steps {
        for r in &s.reasons {
            println!("{}: {r}", s.label);
        }
    }
    Ok(())
}
