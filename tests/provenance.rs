//! Provenance as an image pipeline uses it: `mimg why` names the input that
//! moved a step, `mimg diff` lists what differs between two images or two
//! locks, the SBOM validates against CycloneDX 1.5 with an independent
//! validator, and Debian's minisign verifies mimg's signatures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// minimal with a files layer and a pip layer (six, pinned by the sha256
/// that PyPI serves, found with the host's pip) in its own lock.
struct Prov {
    recipes: PathBuf,
    lock: String,
}

fn prov(w: &Path) -> Prov {
    let recipes = w.join("recipes");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(repo().join("recipes"))
            .arg(&recipes)
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir_all(recipes.join("files/conf/etc")).unwrap();
    std::fs::write(recipes.join("files/conf/etc/conf.txt"), "one\n").unwrap();
    std::fs::write(
        recipes.join("prov.toml"),
        "extends = \"minimal\"\n\n[[layer]]\nname = \"conf\"\nkind = \"files\"\nfrom = \"files/conf\"\nto = \"/\"\n\n[[layer]]\nname = \"app\"\nkind = \"pip\"\nrequirements = [\"six==1.16.0\"]\nvenv = \"/opt/app\"\n",
    )
    .unwrap();
    let dl = w.join("wheel");
    let o = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "six==1.16.0",
            "-d",
        ])
        .arg(&dl)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pip download: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let file = "six-1.16.0-py2.py3-none-any.whl";
    let sha = sha256(&dl.join(file));
    let lock = std::fs::read_to_string(recipes.join("minimal.lock"))
        .unwrap()
        .replace("recipe = \"minimal\"", "recipe = \"prov\"")
        .replace(
            "[pip]\n",
            &format!("[[pip.app]]\nname = \"six\"\nversion = \"1.16.0\"\nfile = \"{file}\"\nsha256 = \"{sha}\"\n\n"),
        )
        .replace("[pip_requirements]\n", "[pip_requirements]\napp = [\"six==1.16.0\"]\n");
    std::fs::write(recipes.join("prov.lock"), &lock).unwrap();
    Prov { recipes, lock }
}

fn mimg_in(recipes: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    let mut c = mimg();
    c.args(args)
        .arg("--recipes")
        .arg(recipes)
        .env("MIMG_STORE", store);
    run(c)
}

fn build_prov(p: &Prov, store: &Path, out: &Path) -> String {
    let o = mimg_in(
        &p.recipes,
        store,
        &["build", "prov", "--out", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "build of prov failed");
    stdout(&o)
}

#[test]
fn why_and_diff_name_the_changed_file_wheel_and_deb() {
    let a = minimal();
    let w = work("provenance-why");
    let p = prov(&w);
    let (out1, out2) = (w.join("out1"), w.join("out2"));
    let built = build_prov(&p, &a.store, &out1);
    assert!(
        built.contains("built 3 steps, reused 3"),
        "minimal's steps are reused: {built}"
    );

    // One file of the files layer changed: why names the layer and the
    // file, the image once, and nothing of the rootfs.
    std::fs::write(p.recipes.join("files/conf/etc/conf.txt"), "two\n").unwrap();
    let why = |args: &[&str]| -> String {
        let mut all = vec!["why", "prov"];
        all.extend(args);
        let o = mimg_in(&p.recipes, &a.store, &all);
        assert!(o.status.success(), "mimg why failed");
        stdout(&o)
    };
    let before = why(&["--offline"]);
    assert!(before.contains("2 step(s) to build"), "{before}");
    assert!(
        before.contains("layer:conf: file etc/conf.txt changed"),
        "{before}"
    );
    assert!(
        before.contains("image: inputs layer:conf changed"),
        "{before}"
    );
    assert!(
        !before.contains("rootfs") && !before.contains("layer:app"),
        "{before}"
    );
    let j: serde_json::Value = serde_json::from_str(&why(&["--offline", "--json"])).unwrap();
    assert_eq!(j["mode"], "to build");
    assert_eq!(j["steps"][0]["label"], "layer:conf");
    assert_eq!(j["steps"][0]["reasons"][0], "file etc/conf.txt changed");

    // Built: why now tells what the last build made, and why.
    let built = build_prov(&p, &a.store, &out2);
    assert!(built.contains("built 2 steps"), "{built}");
    let after = why(&[]);
    assert!(
        after.contains("built as it is now; the last build made 2 step(s)"),
        "{after}"
    );
    assert!(
        after.contains("layer:conf: file etc/conf.txt changed"),
        "{after}"
    );

    // The two images differ by exactly that file; an image equals itself.
    let diff = |x: &Path, y: &Path| {
        let o = mimg_in(
            &p.recipes,
            &a.store,
            &["diff", x.to_str().unwrap(), y.to_str().unwrap()],
        );
        (o.status.code(), stdout(&o))
    };
    let (code, text) = diff(&out1.join("prov.manifest.json"), &out2.join("prov.qcow2"));
    assert_eq!(code, Some(1), "different images: exit 1");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "layers:", "{text}");
    assert_eq!(lines[1], "  layer:conf", "{text}");
    assert_eq!(lines[2], "    ~ etc/conf.txt", "{text}");
    assert!(lines[3].starts_with("image: sha256 "), "{text}");
    assert_eq!(lines.len(), 4, "exactly the file and the image: {text}");
    let (code, text) = diff(&out2, &out2.join("prov.manifest.json"));
    assert_eq!(
        (code, text.as_str()),
        (Some(0), ""),
        "an image equals itself"
    );

    // A wheel's pin moved in the lock: why names the wheel and both versions.
    let moved = p
        .lock
        .replace("version = \"1.16.0\"\nfile", "version = \"1.17.0\"\nfile");
    std::fs::write(p.recipes.join("prov.lock"), &moved).unwrap();
    let wheel = why(&["--offline"]);
    assert!(
        wheel.contains("layer:app: wheel six 1.16.0 -> 1.17.0"),
        "{wheel}"
    );
    assert!(!wheel.contains("layer:conf"), "{wheel}");

    // Two locks that differ by one pinned .deb's version (and the recipes by
    // one file): diff lists exactly those.
    std::fs::write(p.recipes.join("prov.lock"), &p.lock).unwrap();
    let first = p.lock.find("[[debs.rootfs]]").unwrap();
    let name_at = first + p.lock[first..].find("name = \"").unwrap() + 8;
    let name = &p.lock[name_at..name_at + p.lock[name_at..].find('"').unwrap()];
    let ver_at = first + p.lock[first..].find("version = \"").unwrap() + 11;
    let version = &p.lock[ver_at..ver_at + p.lock[ver_at..].find('"').unwrap()];
    let mut other = p.lock.replace("recipe = \"prov\"", "recipe = \"prov2\"");
    let at = other.find("[[debs.rootfs]]").unwrap();
    let v_at = at + other[at..].find("version = \"").unwrap() + 11;
    other.replace_range(v_at..v_at + version.len(), &format!("{version}+x1"));
    std::fs::write(p.recipes.join("prov2.lock"), other).unwrap();
    std::fs::create_dir_all(p.recipes.join("files/conf2/etc")).unwrap();
    std::fs::write(p.recipes.join("files/conf2/etc/conf.txt"), "three\n").unwrap();
    let recipe = std::fs::read_to_string(p.recipes.join("prov.toml")).unwrap();
    std::fs::write(
        p.recipes.join("prov2.toml"),
        recipe.replace("files/conf\"", "files/conf2\""),
    )
    .unwrap();
    let o = mimg_in(&p.recipes, &a.store, &["diff", "prov", "prov2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "debian packages:\n  ~ {name} {version} -> {version}+x1\nlayers:\n  layer:conf\n    ~ etc/conf.txt\n"
        )
    );
    let o = mimg_in(&p.recipes, &a.store, &["diff", "prov", "prov", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["equal"], true);
    let o = mimg_in(&p.recipes, &a.store, &["diff", "prov", "no-such-thing"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an argument that names nothing is an error"
    );
}

/// A venv holding PyPI's cyclonedx-python-lib with its JSON validator.
fn validator() -> PathBuf {
    let venv = repo().join("target/test-tools/cyclonedx-venv");
    let py = venv.join("bin/python");
    if !py.is_file() {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .unwrap();
        assert!(ok.success(), "python3 -m venv (python3-venv, `make deps`)");
        let ok = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "cyclonedx-python-lib[json-validation]==11.*",
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install cyclonedx-python-lib");
    }
    py
}

/// Validate `sbom` against CycloneDX 1.5's JSON schema: the validator's
/// complaint, or None.
fn invalid(py: &Path, sbom: &Path) -> Option<String> {
    let script = "import sys\nfrom cyclonedx.validation.json import JsonStrictValidator\nfrom cyclonedx.schema import SchemaVersion\ne = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\nprint(e if e else 'valid')\nsys.exit(1 if e else 0)\n";
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(sbom)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    if o.status.success() { None } else { Some(said) }
}

#[test]
fn the_sbom_validates_and_minisign_verifies_the_signatures() {
    let a = minimal();
    let w = work("provenance-sign");
    let sbom = a.out.join("minimal.cdx.json");
    let py = validator();
    assert_eq!(invalid(&py, &sbom), None, "the SBOM is valid CycloneDX 1.5");
    // The validator is not a rubber stamp: a component without a name fails.
    let mut broken: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    broken["components"][1]
        .as_object_mut()
        .unwrap()
        .remove("name");
    std::fs::write(w.join("broken.cdx.json"), broken.to_string()).unwrap();
    assert!(invalid(&py, &w.join("broken.cdx.json")).is_some());

    // Its components: one operating-system (debian 13) and the manifest's
    // packages, each with its purl and the pinned .deb's sha256.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    let man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.out.join("minimal.manifest.json")).unwrap())
            .unwrap();
    let comps = doc["components"].as_array().unwrap();
    let os: Vec<_> = comps
        .iter()
        .filter(|c| c["type"] == "operating-system")
        .collect();
    assert_eq!(os.len(), 1);
    assert_eq!(
        (os[0]["name"].as_str(), os[0]["version"].as_str()),
        (Some("debian"), Some("13"))
    );
    let debs: Vec<(String, String)> = comps
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:deb/debian/"))
        })
        .map(|c| {
            assert!(c["purl"].as_str().unwrap().contains("distro=debian-13"));
            assert_eq!(c["hashes"][0]["content"].as_str().unwrap().len(), 64);
            (
                c["name"].as_str().unwrap().into(),
                c["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let pkgs: Vec<(String, String)> = man["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(pkgs.len() > 100);
    assert_eq!(debs, pkgs, "one component per installed package");
    assert_eq!(
        doc["metadata"]["component"]["hashes"][0]["content"].as_str(),
        Some(a.sha.as_str())
    );

    // A key made by minisign -G (with a password, as it asks by default).
    let img = w.join("minimal.qcow2");
    for f in [
        "minimal.qcow2",
        "minimal.manifest.json",
        "minimal.cdx.json",
        "minimal.intoto.json",
    ] {
        std::fs::copy(a.out.join(f), w.join(f)).unwrap();
    }
    let password = "a pass phrase with 'quotes' $HOME & = + /\n";
    let mut g = Command::new("sh");
    g.arg("-c")
        .arg("printf '%s%s' \"$PW\" \"$PW\" | minisign -G -p \"$1\" -s \"$2\"")
        .arg("sh")
        .arg(w.join("mk.pub"))
        .arg(w.join("mk.key"))
        .env("PW", password);
    assert!(run(g).status.success(), "minisign -G");
    std::fs::write(w.join("pw"), password).unwrap();
    let mut c = mimg();
    c.args(["sign", img.to_str().unwrap(), "--key"])
        .arg(w.join("mk.key"))
        .env("MIMG_SIGN_PASSWORD_FILE", w.join("pw"));
    let o = run(c);
    assert!(o.status.success(), "mimg sign with minisign's key");
    assert_eq!(
        stdout(&o).lines().count(),
        4,
        "image, manifest, SBOM and statement signed"
    );
    let minisign_ok = |file: &Path, pubkey: &Path| {
        let mut m = Command::new("minisign");
        m.arg("-Vm").arg(file).arg("-p").arg(pubkey);
        run(m).status.success()
    };
    assert!(minisign_ok(&img, &w.join("mk.pub")));
    assert!(minisign_ok(&w.join("minimal.cdx.json"), &w.join("mk.pub")));
    let verify = |pubkey: &Path| {
        let mut c = mimg();
        c.args(["verify", img.to_str().unwrap(), "--pubkey"])
            .arg(pubkey);
        run(c)
    };
    let o = verify(&w.join("mk.pub"));
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("minimal.intoto.json names sha256"),
        "{}",
        stdout(&o)
    );

    // A key made by minisign -G -W (no password; minisign 0.11 leaves its
    // checksum zero) signs too.
    let mut g = Command::new("minisign");
    g.args(["-G", "-W", "-p"])
        .arg(w.join("mw.pub"))
        .arg("-s")
        .arg(w.join("mw.key"));
    assert!(run(g).status.success(), "minisign -G -W");
    let mut c = mimg();
    c.args(["sign", img.to_str().unwrap(), "--key"])
        .arg(w.join("mw.key"));
    assert!(
        run(c).status.success(),
        "mimg sign with minisign -G -W's key"
    );
    assert!(minisign_ok(&img, &w.join("mw.pub")));

    // A key made by mimg keygen, used by mimg build --sign; minisign verifies.
    let mut c = mimg();
    c.args(["keygen"]).arg(w.join("k"));
    assert!(run(c).status.success());
    let mut c = mimg();
    c.args(["build", "minimal", "--sign"])
        .arg(w.join("k"))
        .arg("--out")
        .arg(w.join("out"))
        .env("MIMG_STORE", &a.store);
    let o = run(c);
    assert!(o.status.success() && stdout(&o).contains("minimal.qcow2.minisig"));
    assert!(minisign_ok(&w.join("out/minimal.qcow2"), &w.join("k.pub")));
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("out/minimal.intoto.json")).unwrap()).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        st["subject"][0]["digest"]["sha256"].as_str(),
        Some(a.sha.as_str())
    );
    assert!(
        st["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap()
            .len()
            > 100
    );

    // One flipped byte: both minisign and mimg verify refuse the image.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(&img, bytes).unwrap();
    assert!(
        !minisign_ok(&img, &w.join("mk.pub")),
        "minisign refuses a flipped byte"
    );
    let o = verify(&w.join("mk.pub"));
    assert!(!o.status.success(), "mimg verify refuses a flipped byte");
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    // The wrong key is refused too.
    let out_img = w.join("out/minimal.qcow2");
    let verify_out = |pubkey: &Path| {
        let mut c = mimg();
        c.args(["verify", out_img.to_str().unwrap(), "--pubkey"])
            .arg(pubkey);
        run(c).status.success()
    };
    assert!(verify_out(&w.join("k.pub")));
    assert!(
        !verify_out(&w.join("mk.pub")),
        "another key's signature is refused"
    );
}
