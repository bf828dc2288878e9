//! The key table in this module's doc is complete, and true: every field of
//! every layer kind, of the lock and of its pinned .debs and wheels is named
//! there, and every pinned input moves exactly the keys it should.
//!
//! The field lists below are exhaustive patterns (no `..`): a new field or
//! layer kind does not compile until it is listed here, and then fails
//! until the table says where it goes.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::lock::Lock;
use crate::lock::model::{Deb, Wheel};
use crate::recipe::LayerKind;

/// The module doc (the `//!` lines of mod.rs).
fn table() -> String {
    include_str!("mod.rs")
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn layer_fields(kind: &LayerKind) -> &'static [&'static str] {
    match kind {
        LayerKind::Apt {
            packages: _,
            source: _,
        } => &["packages", "source"],
        LayerKind::Files { from: _, to: _ } => &["from", "to"],
        LayerKind::Run { script: _, sees: _ } => &["script", "sees"],
        LayerKind::Fetch {
            url: _,
            sha256: _,
            to: _,
            strip: _,
            unpack: _,
            mode: _,
        } => &["url", "sha256", "to", "strip", "unpack", "mode"],
        LayerKind::Pip {
            requirements: _,
            venv: _,
            python: _,
        } => &["requirements", "venv", "python"],
    }
}

fn lock_fields(l: &Lock) -> Vec<&'static str> {
    let Lock {
        version: _,
        recipe: _,
        epoch: _,
        tools_epoch: _,
        releases: _,
        layers: _,
        recipe_sha256: _,
        pip: _,
        pip_requirements: _,
        apt_inputs: _,
        tools_inputs: _,
        debs: crate::lock::Debs {
            rootfs: _,
            tools: _,
        },
    } = l;
    vec![
        "version",
        "recipe",
        "epoch",
        "tools_epoch",
        "releases",
        "layers",
        "recipe_sha256",
        "pip",
        "pip_requirements",
        "apt_inputs",
        "tools_inputs",
        "debs.rootfs",
        "debs.tools",
    ]
}

fn deb_fields(d: &Deb) -> [&'static str; 7] {
    let Deb {
        name: _,
        version: _,
        arch: _,
        suite: _,
        path: _,
        sha256: _,
        size: _,
    } = d;
    ["name", "version", "arch", "suite", "path", "sha256", "size"]
}

fn wheel_fields(w: &Wheel) -> [&'static str; 4] {
    let Wheel {
        name: _,
        version: _,
        file: _,
        sha256: _,
    } = w;
    ["name", "version", "file", "sha256"]
}

const RECIPE: &str = r#"
[base]
suite = "trixie"
[[layer]]
name = "sys"
kind = "apt"
packages = ["a", "python3"]
[[layer]]
name = "conf"
kind = "files"
from = "files"
to = "/"
[[layer]]
name = "web"
kind = "fetch"
url = "http://127.0.0.1/web.tar.gz"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
to = "/var/www"
strip = 1
[[layer]]
name = "app"
kind = "pip"
requirements = ["six==1.16.0"]
venv = "/opt/app"
python = "3.13"
[[layer]]
name = "enable"
kind = "run"
script = "true"
[[layer]]
name = "late"
kind = "files"
from = "files"
to = "/srv"
"#;

fn deb(name: &str, sha: &str) -> Deb {
    Deb {
        name: name.into(),
        version: "1".into(),
        arch: "amd64".into(),
        suite: "trixie".into(),
        path: format!("pool/main/{name}.deb"),
        sha256: sha.repeat(32),
        size: 1,
    }
}

fn lock() -> Lock {
    let mut pip = BTreeMap::new();
    pip.insert(
        "app".to_string(),
        vec![Wheel {
            name: "six".into(),
            version: "1.16.0".into(),
            file: "six-1.16.0-py2.py3-none-any.whl".into(),
            sha256: "22".repeat(32),
        }],
    );
    Lock {
        version: crate::lock::VERSION,
        recipe: "r".into(),
        epoch: 1_700_000_000,
        tools_epoch: 1_700_000_100,
        releases: BTreeMap::from([("trixie".to_string(), "33".repeat(32))]),
        layers: BTreeMap::new(),
        recipe_sha256: String::new(),
        pip,
        pip_requirements: BTreeMap::new(),
        apt_inputs: String::new(),
        tools_inputs: String::new(),
        debs: crate::lock::Debs {
            rootfs: vec![deb("a", "44"), deb("python3", "45")],
            tools: vec![deb("e2fsprogs", "55")],
        },
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    recipe: Recipe,
}

fn fixture(text: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, text).unwrap();
    let recipe = crate::recipe::load(&p).unwrap();
    Fixture { _dir: dir, recipe }
}

/// The facts a build takes from `lock` (as `build::facts` does): the
/// lock's pins, the files layers' content, the pip layers' wheels.
fn facts_of(lock: &Lock) -> Facts {
    let mut c = BTreeMap::from([
        ("conf".to_string(), "c1".to_string()),
        ("late".to_string(), "c2".to_string()),
    ]);
    for (name, w) in &lock.pip {
        c.insert(name.clone(), crate::lock::wheels_hash(w));
    }
    crate::ops::pins::facts(
        lock,
        crate::plan::Contents {
            hashes: c,
            details: BTreeMap::new(),
        },
    )
}

/// Labels of the steps whose keys differ between two plans.
fn moved(a: &Plan, b: &Plan) -> BTreeSet<String> {
    assert_eq!(a.steps.len(), b.steps.len());
    a.steps
        .iter()
        .zip(&b.steps)
        .filter(|(x, y)| x.key != y.key)
        .map(|(x, _)| x.label.clone())
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_field_of_a_layer_kind_and_of_the_lock_is_in_the_key_table() {
    let t = table();
    let fx = fixture(RECIPE);
    let mut kinds = BTreeSet::new();
    for l in &fx.recipe.layers {
        kinds.insert(serde_json::to_value(l).unwrap()["kind"].to_string());
        for f in layer_fields(&l.kind) {
            assert!(
                t.contains(&format!("`{f}`")),
                "field `{f}` of layer kind {:?} is not in the key table of src/plan",
                l.kind
            );
        }
        // What serialises is what enters the key: it must be a known field.
        let v = serde_json::to_value(l).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(
                k == "name" || k == "kind" || layer_fields(&l.kind).contains(&k.as_str()),
                "layer key input `{k}` is not a listed field"
            );
        }
    }
    assert_eq!(kinds.len(), 5, "the fixture has a layer of every kind");
    let l = lock();
    for f in lock_fields(&l) {
        assert!(
            t.contains(&format!("`{f}`")),
            "lock field `{f}` is not in the key table"
        );
    }
    for f in deb_fields(&l.debs.rootfs[0]) {
        assert!(
            t.contains(&format!("`{f}`")),
            ".deb field `{f}` is not in the key table"
        );
    }
    for f in wheel_fields(&l.pip["app"][0]) {
        assert!(
            t.contains(&format!("`{f}`")),
            "wheel field `{f}` is not in the key table"
        );
    }
}

#[test]
fn every_pinned_input_moves_exactly_its_steps() {
    let fx = fixture(RECIPE);
    let r = &fx.recipe;
    let base_lock = lock();
    let base = plan(r, &facts_of(&base_lock));
    let labels: Vec<&str> = base.steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "tools",
            "rootfs",
            "layer:conf",
            "layer:web",
            "layer:app",
            "layer:enable",
            "layer:late",
            "image"
        ]
    );

    let with = |edit: &dyn Fn(&mut Lock)| {
        let mut l = lock();
        edit(&mut l);
        plan(r, &facts_of(&l))
    };
    // The run layer runs over the tree so far: whatever moves a step
    // before it moves it too.
    let cases: Vec<(&str, Plan, &[&str])> = vec![
        (
            "a wheel's sha256",
            with(&|l| l.pip.get_mut("app").unwrap()[0].sha256 = "23".repeat(32)),
            &["layer:app", "layer:enable", "image"],
        ),
        (
            "a wheel's version",
            with(&|l| l.pip.get_mut("app").unwrap()[0].version = "1.17.0".into()),
            &["layer:app", "layer:enable", "image"],
        ),
        (
            "a rootfs .deb's sha256",
            with(&|l| l.debs.rootfs[0].sha256 = "46".repeat(32)),
            &["rootfs", "layer:enable", "image"],
        ),
        (
            "a tools .deb's sha256 (the tools install the rootfs)",
            with(&|l| l.debs.tools[0].sha256 = "56".repeat(32)),
            &["tools", "rootfs", "layer:enable", "image"],
        ),
        (
            "the epoch",
            with(&|l| l.epoch += 1),
            &[
                "rootfs",
                "layer:conf",
                "layer:web",
                "layer:app",
                "layer:enable",
                "layer:late",
                "image",
            ],
        ),
        (
            "the tools epoch",
            with(&|l| l.tools_epoch += 1),
            &["tools", "rootfs", "layer:enable", "image"],
        ),
        (
            "a release file (no bytes: the .debs are pinned)",
            with(&|l| {
                l.releases.insert("trixie".into(), "34".repeat(32));
            }),
            &[],
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(moved(&base, &p), set(want), "changing {what}");
    }
    let mut c = facts_of(&base_lock);
    c.contents.insert("conf".into(), "c9".into());
    assert_eq!(
        moved(&base, &plan(r, &c)),
        set(&["layer:conf", "layer:enable", "image"]),
        "a files layer before the run layer"
    );
    let mut c = facts_of(&base_lock);
    c.contents.insert("late".into(), "c9".into());
    assert_eq!(
        moved(&base, &plan(r, &c)),
        set(&["layer:late", "image"]),
        "a files layer after the run layer"
    );
}

#[test]
fn pip_and_fetch_layers_are_keyed_by_their_pins() {
    // The same layers, no run layer.
    let text = RECIPE.replace(
        "kind = \"run\"\nscript = \"true\"",
        "kind = \"apt\"\npackages = [\"b\"]",
    );
    let fx = fixture(&text);
    let r = &fx.recipe;
    let base = plan(r, &facts_of(&lock()));
    let labels: Vec<&str> = base.steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "tools",
            "rootfs",
            "layer:conf",
            "layer:web",
            "layer:app",
            "layer:late",
            "image"
        ]
    );
    let mut l = lock();
    l.pip.get_mut("app").unwrap()[0].sha256 = "23".repeat(32);
    let p = plan(r, &facts_of(&l));
    assert_eq!(
        moved(&base, &p),
        set(&["layer:app", "image"]),
        "a wheel's sha256"
    );

    let fx2 = fixture(&text.replace(&"1".repeat(64), &"9".repeat(64)));
    let p = plan(&fx2.recipe, &facts_of(&lock()));
    assert_eq!(
        moved(&base, &p),
        set(&["layer:web", "image"]),
        "a fetch layer's sha256"
    );

    // Transport is no input: another URL for the same pinned file.
    let fx3 = fixture(&text.replace("127.0.0.1/web", "127.0.0.2/mirror/web"));
    let p = plan(&fx3.recipe, &facts_of(&lock()));
    assert_eq!(moved(&base, &p), set(&[]), "a fetch layer's url");
}
