//! Binary caches (substituters): stores that other machines filled, from
//! which a build takes the steps it lacks instead of making them. A step's
//! key already names every input that shapes its bytes, so an entry under
//! that key is the step, wherever it was made, if it is what its signer
//! made: every entry is signed with ed25519 ([`keys`]) and used only when a
//! key the user trusts signed it, and every byte is checked against the
//! sha256 the signed entry names while it streams in.
//!
//! Layout (format version 1), the same in a directory, behind a web
//! server and in an S3 bucket under a prefix:
//!
//! ```text
//! URL/
//!   mimg-cache.json          {"format": "mimg-cache", "version": 1}
//!   v1/steps/<key>.json      one step (an Entry): its key, its meta.json
//!                            text byte for byte (kind, inputs, output files
//!                            with sha256 and size, trees, extra), the sha256
//!                            and size of a tar of each output directory,
//!                            and signatures `NAME:BASE64` over the entry's
//!                            fingerprint (below)
//!   v1/blobs/<sha256>        content by its sha256: step output files, tree
//!                            tars, and the blobs locks and recipes pin
//!                            (.debs, wheels, fetched files)
//! ```
//!
//! Blobs are written before the entry that names them, so an entry that
//! exists is complete. A pinned blob needs no signature: the lock or recipe
//! that asks for it names its sha256.
//!
//! The fingerprint a signature covers (one line):
//! `mimg-cache-v1;KEY;META_SHA256;FILES;TREES`, FILES being
//! `name:sha256:size` of every output file and TREES
//! `name:listing_sha256:tar_sha256:tar_size` of every output directory,
//! each sorted by name and joined by `,`. META_SHA256 covers the step's
//! inputs (and the key is a hash of them: a reader checks both).

pub mod config;
pub mod keys;
pub mod remote;
pub mod tree;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{FileSum, Meta};

/// The cache layout version: in every path and in `mimg-cache.json`.
pub const VERSION: u32 = 1;

/// The file at the cache's top that says what it is.
pub const INFO: &str = "mimg-cache.json";

/// Where the entry of step `key` lives.
pub fn entry_path(key: &str) -> String {
    format!("v{VERSION}/steps/{key}.json")
}

/// Where the content with this sha256 lives.
pub fn blob_path(sha256: &str) -> String {
    format!("v{VERSION}/blobs/{sha256}")
}

/// The text of `mimg-cache.json`.
pub fn info() -> String {
    format!("{{\"format\": \"mimg-cache\", \"version\": {VERSION}}}\n")
}

/// One step in a cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub key: String,
    /// The step's `meta.json`, as the pushing store holds it.
    pub meta: String,
    /// A tar of each output directory (paths, modes, file contents).
    #[serde(default)]
    pub trees: BTreeMap<String, FileSum>,
    #[serde(default)]
    pub signatures: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("it is of cache format {0}; this mimg reads {VERSION}")]
    Version(u32),
    #[error("it is not signed")]
    Unsigned,
    #[error("no trusted key signed it (signed by {0})")]
    Untrusted(String),
    #[error("its meta does not parse: {0}")]
    Meta(String),
    #[error("it is filed under {filed} but is the entry of {holds}")]
    Misfiled { filed: String, holds: String },
    #[error("its inputs do not hash to its key")]
    Inputs,
    #[error("it records no tar of its tree {0}/")]
    NoTree(String),
}

impl Entry {
    /// The entry of a stored step, unsigned.
    pub fn new(meta_text: String, trees: BTreeMap<String, FileSum>) -> Result<Entry, EntryError> {
        let meta: Meta =
            serde_json::from_str(&meta_text).map_err(|e| EntryError::Meta(e.to_string()))?;
        Ok(Entry {
            version: VERSION,
            key: meta.key.to_string(),
            meta: meta_text,
            trees,
            signatures: Vec::new(),
        })
    }

    /// What a signature covers (see the module doc).
    pub fn fingerprint(&self) -> Result<String, EntryError> {
        let meta = self.parsed()?;
        let files: Vec<String> = meta
            .files
            .iter()
            .map(|(n, s)| format!("{n}:{}:{}", s.sha256, s.size))
            .collect();
        let mut trees = Vec::new();
        for (name, listing) in &meta.trees {
            let tar = self
                .trees
                .get(name)
                .ok_or_else(|| EntryError::NoTree(name.clone()))?;
            trees.push(format!("{name}:{listing}:{}:{}", tar.sha256, tar.size));
        }
        Ok(format!(
            "mimg-cache-v{VERSION};{};{};{};{}",
            self.key,
            hex::encode(Sha256::digest(self.meta.as_bytes())),
            files.join(","),
            trees.join(",")
        ))
    }

    /// The meta it carries.
    pub fn parsed(&self) -> Result<Meta, EntryError> {
        serde_json::from_str(&self.meta).map_err(|e| EntryError::Meta(e.to_string()))
    }

    /// Sign it with `key` (a signature by the same key name is replaced).
    pub fn sign(&mut self, key: &keys::SecretKey) -> Result<(), EntryError> {
        let fp = self.fingerprint()?;
        let prefix = format!("{}:", key.name);
        self.signatures.retain(|s| !s.starts_with(&prefix));
        self.signatures.push(key.sign(fp.as_bytes()));
        Ok(())
    }

    /// Check it as filed under `key`: its format, a signature by a trusted
    /// key, and that its meta is the step's (the inputs hash to the key).
    /// Returns the meta and the name of the key that signed it.
    pub fn check(
        &self,
        key: &str,
        trusted: &[keys::PublicKey],
    ) -> Result<(Meta, String), EntryError> {
        if self.version != VERSION {
            return Err(EntryError::Version(self.version));
        }
        if self.signatures.is_empty() {
            return Err(EntryError::Unsigned);
        }
        let fp = self.fingerprint()?;
        let signer = trusted
            .iter()
            .find(|k| self.signatures.iter().any(|s| k.verifies(fp.as_bytes(), s)))
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .signatures
                    .iter()
                    .map(|s| s.split(':').next().unwrap_or("?"))
                    .collect();
                EntryError::Untrusted(names.join(", "))
            })?;
        let meta = self.parsed()?;
        if self.key != key || meta.key.as_str() != key {
            return Err(EntryError::Misfiled {
                filed: key.to_string(),
                holds: meta.key.to_string(),
            });
        }
        if crate::plan::StepKey::compute(&meta.kind, &meta.inputs).as_str() != key {
            return Err(EntryError::Inputs);
        }
        Ok((meta, signer.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StepKey;

    fn entry() -> Entry {
        let mut inputs = BTreeMap::new();
        inputs.insert("n".to_string(), serde_json::json!(1));
        let key = StepKey::compute("layer", &inputs);
        let meta = serde_json::json!({
            "version": crate::store::META_VERSION, "kind": "layer", "label": "l", "key": key,
            "inputs": inputs, "files": {"layer.tar": {"sha256": "ab", "size": 3}},
            "trees": {}, "seconds": 0.5, "extra": null,
        });
        Entry::new(
            serde_json::to_string_pretty(&meta).unwrap(),
            BTreeMap::new(),
        )
        .unwrap()
    }

    #[test]
    fn only_a_trusted_signature_over_the_same_entry_passes() {
        let ci = keys::SecretKey::generate("ci-1").unwrap();
        let other = keys::SecretKey::generate("other-1").unwrap();
        let mut e = entry();
        let key = e.key.clone();
        assert_eq!(
            e.check(&key, &[ci.public()]).unwrap_err(),
            EntryError::Unsigned
        );
        e.sign(&other).unwrap();
        assert_eq!(
            e.check(&key, &[ci.public()]).unwrap_err(),
            EntryError::Untrusted("other-1".into())
        );
        e.sign(&ci).unwrap();
        let (meta, by) = e.check(&key, &[ci.public()]).unwrap();
        assert_eq!((meta.label.as_str(), by.as_str()), ("l", "ci-1"));
        // Any change to what was signed: an output's sum, the meta's text.
        let mut changed = e.clone();
        changed.meta = changed.meta.replace("\"ab\"", "\"ac\"");
        assert!(matches!(
            changed.check(&key, &[ci.public()]),
            Err(EntryError::Untrusted(_))
        ));
        let mut moved = e.clone();
        moved.key = "0".repeat(64);
        assert!(moved.check(&"0".repeat(64), &[ci.public()]).is_err());
    }

    #[test]
    fn an_entry_whose_inputs_are_not_its_key_is_refused() {
        let ci = keys::SecretKey::generate("ci-1").unwrap();
        let mut e = entry();
        let key = e.key.clone();
        e.meta = e.meta.replace("\"n\": 1", "\"n\": 2");
        e.sign(&ci).unwrap();
        assert_eq!(
            e.check(&key, &[ci.public()]).unwrap_err(),
            EntryError::Inputs
        );
    }
}
