//! The manifest written beside an image (`NAME.manifest.json`), format
//! version 2: what the image is (its sha256, every step key) and what it
//! holds (Debian packages, wheels, fetched files, each layer's paths and
//! size). Version 1 (no base, wheels, fetched or layers) is still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lock::model::Package;
use crate::store::FileSum;

pub const VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub recipe: String,
    /// The image step's key: a pure function of every input.
    pub recipe_key: String,
    pub epoch: u64,
    pub image: FileSum,
    /// The base distribution and suite (`debian`, `trixie`).
    #[serde(default)]
    pub base: Option<Base>,
    pub steps: Vec<ManifestStep>,
    /// Installed Debian packages, as dpkg reports them.
    pub packages: Vec<Package>,
    /// The sha256 of each installed package's pinned .deb, by `name:arch`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deb_sha256: BTreeMap<String, String>,
    /// Every wheel of every pip layer.
    #[serde(default)]
    pub wheels: Vec<ManifestWheel>,
    /// Every file a fetch layer pinned.
    #[serde(default)]
    pub fetched: Vec<Fetched>,
    /// Each layer step: its size and (but for pip layers) its paths.
    #[serde(default)]
    pub layers: Vec<ManifestLayer>,
    pub sizes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Base {
    pub distribution: String,
    pub suite: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestStep {
    pub label: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestWheel {
    pub layer: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fetched {
    pub layer: String,
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestLayer {
    pub label: String,
    pub key: String,
    pub kind: String,
    /// Size of the layer's stored tar.
    pub size: u64,
    /// Path -> file sha256 or kind (`Tree::listing`); empty for pip layers
    /// (told by their wheels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Parse a manifest of version 1 or 2.
    pub fn parse(text: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if m.version == 0 || m.version > VERSION {
            return Err(format!(
                "a manifest of version {}; this mimg reads versions 1 to {VERSION}",
                m.version
            ));
        }
        Ok(m)
    }
}
