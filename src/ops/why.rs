//! `mimg why`: which input made each step (to be) built differ from the
//! last build of the same recipe. Reads the plan (as `mimg plan` does: with
//! a lock, local files only), the store's build history and the inputs kept
//! in each step's `meta.json`; writes nothing.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::Options;
use crate::plan::{self, Plan, explain};
use crate::recipe::Recipe;
use crate::store::{Build, Store};

/// The answer for one recipe.
#[derive(Debug, Serialize)]
pub struct Why {
    pub recipe: String,
    /// The image key the plan makes now.
    pub image: String,
    /// `to build`: the steps the store lacks, against the last build;
    /// `built`: the plan is the last build, and these are the steps it
    /// built, against the build before it.
    pub mode: &'static str,
    /// The image key of the build compared with, if there is one.
    pub against: Option<String>,
    pub steps: Vec<StepWhy>,
}

#[derive(Debug, Serialize)]
pub struct StepWhy {
    pub label: String,
    pub key: String,
    pub reasons: Vec<String>,
}

pub fn why(recipe: &Recipe, store: &Store, opts: Options) -> Result<Why> {
    let resolved = super::resolve::facts(recipe, opts, None)?;
    let plan = plan::plan(recipe, &resolved.facts);
    let history = store.history(recipe.name.as_str())?;
    let image = plan.image().key.clone();
    let (mode, targets, base): (_, Vec<&plan::Step>, Option<&Build>) = match history.last() {
        Some(last) if last.image == image && store.has(&image) => {
            let built: Vec<_> = plan
                .steps
                .iter()
                .filter(|s| last.steps.iter().any(|b| b.built && b.key == s.key))
                .collect();
            let before = history.iter().rev().find(|b| b.image != image);
            ("built", built, before)
        }
        last => {
            let missing = plan.steps.iter().filter(|s| !store.has(&s.key)).collect();
            ("to build", missing, last)
        }
    };
    let steps = targets
        .into_iter()
        .map(|s| StepWhy {
            label: s.label.clone(),
            key: s.key.to_string(),
            reasons: step_reasons(s, &plan, base, store),
        })
        .collect();
    Ok(Why {
        recipe: recipe.name.to_string(),
        image: image.to_string(),
        mode,
        against: base.map(|b| b.image.to_string()),
        steps,
    })
}

fn step_reasons(s: &plan::Step, plan: &Plan, base: Option<&Build>, store: &Store) -> Vec<String> {
    let Some(base) = base else {
        return vec!["first build of this recipe in this store".into()];
    };
    let Some(old) = base.steps.iter().find(|b| b.label == s.label) else {
        return vec![format!("new step: the last build had no {}", s.label)];
    };
    if old.key == s.key {
        return vec![
            "same inputs as the last build, but not in the store (removed by `store gc`, or damaged)"
                .into(),
        ];
    }
    let meta = match store.meta(&old.key) {
        Ok(m) => m,
        Err(_) => {
            return vec![format!(
                "the last build's step ({}) is no longer in the store: its inputs cannot be compared",
                old.key.short()
            )];
        }
    };
    let labels = |steps: &mut dyn Iterator<Item = (String, String)>| -> BTreeMap<String, String> {
        steps.collect()
    };
    let new_labels = labels(
        &mut plan
            .steps
            .iter()
            .map(|x| (x.key.to_string(), x.label.clone())),
    );
    let old_labels = labels(
        &mut base
            .steps
            .iter()
            .map(|x| (x.key.to_string(), x.label.clone())),
    );
    let r = explain::reasons(
        &explain::Side {
            inputs: &meta.inputs,
            detail: &meta.detail,
            labels: &old_labels,
        },
        &explain::Side {
            inputs: &s.inputs,
            detail: &s.detail,
            labels: &new_labels,
        },
    );
    if r.is_empty() {
        // Same inputs, other key: the key's format changed.
        vec!["the key's format changed (a newer mimg)".into()]
    } else {
        r
    }
}
