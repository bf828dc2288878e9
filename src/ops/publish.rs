//! Publish: put a built image and its manifest (format version 1) into the
//! output directory, atomically, unless they are there already.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths::{atomic_copy, atomic_write};
use crate::plan::{Plan, StepKind};
use crate::recipe::Recipe;
use crate::store::{self, Store};

/// The manifest written beside an image (format version 1).
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub recipe: String,
    /// The image step's key: a pure function of every input.
    pub recipe_key: String,
    pub epoch: u64,
    pub image: store::FileSum,
    pub steps: Vec<ManifestStep>,
    pub packages: Vec<crate::lock::model::Package>,
    pub sizes: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestStep {
    pub label: String,
    pub key: String,
}

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
        && man.is_file();
    if up_to_date {
        return Ok((img, man, sum.sha256));
    }

    let rootfs_key = &plan.step(StepKind::Rootfs).expect("planned").key;
    let rmeta = store.meta(rootfs_key)?;
    let packages: Vec<crate::lock::model::Package> =
        serde_json::from_value(rmeta.extra["packages"].clone()).unwrap_or_default();
    let mut sizes = BTreeMap::new();
    sizes.insert("disk".to_string(), recipe.disk.size);
    sizes.insert("qcow2".to_string(), sum.size);
    if let Some(r) = rmeta.files.get("rootfs.tar") {
        sizes.insert("rootfs_tar".to_string(), r.size);
    }
    let manifest = Manifest {
        version: 1,
        recipe: name.to_string(),
        recipe_key: key.to_string(),
        epoch: plan.epoch,
        image: sum.clone(),
        steps: plan
            .steps
            .iter()
            .map(|s| ManifestStep {
                label: s.label.clone(),
                key: s.key.to_string(),
            })
            .collect(),
        packages,
        sizes,
    };
    match fresh {
        Some(tmp) => fs::rename(tmp, &img)
            .with_context(|| format!("cannot rename into {}", img.display()))?,
        None => atomic_copy(&store.path(key).join("disk.qcow2"), &img)?,
    }
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    atomic_write(&man, &text)?;
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
