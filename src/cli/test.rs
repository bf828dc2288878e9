//! `mimg test RECIPE --overlay OVERLAY [--json]`: build (cached), seed,
//! boot with a blank data disk, and check the VM as a Matrix client would.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Cli;
use crate::vm::acceptance::{self, Check};

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

struct Quiet;
impl crate::report::Reporter for Quiet {
    fn step_started(&self, _: &crate::plan::Step) {}
    fn step_done(&self, s: &crate::plan::Step, cached: bool, secs: f64) {
        if !cached {
            eprintln!("  built {} in {secs:.1}s", s.label);
        }
    }
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let t0 = Instant::now();
    let recipe = cli.recipe(&a.recipe)?;
    let store = cli.store()?;
    let overlay = crate::overlay::load(&a.overlay)?;
    let built = crate::ops::build::build(
        &recipe,
        &store,
        &a.out,
        &Quiet,
        crate::ops::build::Options::default(),
    )?;
    // Booting reads only the published image: the store is let go (gc may run).
    drop(store);
    let work = tempfile::Builder::new().prefix("mimg-test-").tempdir()?;
    let rendered = crate::seed::render(&overlay);
    let seed = work.path().join("seed.img");
    std::fs::write(
        &seed,
        crate::seed::image(&rendered, crate::seed::volume_id(&rendered))?,
    )?;
    let data = match &a.data_disk {
        Some(d) => d.clone(),
        None => {
            let d = work.path().join("data.qcow2");
            crate::tools::qemu::create_qcow2(&d, None, Some("8G"))
                .context("qemu-img could not make a data disk")?;
            d
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let serial = work.path().join("serial.log");
    let spec = crate::vm::RunSpec {
        image: built.image.clone(),
        seed: Some(seed),
        data_disk: Some(data),
        forwards: vec![crate::vm::Forward {
            host: port,
            guest: 80,
        }],
        serial_log: serial.clone(),
        memory_mib: 2048,
        cpus: 2,
        uefi: false,
    };
    let mut vm = crate::vm::start(&spec)?;
    if !a.json {
        eprintln!(
            "booting {} ({}, {}), waiting for Synapse through nginx",
            built.image.display(),
            vm.accel.to_uppercase(),
            vm.mode
        );
    }
    let client = acceptance::Client::new(port);
    let mut checks: Vec<Check> = Vec::new();
    let boot = Instant::now();
    let healthy = acceptance::wait_healthy(
        &client,
        &overlay,
        Duration::from_secs(a.timeout),
        &mut || vm.running(),
    );
    checks.push(Check {
        name: "boot until Synapse answers through nginx".into(),
        ok: healthy.is_ok(),
        seconds: boot.elapsed().as_secs_f64(),
        detail: match &healthy {
            Ok(_) => format!("{}, {}", vm.accel.to_uppercase(), vm.mode),
            Err(e) => e.to_string(),
        },
    });
    if healthy.is_ok() {
        checks.extend(acceptance::run_checks(&client, &overlay, vm.guest));
    }
    let accel = vm.accel;
    let serial_text = vm.serial();
    drop(vm);
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "recipe": recipe.name, "image": built.image, "accel": accel, "ok": failed.is_empty(), "seconds": t0.elapsed().as_secs_f64(), "checks": checks })
            )?
        );
    } else {
        let tty = std::io::stdout().is_terminal();
        for c in &checks {
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
        let lines: Vec<&str> = serial_text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(anyhow::anyhow!(
            "check failed: {}: {}\n--- last lines of the serial console:\n{tail}",
            f.name,
            f.detail
        ))
        .context(format!("mimg test {}", recipe.name));
    }
    Ok(())
}
