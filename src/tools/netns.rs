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
        .map_err(spawn_error("ip"))?;
    super::wait(child, &format!("ip {}", args.join(" ")))
}

/// `ip` itself missing is iproute2 missing; any other failure names `tool`.
fn spawn_error(tool: &str) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| match source.kind() {
        std::io::ErrorKind::NotFound => ToolError::Missing {
            tool: "ip".into(),
            package: "iproute2".into(),
        },
        _ => ToolError::Spawn {
            tool: tool.into(),
            source,
        },
    }
}

/// Remove the namespace `ns`, if it is there (cleanup: errors ignored).
///
/// Every process still in it is killed first: `ip netns del` only unlinks
/// the name, and a process left inside (a server's worker, a child of a
/// killed wrapper) would keep the namespace, and what it holds open, alive.
pub fn delete(ns: &str) {
    if let Ok(o) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
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

/// `PROGRAM ARGS` inside the namespace `ns` with extra environment
/// variables; stdout and stderr as given, stdin closed.
pub fn spawn(
    ns: &str,
    program: &str,
    args: &[String],
    env: &[(String, String)],
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Child, ToolError> {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(spawn_error(program))
}

/// Whether `program` is on the PATH (a test network's Pebble).
pub fn have(program: &str) -> bool {
    which::which(program).is_ok()
}

/// `PROGRAM ARGS` inside `ns` with extra environment variables, stdin
/// closed, until it exits: its exit code and what it wrote to stdout.
pub fn output(
    ns: &str,
    program: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<(Option<i32>, String), ToolError> {
    let child = spawn(ns, program, args, env, Stdio::piped(), Stdio::inherit())?;
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            tool: program.into(),
            source,
        })?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}
