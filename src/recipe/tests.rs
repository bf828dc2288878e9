//! Recipe parsing: merge rules and error locations.

use super::validate::parse_size;
use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"
[base]
suite = "trixie"
[sources.backports]
suite = "trixie-backports"
[disk]
size = "2G"
[[layer]]
name = "system"
kind = "apt"
packages = ["systemd-sysv"]
[[layer]]
name = "motd"
kind = "files"
from = "files"
"#;

#[test]
fn defaults_and_layers() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("files")).unwrap();
    let r = load(&write(d.path(), "base.toml", BASE)).unwrap();
    assert_eq!(r.name.as_str(), "base");
    assert_eq!(r.base.suite.as_str(), "trixie");
    assert_eq!(r.base.components[0].as_str(), "main");
    assert_eq!(r.disk.size, 2 << 30);
    assert_eq!(r.disk.boot, vec![BootMode::Bios, BootMode::Uefi]);
    assert_eq!(r.layers.len(), 2);
    assert_eq!(r.sources.len(), 1);
}

#[test]
fn extends_replaces_layers_in_place_and_appends_new_ones() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("files")).unwrap();
    write(d.path(), "base.toml", BASE);
    let child = write(
        d.path(),
        "child.toml",
        r#"extends = "base"
[disk]
boot = ["uefi"]
[[layer]]
name = "system"
kind = "apt"
packages = ["systemd-sysv", "nginx"]
source = "backports"
[[layer]]
name = "enable"
kind = "run"
script = "true"
"#,
    );
    let r = load(&child).unwrap();
    let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["system", "motd", "enable"]);
    assert_eq!(r.disk.size, 2 << 30);
    assert_eq!(r.disk.boot, vec![BootMode::Uefi]);
    match &r.layers[0].kind {
        LayerKind::Apt { packages, source } => {
            assert_eq!(packages.len(), 2);
            assert_eq!(source.as_ref().unwrap().as_str(), "backports");
        }
        other => panic!("{other:?}"),
    }
}

fn err_of(text: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    load(&write(d.path(), "bad.toml", text))
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err_of(
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"x\"\nkind = \"apt\"\npackages = [\"Bad Name\"]\n",
    );
    assert!(e.contains("bad.toml:6:"), "{e}");
    assert!(e.contains("layer.x.packages"), "{e}");

    let e = err_of("[base]\nsuite = \"trixie\"\nmirror = \"http://example.org\"\n");
    assert!(e.contains("bad.toml:3:"), "{e}");
    assert!(e.contains("mirror"), "{e}");

    let e = err_of(
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"x\"\nkind = \"run\"\npackages = [\"a\"]\nscript = \"true\"\n",
    );
    assert!(
        e.contains("bad.toml:6:") && e.contains("is not a key of a `run` layer"),
        "{e}"
    );

    let e = err_of(
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"x\"\nkind = \"run\"\nscript = \"true\"\nsees = [\"pip\", \"wheel\"]\n",
    );
    assert!(
        e.contains("bad.toml:7:") && e.contains("layer.x.sees") && e.contains("`wheel`"),
        "{e}"
    );
    let e = err_of(
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"x\"\nkind = \"files\"\nfrom = \".\"\nsees = [\"pip\"]\n",
    );
    assert!(e.contains("is not a key of a `files` layer"), "{e}");

    let e = err_of("[base]\nsuite = \"trixie\"\n[disk]\nsize = \"12X\"\n");
    assert!(e.contains("bad.toml:4:") && e.contains("disk.size"), "{e}");

    let e = err_of("[base]\nsuite = \"trixie\"\n[disk]\ncompress = \"lz4\"\n");
    assert!(
        e.contains("bad.toml:4:") && e.contains("disk.compress") && e.contains("zstd"),
        "{e}"
    );

    let e = err_of(
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"x\"\nkind = \"apt\"\npackages = [\"a\"]\nsource = \"nope\"\n",
    );
    assert!(e.contains("no source named `nope`"), "{e}");

    let e = err_of("[base\nsuite = 1\n");
    assert!(e.contains("bad.toml:1:"), "{e}");
}

#[test]
fn extends_cycle_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "extends = \"b\"\n");
    let b = write(d.path(), "b.toml", "extends = \"a\"\n");
    let e = load(&b).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4G").unwrap(), 4 << 30);
    assert_eq!(parse_size("512M").unwrap(), 512 << 20);
    assert!(parse_size("100M").is_err());
    assert!(parse_size("4Q").is_err());
    assert!(parse_size("").is_err());
}
