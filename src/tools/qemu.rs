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
/// when one is given; its stderr goes to `stderr`.
pub fn start(args: &[String], netns: Option<&str>, stderr: Stdio) -> Result<Child, ToolError> {
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
        .stderr(stderr);
    c.spawn().map_err(spawn_error("qemu-system-x86_64"))
}

/// The first line of `qemu-system-x86_64 --version` (empty when it cannot
/// be run).
pub fn system_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Whether KVM works: /dev/kvm can exist and still fail at the first vCPU
/// reset (QEMU aborts setting an MSR). A paused QEMU with KVM is asked for
/// its status over QMP: the main loop answers only once the machine is made
/// and its vCPUs reset, so an answer, and QEMU still alive a moment later,
/// means KVM works. No fixed wait: a busy host that starts QEMU slowly is
/// waited for (up to 30 s), not mistaken for one where KVM works.
pub fn kvm_works() -> bool {
    use std::io::{BufRead, Write};
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
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = probe else { return false };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        // The greeting, then the answers to the two commands.
        let greeted = matches!(lines.next(), Some(Ok(l)) if l.contains("\"QMP\""));
        let asked = greeted
            && stdin
                .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
                .and_then(|_| stdin.flush())
                .is_ok();
        let answered = asked
            && lines
                .map_while(Result::ok)
                .any(|l| l.contains("\"status\""));
        let _ = tx.send(answered);
        // stdin is dropped here, after the answer.
    });
    let answered = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or(false);
    let alive = answered && {
        std::thread::sleep(std::time::Duration::from_millis(300));
        matches!(child.try_wait(), Ok(None))
    };
    let _ = child.kill();
    let _ = child.wait();
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's verdict is what a real (unpaused, diskless) KVM run
    /// shows: alive after 3 s, or dead. On this kind of machine /dev/kvm
    /// opens and KVM aborts at the first vCPU reset: the probe must say no,
    /// also on a busy host.
    #[test]
    fn the_kvm_probe_agrees_with_a_real_kvm_run() {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !usable || which::which("qemu-system-x86_64").is_err() {
            eprintln!("no usable /dev/kvm or no QEMU: the probe is not called here");
            return;
        }
        let mut real = Command::new("qemu-system-x86_64")
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
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let real_works = matches!(real.try_wait(), Ok(None));
        let _ = real.kill();
        let _ = real.wait();
        assert_eq!(
            kvm_works(),
            real_works,
            "the probe and a real KVM run disagree"
        );
    }
}
