//! `mimg run IMAGE [--seed SEED] [--data-disk FILE] [--forward H:G]...`.

use std::path::PathBuf;

use anyhow::Result;

use super::Cli;
use crate::vm::{Forward, RunSpec};

/// Boot an image in QEMU (KVM when it works, else TCG); the image is never
/// modified. Runs until the VM powers off or mimg is interrupted.
#[derive(clap::Args)]
pub struct Args {
    /// The qcow2 image.
    image: PathBuf,
    /// A cloud-init seed (from `mimg seed`).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// A data disk, seen by the guest as /dev/vdb.
    #[arg(long)]
    data_disk: Option<PathBuf>,
    /// Forward 127.0.0.1:HOSTPORT to the guest's GUESTPORT (repeatable).
    #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT")]
    forwards: Vec<Forward>,
    /// Where the serial console goes (default: beside the image, NAME.serial.log).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Boot with UEFI (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long)]
    uefi: bool,
}

pub fn run(_cli: &Cli, a: &Args) -> Result<()> {
    let serial_log = a
        .serial_log
        .clone()
        .unwrap_or_else(|| a.image.with_extension("serial.log"));
    let spec = RunSpec {
        image: a.image.clone(),
        seed: a.seed.clone(),
        data_disk: a.data_disk.clone(),
        scratch_data: false,
        forwards: a.forwards.clone(),
        serial_log: serial_log.clone(),
        memory_mib: a.memory,
        cpus: a.cpus,
        uefi: a.uefi,
        attach: None,
    };
    let mut vm = crate::vm::start(&spec)?;
    eprintln!(
        "mimg run: {} booting; network: {}; serial console: {}",
        a.image.display(),
        vm.mode,
        serial_log.display()
    );
    if let Some(g) = vm.guest {
        eprintln!("mimg run: guest address {g}");
    }
    for f in &a.forwards {
        eprintln!("mimg run: 127.0.0.1:{} -> guest port {}", f.host, f.guest);
    }
    // SIGINT/SIGTERM stop QEMU (and remove the namespace) through Drop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))?;
    while vm.running() {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("mimg run: stopping the VM");
            drop(vm);
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let st = vm.wait()?;
    eprintln!("mimg run: QEMU exited ({st})");
    Ok(())
}
