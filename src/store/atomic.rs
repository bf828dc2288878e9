//! Atomic writes: a file appears complete under its name or not at all
//! (a temporary file in the same directory, synced, then renamed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary name beside `p` for this process (`.NAME.tmp.PID`), for a
/// copy made while something else runs and renamed into place later.
pub fn tmp_beside(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Write `data` to `p` (mode 0644) by a temporary file in its directory,
/// fsync and rename; a temporary file left by an error is removed.
pub fn atomic_write(p: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = || format!("cannot write {}", p.display());
    let mut f = tempfile::NamedTempFile::new_in(dir).with_context(fail)?;
    f.write_all(data).with_context(fail)?;
    f.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .with_context(fail)?;
    f.as_file().sync_all().with_context(fail)?;
    f.persist(p)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename into {}", p.display()))?;
    Ok(())
}

/// Copy `from` to `to` by a temporary file beside `to`, synced, renamed.
pub fn atomic_copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_beside(to);
    let mut src =
        fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    synced_copy(&mut src, from, &tmp)?;
    fs::rename(&tmp, to).with_context(|| format!("cannot rename into {}", to.display()))?;
    Ok(())
}

/// Copy the open file `src` (read from `from`) to a new file `dest` with
/// its permissions, and sync it.
pub fn synced_copy(src: &mut fs::File, from: &Path, dest: &Path) -> Result<()> {
    let fail = || format!("cannot copy {} to {}", from.display(), dest.display());
    let mut f = fs::File::create(dest).with_context(fail)?;
    std::io::copy(src, &mut f).with_context(fail)?;
    f.set_permissions(src.metadata()?.permissions())
        .with_context(fail)?;
    f.sync_all().with_context(fail)?;
    Ok(())
}
