//! Where the image step keeps its raw disk while mkfs.ext4 writes it and
//! qemu-img reads it (and a run layer the tar of the tree it runs in). The
//! raw disk is scratch: it is never part of an output, so it need not
//! reach the disk. In memory (`/dev/shm`) mkfs's
//! final fsync costs nothing and qemu-img reads it at memory speed; when
//! memory is short it stays beside the step's outputs, as before.
//! `MIMG_SCRATCH=DIR` names the place explicitly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The scratch directory of one image step; removed when dropped. Its
/// build holds a lock on it while it lives.
pub struct Scratch {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl Scratch {
    /// A scratch directory for a raw disk holding about `bytes` of data:
    /// `MIMG_SCRATCH` if set, else `/dev/shm` when it and the machine's
    /// free memory have room to spare, else inside `fallback`.
    pub fn new(bytes: u64, fallback: &Path) -> Result<Scratch> {
        let base = match std::env::var_os("MIMG_SCRATCH") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => in_memory(bytes).unwrap_or_else(|| fallback.to_path_buf()),
        };
        sweep(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&base)
            .with_context(|| format!("cannot make a scratch directory in {}", base.display()))?;
        let lock = crate::paths::open(dir.path())?;
        lock.lock()?;
        tracing::debug!("scratch space in {}", dir.path().display());
        Ok(Scratch { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Scratch directories are named `mimg-image-PID-RANDOM`.
const PREFIX: &str = "mimg-image-";

/// Remove the scratch directories in `base` of builds that were killed
/// (their process is gone and nothing holds the directory's lock; the lock
/// also covers builds in another pid namespace): in `/dev/shm` they would
/// hold memory until the next reboot. Best effort: what cannot be removed
/// is left.
fn sweep(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let unlocked = || std::fs::File::open(e.path()).is_ok_and(|f| f.try_lock().is_ok());
        if !Path::new("/proc").join(pid.to_string()).exists() && unlocked() {
            tracing::debug!(
                "image: removing {}, left by a killed build",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `/dev/shm` when it can hold `bytes` twice over and the machine has
/// four times `bytes` of memory available (the mapped tars and the page
/// cache want room too): a build never pushes the machine into swap for
/// speed.
fn in_memory(bytes: u64) -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let need = bytes.saturating_add(256 << 20);
    let free = nix::sys::statvfs::statvfs(shm).ok()?;
    let shm_free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let available = mem_available()?;
    (shm_free / 2 >= need && available / 4 >= need).then(|| shm.to_path_buf())
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24609768 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn scratch_of_a_killed_build_is_swept() {
        let base = tempfile::tempdir().unwrap();
        // A process that has ended: its pid names no live process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = base.path().join(format!("{PREFIX}{dead}-abc"));
        let live = base
            .path()
            .join(format!("{PREFIX}{}-def", std::process::id()));
        let other = base.path().join("mimg-image-notapid");
        for d in [&stale, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("disk.raw"), b"x").unwrap();
        }
        // A dead pid whose directory is still locked (a build in another
        // pid namespace) is kept.
        let foreign = base.path().join(format!("{PREFIX}{dead}-ghi"));
        std::fs::create_dir(&foreign).unwrap();
        let held = std::fs::File::open(&foreign).unwrap();
        held.lock().unwrap();
        sweep(base.path());
        assert!(foreign.exists(), "a locked scratch is kept");
        assert!(!stale.exists(), "a dead build's scratch is removed");
        assert!(live.exists(), "a live build's scratch is kept");
        assert!(other.exists(), "names not ours are kept");
    }

    #[test]
    fn scratch_is_removed_when_dropped() {
        let base = tempfile::tempdir().unwrap();
        // A size no memory holds: the scratch goes beside the outputs.
        let s = Scratch::new(u64::MAX / 2, base.path()).unwrap();
        let p = s.path().to_path_buf();
        assert!(p.starts_with(base.path()) || std::env::var_os("MIMG_SCRATCH").is_some());
        std::fs::write(p.join("disk.raw"), b"x").unwrap();
        drop(s);
        assert!(!p.exists());
    }
}
