//! `mimg test`: build (cached), render the overlay's seed, boot the image
//! with it and a data disk, and run the acceptance checks a Matrix client
//! would ([`crate::vm::acceptance`]). Returns the checks; prints nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::overlay::Overlay;
use crate::recipe::Recipe;
use crate::report::Reporter;
use crate::store::Store;
use crate::vm::acceptance::{self, Check};

/// How to run the checks.
pub struct TestOptions {
    /// Output directory of the build.
    pub out: PathBuf,
    /// A data disk to use (kept); else a blank one for the run.
    pub data_disk: Option<PathBuf>,
    /// Seconds to wait for Synapse to answer after boot.
    pub timeout: u64,
}

/// What a test run found.
pub struct Tested {
    pub image: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    pub checks: Vec<Check>,
    pub seconds: f64,
    /// The last lines of the VM's serial console.
    pub serial_tail: String,
    /// What the image's boot report said on the console (`mimg-boot:`
    /// lines: the boot's total, then its five slowest units).
    pub boot_report: Vec<String>,
}

/// The `mimg-boot:` lines of a serial console, without the prefix.
fn boot_report(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| {
            l.split_once("mimg-boot: ")
                .map(|(_, r)| r.trim().to_string())
        })
        .collect()
}

/// Build, seed, boot and check `recipe` with `overlay`.
pub fn test(
    recipe: &Recipe,
    store: Store,
    overlay: &Overlay,
    t: &TestOptions,
    rep: &dyn Reporter,
) -> Result<Tested> {
    let t0 = Instant::now();
    let built =
        crate::ops::build::build(recipe, &store, &t.out, rep, crate::ops::Options::default())?;
    // Booting reads only the published image: the store is let go (gc may run).
    drop(store);
    let work = tempfile::Builder::new().prefix("mimg-test-").tempdir()?;
    let rendered = crate::seed::render(overlay);
    let seed = work.path().join("seed.img");
    std::fs::write(
        &seed,
        crate::seed::image(&rendered, crate::seed::volume_id(&rendered))?,
    )?;
    let data = match &t.data_disk {
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
        scratch_data: t.data_disk.is_none(),
        forwards: vec![crate::vm::Forward {
            host: port,
            guest: 80,
        }],
        serial_log: serial.clone(),
        memory_mib: 2048,
        cpus: 2,
        uefi: false,
        attach: None,
    };
    let mut vm = crate::vm::start(&spec)?;
    rep.note(&format!(
        "booting {} ({}, {}), waiting for Synapse through nginx",
        built.image.display(),
        vm.accel.to_uppercase(),
        vm.mode
    ));
    let client = acceptance::Client::new(port);
    let mut checks: Vec<Check> = Vec::new();
    let boot = Instant::now();
    let healthy = acceptance::wait_healthy(
        &client,
        overlay,
        Duration::from_secs(t.timeout),
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
    if let Ok(h) = &healthy {
        checks.push(acceptance::ready_check(h));
        checks.extend(acceptance::run_checks(&client, overlay, vm.guest));
    }
    // The boot report follows first boot within seconds: wait for it a
    // little, for the record (`mimg-boot:` lines, the CPUs' total last).
    let seen = Instant::now();
    while healthy.is_ok()
        && !vm.serial().contains("mimg-boot: cpu total")
        && seen.elapsed() < Duration::from_secs(30)
        && vm.running()
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let accel = vm.accel;
    let serial_text = vm.serial();
    drop(vm);
    Ok(Tested {
        image: built.image,
        accel,
        checks,
        seconds: t0.elapsed().as_secs_f64(),
        serial_tail: serial_tail(&serial_text),
        boot_report: boot_report(&serial_text),
    })
}

/// The last 30 lines of the serial console, after what the first-boot
/// script said (its lines may lie further up, under cloud-init's output).
pub(crate) fn serial_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    let firstboot: Vec<&str> = lines[..lines.len() - tail.len()]
        .iter()
        .copied()
        .filter(|l| {
            l.contains("mimg-firstboot") || l.contains("Traceback") || l.contains("registering ")
        })
        .collect();
    let mut out = Vec::new();
    if !firstboot.is_empty() {
        out.push("(the first-boot script, from further up:)");
        out.extend(firstboot.iter().rev().take(20).rev());
        out.push("(the last lines:)");
    }
    out.extend(tail);
    out.join("\n")
}
