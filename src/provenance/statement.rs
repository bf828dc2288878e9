//! The provenance statement beside an image, `NAME.intoto.json`: an in-toto
//! Statement v1 whose subject is the image, with a SLSA provenance v1
//! predicate: the recipe and lock (by sha256) as external parameters, every
//! pinned input (.debs of the rootfs and of the tools, wheels, fetched
//! files) as a resolved dependency, mimg and its version as the builder.
//! Pure and deterministic (no clock: the build is a function of its inputs).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::manifest::Manifest;
use super::sbom::{deb_purl, debian_version, pypi_purl};

/// Where the inputs the statement names come from.
pub struct Inputs<'a> {
    /// The recipe file and its sha256.
    pub recipe: (&'a str, &'a str),
    /// Every recipe file it was made from (its own, those it extends and
    /// includes) and their sha256s.
    pub recipe_files: &'a [(String, String)],
    /// The lock file and its sha256, if the recipe has one.
    pub lock: Option<(&'a str, &'a str)>,
    /// The tools environment's .debs: name -> `VERSION SHA256`.
    pub tools_debs: &'a BTreeMap<String, String>,
}

pub fn render(m: &Manifest, file_name: &str, inputs: &Inputs) -> Value {
    let suite = m.base.as_ref().map(|b| b.suite.as_str()).unwrap_or("");
    let distro = format!("debian-{}", debian_version(suite).unwrap_or(suite));
    let mut deps = Vec::new();
    for p in &m.packages {
        let mut d = json!({ "uri": deb_purl(&p.name, &p.version, &p.arch, &distro) });
        if let Some(s) = m.deb_sha256.get(&format!("{}:{}", p.name, p.arch)) {
            d["digest"] = json!({ "sha256": s });
        }
        deps.push(d);
    }
    let tools_distro = format!(
        "debian-{}",
        debian_version(crate::plan::TOOLS_SUITE).unwrap_or(crate::plan::TOOLS_SUITE)
    );
    for (name, v) in inputs.tools_debs {
        let (version, sha) = v.split_once(' ').unwrap_or((v, ""));
        let (name, arch) = name.split_once(':').unwrap_or((name, ""));
        // The tools' arches are not in the plan's detail: named where one
        // name has several, else left out of the purl.
        let mut uri = deb_purl(name, version, arch, &tools_distro);
        if arch.is_empty() {
            uri = uri.replace("?arch=&", "?");
        }
        deps.push(json!({ "uri": uri, "name": "tools", "digest": { "sha256": sha } }));
    }
    for w in &m.wheels {
        deps.push(
            json!({ "uri": pypi_purl(&w.name, &w.version), "digest": { "sha256": w.sha256 } }),
        );
    }
    for f in &m.fetched {
        deps.push(json!({ "uri": f.url, "name": f.layer, "digest": { "sha256": f.sha256 } }));
    }
    let mut external = json!({
        "recipe": {
            "name": m.recipe,
            "path": inputs.recipe.0,
            "sha256": inputs.recipe.1,
            "files": inputs.recipe_files.iter()
                .map(|(p, sha)| json!({ "path": p, "sha256": sha }))
                .collect::<Vec<_>>(),
        },
    });
    if let Some((path, sha)) = inputs.lock {
        external["lock"] = json!({ "path": path, "sha256": sha });
    }
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": file_name, "digest": { "sha256": m.image.sha256 } }],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "urn:mimg:build:v1",
                "externalParameters": external,
                "internalParameters": { "recipe_key": m.recipe_key, "epoch": m.epoch },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": "urn:mimg:builder",
                    "version": { "mimg": env!("CARGO_PKG_VERSION") },
                },
                "metadata": { "invocationId": m.recipe_key },
            },
        },
    })
}
