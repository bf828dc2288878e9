//! Plan: turn a recipe and the facts it depends on into a graph of steps,
//! each with a key. Pure: no I/O, no clock, no environment.
//!
//! A step key is the sha256 of the canonical JSON of
//! `{"format": FORMAT, "kind": KIND, "inputs": {...}}` with keys sorted
//! (`BTreeMap` / `serde_json` with sorted maps). The inputs of each key, by
//! the name they have in it (a unit test checks that every field of a layer
//! kind and of the lock is named here, so a new one cannot be forgotten):
//!
//! | step     | input        | what it is                                                          |
//! |----------|--------------|---------------------------------------------------------------------|
//! | `tools`  | `suite`      | the tools suite ([`TOOLS_SUITE`])                                   |
//! | `tools`  | `packages`   | the tools package list ([`TOOLS_PACKAGES`])                         |
//! | `tools`  | `variant`    | how they are unpacked ([`TOOLS_VARIANT`]: by mimg itself, data.tar only, merged /usr, the sandboxes' mount points) |
//! | `tools`  | `debs`       | set hash of every pinned .deb of the tools environment (lock `debs.tools`: each .deb's `sha256`, `name` and `version`) |
//! | `tools`  | `epoch`      | the tools suite's release date (lock `tools_epoch`)                 |
//! | `rootfs` | `base`       | base suite and components (recipe `[base]`)                         |
//! | `rootfs` | `sources`    | the named sources (recipe `[sources]`: suite, components; their `url`, `keyring` and `check_valid_until` are transport and checks, in no key) |
//! | `rootfs` | `packages`   | apt packages per source (every `apt` layer: `packages`, `source`)   |
//! | `rootfs` | `debs`       | set hash of every pinned .deb of the rootfs (lock `debs.rootfs`)    |
//! | `rootfs` | `epoch`      | the build epoch (lock `epoch`)                                      |
//! | `rootfs` | `tools`      | the tools step's key (its mmdebstrap, apt, dpkg and tar install the rootfs) |
//! | `rootfs` | `variant`    | how mimg runs mmdebstrap ([`ROOTFS_VARIANT`]: its options and hooks) |
//! | `layer`  | `layer`      | the layer's whole spec (every field of its kind but those below: `name`, `kind`, `to`, `sha256`, `unpack`, `strip`, `mode`, `requirements`, `venv`, `python`, `script`, `sees` (only when set), `packages`, `source`) and `content`: the hash of a `files` layer's tree, or of a `pip` layer's locked wheels (lock `pip`: each wheel's `name`, `version`, `file`, `sha256`) |
//! | `layer`  | `epoch`      | the build epoch                                                     |
//! | `layer`  | `over`       | a `run` layer only: keys of the rootfs step and of every layer step before it, or with `sees` of those of the kinds it names (the tree it runs in) |
//! | `image`  | `tools`, `rootfs`, `layers` | keys of the tools step, the rootfs step and every later layer step, in order |
//! | `image`  | `disk`       | disk size, boot modes and compression (recipe `[disk]`; `compress` only when set) |
//! | `image`  | `epoch`      | the build epoch                                                     |
//!
//! Fields in no key, because they do not shape bytes: a `fetch` layer's
//! `url` and a pinned .deb's `arch`, `suite`, `path` and `size` (where to
//! download what its sha256 pins), a `files` layer's `from` (its host path:
//! the tree's content hash is in the key). Lock fields that are in no key: `version`,
//! `recipe`, `releases` (each suite's `InRelease` sha256: what the pinned
//! .debs were resolved against; the .debs themselves are in `debs`),
//! `layers`, `recipe_sha256`, `apt_inputs`, `tools_inputs`,
//! `pip_requirements` (what was resolved from; they say when a lock is stale).
//!
//! Never in a key: the mirror's URL, the store path, the user, time of day,
//! TZ, umask, locale. The mirror only moves bytes whose hashes are pinned.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::recipe::{Layer, LayerKind, Recipe};

pub mod explain;

/// Bumped whenever what a step writes changes for the same inputs.
pub const FORMAT: u32 = 1;

/// The suite the tools environment comes from, and what it holds: these
/// packages and their dependencies, unpacked by mimg (no essential set, no
/// maintainer scripts; the tools only run). Its mmdebstrap, apt, dpkg and
/// tar install every rootfs; its e2fsprogs, grub and qemu-utils write
/// every image.
pub const TOOLS_SUITE: &str = "trixie";
pub const TOOLS_PACKAGES: &[&str] = &[
    "dash",
    "coreutils",
    "mmdebstrap",
    "apt",
    "dpkg",
    "tar",
    "mount",
    "util-linux",
    "findutils",
    "libc-bin",
    "e2fsprogs",
    "libarchive13t64",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "qemu-utils",
    "fdisk",
    "mtools",
    "dosfstools",
];

/// How the tools root is made (`stages::tools_env`), in the tools key:
/// bumped whenever it writes other bytes from the same .debs.
pub const TOOLS_VARIANT: &str = "mimg-unpack/2";

/// How the rootfs step runs mmdebstrap (crate::stages::rootfs): changed
/// whenever the same packages give another tree. 2: no py3compile while
/// packages are configured (no empty `__pycache__` directories left).
pub const ROOTFS_VARIANT: &str = "mmdebstrap/2";

/// A step key: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StepKey(String);

impl StepKey {
    /// The key of `kind` over `inputs`, canonically encoded.
    pub fn compute(kind: &str, inputs: &BTreeMap<String, Value>) -> StepKey {
        let doc = json!({ "format": FORMAT, "kind": kind, "inputs": inputs });
        // serde_json's Map is a BTreeMap (no preserve_order feature): sorted keys.
        let bytes = serde_json::to_vec(&doc).expect("json values always serialise");
        StepKey(hex::encode(Sha256::digest(&bytes)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
    /// 16 bytes derived from this key for `purpose`: a UUID, a seed, a volume id.
    pub fn derive(&self, purpose: &str) -> [u8; 16] {
        let d = Sha256::digest(format!("{}:{purpose}", self.0).as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        // Mark as an RFC 4122 version 4 / variant 1 UUID so tools accept it.
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        out
    }
    /// [`derive`](Self::derive) as the usual text form of a UUID.
    pub fn derive_uuid(&self, purpose: &str) -> String {
        uuid_text(&self.derive(purpose))
    }
}

impl std::str::FromStr for StepKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(StepKey(s.to_string()))
        } else {
            Err(format!("`{s}` is not a step key (64 lowercase hex digits)"))
        }
    }
}

impl std::fmt::Display for StepKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in byte order.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What the plan needs to know about the world, gathered at the edges.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// sha256 of each suite's `InRelease`, for every suite the recipe uses
    /// and the tools suite.
    pub releases: BTreeMap<String, String>,
    /// The build epoch (seconds since 1970), from the base suite's release date.
    pub epoch: u64,
    /// The tools suite's release date (its own epoch).
    pub tools_epoch: u64,
    /// Content hash of each layer's own inputs beyond its spec, by layer
    /// name: a `files` layer's tree, a `pip` layer's locked wheels.
    pub contents: BTreeMap<String, String>,
    /// What each of those content hashes covers, by layer name, for people
    /// (`mimg why`): a `files` layer's paths (path -> sha256 or kind), a
    /// `pip` layer's wheels (name -> version and sha256). In no key: the
    /// hashes above are.
    pub details: BTreeMap<String, BTreeMap<String, String>>,
    /// Every .deb the rootfs installs (pinned by sha256).
    pub rootfs_debs: Vec<crate::lock::model::Deb>,
    /// Every .deb of the tools environment.
    pub tools_debs: Vec<crate::lock::model::Deb>,
}

/// Content hashes of a recipe's own inputs (`files` layers' trees, `pip`
/// layers' wheels), by layer name, and what each covers
/// ([`Facts::details`]).
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub hashes: BTreeMap<String, String>,
    pub details: BTreeMap<String, BTreeMap<String, String>>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Tools,
    Rootfs,
    Layer,
    Image,
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Tools => "tools",
            StepKind::Rootfs => "rootfs",
            StepKind::Layer => "layer",
            StepKind::Image => "image",
        }
    }
}

/// One unit of work with declared inputs.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: StepKind,
    /// For people: `tools`, `rootfs`, `layer:motd`, `image`.
    pub label: String,
    pub key: StepKey,
    pub inputs: BTreeMap<String, Value>,
    /// Names of the layers this step applies.
    pub layers: Vec<String>,
    /// What the hashed inputs cover, by input name (`debs` of the tools and
    /// rootfs steps, `content` of a layer), leaf -> value: kept beside the
    /// step's output so `mimg why` can name the leaf that moved a key. In
    /// no key (the hashes in `inputs` are).
    #[serde(skip)]
    pub detail: BTreeMap<String, BTreeMap<String, String>>,
}

impl Step {
    fn new(
        kind: StepKind,
        label: String,
        inputs: BTreeMap<String, Value>,
        layers: Vec<String>,
    ) -> Step {
        let key = StepKey::compute(kind.name(), &inputs);
        Step {
            kind,
            label,
            key,
            inputs,
            layers,
            detail: BTreeMap::new(),
        }
    }
}

/// Every step of one recipe, in the order they run. The last is the image.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    pub epoch: u64,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn image(&self) -> &Step {
        self.steps
            .last()
            .expect("a plan always ends with the image")
    }
    pub fn step(&self, kind: StepKind) -> Option<&Step> {
        self.steps.iter().find(|s| s.kind == kind)
    }
}

/// Which suites a recipe's rootfs reads from.
#[cfg(test)]
pub fn suites(recipe: &Recipe) -> Vec<crate::recipe::Suite> {
    let mut v = vec![recipe.base.suite.clone()];
    v.extend(recipe.sources.values().map(|s| s.suite.clone()));
    v.sort();
    v.dedup();
    v
}

/// The spec of one layer as it enters a key, with the hash of its content
/// (a `files` layer's tree, a `pip` layer's locked wheels) where it has one.
fn layer_input(layer: &Layer, facts: &Facts) -> Value {
    let mut v = serde_json::to_value(layer).expect("layers serialise");
    if let Some(c) = facts.contents.get(layer.name.as_str()) {
        v["content"] = json!(c);
    }
    v
}

/// What a pinned set of .debs holds, for people: name (and arch where
/// one name has several) -> `VERSION SHA256`.
fn deb_detail(debs: &[crate::lock::model::Deb]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for d in debs {
        let v = format!("{} {}", d.version, d.sha256);
        if m.insert(d.name.clone(), v.clone()).is_some() {
            m.insert(format!("{}:{}", d.name, d.arch), v);
        }
    }
    m
}

/// What a pip layer's locked wheels are, for people: name -> `VERSION SHA256`.
pub fn wheel_detail(wheels: &[crate::lock::model::Wheel]) -> BTreeMap<String, String> {
    wheels
        .iter()
        .map(|w| (w.name.clone(), format!("{} {}", w.version, w.sha256)))
        .collect()
}

/// The packages to install, those of a named source as `name/suite`.
pub fn includes(recipe: &Recipe) -> Vec<String> {
    let mut v = Vec::new();
    for l in &recipe.layers {
        if let LayerKind::Apt { packages, source } = &l.kind {
            for p in packages {
                match source.as_ref().and_then(|s| recipe.sources.get(s)) {
                    Some(src) => v.push(format!("{p}/{}", src.suite)),
                    None => v.push(p.to_string()),
                }
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Make the plan. Pure: the same recipe and facts give the same keys.
pub fn plan(recipe: &Recipe, facts: &Facts) -> Plan {
    let mut steps = Vec::new();
    let mut tools_in = BTreeMap::new();
    tools_in.insert("suite".into(), json!(TOOLS_SUITE));
    tools_in.insert("packages".into(), json!(TOOLS_PACKAGES));
    tools_in.insert("variant".into(), json!(TOOLS_VARIANT));
    tools_in.insert(
        "debs".into(),
        json!(crate::lock::model::set_hash(&facts.tools_debs)),
    );
    tools_in.insert("epoch".into(), json!(facts.tools_epoch));
    let mut tools = Step::new(StepKind::Tools, "tools".into(), tools_in, vec![]);
    tools
        .detail
        .insert("debs".into(), deb_detail(&facts.tools_debs));

    let mut apt: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &recipe.layers {
        if let LayerKind::Apt { packages, source } = &l.kind {
            let key = source.as_ref().map(|s| s.to_string()).unwrap_or_default();
            apt.entry(key)
                .or_default()
                .extend(packages.iter().map(|p| p.to_string()));
        }
    }
    for ps in apt.values_mut() {
        ps.sort();
        ps.dedup();
    }
    let mut root_in = BTreeMap::new();
    root_in.insert("base".into(), json!(recipe.base));
    root_in.insert("sources".into(), json!(recipe.sources));
    root_in.insert("packages".into(), json!(apt));
    root_in.insert(
        "debs".into(),
        json!(crate::lock::model::set_hash(&facts.rootfs_debs)),
    );
    root_in.insert("epoch".into(), json!(facts.epoch));
    root_in.insert("tools".into(), json!(tools.key));
    root_in.insert("variant".into(), json!(ROOTFS_VARIANT));
    let mut rootfs = Step::new(StepKind::Rootfs, "rootfs".into(), root_in, vec![]);
    rootfs
        .detail
        .insert("debs".into(), deb_detail(&facts.rootfs_debs));

    // Every other layer is a step. A `run` layer acts on the tree so far:
    // its key holds the keys of every step that made that tree.
    // With `sees`, only those of the kinds it names.
    let mut tail: Vec<Step> = Vec::new();
    let mut tail_kinds: Vec<&LayerKind> = Vec::new();
    for l in &recipe.layers {
        if matches!(l.kind, LayerKind::Apt { .. }) {
            continue;
        }
        let mut inp = BTreeMap::new();
        inp.insert("layer".into(), layer_input(l, facts));
        inp.insert("epoch".into(), json!(facts.epoch));
        if matches!(l.kind, LayerKind::Run { .. }) {
            let mut over = vec![rootfs.key.clone()];
            over.extend(
                tail.iter()
                    .zip(&tail_kinds)
                    .filter(|(_, k)| l.kind.run_sees(k))
                    .map(|(s, _)| s.key.clone()),
            );
            inp.insert("over".into(), json!(over));
        }
        tail_kinds.push(&l.kind);
        let mut step = Step::new(
            StepKind::Layer,
            format!("layer:{}", l.name),
            inp,
            vec![l.name.to_string()],
        );
        if let Some(d) = facts.details.get(l.name.as_str()) {
            step.detail.insert("content".into(), d.clone());
        }
        tail.push(step);
    }

    let mut img_in = BTreeMap::new();
    img_in.insert("tools".into(), json!(tools.key));
    img_in.insert("rootfs".into(), json!(rootfs.key));
    img_in.insert(
        "layers".into(),
        json!(tail.iter().map(|s| &s.key).collect::<Vec<_>>()),
    );
    img_in.insert("disk".into(), json!(recipe.disk));
    img_in.insert("epoch".into(), json!(facts.epoch));
    let image = Step::new(StepKind::Image, "image".into(), img_in, vec![]);

    steps.push(tools);
    steps.push(rootfs);
    steps.extend(tail);
    steps.push(image);
    Plan {
        recipe: recipe.name.to_string(),
        epoch: facts.epoch,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(dir: &std::path::Path, text: &str) -> Recipe {
        std::fs::create_dir_all(dir.join("files")).unwrap();
        let p = dir.join("r.toml");
        std::fs::write(&p, text).unwrap();
        crate::recipe::load(&p).unwrap()
    }

    const R: &str = "[base]\nsuite = \"trixie\"\n[[layer]]\nname = \"sys\"\nkind = \"apt\"\npackages = [\"b\", \"a\"]\n[[layer]]\nname = \"motd\"\nkind = \"files\"\nfrom = \"files\"\n";

    fn facts(content: &str) -> Facts {
        let mut f = Facts {
            epoch: 1_700_000_000,
            ..Default::default()
        };
        f.releases.insert("trixie".into(), "00".repeat(32));
        f.contents.insert("motd".into(), content.into());
        f
    }

    #[test]
    fn keys_are_stable_and_pinned() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), R);
        let a = plan(&r, &facts("x"));
        let b = plan(&r, &facts("x"));
        let ka: Vec<_> = a.steps.iter().map(|s| s.key.clone()).collect();
        let kb: Vec<_> = b.steps.iter().map(|s| s.key.clone()).collect();
        assert_eq!(ka, kb);
        let labels: Vec<_> = a.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["tools", "rootfs", "layer:motd", "image"]);
    }

    #[test]
    fn a_files_change_keeps_rootfs_and_changes_the_layer_and_image() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), R);
        let a = plan(&r, &facts("x"));
        let b = plan(&r, &facts("y"));
        assert_eq!(a.steps[0].key, b.steps[0].key);
        assert_eq!(a.steps[1].key, b.steps[1].key);
        assert_ne!(a.steps[2].key, b.steps[2].key);
        assert_ne!(a.image().key, b.image().key);
    }

    #[test]
    fn the_host_does_not_reach_keys() {
        // The layer's host path differs between two checkouts; its key must not.
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = plan(&recipe(d1.path(), R), &facts("x"));
        let b = plan(&recipe(d2.path(), R), &facts("x"));
        assert_eq!(a.image().key, b.image().key);
    }

    #[test]
    fn a_run_layer_is_a_step_keyed_by_the_tree_it_runs_in() {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "{R}[[layer]]\nname = \"en\"\nkind = \"run\"\nscript = \"true\"\n[[layer]]\nname = \"after\"\nkind = \"files\"\nfrom = \"files\"\n"
        );
        let r = recipe(d.path(), &text);
        let mut f = facts("x");
        f.contents.insert("after".into(), "a".into());
        let p = plan(&r, &f);
        let labels: Vec<_> = p.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tools",
                "rootfs",
                "layer:motd",
                "layer:en",
                "layer:after",
                "image"
            ]
        );
        assert_eq!(p.steps[1].layers, Vec::<String>::new());
        assert_eq!(
            p.steps[3].inputs["over"],
            json!([p.steps[1].key, p.steps[2].key])
        );
        // The files layer before it moves it; the one after does not.
        let mut g = f.clone();
        g.contents.insert("motd".into(), "y".into());
        let q = plan(&r, &g);
        let moved: Vec<_> = p
            .steps
            .iter()
            .zip(&q.steps)
            .filter(|(a, b)| a.key != b.key)
            .map(|(a, _)| a.label.as_str())
            .collect();
        assert_eq!(moved, ["layer:motd", "layer:en", "image"]);
        let mut h = f.clone();
        h.contents.insert("after".into(), "b".into());
        let q = plan(&r, &h);
        assert_eq!(p.steps[3].key, q.steps[3].key);
        assert_ne!(p.image().key, q.image().key);
    }

    #[test]
    fn a_run_layer_that_sees_some_kinds_is_keyed_by_those_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("more")).unwrap();
        let text = format!(
            "{R}[[layer]]\nname = \"blob\"\nkind = \"fetch\"\nurl = \"http://x/b\"\nsha256 = \"{}\"\nto = \"/b\"\nunpack = false\n[[layer]]\nname = \"en\"\nkind = \"run\"\nscript = \"true\"\nsees = [\"fetch\"]\n",
            "ab".repeat(32)
        );
        let r = recipe(d.path(), &text);
        let p = plan(&r, &facts("x"));
        let labels: Vec<_> = p.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tools",
                "rootfs",
                "layer:motd",
                "layer:blob",
                "layer:en",
                "image"
            ]
        );
        assert_eq!(
            p.steps[4].inputs["over"],
            json!([p.steps[1].key, p.steps[3].key])
        );
        assert_eq!(p.steps[4].inputs["layer"]["sees"], json!(["fetch"]));
        // The files layer it does not see moves the image, not the run layer.
        let q = plan(&r, &facts("y"));
        assert_ne!(p.steps[2].key, q.steps[2].key);
        assert_eq!(p.steps[4].key, q.steps[4].key);
        assert_ne!(p.image().key, q.image().key);
        // Without `sees` the layer's JSON has no such field: keys of run
        // layers written before it stay what they were.
        let plain = plan(
            &recipe(
                d.path(),
                &format!("{R}[[layer]]\nname = \"en\"\nkind = \"run\"\nscript = \"true\"\n"),
            ),
            &facts("x"),
        );
        assert!(plain.steps[3].inputs["layer"].get("sees").is_none());
    }

    #[test]
    fn pinned_debs_reach_their_steps_only() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), R);
        let deb = |sha: &str| crate::lock::model::Deb {
            name: "a".into(),
            version: "1".into(),
            arch: "all".into(),
            suite: "trixie".into(),
            path: "pool/main/a/a_1_all.deb".into(),
            sha256: sha.into(),
            size: 1,
        };
        let mut f = facts("x");
        f.rootfs_debs = vec![deb("00")];
        f.tools_debs = vec![deb("00")];
        let a = plan(&r, &f);
        f.rootfs_debs = vec![deb("01")];
        let b = plan(&r, &f);
        assert_eq!(a.steps[0].key, b.steps[0].key);
        assert_ne!(a.steps[1].key, b.steps[1].key);
        assert_eq!(a.steps[2].key, b.steps[2].key);
        f.tools_debs = vec![deb("01")];
        let c = plan(&r, &f);
        assert_ne!(b.steps[0].key, c.steps[0].key);
        assert_ne!(b.image().key, c.image().key);
    }

    #[test]
    fn derived_uuids_are_valid_v4() {
        let k = StepKey::compute("x", &BTreeMap::new());
        let u = k.derive_uuid("root");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, k.derive_uuid("esp"));
    }
}

#[cfg(test)]
mod key_table;

#[cfg(test)]
mod recipe_tests {
    use super::*;

    fn repo_recipe(name: &str) -> Recipe {
        crate::recipe::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("recipes")
                .join(format!("{name}.toml")),
        )
        .unwrap()
    }

    fn facts_for(r: &Recipe) -> Facts {
        let mut f = Facts {
            epoch: 1_593_000_000,
            tools_epoch: 1_700_000_000,
            ..Default::default()
        };
        for s in suites(r) {
            f.releases.insert(s.to_string(), "11".repeat(32));
        }
        f.releases.insert(TOOLS_SUITE.into(), "22".repeat(32));
        f
    }

    #[test]
    fn the_2020_buster_image_parses_and_plans() {
        let r = repo_recipe("ungleich-prod-buster");
        assert_eq!(r.base.suite.as_str(), "buster");
        let backports = r
            .layers
            .iter()
            .find(|l| l.name.as_str() == "synapse")
            .unwrap();
        match &backports.kind {
            LayerKind::Apt { packages, source } => {
                assert_eq!(
                    packages.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    ["matrix-synapse", "python3-psycopg2"]
                );
                assert_eq!(
                    r.sources[source.as_ref().unwrap()].suite.as_str(),
                    "buster-backports"
                );
            }
            other => panic!("{other:?}"),
        }
        let p = plan(&r, &facts_for(&r));
        let labels: Vec<_> = p.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tools",
                "rootfs",
                "layer:base-config",
                "layer:element",
                "image"
            ]
        );
        assert_eq!(
            p.steps[1].inputs["packages"]["backports"],
            json!(["matrix-synapse", "python3-psycopg2"])
        );
    }

    #[test]
    fn ungleich_prod_extends_maas_homeserver_and_adds_the_bridge() {
        let r = repo_recipe("ungleich-prod");
        let names: Vec<_> = r.layers.iter().map(|l| l.name.as_str()).collect();
        for want in [
            "synapse",
            "element",
            "nginx",
            "postgresql",
            "firstboot",
            "matterbridge",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        assert_eq!(names.last(), Some(&"matterbridge-config"));
        let staging = repo_recipe("ungleich-staging");
        assert_eq!(
            staging.layers.len(),
            r.layers.len(),
            "staging replaces synapse in place"
        );
    }
}
