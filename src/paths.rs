//! File system calls whose errors name their path: the same calls as
//! `std::fs`, each error of the same kind but saying what was done to which
//! path ("cannot write /x/y: No space left on device"), so that an I/O
//! error reaching the user always says where; and atomic writes (a file
//! appears complete under its name or not at all).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

fn at(verb: &str, p: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {verb} {}: {e}", p.display()))
}

pub fn write(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
    let p = p.as_ref();
    fs::write(p, data).map_err(|e| at("write", p, e))
}

pub fn read_to_string(p: impl AsRef<Path>) -> io::Result<String> {
    let p = p.as_ref();
    fs::read_to_string(p).map_err(|e| at("read", p, e))
}

pub fn create_dir_all(p: impl AsRef<Path>) -> io::Result<()> {
    let p = p.as_ref();
    fs::create_dir_all(p).map_err(|e| at("create the directory", p, e))
}

pub fn remove_file(p: impl AsRef<Path>) -> io::Result<()> {
    let p = p.as_ref();
    fs::remove_file(p).map_err(|e| at("remove", p, e))
}

pub fn create(p: impl AsRef<Path>) -> io::Result<fs::File> {
    let p = p.as_ref();
    fs::File::create(p).map_err(|e| at("create", p, e))
}

pub fn open(p: impl AsRef<Path>) -> io::Result<fs::File> {
    let p = p.as_ref();
    fs::File::open(p).map_err(|e| at("open", p, e))
}

pub fn set_permissions(p: impl AsRef<Path>, perm: fs::Permissions) -> io::Result<()> {
    let p = p.as_ref();
    fs::set_permissions(p, perm).map_err(|e| at("set the mode of", p, e))
}

pub fn hard_link(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let (from, to) = (from.as_ref(), to.as_ref());
    fs::hard_link(from, to).map_err(|e| at(&format!("link {} to", from.display()), to, e))
}

// Atomic writes: a file appears complete under its name or not at all
// (a temporary file in the same directory, synced, then renamed).

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
pub fn atomic_write(p: &Path, data: &[u8]) -> anyhow::Result<()> {
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
pub fn atomic_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = tmp_beside(to);
    let mut src =
        fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    synced_copy(&mut src, from, &tmp)?;
    fs::rename(&tmp, to).with_context(|| format!("cannot rename into {}", to.display()))?;
    Ok(())
}

/// Copy the open file `src` (read from `from`) to a new file `dest` with
/// its permissions, and sync it.
pub fn synced_copy(src: &mut fs::File, from: &Path, dest: &Path) -> anyhow::Result<()> {
    let fail = || format!("cannot copy {} to {}", from.display(), dest.display());
    let mut f = fs::File::create(dest).with_context(fail)?;
    std::io::copy(src, &mut f).with_context(fail)?;
    f.set_permissions(src.metadata()?.permissions())
        .with_context(fail)?;
    f.sync_all().with_context(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_name_the_path() {
        let e = super::read_to_string("/nonexistent/mimg-test").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("cannot read /nonexistent/mimg-test"),
            "{e}"
        );
    }
}
