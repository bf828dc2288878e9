//! Recipes: parse `recipes/NAME.toml`, follow `extends` and `include`, and
//! validate into a [`Recipe`] whose every field is checked.
//!
//! Owns the recipe file format. Does no I/O beyond reading recipe files; it
//! does not look at layer contents (that is the build's job).
//!
//! Merge rules for `extends = "parent"`:
//!
//! | part        | rule                                                            |
//! |-------------|-----------------------------------------------------------------|
//! | `[base]`    | each key the child sets replaces the parent's                  |
//! | `[sources]` | by name; a child's source of the same name replaces the parent's |
//! | `[disk]`    | each key the child sets replaces the parent's                  |
//! | `[[layer]]` | a child's layer of the same name replaces it in place; others are appended |
//! | `include`   | layer fragments (`[[layer]]`, `[sources]`) merged as if written in the including file, before its own layers |

mod merge;
pub mod names;
mod raw;
mod requirement;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use raw::span_loc;
pub use requirement::valid_requirement;
pub use validate::archive_kind;

use merge::load_merged;
pub use names::{
    Component, ImagePath, LayerName, PackageName, RecipeName, Sha256Hex, SourceName, Suite,
};

/// Where in which file a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A recipe that cannot be used: says file, line, key and why.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{loc}: {msg}")]
    Syntax { loc: Loc, msg: String },
    #[error("{loc}: key `{key}`: {msg}")]
    Invalid { loc: Loc, key: String, msg: String },
    #[error("{}: `extends` forms a cycle: {chain}", path.display())]
    Cycle { path: PathBuf, chain: String },
    #[error("no recipe named `{name}` (looked for {})\nhint: pass a recipe name from recipes/ or a path to a .toml file", path.display())]
    NotFound { name: String, path: PathBuf },
}

/// The base distribution every image starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Base {
    pub distribution: String,
    pub suite: Suite,
    pub components: Vec<Component>,
}

/// A named extra apt source, such as a backports suite.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    pub suite: Suite,
    pub components: Vec<Component>,
    /// An extra keyring (absolute path on the host) for a non-Debian source.
    /// Not part of any key: it checks the indices, the lock pins the bytes.
    #[serde(skip)]
    pub keyring: Option<PathBuf>,
    /// Where a non-Debian source is served (transport only, like the
    /// Debian mirror: not part of any key). Default: the Debian mirror.
    #[serde(skip)]
    pub url: Option<String>,
    /// Whether apt refuses this suite's index once its `Valid-Until` has
    /// passed (default true). `false` for a frozen or snapshot mirror of a
    /// suite that carries one (sid). Not part of any key: it decides only
    /// whether `mimg lock` may resolve; the lock pins the bytes.
    #[serde(skip)]
    pub check_valid_until: bool,
}

/// Firmware an image must boot under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    Uefi,
}

/// Disk size, boot modes and the qcow2's compression.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    pub size: u64,
    pub boot: Vec<BootMode>,
    /// Left out of the key when absent, so uncompressed images keep the
    /// keys (and the bytes) they had before compression existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<Compression>,
}

/// How the qcow2's clusters are compressed (`[disk] compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// qcow2 compression type zstd (QEMU >= 5.1 reads it).
    Zstd,
}

/// What one layer contributes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerKind {
    Apt {
        packages: Vec<PackageName>,
        source: Option<SourceName>,
    },
    Files {
        /// Absolute path of the tree on the host.
        #[serde(skip)]
        from: PathBuf,
        to: ImagePath,
    },
    Run {
        script: String,
        /// The kinds of the earlier layers the script runs over, besides
        /// the rootfs; `None`: every earlier layer. Absent from the layer's
        /// JSON when `None`, so run layers without it keep their keys.
        #[serde(skip_serializing_if = "Option::is_none")]
        sees: Option<Vec<String>>,
    },
    Fetch {
        /// Transport only: not part of any key (the sha256 pins the content).
        #[serde(skip)]
        url: String,
        sha256: Sha256Hex,
        to: ImagePath,
        strip: u32,
        unpack: bool,
        mode: Option<u32>,
    },
    Pip {
        requirements: Vec<String>,
        venv: ImagePath,
        /// The image's Python (`3.13`); empty: the base suite's.
        python: String,
    },
}

impl LayerKind {
    /// The kind's name, as a recipe writes it (`kind = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Apt { .. } => "apt",
            LayerKind::Files { .. } => "files",
            LayerKind::Run { .. } => "run",
            LayerKind::Fetch { .. } => "fetch",
            LayerKind::Pip { .. } => "pip",
        }
    }

    /// Whether a run layer's script sees an earlier layer of kind `earlier`
    /// (false for every other kind of layer).
    pub fn run_sees(&self, earlier: &LayerKind) -> bool {
        match self {
            LayerKind::Run { sees: None, .. } => true,
            LayerKind::Run { sees: Some(k), .. } => k.iter().any(|k| k == earlier.name()),
            _ => false,
        }
    }
}

/// One named contribution to the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layer {
    pub name: LayerName,
    #[serde(flatten)]
    pub kind: LayerKind,
    #[serde(skip)]
    pub loc: Loc,
}

/// A fully merged and validated recipe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recipe {
    pub name: RecipeName,
    #[serde(skip)]
    pub file: PathBuf,
    /// Every recipe file it was made from, the recipe's own first.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    pub base: Base,
    pub sources: BTreeMap<SourceName, Source>,
    pub disk: Disk,
    pub layers: Vec<Layer>,
}

impl Recipe {
    /// The layer named `name`, if the recipe has one.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name.as_str() == name)
    }

    /// The path of the lock file beside the recipe.
    pub fn lock_path(&self) -> PathBuf {
        self.file.with_extension("lock")
    }
}

/// Find a recipe by name (`recipes/NAME.toml` under `recipes_dir`) or path.
pub fn locate(arg: &str, recipes_dir: &Path) -> Result<PathBuf, RecipeError> {
    let looks_like_path = arg.contains('/') || arg.ends_with(".toml");
    let path = if looks_like_path {
        PathBuf::from(arg)
    } else {
        recipes_dir.join(format!("{arg}.toml"))
    };
    if !path.is_file() {
        return Err(RecipeError::NotFound {
            name: arg.to_string(),
            path,
        });
    }
    Ok(path)
}

/// Load, merge and validate the recipe at `path`.
pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
    let mut chain = Vec::new();
    let merged = load_merged(path, &mut chain)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let name = stem
        .parse::<RecipeName>()
        .map_err(|e| RecipeError::Invalid {
            loc: Loc {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
            },
            key: "(file name)".into(),
            msg: e.0,
        })?;
    merged.validate(name, path.to_path_buf(), chain)
}

#[cfg(test)]
mod tests;
