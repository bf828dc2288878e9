//! Publish: put a built image, its manifest and its SBOM (`NAME.cdx.json`)
//! into the output directory, atomically, unless they are there already.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths::{atomic_copy, atomic_write};
use crate::plan::{Plan, StepKind};
use crate::recipe::{LayerKind, Recipe};
use crate::store::{self, Store};

pub use crate::provenance::manifest::Manifest;

/// Local record of what was last copied to the output directory, so a
/// no-op build does not copy the image again. Not part of any output.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Published {
    key: String,
    size: u64,
    mtime_ns: i128,
}

fn file_stamp(p: &Path) -> Option<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).ok()?;
    Some((
        m.len(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

/// Copy the image and write the manifest into `out_dir`, unless they are
/// already there. `fresh`: a synced copy of the image made beside it while
/// the store committed it (renamed into place instead of copying again).
pub fn publish(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    out_dir: &Path,
    fresh: Option<&Path>,
) -> Result<(PathBuf, PathBuf, String)> {
    let name = recipe.name.as_str();
    let img = out_dir.join(format!("{name}.qcow2"));
    let man = out_dir.join(format!("{name}.manifest.json"));
    let stamp = out_dir.join(format!(".{name}.published"));
    let key = &plan.image().key;
    let meta = store.meta(key)?;
    let sum = meta
        .files
        .get("disk.qcow2")
        .cloned()
        .context("the image step has no disk.qcow2")?;

    let up_to_date = fs::read(&stamp)
        .ok()
        .and_then(|b| serde_json::from_slice::<Published>(&b).ok())
        .zip(file_stamp(&img))
        .is_some_and(|(p, (size, mtime_ns))| {
            p == Published {
                key: key.to_string(),
                size,
                mtime_ns,
            }
        })
        && man.is_file()
        && out_dir.join(format!("{name}.cdx.json")).is_file()
        && out_dir.join(format!("{name}.intoto.json")).is_file();
    if up_to_date {
        return Ok((img, man, sum.sha256));
    }

    let manifest = manifest_of(recipe, plan, store, &sum)?;
    let sbom = crate::provenance::sbom::render(&manifest, &format!("{name}.qcow2"))
        .map_err(|e| anyhow::anyhow!("cannot make the SBOM of {name}: {e}"))?;
    match fresh {
        Some(tmp) => fs::rename(tmp, &img)
            .with_context(|| format!("cannot rename into {}", img.display()))?,
        None => atomic_copy(&store.path(key).join("disk.qcow2"), &img)?,
    }
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    atomic_write(&man, &text)?;
    let mut text = serde_json::to_vec_pretty(&sbom)?;
    text.push(b'\n');
    atomic_write(&out_dir.join(format!("{name}.cdx.json")), &text)?;
    let statement = statement_of(recipe, plan, &manifest)?;
    let mut text = serde_json::to_vec_pretty(&statement)?;
    text.push(b'\n');
    atomic_write(&out_dir.join(format!("{name}.intoto.json")), &text)?;
    if let Some((size, mtime_ns)) = file_stamp(&img) {
        let p = Published {
            key: key.to_string(),
            size,
            mtime_ns,
        };
        atomic_write(&stamp, &serde_json::to_vec(&p)?)?;
    }
    Ok((img, man, sum.sha256))
}

/// The manifest of the image `sum` that `plan` made, from the plan and the
/// steps' records in the store.
fn manifest_of(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    sum: &store::FileSum,
) -> Result<Manifest> {
    use crate::provenance::manifest::{Base, Fetched, ManifestLayer, ManifestStep, ManifestWheel};
    let rootfs = plan.step(StepKind::Rootfs).expect("planned");
    let rmeta = store.meta(&rootfs.key)?;
    let packages: Vec<crate::lock::model::Package> =
        serde_json::from_value(rmeta.extra["packages"].clone()).unwrap_or_default();
    let mut sizes = BTreeMap::new();
    sizes.insert("disk".to_string(), recipe.disk.size);
    sizes.insert("qcow2".to_string(), sum.size);
    if let Some(r) = rmeta.files.get("rootfs.tar") {
        sizes.insert("rootfs_tar".to_string(), r.size);
    }
    // The pinned .debs: `VERSION SHA256` by name (`name:arch` where one
    // name has several arches), as the plan's detail has them.
    let pinned = rootfs.detail.get("debs").cloned().unwrap_or_default();
    let mut deb_sha256 = BTreeMap::new();
    for p in &packages {
        let v = pinned
            .get(&format!("{}:{}", p.name, p.arch))
            .or_else(|| pinned.get(&p.name));
        if let Some((version, sha)) = v.and_then(|v| v.split_once(' '))
            && version == p.version
        {
            deb_sha256.insert(format!("{}:{}", p.name, p.arch), sha.to_string());
        }
    }
    let mut wheels = Vec::new();
    let mut fetched = Vec::new();
    let mut layers = Vec::new();
    for s in plan.steps.iter().filter(|s| s.kind == StepKind::Layer) {
        let name = &s.layers[0];
        let l = recipe.layer(name).expect("planned from the recipe");
        let meta = store.meta(&s.key)?;
        let kind = serde_json::to_value(&l.kind)?["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match &l.kind {
            LayerKind::Pip { .. } => {
                for (n, v) in s.detail.get("content").into_iter().flatten() {
                    let (version, sha) = v.split_once(' ').unwrap_or((v, ""));
                    wheels.push(ManifestWheel {
                        layer: name.clone(),
                        name: n.clone(),
                        version: version.into(),
                        sha256: sha.into(),
                    });
                }
            }
            LayerKind::Fetch { url, sha256, .. } => fetched.push(Fetched {
                layer: name.clone(),
                url: url.clone(),
                sha256: sha256.to_string(),
            }),
            _ => {}
        }
        layers.push(ManifestLayer {
            label: s.label.clone(),
            key: s.key.to_string(),
            kind,
            size: meta.files.get("layer.tar").map(|f| f.size).unwrap_or(0),
            files: serde_json::from_value(meta.extra["listing"].clone()).unwrap_or_default(),
        });
    }
    Ok(Manifest {
        version: crate::provenance::manifest::VERSION,
        recipe: recipe.name.to_string(),
        recipe_key: plan.image().key.to_string(),
        epoch: plan.epoch,
        image: sum.clone(),
        base: Some(Base {
            distribution: recipe.base.distribution.to_string(),
            suite: recipe.base.suite.to_string(),
        }),
        steps: plan
            .steps
            .iter()
            .map(|s| ManifestStep {
                label: s.label.clone(),
                key: s.key.to_string(),
            })
            .collect(),
        packages,
        deb_sha256,
        wheels,
        fetched,
        layers,
        sizes,
    })
}

/// The provenance statement of the image `m` describes.
fn statement_of(recipe: &Recipe, plan: &Plan, m: &Manifest) -> Result<serde_json::Value> {
    let sha_of = |p: &Path| -> Result<String> {
        Ok(crate::store::hash_file(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .sha256)
    };
    let recipe_sha = sha_of(&recipe.file)?;
    let lock_path = recipe.lock_path();
    let lock_sha = if lock_path.is_file() {
        Some(sha_of(&lock_path)?)
    } else {
        None
    };
    // Paths as the recipe names them, relative to its directory: the same
    // statement wherever the checkout lies.
    let file_name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let (rname, lname) = (file_name(&recipe.file), file_name(&lock_path));
    let tools = plan
        .step(StepKind::Tools)
        .and_then(|s| s.detail.get("debs").cloned())
        .unwrap_or_default();
    // Each file as the recipe's directory sees it (its name where it lies
    // elsewhere): the same statement wherever the checkout lies.
    let dir = recipe.file.parent().unwrap_or(Path::new(""));
    let mut recipe_files = Vec::new();
    for f in &recipe.files {
        let shown = f
            .strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| file_name(f).into());
        recipe_files.push((shown.display().to_string(), sha_of(f)?));
    }
    let inputs = crate::provenance::statement::Inputs {
        recipe: (&rname, &recipe_sha),
        recipe_files: &recipe_files,
        lock: lock_sha.as_deref().map(|s| (lname.as_str(), s)),
        tools_debs: &tools,
    };
    Ok(crate::provenance::statement::render(
        m,
        &format!("{}.qcow2", recipe.name.as_str()),
        &inputs,
    ))
}
