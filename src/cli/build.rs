//! `mimg build RECIPE [--out DIR]`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::Cli;
use crate::plan::Step;

/// Build a recipe into DIR/NAME.qcow2 and DIR/NAME.manifest.json.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Output directory.
    #[arg(long, default_value = "images")]
    out: PathBuf,
    /// Fail if the recipe changed since its lock (or has no lock).
    #[arg(long)]
    locked: bool,
    /// Never touch the network: use the lock and the store only.
    #[arg(long)]
    offline: bool,
    /// Print the result as one JSON document on stdout (image, sha256,
    /// manifest, key, and each step: label, key, built, seconds); no
    /// progress is shown.
    #[arg(long)]
    json: bool,
}

/// Shows a spinner per step on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl crate::report::Reporter for Progress {
    fn step_started(&self, step: &Step) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} {}", step.label, step.key.short()));
        }
    }
    fn step_done(&self, step: &Step, cached: bool, seconds: f64) {
        if self.quiet {
            return;
        }
        let line = if cached {
            format!("  {:<20} {}  cached", step.label, step.key.short())
        } else {
            format!(
                "  {:<20} {}  built in {seconds:.1}s",
                step.label,
                step.key.short()
            )
        };
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let t0 = Instant::now();
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store()?;
    let quiet = cli.quiet || a.json;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let rep = Progress { bar, quiet };
    let out = crate::ops::build::build(
        &recipe,
        &store,
        &a.out,
        &rep,
        crate::ops::build::Options {
            offline: a.offline,
            locked: a.locked,
        },
    );
    if let Some(b) = &rep.bar {
        b.finish_and_clear();
    }
    let out = out?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "recipe": recipe.name,
                "image": out.image,
                "sha256": out.sha256,
                "manifest": out.manifest,
                "key": out.key,
                "built": out.built,
                "reused": out.reused,
                "seconds": t0.elapsed().as_secs_f64(),
                "steps": out.steps,
            }))?
        );
        return Ok(());
    }
    println!("{}  sha256 {}", out.image.display(), out.sha256);
    println!("{}", out.manifest.display());
    println!(
        "built {} steps, reused {} in {:.2}s",
        out.built,
        out.reused,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
