//! Network namespaces and tap devices for booted VMs, through iproute2's
//! `ip` (as root). Spawned here only.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::ToolError;

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> Result<(), ToolError> {
    let child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing {
                tool: "ip".into(),
                package: "iproute2".into(),
            },
            _ => ToolError::Spawn {
                tool: "ip".into(),
                source,
            },
        })?;
    super::wait(child, &format!("ip {}", args.join(" ")))
}

/// Remove the namespace `ns`, if it is there (cleanup: errors ignored).
pub fn delete(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `PROGRAM ARGS` inside the namespace `ns`, with piped stdin and stdout.
pub fn spawn_piped(ns: &str, program: &Path, args: &[String]) -> std::io::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}
