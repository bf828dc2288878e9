//! The raw form of recipe files: what serde reads, with the span of every
//! value, before merging; and where in which file a span is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecipe {
    pub(super) extends: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) include: Vec<Spanned<String>>,
    pub(super) base: Option<RawBase>,
    #[serde(default)]
    pub(super) sources: BTreeMap<String, Spanned<RawSource>>,
    pub(super) disk: Option<RawDisk>,
    #[serde(default, rename = "layer")]
    pub(super) layers: Vec<Spanned<RawLayer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFragment {
    #[serde(default)]
    pub(super) sources: BTreeMap<String, Spanned<RawSource>>,
    #[serde(default, rename = "layer")]
    pub(super) layers: Vec<Spanned<RawLayer>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBase {
    pub(super) distribution: Option<Spanned<String>>,
    pub(super) suite: Option<Spanned<String>>,
    pub(super) components: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) suite: Spanned<String>,
    pub(super) components: Option<Spanned<Vec<String>>>,
    pub(super) keyring: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) check_valid_until: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    pub(super) size: Option<Spanned<String>>,
    pub(super) boot: Option<Spanned<Vec<String>>>,
    pub(super) compress: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLayer {
    pub(super) name: Spanned<String>,
    pub(super) kind: Spanned<String>,
    pub(super) packages: Option<Spanned<Vec<String>>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<String>>,
    pub(super) script: Option<Spanned<String>>,
    pub(super) sees: Option<Spanned<Vec<String>>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) sha256: Option<Spanned<String>>,
    pub(super) strip: Option<Spanned<i64>>,
    pub(super) unpack: Option<Spanned<bool>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) requirements: Option<Spanned<Vec<String>>>,
    pub(super) venv: Option<Spanned<String>>,
    pub(super) python: Option<Spanned<String>>,
}

/// The text of one recipe file, to turn spans into lines.
#[derive(Clone)]
pub(super) struct SourceText {
    pub(super) path: PathBuf,
    pub(super) text: std::sync::Arc<str>,
}

/// The file, line and column of byte `span.start` of `text`.
pub fn span_loc(path: &Path, text: &str, span: std::ops::Range<usize>) -> Loc {
    let upto = &text[..span.start.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto.len() - upto.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    Loc {
        file: path.to_path_buf(),
        line,
        col,
    }
}

impl SourceText {
    pub(super) fn loc(&self, span: std::ops::Range<usize>) -> Loc {
        span_loc(&self.path, &self.text, span)
    }
    pub(super) fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// A value with the file it came from.
#[derive(Clone)]
pub(super) struct At<T> {
    pub(super) value: Spanned<T>,
    pub(super) src: SourceText,
}

impl<T> At<T> {
    pub(super) fn loc(&self) -> Loc {
        self.src.loc(self.value.span())
    }
    pub(super) fn get(&self) -> &T {
        self.value.get_ref()
    }
    pub(super) fn invalid(&self, key: &str, msg: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            loc: self.loc(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}

pub(super) fn from<T>(value: Option<Spanned<T>>, src: &SourceText) -> Option<At<T>> {
    value.map(|value| At {
        value,
        src: src.clone(),
    })
}
