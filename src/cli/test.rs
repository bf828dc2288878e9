//! `mimg test RECIPE --overlay OVERLAY [--json]`: build (cached), seed,
//! boot with a blank data disk, and check the VM as a Matrix client would.
//! `mimg test --vm RECIPE:OVERLAY [--vm ...] [--exec CMD] [--json]`: the
//! same for several VMs on one private test network, with federation
//! checks between the homeservers and CMD run inside that network.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Cli;
use crate::vm::acceptance::Check;

/// Boot a recipe's image with a customer's seed and prove it serves Matrix;
/// or boot several (--vm) on one test network and prove they federate.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  mimg test maas-homeserver --overlay overlays/example.toml\n  mimg test turn --overlay overlays/turn-example.toml\n  mimg test --vm maas-homeserver:overlays/a.toml --vm maas-homeserver:overlays/b.toml \\\n      --vm turn:overlays/turn-example.toml \\\n      --exec 'curl -fsS https://a.example/.well-known/matrix/server'\n\nA TURN server's overlay (kind = \"turn\") is checked with real allocations by\ncoturn's turnutils_uclient from inside the test network.\n\nWith --vm, every VM joins one private IPv6 network (root: namespaces and taps)\nwith a DNS server for every overlay's names and, for tls = \"acme\", a local ACME\nserver (Pebble). CMD runs inside that network with SSL_CERT_FILE and MIMG_CA_FILE\nnaming the network's CAs and MIMG_VMS a JSON list of the VMs; its exit status\ndecides the test."
)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file (one VM).
    #[arg(required_unless_present = "vm", conflicts_with = "vm")]
    recipe: Option<String>,
    /// The customer overlay whose seed the VM boots with (one VM).
    #[arg(long, required_unless_present = "vm", conflicts_with = "vm")]
    overlay: Option<PathBuf>,
    /// RECIPE:OVERLAY, one VM of a test network; repeat for more.
    #[arg(long, value_name = "RECIPE:OVERLAY")]
    vm: Vec<String>,
    /// After the checks, run this shell command inside the test network.
    #[arg(long, value_name = "CMD", requires = "vm")]
    exec: Option<String>,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report (what --json prints) to this file, for a
    /// CI job to keep beside the image.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
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

fn mark(ok: bool, tty: bool) -> &'static str {
    match (ok, tty) {
        (true, true) => "\x1b[32mok\x1b[0m  ",
        (false, true) => "\x1b[31mFAIL\x1b[0m",
        (true, false) => "ok  ",
        (false, false) => "FAIL",
    }
}

fn print_checks(prefix: &str, checks: &[Check], tty: bool) {
    for c in checks {
        println!(
            "{} {:>7.1}s  {prefix}{}  ({})",
            mark(c.ok, tty),
            c.seconds,
            c.name,
            c.detail
        );
    }
}

/// `--report FILE`: the JSON report, written whether the checks passed or
/// not (a failed run's report says what failed).
fn write_report(a: &Args, json: &str) -> Result<()> {
    match &a.report {
        Some(f) => Ok(crate::paths::write(f, format!("{json}\n"))?),
        None => Ok(()),
    }
}

fn run_network(cli: &Cli, a: &Args) -> Result<()> {
    let mut specs = Vec::new();
    for v in &a.vm {
        let (r, o) = v.split_once(':').with_context(|| {
            format!(
                "--vm `{v}` is not RECIPE:OVERLAY\nhint: --vm maas-homeserver:overlays/example.toml"
            )
        })?;
        specs.push(crate::ops::testnet::VmSpec {
            recipe: cli.recipe(r)?,
            overlay: crate::overlay::load_any(std::path::Path::new(o))?,
        });
    }
    test_network(cli, a, specs)
}

fn test_network(cli: &Cli, a: &Args, specs: Vec<crate::ops::testnet::VmSpec>) -> Result<()> {
    let store = cli.store()?;
    let r = crate::ops::testnet::test_network(
        specs,
        store,
        &crate::ops::testnet::NetOptions {
            out: a.out.clone(),
            timeout: a.timeout,
            exec: a.exec.clone(),
        },
        &Quiet { json: a.json },
    )?;
    let json = serde_json::to_string_pretty(&r)?;
    write_report(a, &json)?;
    if a.json {
        println!("{json}");
    } else {
        let tty = std::io::stdout().is_terminal();
        for v in &r.vms {
            print_checks(&format!("{}: ", v.customer), &v.checks, tty);
        }
        print_checks("", &r.federation, tty);
        if let Some(e) = &r.exec {
            println!(
                "--- {} (exit status {:?}):\n{}",
                e.command,
                e.status,
                e.output.trim_end()
            );
        }
        let all: Vec<&Check> = r
            .vms
            .iter()
            .flat_map(|v| &v.checks)
            .chain(&r.federation)
            .collect();
        let failed = all.iter().filter(|c| !c.ok).count();
        println!("{} passed, {} failed", all.len() - failed, failed);
    }
    if let Some((who, f)) = r.first_failure() {
        let tail = r
            .vms
            .iter()
            .find(|v| v.customer == who)
            .map(|v| {
                format!(
                    "\n--- last lines of {who}'s serial console:\n{}",
                    v.serial_tail
                )
            })
            .unwrap_or_default();
        bail!("check failed on {who}: {}: {}{tail}", f.name, f.detail);
    }
    if let Some(e) = &r.exec
        && e.status != Some(0)
    {
        bail!(
            "--exec `{}` failed (exit status {:?}); its output:\n{}",
            e.command,
            e.status,
            e.output.trim_end()
        );
    }
    Ok(())
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    if !a.vm.is_empty() {
        return run_network(cli, a);
    }
    let (Some(recipe), Some(overlay)) = (&a.recipe, &a.overlay) else {
        bail!("give RECIPE --overlay FILE, or --vm RECIPE:OVERLAY");
    };
    let recipe = cli.recipe(recipe)?;
    let overlay = match crate::overlay::load_any(overlay)? {
        crate::overlay::AnyOverlay::Homeserver(o) => *o,
        // A TURN server is checked from a test network of its own (its
        // checks are allocations from inside that network).
        turn @ crate::overlay::AnyOverlay::Turn(_) => {
            return test_network(
                cli,
                a,
                vec![crate::ops::testnet::VmSpec {
                    recipe,
                    overlay: turn,
                }],
            );
        }
    };
    let store = cli.store()?;
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
    let json = serde_json::to_string_pretty(
        &serde_json::json!({ "recipe": recipe.name, "image": t.image, "accel": accel, "ok": failed.is_empty(), "seconds": t.seconds, "checks": checks, "boot_report": t.boot_report }),
    )?;
    write_report(a, &json)?;
    if a.json {
        println!("{json}");
    } else {
        let tty = std::io::stdout().is_terminal();
        print_checks("", checks, tty);
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
