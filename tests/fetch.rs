//! Pinned fetching through a local HTTP server: good, wrong, cut and
//! hostile files; the store's blobs, `store add`/`verify`; locks and
//! offline builds.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn tgz(path: &Path, entries: &[(&str, &str, &[u8])]) {
    // (name, kind, data-or-link-target)
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::default(),
    ));
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        match *kind {
            "dir" => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
            }
            "link" => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
            }
        }
        let raw = h.as_old_mut().name.as_mut();
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let body: &[u8] = if *kind == "file" { data } else { &[] };
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn serve() -> Server {
    let dir = work("fetch-www");
    tgz(
        &dir.join("webclient-v1.0.0.tar.gz"),
        &[
            ("webclient-v1.0.0/", "dir", b""),
            (
                "webclient-v1.0.0/index.html",
                "file",
                b"<html>stand-in web client</html>\n",
            ),
            ("webclient-v1.0.0/i18n/", "dir", b""),
            ("webclient-v1.0.0/i18n/en.json", "file", b"{}\n"),
        ],
    );
    std::fs::copy(
        dir.join("webclient-v1.0.0.tar.gz"),
        dir.join("truncated-v1.0.0.tar.gz"),
    )
    .unwrap();
    tgz(
        &dir.join("dotdot.tar.gz"),
        &[(
            "x/../../etc/cron.d/evil",
            "file",
            b"* * * * * root reboot\n",
        )],
    );
    tgz(
        &dir.join("symlink.tar.gz"),
        &[
            ("x/", "dir", b""),
            ("x/etc", "link", b"/etc"),
            ("x/etc/passwd", "file", b"evil\n"),
        ],
    );
    serve_dir(&dir)
}

fn recipe(dir: &Path, url: &str, sha: &str) -> PathBuf {
    let text = format!(
        "extends = \"{}\"\n\n[[layer]]\nname = \"element\"\nkind = \"fetch\"\nurl = \"{url}\"\nsha256 = \"{sha}\"\nto = \"/var/www/element\"\nstrip = 1\n",
        repo().join("recipes/minimal.toml").display()
    );
    let p = dir.join("fetchtest.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn build_at(recipe: &Path, store: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = mimg();
    c.arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("MIMG_STORE", store);
    run(c)
}

/// A store shared by the tests of this file (cold once, then warm).
fn store() -> PathBuf {
    static S: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    S.get_or_init(|| work("fetch-store")).clone()
}

#[test]
fn a_pinned_tarball_is_fetched_verified_and_unpacked() {
    let srv = serve();
    let w = work("fetch-good");
    let sha = sha256(&srv.dir.join("webclient-v1.0.0.tar.gz"));
    let r = recipe(
        &w,
        &format!("http://127.0.0.1:{}/webclient-v1.0.0.tar.gz", srv.port),
        &sha,
    );
    let o = build_at(&r, &store(), &w.join("out"), &[]);
    assert!(o.status.success());
    assert!(
        store().join("v1/blobs").join(&sha).is_file(),
        "the tarball is kept in the store by content"
    );
    // The files are in the image, stripped of the top directory.
    let raw = w.join("disk.raw");
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(w.join("out/fetchtest.qcow2"))
            .arg(&raw)
            .status()
            .unwrap()
            .success()
    );
    let o = Command::new("debugfs")
        .args(["-R", "cat /var/www/element/index.html"])
        .arg(format!("{}?offset=35651584", raw.display()))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "<html>stand-in web client</html>\n");

    // The URL is transport: another URL with the same pin changes no key.
    let r2 = recipe(
        &w,
        "http://127.0.0.1:9/elsewhere/webclient-v1.0.0.tar.gz",
        &sha,
    );
    let o = build_at(&r2, &store(), &w.join("out2"), &[]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("built 0 steps"), "{}", stdout(&o));

    // A tampered blob is caught by verify and never used.
    let blob = store().join("v1/blobs").join(&sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let mut c = mimg();
    c.args(["store", "verify"]).env("MIMG_STORE", store());
    let v = run(c);
    assert!(!v.status.success());
    assert!(
        stderr(&v).contains(&sha),
        "verify names the damaged blob: {}",
        stderr(&v)
    );
    let w2 = work("fetch-tampered");
    std::fs::write(w2.join("motd"), "x").unwrap();
    let text = std::fs::read_to_string(&r).unwrap()
        + "\n[[layer]]\nname = \"later\"\nkind = \"files\"\nfrom = \"motd\"\nto = \"/etc/motd\"\n";
    // A changed layer order forces the element step to run again on the damaged blob.
    let r3 = w2.join("fetchtest.toml");
    std::fs::write(
        &r3,
        text.replace("to = \"/var/www/element\"", "to = \"/var/www/element2\""),
    )
    .unwrap();
    let o = build_at(&r3, &store(), &w2.join("out"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    std::fs::remove_file(&blob).unwrap();
}

#[test]
fn a_wrong_sha256_names_both_sums_and_nothing_enters_the_store() {
    let srv = serve();
    let w = work("fetch-wrong");
    let good = sha256(&srv.dir.join("webclient-v1.0.0.tar.gz"));
    let wrong = "0".repeat(64);
    let r = recipe(
        &w,
        &format!("http://127.0.0.1:{}/webclient-v1.0.0.tar.gz", srv.port),
        &wrong,
    );
    let o = build_at(&r, &store(), &w.join("out"), &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&wrong) && e.contains(&good),
        "both sums named: {e}"
    );
    assert!(
        !store().join("v1/blobs").join(&wrong).exists()
            && !store().join("v1/blobs").join(&good).exists()
    );
    assert_eq!(
        std::fs::read_dir(store().join("v1/tmp")).unwrap().count(),
        0,
        "no leftovers"
    );
}

#[test]
fn a_cut_transfer_fails_cleanly() {
    let srv = serve();
    let w = work("fetch-cut");
    let sha = sha256(&srv.dir.join("truncated-v1.0.0.tar.gz"));
    let r = recipe(
        &w,
        &format!("http://127.0.0.1:{}/truncated-v1.0.0.tar.gz", srv.port),
        &sha,
    );
    let o = build_at(&r, &store(), &w.join("out"), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("truncated-v1.0.0.tar.gz"),
        "{}",
        stderr(&o)
    );
    assert!(!store().join("v1/blobs").join(&sha).exists());
}

#[test]
fn hostile_archives_are_refused() {
    let srv = serve();
    for name in ["dotdot.tar.gz", "symlink.tar.gz"] {
        let w = work(&format!("fetch-{name}"));
        let sha = sha256(&srv.dir.join(name));
        let r = recipe(&w, &format!("http://127.0.0.1:{}/{name}", srv.port), &sha);
        let o = build_at(&r, &store(), &w.join("out"), &[]);
        assert!(!o.status.success(), "{name} accepted");
        assert!(
            stderr(&o).contains("refusing to unpack"),
            "{name}: {}",
            stderr(&o)
        );
        assert!(!w.join("out/fetchtest.qcow2").exists());
    }
}

#[test]
fn store_add_satisfies_a_pin_whose_host_is_unreachable_and_offline_builds_match() {
    let srv = serve();
    let w = work("fetch-offline");
    let tarball = srv.dir.join("webclient-v1.0.0.tar.gz");
    let sha = sha256(&tarball);
    let r = recipe(
        &w,
        "http://127.0.0.1:9/unreachable/webclient-v1.0.0.tar.gz",
        &sha,
    );
    // Another target, so the layer step is not already in the store.
    std::fs::write(
        &r,
        std::fs::read_to_string(&r)
            .unwrap()
            .replace("/var/www/element", "/srv/offline-test"),
    )
    .unwrap();
    let _ = std::fs::remove_file(store().join("v1/blobs").join(&sha));
    // Unreachable and not in the store: the error says which file and how to supply it.
    let o = build_at(&r, &store(), &w.join("out"), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&sha) && stderr(&o).contains("mimg store add"),
        "{}",
        stderr(&o)
    );
    let mut c = mimg();
    c.args(["store", "add"])
        .arg(&tarball)
        .env("MIMG_STORE", store());
    assert!(run(c).status.success());
    let o = build_at(&r, &store(), &w.join("out"), &[]);
    assert!(o.status.success());
    let online = sha256(&w.join("out/fetchtest.qcow2"));

    // Lock it, then build with the network cut: same bytes.
    let mut c = mimg();
    c.arg("lock").arg(&r).env("MIMG_STORE", store());
    assert!(run(c).status.success());
    assert!(w.join("fetchtest.lock").is_file());
    let o = build_without_network(&r, &store(), &w.join("offline"), &["--offline", "--locked"]);
    assert!(o.status.success(), "offline build failed");
    assert_eq!(sha256(&w.join("offline/fetchtest.qcow2")), online);

    // --locked names what changed since the lock.
    std::fs::write(
        &r,
        std::fs::read_to_string(&r)
            .unwrap()
            .replace("strip = 1", "strip = 0"),
    )
    .unwrap();
    let mut c = mimg();
    c.args(["build", "--locked"])
        .arg(&r)
        .arg("--out")
        .arg(w.join("out"))
        .env("MIMG_STORE", store());
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("layer `element` changed"),
        "{}",
        stderr(&o)
    );

    // Offline with an empty store fails clearly, without a hang or a panic.
    let empty = work("fetch-empty-store");
    let o = build_without_network(&r, &empty.join("store"), &empty.join("out"), &["--offline"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--offline") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
}
