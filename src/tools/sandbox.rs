//! The sandbox every tree-writing program runs in: a root of mimg's making
//! (the tools environment, or the tree a `run` layer acts on) as `/`, the
//! binds it is given, its own mount, pid, ipc, uts and network namespaces
//! (no network), a clean environment. Inside, the program is root with
//! every capability, so dpkg and maintainer scripts can own files by any
//! uid:
//!
//! - as root, through `bwrap` with every capability kept;
//! - rootless, inside a user namespace that maps the caller to root and
//!   its subordinate ids (`/etc/subuid`, `/etc/subgid`) to 1..N, as
//!   mmdebstrap's unshare mode does; the maps are written by the host's
//!   `newuidmap`/`newgidmap` (setuid: only they may map other ids), and
//!   `bwrap` runs inside it.
//!
//! The host provides only these runners; no host program reads or writes
//! the tree.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{ToolError, is_root, require};

/// A bind of a host path into the sandbox.
#[derive(Debug, Clone)]
struct Bind {
    host: PathBuf,
    inside: String,
    writable: bool,
}

/// What one sandboxed program sees.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    root_writable: bool,
    binds: Vec<Bind>,
    tmpfs: Vec<String>,
    env: Vec<(String, String)>,
}

impl Sandbox {
    /// `root` as `/`, read-only unless `writable`.
    pub fn new(root: &Path, writable: bool, epoch: u64) -> Sandbox {
        Sandbox {
            root: root.to_path_buf(),
            root_writable: writable,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            env: vec![
                ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
                ("LC_ALL".into(), "C.UTF-8".into()),
                ("TZ".into(), "UTC".into()),
                ("HOME".into(), "/root".into()),
                ("SOURCE_DATE_EPOCH".into(), epoch.to_string()),
            ],
        }
    }

    /// `host` at `inside`.
    pub fn bind(mut self, host: &Path, inside: &str, writable: bool) -> Sandbox {
        self.binds.push(Bind {
            host: host.to_path_buf(),
            inside: inside.into(),
            writable,
        });
        self
    }

    /// An empty tmpfs at `inside` (gone with the sandbox, whatever owns it).
    pub fn tmpfs(mut self, inside: &str) -> Sandbox {
        self.tmpfs.push(inside.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Sandbox {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// bwrap's arguments for `argv`.
    fn bwrap_args(&self, argv: &[&str]) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        a.push(
            if self.root_writable {
                "--bind"
            } else {
                "--ro-bind"
            }
            .into(),
        );
        a.push(self.root.clone().into_os_string());
        a.push("/".into());
        for s in [
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--cap-add",
            "ALL",
            "--clearenv",
            "--hostname",
            "localhost",
        ] {
            a.push(s.into());
        }
        for t in &self.tmpfs {
            a.push("--tmpfs".into());
            a.push(t.into());
        }
        for b in &self.binds {
            a.push(if b.writable { "--bind" } else { "--ro-bind" }.into());
            a.push(b.host.clone().into_os_string());
            a.push(b.inside.clone().into());
        }
        for (k, v) in &self.env {
            a.push("--setenv".into());
            a.push(k.into());
            a.push(v.into());
        }
        a.push("--chdir".into());
        a.push("/".into());
        a.push("--".into());
        for s in ["/bin/sh", "-c", "umask 022; exec \"$@\"", "sh"] {
            a.push(s.into());
        }
        a.extend(argv.iter().map(|s| (*s).into()));
        a
    }

    /// Start `argv` in the sandbox with `stdout` (stdin is empty, stderr
    /// piped for [`super::wait`]).
    pub fn spawn(&self, argv: &[&str], stdout: Stdio, tool: &str) -> Result<Child, ToolError> {
        let bwrap = require("bwrap", "bubblewrap")?;
        let spawn_err = |source| ToolError::Spawn {
            tool: tool.into(),
            source,
        };
        if is_root() {
            let mut c = Command::new(bwrap);
            c.env_clear()
                .args(self.bwrap_args(argv))
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(Stdio::piped());
            return c.spawn().map_err(spawn_err);
        }
        let maps = IdMaps::of_caller()?;
        let newuidmap = require("newuidmap", "uidmap")?;
        let newgidmap = require("newgidmap", "uidmap")?;
        // The child enters a new user namespace before it runs the host's
        // sh, which waits for a line on stdin (sent once the maps are
        // written) and then runs bwrap: that exec is by uid 0 of the
        // namespace, so bwrap starts with every capability in it.
        let mut c = Command::new("/bin/sh");
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("-c")
            .arg("read -r go && [ \"$go\" = go ] && exec \"$@\" </dev/null")
            .arg("sh")
            .arg(&bwrap)
            .args(self.bwrap_args(argv))
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped());
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = c.spawn().map_err(spawn_err)?;
        let pid = child.id().to_string();
        let mapped = (|| -> Result<(), ToolError> {
            for (prog, name, m) in [
                (&newuidmap, "newuidmap", &maps.uid),
                (&newgidmap, "newgidmap", &maps.gid),
            ] {
                let mut c = Command::new(prog);
                c.env_clear().arg(&pid).args(m.args());
                super::run(c, name).map_err(|e| match e {
                    ToolError::Failed { tool, status, stderr } => ToolError::Failed {
                        tool,
                        status,
                        stderr: format!(
                            "{stderr}\nhint: a rootless build maps this user's ranges in /etc/subuid and /etc/subgid ({})",
                            m.args().join(" ")
                        ),
                    },
                    e => e,
                })?;
            }
            Ok(())
        })();
        if let Err(e) = mapped {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        Ok(child)
    }
}

/// The caller's uid and gid maps: itself to 0, its first subordinate
/// range to 1..=count.
struct IdMaps {
    uid: IdMap,
    gid: IdMap,
}

struct IdMap {
    own: u32,
    start: u64,
    count: u64,
}

impl IdMap {
    fn args(&self) -> Vec<String> {
        vec![
            "0".into(),
            self.own.to_string(),
            "1".into(),
            "1".into(),
            self.start.to_string(),
            self.count.to_string(),
        ]
    }
}

impl IdMaps {
    fn of_caller() -> Result<IdMaps, ToolError> {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let range = |file: &str, id: u32| -> Result<IdMap, ToolError> {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            subordinate(&text, &user, id)
                .map(|(start, count)| IdMap {
                    own: id,
                    start,
                    count,
                })
                .ok_or_else(|| ToolError::Unavailable {
                    what: format!("a range for {user} (id {id}) in {file}"),
                    hint: format!(
                        "a rootless build needs subordinate ids: add a line like `{user}:100000:65536` to /etc/subuid and /etc/subgid (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}), or build as root"
                    ),
                })
        };
        Ok(IdMaps {
            uid: range("/etc/subuid", uid.as_raw())?,
            gid: range("/etc/subgid", gid.as_raw())?,
        })
    }
}

/// The first range of `user` (or of its numeric id) in a subuid/subgid
/// file: (start, count).
fn subordinate(text: &str, user: &str, id: u32) -> Option<(u64, u64)> {
    let id = id.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who != id {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_id() {
        let t = "root:200000:10\n# none\nalice:100000:65536\n1002:300000:5\nbob:1:0\n";
        assert_eq!(subordinate(t, "alice", 1001), Some((100000, 65536)));
        assert_eq!(subordinate(t, "carol", 1002), Some((300000, 5)));
        assert_eq!(subordinate(t, "bob", 1003), None);
        assert_eq!(subordinate(t, "dave", 1004), None);
    }
}
