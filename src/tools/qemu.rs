//! The host's QEMU, to boot images (never to build them: the qemu-img that
//! writes image bytes runs from the tools environment). Spawned here only.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::ToolError;

fn spawn_error(tool: &str) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| match source.kind() {
        std::io::ErrorKind::NotFound => ToolError::Missing {
            tool: tool.into(),
            package: if tool == "qemu-img" {
                "qemu-utils".into()
            } else {
                "qemu-system-x86".into()
            },
        },
        _ => ToolError::Spawn {
            tool: tool.into(),
            source,
        },
    }
}

/// `qemu-img create -f qcow2 [-F qcow2 -b BACKING] PATH [SIZE]`: an overlay
/// over `backing`, or a blank disk of `size`.
pub fn create_qcow2(
    path: &Path,
    backing: Option<&Path>,
    size: Option<&str>,
) -> Result<(), ToolError> {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        c.args(["-F", "qcow2", "-b"]).arg(b);
    }
    c.arg(path);
    if let Some(s) = size {
        c.arg(s);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().map_err(spawn_error("qemu-img"))?;
    super::wait(child, "qemu-img")
}

/// Start `qemu-system-x86_64 ARGS`, inside the network namespace `netns`
/// when one is given; its stderr goes to ours.
pub fn start(args: &[String], netns: Option<&str>) -> Result<Child, ToolError> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c.spawn().map_err(spawn_error("qemu-system-x86_64"))
}

/// Whether KVM works: /dev/kvm can exist and still fail at the first vCPU
/// reset, so start a paused QEMU with it and see whether it survives
/// 1.5 s.
pub fn kvm_works() -> bool {
    let probe = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-m",
            "32",
            "-S",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = probe else { return false };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_millis(1500) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}
