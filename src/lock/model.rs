//! What a lock pins, as pure values: pinned .debs, locked wheels, installed
//! packages, and the content hashes of pinned sets that enter step keys.
//! No I/O here; the effectful modules (debs, stages, ops) and the pure ones
//! (plan, lock) all take their types from this one place.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One pinned .deb, as the lock records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The suite whose index named it (which source to download it from).
    pub suite: String,
    /// Path in the archive (`pool/main/...`), relative to the source's URL.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

impl Deb {
    /// The file name of its pool path.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The content hash of a pinned set (what enters a step key): each .deb's
/// sha256, name and version.
pub fn set_hash(debs: &[Deb]) -> String {
    let mut h = Sha256::new();
    for d in debs {
        h.update(format!("{} {} {}\n", d.sha256, d.name, d.version));
    }
    hex::encode(h.finalize())
}

/// One locked wheel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wheel {
    pub name: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
}

impl Wheel {
    /// Name and version from a wheel file name (`name-version-...-plat.whl`).
    pub fn from_file(file: &str, sha256: &str) -> Result<Wheel> {
        let stem = file
            .strip_suffix(".whl")
            .with_context(|| format!("{file} is not a wheel"))?;
        let parts: Vec<&str> = stem.split('-').collect();
        if parts.len() < 5 {
            bail!("{file}: not a wheel file name");
        }
        Ok(Wheel {
            name: parts[0].to_lowercase().replace('_', "-"),
            version: parts[1].into(),
            file: file.into(),
            sha256: sha256.into(),
        })
    }
}

/// The content hash of a pip layer: its locked wheels.
pub fn wheels_hash(wheels: &[Wheel]) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(wheels).expect("json")))
}

/// One installed Debian package (as dpkg reports it after the rootfs step).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}
