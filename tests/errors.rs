//! Bad input gets a clear error and loses nothing.

mod common;

use common::*;

fn write_recipe(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_malformed_recipe_names_file_line_and_key_and_writes_nothing() {
    let w = work("bad-recipe");
    let p = write_recipe(
        &w,
        "bad",
        "[base]\nsuite = \"trixie\"\n\n[[layer]]\nname = \"x\"\nkind = \"apt\"\npackages = [\"ok\", \"Not A Package\"]\n",
    );
    let mut c = mimg();
    c.arg("build")
        .arg(&p)
        .arg("--out")
        .arg(w.join("out"))
        .env("MIMG_STORE", w.join("store"));
    let o = run(c);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.toml:7:"), "{e}");
    assert!(e.contains("layer.x.packages"), "{e}");
    assert!(!w.join("out").exists(), "nothing written");

    let p = write_recipe(&w, "typo", "[base]\nsuite = \"trixie\"\nsuit = \"x\"\n");
    let mut c = mimg();
    c.arg("plan").arg(&p).env("MIMG_STORE", w.join("store"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("typo.toml:3:") && stderr(&o).contains("suit"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_recipe_says_where_it_looked() {
    let mut c = mimg();
    c.args(["plan", "no-such-recipe"]);
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no recipe named `no-such-recipe`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unreachable_mirror_is_said_so_without_hanging() {
    let w = work("no-mirror");
    let mut c = mimg();
    c.args(["build", "minimal", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", w.join("store"))
        .env("MIMG_DEBIAN_MIRROR", "http://127.0.0.1:9/debian");
    let t0 = std::time::Instant::now();
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the Debian mirror"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
    assert!(t0.elapsed().as_secs() < 60);
}

#[test]
fn an_unknown_package_is_named() {
    let w = work("unknown-package");
    std::fs::create_dir_all(w.join("recipes")).unwrap();
    let p = write_recipe(
        &w.join("recipes"),
        "nopkg",
        "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"sys\"\nkind = \"apt\"\npackages = [\"systemd-sysv\", \"mimg-no-such-package\"]\n",
    );
    let mut c = mimg();
    c.arg("build")
        .arg(&p)
        .arg("--out")
        .arg(w.join("out"))
        .env("MIMG_STORE", w.join("store"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("mimg-no-such-package"),
        "{}",
        stderr(&o)
    );
    // The tools step finished and is kept; the failed rootfs left nothing.
    let steps: Vec<_> = std::fs::read_dir(w.join("store/v1/steps"))
        .unwrap()
        .flatten()
        .collect();
    assert!(steps.iter().all(|e| e.path().join("meta.json").is_file()));
    assert_eq!(
        std::fs::read_dir(w.join("store/v1/tmp")).unwrap().count(),
        0
    );
}
