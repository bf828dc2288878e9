//! `mimg seed` and `mimg overlay check` from the command line.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn the_example_seeds_to_a_private_stable_file() {
    let w = work("seed-cli");
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(w.join("a.img"));
    assert!(run(c).status.success());
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(w.join("b.img"));
    assert!(run(c).status.success());
    assert_eq!(
        sha256(&w.join("a.img")),
        sha256(&w.join("b.img")),
        "same overlay, same bytes"
    );
    let mode = std::fs::metadata(w.join("a.img"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A real FAT volume labelled CIDATA with the three files (mtools reads it).
    let o = std::process::Command::new("mdir")
        .args(["-i"])
        .arg(w.join("a.img"))
        .arg("::")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.contains("CIDATA"), "{listing}");
    for f in ["meta-data", "user-data", "network-config"] {
        assert!(listing.contains(f), "{f} missing: {listing}");
    }
}

#[test]
fn overlay_check_accepts_the_example_and_refuses_bad_values_writing_nothing() {
    let mut c = mimg();
    c.args(["overlay", "check", "overlays/example.toml"]);
    let o = run(c);
    assert!(o.status.success());
    assert!(stdout(&o).contains("ok"));

    let w = work("seed-bad");
    let text = std::fs::read_to_string(repo().join("overlays/example.toml"))
        .unwrap()
        .replace(
            "example-secrets/",
            &format!("{}/overlays/example-secrets/", repo().display()),
        );
    let bad = text.replace(
        "server_name = \"example.org\"",
        "server_name = \"example.org; include /etc/shadow\"",
    );
    std::fs::write(w.join("bad.toml"), bad).unwrap();
    let mut c = mimg();
    c.arg("seed")
        .arg(w.join("bad.toml"))
        .arg("--out")
        .arg(w.join("bad.img"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.toml:5:") && stderr(&o).contains("`server_name`"),
        "{}",
        stderr(&o)
    );
    assert!(!w.join("bad.img").exists(), "nothing written");
}
