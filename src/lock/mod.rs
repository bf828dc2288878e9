//! Lock files: `recipes/NAME.lock` beside the recipe (TOML, `version = 1`,
//! committed to git) pin what an unlocked build would look up live:
//!
//! | field       | what it pins                                                    |
//! |-------------|-----------------------------------------------------------------|
//! | `epoch`     | the build epoch (SOURCE_DATE_EPOCH): the base suite's release date |
//! | `releases`  | sha256 of each suite's `InRelease` (the base, every source, tools) |
//! | `tools_epoch` | the tools suite's release date                                |
//! | `layers`    | sha256 of each layer's inputs, to say which changed (`--locked`) |
//! | `apt_inputs`, `tools_inputs` | sha256 of what the pinned .debs were resolved from |
//! | `debs.rootfs`, `debs.tools` | every .deb: name, version, arch, suite, pool path, sha256, size |
//! | `pip`       | every wheel of each pip layer: name, version, file, sha256 |
//!
//! With a lock, planning needs no network, and a build downloads exactly
//! the pinned files (into the store, checked by sha256) and installs them
//! from a local repository: the same bytes next month, when the mirror's
//! suites have moved on, and offline once the store holds the files.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

pub mod model;

use crate::recipe::Recipe;
use model::{Deb, Wheel};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub recipe: String,
    pub epoch: u64,
    pub tools_epoch: u64,
    pub releases: BTreeMap<String, String>,
    pub layers: BTreeMap<String, String>,
    /// sha256 of the recipe's base, sources and disk.
    pub recipe_sha256: String,
    /// The wheels of each `pip` layer.
    #[serde(default)]
    pub pip: BTreeMap<String, Vec<Wheel>>,
    /// The requirements each pip layer's wheels were resolved from.
    #[serde(default)]
    pub pip_requirements: BTreeMap<String, Vec<String>>,
    /// sha256 of the base, sources and apt packages `debs.rootfs` was resolved from.
    #[serde(default)]
    pub apt_inputs: String,
    /// sha256 of the tools suite and packages `debs.tools` was resolved from.
    #[serde(default)]
    pub tools_inputs: String,
    /// Every pinned .deb.
    #[serde(default)]
    pub debs: Debs,
}

/// The pinned .debs of the rootfs and of the tools environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Debs {
    pub rootfs: Vec<Deb>,
    pub tools: Vec<Deb>,
}

pub use model::wheels_hash;

/// A lock file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Where (file, line, column) and what: TOML's message names the key.
    #[error(
        "{loc}: {msg}\nhint: the lock is written by `mimg lock`; restore it from git or run `mimg lock` again"
    )]
    Parse {
        loc: crate::recipe::Loc,
        msg: String,
    },
}

/// Parse the lock file at `p`, keeping the error's place in the file.
fn parse(p: &std::path::Path) -> Result<Lock, LockError> {
    let text = std::fs::read_to_string(p).map_err(|source| LockError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let loc = crate::recipe::span_loc(p, &text, e.span().unwrap_or(0..0));
        // The key written on that line, when the error is in a value.
        let key = text
            .lines()
            .nth(loc.line - 1)
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let msg = e.message().trim().to_string();
        LockError::Parse {
            loc,
            msg: match key {
                Some(k) => format!("key `{k}`: {msg}"),
                None => msg,
            },
        }
    })
}

/// Read the lock beside the recipe, if there is one.
pub fn read(recipe: &Recipe) -> Result<Option<Lock>> {
    let p = recipe.lock_path();
    if !p.exists() {
        return Ok(None);
    }
    let lock = parse(&p)?;
    if lock.version != VERSION {
        bail!(
            "{}: lock version {} is not supported (this mimg reads version {VERSION})\nhint: run `mimg lock {}`",
            p.display(),
            lock.version,
            recipe.name
        );
    }
    Ok(Some(lock))
}

/// The lock of the nearest recipe this one extends, if any.
pub fn read_inherited(recipe: &Recipe) -> Result<Option<Lock>> {
    for f in recipe.files.iter().skip(1) {
        let p = f.with_extension("lock");
        if p.is_file() {
            let lock = parse(&p)?;
            if lock.version == VERSION {
                return Ok(Some(lock));
            }
        }
    }
    Ok(None)
}

/// Write the lock atomically beside the recipe.
pub fn write(recipe: &Recipe, lock: &Lock) -> Result<std::path::PathBuf> {
    let p = recipe.lock_path();
    let text = format!(
        "# Written by `mimg lock {}`. Commit it; refresh with `mimg lock {} --update`.\n{}",
        recipe.name,
        recipe.name,
        toml::to_string(lock)?
    );
    crate::paths::atomic_write(&p, text.as_bytes())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_lock_names_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        std::fs::write(&p, "version = 1\nrecipe = \"x\"\nepoch = \"soon\"\n").unwrap();
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("x.lock:3:"), "{e}");
        assert!(e.contains("key `epoch`"), "{e}");
    }
}
