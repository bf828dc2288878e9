//! What a lock pins against what a recipe asks: the input hashes that say
//! whether a lock still covers a recipe, the lock made from resolved facts,
//! and the plan's facts taken from a lock. Pure functions over the lock
//! file's model ([`crate::lock`]) and the plan's types ([`crate::plan`]),
//! kept here so that the lock format does not depend on the plan.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::lock::{Debs, Lock, VERSION};
use crate::plan::{Facts, TOOLS_PACKAGES, TOOLS_SUITE};
use crate::recipe::Recipe;

/// Whether the pinned .debs of `lock` were resolved from what `recipe` asks now.
pub fn pins_debs_of(lock: &Lock, recipe: &Recipe) -> bool {
    lock.apt_inputs == apt_inputs(recipe)
        && lock.tools_inputs == tools_inputs()
        && !lock.debs.rootfs.is_empty()
        && !lock.debs.tools.is_empty()
}

/// sha256 of what decides a rootfs's package set.
pub fn apt_inputs(recipe: &Recipe) -> String {
    let v = serde_json::json!({
        "base": recipe.base,
        "sources": recipe.sources,
        "packages": crate::plan::includes(recipe),
    });
    hex::encode(Sha256::digest(serde_json::to_vec(&v).expect("json")))
}

/// sha256 of what decides the tools environment's package set.
pub fn tools_inputs() -> String {
    let v = serde_json::json!({ "suite": TOOLS_SUITE, "packages": TOOLS_PACKAGES, "variant": "extract" });
    hex::encode(Sha256::digest(serde_json::to_vec(&v).expect("json")))
}

/// sha256 of each layer's inputs (spec and content).
pub fn layer_hashes(recipe: &Recipe, facts: &Facts) -> BTreeMap<String, String> {
    recipe
        .layers
        .iter()
        .map(|l| {
            let mut v = serde_json::to_value(l).expect("layers serialise");
            v["content"] = serde_json::json!(facts.contents.get(l.name.as_str()));
            (
                l.name.to_string(),
                hex::encode(Sha256::digest(serde_json::to_vec(&v).expect("json"))),
            )
        })
        .collect()
}

fn recipe_sha256(recipe: &Recipe) -> String {
    let v =
        serde_json::json!({ "base": recipe.base, "sources": recipe.sources, "disk": recipe.disk });
    hex::encode(Sha256::digest(serde_json::to_vec(&v).expect("json")))
}

/// Make the lock of `recipe` from live facts.
pub fn make(recipe: &Recipe, facts: &Facts) -> Lock {
    Lock {
        version: VERSION,
        recipe: recipe.name.to_string(),
        epoch: facts.epoch,
        tools_epoch: facts.tools_epoch,
        releases: facts.releases.clone(),
        layers: layer_hashes(recipe, facts),
        recipe_sha256: recipe_sha256(recipe),
        pip: BTreeMap::new(),
        pip_requirements: BTreeMap::new(),
        apt_inputs: apt_inputs(recipe),
        tools_inputs: tools_inputs(),
        debs: Debs {
            rootfs: facts.rootfs_debs.clone(),
            tools: facts.tools_debs.clone(),
        },
    }
}

/// Facts for planning, from the lock and local files only.
pub fn facts(lock: &Lock, contents: crate::plan::Contents) -> Facts {
    Facts {
        releases: lock.releases.clone(),
        epoch: lock.epoch,
        tools_epoch: lock.tools_epoch,
        contents: contents.hashes,
        details: contents.details,
        rootfs_debs: lock.debs.rootfs.clone(),
        tools_debs: lock.debs.tools.clone(),
    }
}

/// What changed in the recipe since the lock was written; empty if nothing.
pub fn changes(lock: &Lock, recipe: &Recipe, facts: &Facts) -> Vec<String> {
    let mut v = Vec::new();
    if lock.recipe_sha256 != recipe_sha256(recipe) {
        v.push("[base], [sources] or [disk] changed".to_string());
    }
    let now = layer_hashes(recipe, facts);
    for (name, h) in &now {
        match lock.layers.get(name) {
            None => v.push(format!("layer `{name}` is new")),
            Some(old) if old != h => v.push(format!("layer `{name}` changed")),
            _ => {}
        }
    }
    for name in lock.layers.keys() {
        if !now.contains_key(name) {
            v.push(format!("layer `{name}` was removed"));
        }
    }
    v
}
