//! Locks against a local signed apt repository, made here with a
//! throw-away key: the signature check, resolution of an extra source's
//! packages (with a dependency), exact pins, builds that keep their bytes
//! when the repository moves on, `--update PKG`, and bad signatures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn sh(cmd: &mut Command) {
    let o = cmd.output().expect("command runs");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A throw-away signing key in its own GnuPG home; returns the binary
/// public keyring.
fn key(home: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(home).unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--batch").arg("--homedir").arg(home);
        c
    };
    sh(gpg().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        &format!("{name} <{name}@test.invalid>"),
        "ed25519",
        "sign",
        "never",
    ]));
    let ring = home.join("keyring.gpg");
    sh(gpg().arg("--output").arg(&ring).arg("--export"));
    ring
}

/// A .deb of architecture `all` built with dpkg-deb.
fn deb(pool: &Path, name: &str, version: &str, depends: Option<&str>) -> PathBuf {
    let root = pool.join(format!("build-{name}-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join(format!("usr/share/doc/{name}"))).unwrap();
    std::fs::write(
        root.join(format!("usr/share/doc/{name}/README")),
        format!("{name} {version}\n"),
    )
    .unwrap();
    let dep = depends
        .map(|d| format!("Depends: {d}\n"))
        .unwrap_or_default();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: mimg tests <t@test.invalid>\n{dep}Description: test package\n"
        ),
    )
    .unwrap();
    let out = pool.join(format!("{name}_{version}_all.deb"));
    sh(Command::new("dpkg-deb")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&out));
    std::fs::remove_dir_all(&root).unwrap();
    out
}

/// (Re)write the suite's index, Release and InRelease signed by `home`'s key.
fn publish(repo: &Path, home: &Path) {
    let dists = repo.join("dists/mimgtest");
    let bin = dists.join("main/binary-amd64");
    std::fs::create_dir_all(&bin).unwrap();
    let o = Command::new("dpkg-scanpackages")
        .args(["-m", "pool", "/dev/null"])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(bin.join("Packages"), &o.stdout).unwrap();
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "-R"])
            .env("LC_ALL", "C")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let release = format!(
        "Origin: mimg-test\nLabel: mimg-test\nSuite: mimgtest\nCodename: mimgtest\nDate: {}\nArchitectures: amd64 all\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        date.trim(),
        sha256(&bin.join("Packages")),
        o.stdout.len()
    );
    std::fs::write(dists.join("Release"), release).unwrap();
    let _ = std::fs::remove_file(dists.join("InRelease"));
    sh(Command::new("gpg")
        .arg("--batch")
        .arg("--homedir")
        .arg(home)
        .arg("--output")
        .arg(dists.join("InRelease"))
        .arg("--clearsign")
        .arg(dists.join("Release")));
}

fn recipe(dir: &Path, port: u16, keyring: &Path) -> PathBuf {
    let text = format!(
        "extends = \"{}\"\n\n[sources.local]\nsuite = \"mimgtest\"\nurl = \"http://127.0.0.1:{port}\"\nkeyring = \"{}\"\n\n[[layer]]\nname = \"hello\"\nkind = \"apt\"\nsource = \"local\"\npackages = [\"mimg-hello\"]\n",
        repo().join("recipes/minimal.toml").display(),
        keyring.display()
    );
    let p = dir.join("signedtest.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lock(r: &Path, store: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = mimg();
    c.arg("lock").arg(r).args(extra).env("MIMG_STORE", store);
    run(c)
}

fn build_at(r: &Path, store: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = mimg();
    c.arg("build")
        .arg(r)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("MIMG_STORE", store);
    run(c)
}

fn pinned(lock_text: &str, name: &str) -> Option<(String, String)> {
    let v: toml::Value = toml::from_str(lock_text).unwrap();
    v["debs"]["rootfs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"].as_str() == Some(name))
        .map(|d| {
            (
                d["version"].as_str().unwrap().to_string(),
                d["sha256"].as_str().unwrap().to_string(),
            )
        })
}

#[test]
fn a_signed_local_repository_is_checked_resolved_pinned_and_built_from() {
    let w = work("lock-signed");
    let home = w.join("gnupg");
    let ring = key(&home, "archive");
    let other = key(&w.join("gnupg-other"), "stranger");
    let www = w.join("www");
    let pool = www.join("pool/main");
    std::fs::create_dir_all(&pool).unwrap();
    let lib = deb(&pool, "mimg-libfake", "2.0", None);
    let hello1 = deb(&pool, "mimg-hello", "1.0", Some("mimg-libfake (>= 2.0)"));
    publish(&www, &home);
    let srv = serve_dir(&www);
    // The shared minimal store: tools and blobs are there already.
    let store = minimal().store.clone();
    let r = recipe(&w, srv.port, &ring);

    // Lock: the extra source's packages (and the dependency) are pinned
    // by the sha256 of the files the repository serves.
    let o = lock(&r, &store, &[]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(w.join("signedtest.lock")).unwrap();
    assert_eq!(
        pinned(&text, "mimg-hello"),
        Some(("1.0".into(), sha256(&hello1)))
    );
    assert_eq!(
        pinned(&text, "mimg-libfake"),
        Some(("2.0".into(), sha256(&lib)))
    );
    assert!(text.contains("path = \"pool/main/mimg-hello_1.0_all.deb\""));
    assert!(
        pinned(&text, "libc6").is_some(),
        "the base suite is pinned too"
    );

    // Build: the manifest lists exactly the pinned versions.
    let o = build_at(&r, &store, &w.join("a"), &["--locked"]);
    assert!(o.status.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("a/signedtest.manifest.json")).unwrap())
            .unwrap();
    assert!(
        manifest["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "mimg-hello" && p["version"] == "1.0"),
        "{manifest}"
    );
    let first = sha256(&w.join("a/signedtest.qcow2"));

    // An air-gapped build: `store fetch` fills an empty store with every
    // pinned file, then a build with the network cut gives the same bytes.
    let gapped = w.join("gapped-store");
    let mut c = mimg();
    c.args(["store", "fetch"])
        .arg(&r)
        .env("MIMG_STORE", &gapped);
    let o = run(c);
    assert!(o.status.success());
    assert!(stdout(&o).contains("fetched"), "{}", stdout(&o));
    let o = build_without_network(&r, &gapped, &w.join("gapped"), &["--offline", "--locked"]);
    assert!(
        o.status.success(),
        "offline build from a fetched store failed"
    );
    assert_eq!(sha256(&w.join("gapped/signedtest.qcow2")), first);
    std::fs::remove_dir_all(&gapped).unwrap();

    // The repository moves on: 1.1 replaces 1.0, which is gone from the pool.
    std::fs::remove_file(&hello1).unwrap();
    let hello2 = deb(&pool, "mimg-hello", "1.1", Some("mimg-libfake (>= 2.0)"));
    publish(&www, &home);
    // Without the rootfs step, from the store's pinned files: the same bytes.
    let keys: Vec<PathBuf> = std::fs::read_dir(store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for k in keys {
        let meta = std::fs::read_to_string(k.join("meta.json")).unwrap_or_default();
        if meta.contains("\"label\":\"rootfs\"") || meta.contains("\"label\": \"rootfs\"") {
            std::fs::remove_dir_all(&k).unwrap();
        }
    }
    let o = build_at(&r, &store, &w.join("b"), &["--locked"]);
    assert!(o.status.success());
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.contains("rootfs") && l.contains("built in")),
        "the rootfs was made again: {}",
        stderr(&o)
    );
    assert_eq!(sha256(&w.join("b/signedtest.qcow2")), first);

    // --update of one package moves it and keeps every other pin.
    let before = text;
    let o = lock(&r, &store, &["--update", "mimg-hello"]);
    assert!(o.status.success());
    let after = std::fs::read_to_string(w.join("signedtest.lock")).unwrap();
    assert_eq!(
        pinned(&after, "mimg-hello"),
        Some(("1.1".into(), sha256(&hello2)))
    );
    assert_eq!(
        pinned(&after, "mimg-libfake"),
        pinned(&before, "mimg-libfake")
    );
    assert_eq!(pinned(&after, "libc6"), pinned(&before, "libc6"));
    // Naming a package the lock does not pin is an error.
    let o = lock(&r, &store, &["--update", "no-such-package"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`no-such-package` is not pinned"));

    // A keyring that did not sign the release: refused, the lock untouched.
    let bad = recipe(&w, srv.port, &other);
    let o = lock(&bad, &store, &["--update"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not validly signed") && stderr(&o).contains("mimgtest"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(w.join("signedtest.lock")).unwrap(),
        after
    );

    // A tampered release file (its signature no longer matches): refused.
    let r = recipe(&w, srv.port, &ring);
    let inrel = www.join("dists/mimgtest/InRelease");
    let t = std::fs::read_to_string(&inrel)
        .unwrap()
        .replace("Label: mimg-test", "Label: mimg-evil");
    std::fs::write(&inrel, t).unwrap();
    let o = lock(&r, &store, &["--update"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not validly signed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
}
