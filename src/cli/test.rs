//! `mimg test RECIPE --overlay OVERLAY [--json]`: build (cached), seed,
//! boot with a blank data disk, and check the VM as a Matrix client would.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Cli;
use crate::vm::acceptance::Check;

/// Boot a recipe's image with a customer's seed and prove it serves Matrix.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// The customer overlay whose seed the VM boots with.
    #[arg(long)]
    overlay: PathBuf,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// Output directory of the build.
    #[arg(long, default_value = "images")]
    out: PathBuf,
    /// Use this data disk instead of a blank one (kept afterwards).
    #[arg(long)]
    data_disk: Option<PathBuf>,
    /// Seconds to wait for Synapse to answer after boot.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

struct Quiet {
    json: bool,
}
impl crate::report::Reporter for Quiet {
    fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }
    fn step_started(&self, _: &crate::plan::Step) {}
    fn step_done(&self, s: &crate::plan::Step, cached: bool, secs: f64) {
        if !cached {
            eprintln!("  built {} in {secs:.1}s", s.label);
        }
    }
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store()?;
    let overlay = crate::overlay::load(&a.overlay)?;
    let t = crate::ops::test::test(
        &recipe,
        store,
        &overlay,
        &crate::ops::test::TestOptions {
            out: a.out.clone(),
            data_disk: a.data_disk.clone(),
            timeout: a.timeout,
        },
        &Quiet { json: a.json },
    )?;
    let (checks, accel) = (&t.checks, t.accel);
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "recipe": recipe.name, "image": t.image, "accel": accel, "ok": failed.is_empty(), "seconds": t.seconds, "checks": checks })
            )?
        );
    } else {
        let tty = std::io::stdout().is_terminal();
        for c in checks {
            let mark = match (c.ok, tty) {
                (true, true) => "\x1b[32mok\x1b[0m  ",
                (false, true) => "\x1b[31mFAIL\x1b[0m",
                (true, false) => "ok  ",
                (false, false) => "FAIL",
            };
            println!("{mark} {:>7.1}s  {}  ({})", c.seconds, c.name, c.detail);
        }
        println!(
            "{} passed, {} failed",
            checks.len() - failed.len(),
            failed.len()
        );
    }
    if let Some(f) = failed.first() {
        let tail = &t.serial_tail;
        return Err(anyhow::anyhow!(
            "check failed: {}: {}\n--- last lines of the serial console:\n{tail}",
            f.name,
            f.detail
        ))
        .context(format!("mimg test {}", recipe.name));
    }
    Ok(())
}
