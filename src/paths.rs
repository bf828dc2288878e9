//! File system calls whose errors name their path: the same calls as
//! `std::fs`, each error of the same kind but saying what was done to which
//! path ("cannot write /x/y: No space left on device"), so that an I/O
//! error reaching the user always says where.

use std::fs;
use std::io;
use std::path::Path;

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
