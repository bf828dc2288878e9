//! Which steps each build of a recipe used and made, newest last, so
//! `mimg why` can compare a plan (or the last build) with the build before.
//!
//! `v1/history/<recipe>.json` (format version 1): `{version, recipe,
//! builds: [{image, steps: [{label, key, built}]}]}`, at most [`KEEP`]
//! builds. Only keys are kept here: each step's inputs and what they cover
//! are in its own `meta.json`. Not an output and in no key; losing it only
//! makes `mimg why` say it has nothing to compare with.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::plan::StepKey;

pub const VERSION: u32 = 1;
/// How many builds of one recipe are remembered.
pub const KEEP: usize = 16;

/// One build of a recipe: the image it made and every step it used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Build {
    pub image: StepKey,
    pub steps: Vec<BuiltStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltStep {
    pub label: String,
    pub key: StepKey,
    /// Made by that build (else reused from the store).
    pub built: bool,
}

#[derive(Serialize, Deserialize)]
struct HistoryFile {
    version: u32,
    recipe: String,
    builds: Vec<Build>,
}

impl Store {
    fn history_path(&self, recipe: &str) -> PathBuf {
        self.base().join("history").join(format!("{recipe}.json"))
    }

    /// The builds of `recipe` this store remembers, oldest first; empty when
    /// there are none (or the file is of another version).
    pub fn history(&self, recipe: &str) -> Result<Vec<Build>, StoreError> {
        let p = self.history_path(recipe);
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(format!("read {}", p.display()), e)),
        };
        match serde_json::from_slice::<HistoryFile>(&text) {
            Ok(h) if h.version == VERSION => Ok(h.builds),
            _ => {
                tracing::warn!(
                    "{} is not a history of version {VERSION}: ignored",
                    p.display()
                );
                Ok(Vec::new())
            }
        }
    }

    /// Remember a build of `recipe`, unless it made the same image as the
    /// last one remembered (a build with nothing to do).
    pub fn record_build(&self, recipe: &str, build: Build) -> Result<(), StoreError> {
        let dir = self.base().join("history");
        fs::create_dir_all(&dir).map_err(|e| self.io("create history/", e))?;
        // Two builds of one recipe at once: the lock keeps both records.
        let _lock = self.lock_named(&format!("history-{recipe}"))?;
        let mut builds = self.history(recipe)?;
        if builds.last().is_some_and(|b| b.image == build.image) {
            return Ok(());
        }
        builds.push(build);
        let drop = builds.len().saturating_sub(KEEP);
        builds.drain(..drop);
        let file = HistoryFile {
            version: VERSION,
            recipe: recipe.to_string(),
            builds,
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("history serialises");
        text.push(b'\n');
        crate::paths::atomic_write(&self.history_path(recipe), &text)
            .map_err(|e| self.io("write history", std::io::Error::other(format!("{e:#}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> StepKey {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn build(image: char) -> Build {
        Build {
            image: key(image),
            steps: vec![BuiltStep {
                label: "image".into(),
                key: key(image),
                built: true,
            }],
        }
    }

    #[test]
    fn keeps_the_newest_builds_and_skips_a_repeat() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.history("r").unwrap().is_empty());
        s.record_build("r", build('a')).unwrap();
        s.record_build("r", build('a')).unwrap();
        s.record_build("r", build('b')).unwrap();
        let h = s.history("r").unwrap();
        assert_eq!(
            h.iter().map(|b| b.image.clone()).collect::<Vec<_>>(),
            [key('a'), key('b')]
        );
        for c in ['c', 'd', 'e', 'f'] {
            for _ in 0..4 {
                s.record_build("r", build(c)).unwrap();
                s.record_build("r", build('a')).unwrap();
            }
        }
        assert_eq!(s.history("r").unwrap().len(), KEEP);
        assert!(s.history("other").unwrap().is_empty());
    }
}
