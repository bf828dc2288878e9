//! The one place that spawns processes.
//!
//! Every program that writes tree or image bytes (mmdebstrap with its apt,
//! dpkg and tar; mkfs.ext4, grub-mkimage, qemu-img; a `run` layer's
//! commands) runs from the tools environment or the tree itself through
//! `bwrap` ([`sandbox`]), so the host's versions never reach an image. The
//! host's own programs here only move or check bytes whose hashes are
//! pinned (apt-get resolving and gpgv checking at lock time, pip download),
//! run the sandbox (bwrap, newuidmap) or boot (QEMU, ip).
//! Every child gets a clean environment: `LC_ALL=C.UTF-8`, `TZ=UTC`,
//! umask 022 and `SOURCE_DATE_EPOCH`; nothing else of the caller's leaks.

pub mod netns;
pub mod qemu;
pub mod sandbox;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "`{tool}` is not installed on this host\nhint: run `make deps` (or apt-get install {package})"
    )]
    Missing { tool: String, package: String },
    #[error("cannot start `{tool}`: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("this host lacks {what}\nhint: {hint}")]
    Unavailable { what: String, hint: String },
    #[error("`{tool}` failed ({status}):\n{stderr}")]
    Failed {
        tool: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Whether we run as root (else rootless, through user namespaces).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a process of another uid can reach `dir` (every directory from
/// `/` down to it searchable by others): in unshare mode apt reads the
/// local repository as a subordinate uid.
pub fn reachable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Find `tool` on the host's PATH, then in /usr/sbin, /usr/bin, /sbin and
/// /bin (an ordinary user's PATH may lack the sbin ones; PATH may be unset).
pub fn which(tool: &str) -> Option<PathBuf> {
    which::which(tool)
        .ok()
        .or_else(|| which::which_in(tool, Some("/usr/sbin:/usr/bin:/sbin:/bin"), "/").ok())
}

pub(crate) fn require(tool: &str, package: &str) -> Result<PathBuf, ToolError> {
    which(tool).ok_or_else(|| ToolError::Missing {
        tool: tool.into(),
        package: package.into(),
    })
}

/// A command with the clean environment every tool gets.
fn clean(program: &Path, epoch: u64) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("umask 022; exec \"$@\"")
        .arg("sh")
        .arg(program);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    if let Some(home) = std::env::var_os("HOME") {
        c.env("HOME", home);
    }
    c
}

/// Run to the end; on failure the error carries the last lines of stderr.
pub fn run(mut cmd: Command, tool: &str) -> Result<(), ToolError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|source| ToolError::Spawn {
        tool: tool.into(),
        source,
    })?;
    wait(child, tool)
}

/// Wait for a spawned child whose stderr is piped.
pub fn wait(mut child: Child, tool: &str) -> Result<(), ToolError> {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        tool: tool.into(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(tool, status, &err))
    }
}

/// A failure carrying the last lines of the tool's stderr.
fn failed(tool: &str, status: ExitStatus, stderr: &str) -> ToolError {
    let lines: Vec<&str> = stderr.lines().collect();
    ToolError::Failed {
        tool: tool.into(),
        status,
        stderr: lines[lines.len().saturating_sub(25)..].join("\n"),
    }
}

/// `gpgv`: is `file` (clearsigned) validly signed by a key in `keyring`?
pub fn gpgv(keyring: &Path, file: &Path) -> Result<(), ToolError> {
    let p = require("gpgv", "gpgv")?;
    let mut c = clean(&p, 0);
    c.arg("--keyring").arg(keyring).arg(file);
    run(c, "gpgv")
}

/// The host's `apt-get` with the configuration file `config` only (a
/// private directory: it resolves and reads indices, never installs);
/// returns its standard output.
pub fn apt_get(config: &Path, args: &[&str]) -> Result<String, ToolError> {
    let p = require("apt-get", "apt")?;
    let mut c = clean(&p, 0);
    c.env("APT_CONFIG", config).args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().map_err(|source| ToolError::Spawn {
        tool: "apt-get".into(),
        source,
    })?;
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            tool: "apt-get".into(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(
            "apt-get",
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ))
    }
}

/// A finished tools environment: a Debian root in the store.
#[derive(Debug, Clone)]
pub struct ToolsEnv {
    root: PathBuf,
}

impl ToolsEnv {
    pub fn new(root: PathBuf) -> ToolsEnv {
        ToolsEnv { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A sandbox with this environment, read-only, as `/` (see
    /// [`sandbox::Sandbox`]), where its programs run as root.
    pub fn sandbox(&self, epoch: u64) -> sandbox::Sandbox {
        sandbox::Sandbox::new(&self.root, false, epoch)
    }

    /// `program` from the tools environment, with `work` at `/mnt` (read-write)
    /// and nothing else of the host visible.
    pub fn command(&self, program: &str, work: &Path, epoch: u64) -> Result<Command, ToolError> {
        self.command_with(program, work, None, epoch)
    }

    /// [`ToolsEnv::command`] with also `scratch` at `/tmp/scratch` (read-write).
    pub fn command_with(
        &self,
        program: &str,
        work: &Path,
        scratch: Option<&Path>,
        epoch: u64,
    ) -> Result<Command, ToolError> {
        let bwrap = require("bwrap", "bubblewrap")?;
        let mut c = Command::new(bwrap);
        c.env_clear()
            .arg("--ro-bind")
            .arg(&self.root)
            .arg("/")
            .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(work)
            .arg("/mnt");
        if let Some(s) = scratch {
            c.arg("--bind").arg(s).arg("/tmp/scratch");
        }
        c.args([
            "--chdir",
            "/mnt",
            "--unshare-all",
            "--die-with-parent",
            "--clearenv",
        ])
        .args(["--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin"])
        .args([
            "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "TZ", "UTC", "--setenv", "HOME", "/tmp",
        ])
        .args(["--setenv", "SOURCE_DATE_EPOCH", &epoch.to_string()])
        .args([
            "--",
            "/bin/sh",
            "-c",
            "umask 022; exec \"$@\"",
            "sh",
            program,
        ]);
        Ok(c)
    }
}

/// `pip download` of binary wheels for Python `python` on x86_64 Linux
/// into `dest`, with the host's pip and its configuration (index, proxy,
/// certificates: transport only, the lock pins every wheel by sha256).
pub fn pip_download(
    requirements: &[String],
    python: &str,
    no_deps: bool,
    constraints: Option<&Path>,
    dest: &Path,
) -> Result<(), ToolError> {
    let py = which("python3")
        .filter(|p| p.starts_with("/usr"))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"));
    let mut c = Command::new(py);
    c.args([
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
    ]);
    for plat in [
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux1_x86_64",
        "linux_x86_64",
    ] {
        c.args(["--platform", plat]);
    }
    if no_deps {
        c.arg("--no-deps");
    }
    if let Some(f) = constraints {
        c.arg("--constraint").arg(f);
    }
    c.arg("--dest").arg(dest).arg("--").args(requirements);
    run(c, "pip download")
}
