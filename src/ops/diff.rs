//! `mimg diff A B`: each side is a manifest, an image with its manifest
//! beside it, an output directory holding one manifest, or a recipe (its
//! lock and its files layers as they are now). Reads files; writes nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::provenance::diff::{Inventory, package_name};
use crate::provenance::manifest::Manifest;

/// What an argument names, as an inventory, and how it was read (for people).
pub fn side(arg: &str, recipes: &Path) -> Result<(Inventory, String)> {
    let p = Path::new(arg);
    if let Some(m) = manifest_path(p)? {
        let text = std::fs::read(&m).with_context(|| format!("cannot read {}", m.display()))?;
        let man = Manifest::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a mimg manifest: {e}", m.display()))?;
        return Ok((Inventory::of_manifest(&man), m.display().to_string()));
    }
    let path = crate::recipe::locate(arg, recipes).with_context(|| {
        format!("`{arg}` is not a manifest, an image with a manifest beside it, an output directory or a recipe")
    })?;
    let recipe = crate::recipe::load(&path)?;
    let lock = crate::lock::read(&recipe)?.with_context(|| {
        format!(
            "{} has no lock ({} missing)\nhint: run `mimg lock {}`, or compare built images' manifests",
            recipe.name,
            recipe.lock_path().display(),
            recipe.name
        )
    })?;
    let mut inv = Inventory::default();
    for d in &lock.debs.rootfs {
        inv.packages
            .insert(package_name(&d.name, &d.arch), d.version.clone());
    }
    for ws in lock.pip.values() {
        for w in ws {
            inv.wheels.insert(w.name.clone(), w.version.clone());
        }
    }
    let contents = crate::ops::resolve::contents(&recipe)?;
    for (name, listing) in contents.details {
        inv.layers.insert(format!("layer:{name}"), (None, listing));
    }
    for l in &recipe.layers {
        if let crate::recipe::LayerKind::Fetch { url, sha256, .. } = &l.kind {
            inv.fetched
                .insert(l.name.to_string(), (url.clone(), sha256.to_string()));
        }
    }
    Ok((inv, recipe.lock_path().display().to_string()))
}

/// The manifest an argument names, if it names one: the file itself, the
/// `NAME.manifest.json` beside `NAME.qcow2`, or the one manifest in a directory.
fn manifest_path(p: &Path) -> Result<Option<PathBuf>> {
    let s = p.to_string_lossy();
    if s.ends_with(".json") {
        if !p.is_file() {
            bail!("{} does not exist", p.display());
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(stem) = s.strip_suffix(".qcow2") {
        let m = PathBuf::from(format!("{stem}.manifest.json"));
        if !m.is_file() {
            bail!(
                "{} has no manifest beside it ({} missing)",
                p.display(),
                m.display()
            );
        }
        return Ok(Some(m));
    }
    if p.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|x| x.to_string_lossy().ends_with(".manifest.json"))
            .collect();
        found.sort();
        return match found.len() {
            1 => Ok(found.pop()),
            0 => bail!("{} holds no NAME.manifest.json", p.display()),
            _ => bail!(
                "{} holds several manifests ({}); name one",
                p.display(),
                found
                    .iter()
                    .map(|f| f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    Ok(None)
}
