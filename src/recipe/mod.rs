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

pub mod names;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

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
}

/// Firmware an image must boot under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    Uefi,
}

/// Disk size and boot modes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    pub size: u64,
    pub boot: Vec<BootMode>,
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

// ---------------------------------------------------------------------------
// Raw form: what serde reads, with spans, before merging.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    extends: Option<Spanned<String>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    base: Option<RawBase>,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawSource>>,
    disk: Option<RawDisk>,
    #[serde(default, rename = "layer")]
    layers: Vec<Spanned<RawLayer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFragment {
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawSource>>,
    #[serde(default, rename = "layer")]
    layers: Vec<Spanned<RawLayer>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawBase {
    distribution: Option<Spanned<String>>,
    suite: Option<Spanned<String>>,
    components: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawSource {
    suite: Spanned<String>,
    components: Option<Spanned<Vec<String>>>,
    keyring: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    size: Option<Spanned<String>>,
    boot: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    name: Spanned<String>,
    kind: Spanned<String>,
    packages: Option<Spanned<Vec<String>>>,
    source: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    strip: Option<Spanned<i64>>,
    unpack: Option<Spanned<bool>>,
    mode: Option<Spanned<String>>,
    requirements: Option<Spanned<Vec<String>>>,
    venv: Option<Spanned<String>>,
    python: Option<Spanned<String>>,
}

/// The text of one recipe file, to turn spans into lines.
#[derive(Clone)]
struct SourceText {
    path: PathBuf,
    text: std::sync::Arc<str>,
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
    fn loc(&self, span: std::ops::Range<usize>) -> Loc {
        span_loc(&self.path, &self.text, span)
    }
    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// A value with the file it came from.
#[derive(Clone)]
struct At<T> {
    value: Spanned<T>,
    src: SourceText,
}

impl<T> At<T> {
    fn loc(&self) -> Loc {
        self.src.loc(self.value.span())
    }
    fn get(&self) -> &T {
        self.value.get_ref()
    }
    fn invalid(&self, key: &str, msg: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            loc: self.loc(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}

fn from<T>(value: Option<Spanned<T>>, src: &SourceText) -> Option<At<T>> {
    value.map(|value| At {
        value,
        src: src.clone(),
    })
}

#[derive(Default)]
struct Merged {
    distribution: Option<At<String>>,
    suite: Option<At<String>>,
    components: Option<At<Vec<String>>>,
    sources: BTreeMap<String, At<RawSource>>,
    size: Option<At<String>>,
    boot: Option<At<Vec<String>>>,
    layers: Vec<At<RawLayer>>,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, SourceText), RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let src = SourceText {
        path: path.to_path_buf(),
        text: text.into(),
    };
    let raw = toml::from_str::<T>(&src.text).map_err(|e| RecipeError::Syntax {
        loc: src.loc(e.span().unwrap_or(0..0)),
        msg: e.message().trim().to_string(),
    })?;
    Ok((raw, src))
}

fn load_merged(path: &Path, chain: &mut Vec<PathBuf>) -> Result<Merged, RecipeError> {
    let canonical = path.canonicalize().map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if chain.contains(&canonical) {
        let mut names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        names.push(canonical.display().to_string());
        return Err(RecipeError::Cycle {
            path: path.to_path_buf(),
            chain: names.join(" -> "),
        });
    }
    chain.push(canonical);
    let (raw, src): (RawRecipe, _) = read_toml(path)?;
    let mut merged = match &raw.extends {
        Some(parent) => {
            let parent_path = resolve_relative(&src, parent.get_ref(), true);
            if !parent_path.is_file() {
                return Err(RecipeError::Invalid {
                    loc: src.loc(parent.span()),
                    key: "extends".into(),
                    msg: format!("no recipe at {}", parent_path.display()),
                });
            }
            load_merged(&parent_path, chain)?
        }
        None => Merged::default(),
    };
    for inc in &raw.include {
        let inc_path = resolve_relative(&src, inc.get_ref(), false);
        if !inc_path.is_file() {
            return Err(RecipeError::Invalid {
                loc: src.loc(inc.span()),
                key: "include".into(),
                msg: format!("no layer file at {}", inc_path.display()),
            });
        }
        chain.push(inc_path.canonicalize().unwrap_or(inc_path.clone()));
        let (frag, fsrc): (RawFragment, _) = read_toml(&inc_path)?;
        merged.add_sources(frag.sources, &fsrc);
        merged.add_layers(frag.layers, &fsrc)?;
    }
    if let Some(base) = raw.base {
        merged.distribution = from(base.distribution, &src).or(merged.distribution);
        merged.suite = from(base.suite, &src).or(merged.suite);
        merged.components = from(base.components, &src).or(merged.components);
    }
    if let Some(disk) = raw.disk {
        merged.size = from(disk.size, &src).or(merged.size);
        merged.boot = from(disk.boot, &src).or(merged.boot);
    }
    merged.add_sources(raw.sources, &src);
    merged.add_layers(raw.layers, &src)?;
    Ok(merged)
}

/// `extends = "name"` means `name.toml` beside the file; anything with a `/`
/// or ending in `.toml` is a path relative to the file.
fn resolve_relative(src: &SourceText, value: &str, name_allowed: bool) -> PathBuf {
    if name_allowed && !value.contains('/') && !value.ends_with(".toml") {
        src.dir().join(format!("{value}.toml"))
    } else {
        src.dir().join(value)
    }
}

impl Merged {
    fn add_sources(&mut self, sources: BTreeMap<String, Spanned<RawSource>>, src: &SourceText) {
        for (name, s) in sources {
            self.sources.insert(
                name,
                At {
                    value: s,
                    src: src.clone(),
                },
            );
        }
    }

    fn add_layers(
        &mut self,
        layers: Vec<Spanned<RawLayer>>,
        src: &SourceText,
    ) -> Result<(), RecipeError> {
        let mut seen_here = Vec::new();
        for layer in layers {
            let name = layer.get_ref().name.get_ref().clone();
            if seen_here.contains(&name) {
                return Err(RecipeError::Invalid {
                    loc: src.loc(layer.get_ref().name.span()),
                    key: "layer.name".into(),
                    msg: format!("layer `{name}` is defined twice in this file"),
                });
            }
            seen_here.push(name.clone());
            let item = At {
                value: layer,
                src: src.clone(),
            };
            match self
                .layers
                .iter_mut()
                .find(|l| l.get().name.get_ref() == &name)
            {
                Some(existing) => *existing = item,
                None => self.layers.push(item),
            }
        }
        Ok(())
    }

    fn validate(
        self,
        name: RecipeName,
        file: PathBuf,
        files: Vec<PathBuf>,
    ) -> Result<Recipe, RecipeError> {
        let top = Loc {
            file: file.clone(),
            line: 1,
            col: 1,
        };
        let missing = |key: &str| RecipeError::Invalid {
            loc: top.clone(),
            key: key.to_string(),
            msg: "is required (in this recipe or one it extends)".into(),
        };
        let distribution = match &self.distribution {
            Some(d) if d.get() == "debian" => "debian".to_string(),
            Some(d) => {
                return Err(d.invalid(
                    "base.distribution",
                    format!("`{}` is not supported; use \"debian\"", d.get()),
                ));
            }
            None => "debian".to_string(),
        };
        let suite_raw = self.suite.as_ref().ok_or_else(|| missing("base.suite"))?;
        let suite = parse_at(suite_raw, "base.suite", suite_raw.get())?;
        let components = match &self.components {
            Some(c) => parse_list(c, "base.components")?,
            None => vec!["main".parse().expect("valid")],
        };
        let base = Base {
            distribution,
            suite,
            components,
        };

        let mut sources = BTreeMap::new();
        for (sname, s) in &self.sources {
            let key = format!("sources.{sname}");
            let sn: SourceName = parse_at(s, &key, sname)?;
            let raw = s.get();
            let sub = |v: &Spanned<String>| At {
                value: v.clone(),
                src: s.src.clone(),
            };
            let suite = parse_at(
                &sub(&raw.suite),
                &format!("{key}.suite"),
                raw.suite.get_ref(),
            )?;
            let components = match &raw.components {
                Some(c) => parse_list(
                    &At {
                        value: c.clone(),
                        src: s.src.clone(),
                    },
                    &format!("{key}.components"),
                )?,
                None => base.components.clone(),
            };
            let keyring = match &raw.keyring {
                Some(k) => {
                    let p = s.src.dir().join(k.get_ref());
                    if !p.is_file() {
                        return Err(sub(k).invalid(
                            &format!("{key}.keyring"),
                            format!("no keyring file at {}", p.display()),
                        ));
                    }
                    Some(p)
                }
                None => None,
            };
            let url = match &raw.url {
                Some(u) => {
                    let v = u.get_ref().trim_end_matches('/');
                    let ok = (v.starts_with("http://") || v.starts_with("https://"))
                        && v.len() > 8
                        && v.bytes()
                            .all(|b| b.is_ascii_graphic() && !b"\"'[]<>`\\".contains(&b));
                    if !ok {
                        return Err(sub(u).invalid(
                            &format!("{key}.url"),
                            "expected an http:// or https:// URL without spaces, quotes or brackets".to_string(),
                        ));
                    }
                    Some(v.to_string())
                }
                None => None,
            };
            sources.insert(
                sn,
                Source {
                    suite,
                    components,
                    keyring,
                    url,
                },
            );
        }

        let size = match &self.size {
            Some(s) => parse_size(s.get()).map_err(|m| s.invalid("disk.size", m))?,
            None => 4 << 30,
        };
        let boot = match &self.boot {
            Some(b) => {
                let mut modes = Vec::new();
                for m in b.get() {
                    modes.push(match m.as_str() {
                        "bios" => BootMode::Bios,
                        "uefi" => BootMode::Uefi,
                        other => {
                            return Err(b.invalid(
                                "disk.boot",
                                format!(
                                    "unknown boot mode `{other}`; use \"bios\" and/or \"uefi\""
                                ),
                            ));
                        }
                    });
                }
                modes.sort();
                modes.dedup();
                if modes.is_empty() {
                    return Err(b.invalid("disk.boot", "needs at least one of \"bios\", \"uefi\""));
                }
                modes
            }
            None => vec![BootMode::Bios, BootMode::Uefi],
        };

        let mut layers = Vec::new();
        for l in &self.layers {
            layers.push(validate_layer(l, &sources)?);
        }
        Ok(Recipe {
            name,
            file,
            files,
            base,
            sources,
            disk: Disk { size, boot },
            layers,
        })
    }
}

fn parse_at<T: std::str::FromStr<Err = names::InvalidName>, V>(
    at: &At<V>,
    key: &str,
    text: &str,
) -> Result<T, RecipeError> {
    text.parse::<T>().map_err(|e| at.invalid(key, e.0))
}

fn parse_list<T: std::str::FromStr<Err = names::InvalidName>>(
    at: &At<Vec<String>>,
    key: &str,
) -> Result<Vec<T>, RecipeError> {
    at.get().iter().map(|s| parse_at(at, key, s)).collect()
}

/// Sizes such as `4G`, `512M`, `4GiB` or a byte count; whole MiB, at least 256 MiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"4G\" or \"512M\""))?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit; use K, M, G or T")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes % (1 << 20) != 0 || bytes < (256 << 20) {
        return Err(format!(
            "`{text}` must be a whole number of MiB and at least 256M"
        ));
    }
    Ok(bytes)
}

/// Which keys each layer kind takes, besides `name` and `kind`.
fn allowed_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "apt" => &["packages", "source"],
        "files" => &["from", "to"],
        "run" => &["script"],
        "fetch" => &["url", "sha256", "to", "strip", "unpack", "mode"],
        "pip" => &["requirements", "venv", "python"],
        _ => return None,
    })
}

fn validate_layer(
    l: &At<RawLayer>,
    sources: &BTreeMap<SourceName, Source>,
) -> Result<Layer, RecipeError> {
    let raw = l.get();
    let src = &l.src;
    let at = |v: &Spanned<String>| At {
        value: v.clone(),
        src: src.clone(),
    };
    let name: LayerName = parse_at(&at(&raw.name), "layer.name", raw.name.get_ref())?;
    let key = |k: &str| format!("layer.{name}.{k}");
    let kind = raw.kind.get_ref().as_str();
    let allowed = allowed_keys(kind).ok_or_else(|| {
        at(&raw.kind).invalid(
            &key("kind"),
            format!("unknown layer kind `{kind}`; use apt, fetch, pip, files or run"),
        )
    })?;
    // Keys that belong to other kinds are mistakes: say which.
    let present: [(&str, Option<std::ops::Range<usize>>); 13] = [
        ("python", raw.python.as_ref().map(|v| v.span())),
        ("packages", raw.packages.as_ref().map(|v| v.span())),
        ("source", raw.source.as_ref().map(|v| v.span())),
        ("from", raw.from.as_ref().map(|v| v.span())),
        ("to", raw.to.as_ref().map(|v| v.span())),
        ("script", raw.script.as_ref().map(|v| v.span())),
        ("url", raw.url.as_ref().map(|v| v.span())),
        ("sha256", raw.sha256.as_ref().map(|v| v.span())),
        ("strip", raw.strip.as_ref().map(|v| v.span())),
        ("unpack", raw.unpack.as_ref().map(|v| v.span())),
        ("mode", raw.mode.as_ref().map(|v| v.span())),
        ("requirements", raw.requirements.as_ref().map(|v| v.span())),
        ("venv", raw.venv.as_ref().map(|v| v.span())),
    ];
    for (k, span) in present {
        if let Some(span) = span
            && !allowed.contains(&k)
        {
            return Err(RecipeError::Invalid {
                loc: src.loc(span),
                key: key(k),
                msg: format!(
                    "is not a key of a `{kind}` layer (it takes: {})",
                    allowed.join(", ")
                ),
            });
        }
    }
    let need = |v: &Option<Spanned<String>>, k: &str| -> Result<At<String>, RecipeError> {
        v.as_ref().map(at).ok_or_else(|| RecipeError::Invalid {
            loc: src.loc(raw.name.span()),
            key: key(k),
            msg: format!("a `{kind}` layer needs `{k}`"),
        })
    };
    let kind = match kind {
        "apt" => {
            let p = raw.packages.as_ref().ok_or_else(|| RecipeError::Invalid {
                loc: src.loc(raw.name.span()),
                key: key("packages"),
                msg: "an `apt` layer needs `packages`".into(),
            })?;
            let p = At {
                value: p.clone(),
                src: src.clone(),
            };
            let packages: Vec<PackageName> = parse_list(&p, &key("packages"))?;
            if packages.is_empty() {
                return Err(p.invalid(&key("packages"), "must list at least one package"));
            }
            let source = match &raw.source {
                Some(s) => {
                    let sn: SourceName = parse_at(&at(s), &key("source"), s.get_ref())?;
                    if !sources.contains_key(&sn) {
                        return Err(at(s).invalid(
                            &key("source"),
                            format!("no source named `{sn}` in [sources]"),
                        ));
                    }
                    Some(sn)
                }
                None => None,
            };
            LayerKind::Apt { packages, source }
        }
        "files" => {
            let f = need(&raw.from, "from")?;
            let from = src.dir().join(f.get());
            if !from.exists() {
                return Err(f.invalid(
                    &key("from"),
                    format!("no such file or directory: {}", from.display()),
                ));
            }
            let to = match &raw.to {
                Some(t) => parse_at(&at(t), &key("to"), t.get_ref())?,
                None => "/".parse().expect("valid"),
            };
            LayerKind::Files { from, to }
        }
        "run" => {
            let s = need(&raw.script, "script")?;
            if s.get().trim().is_empty() {
                return Err(s.invalid(&key("script"), "must not be empty"));
            }
            LayerKind::Run {
                script: s.get().clone(),
            }
        }
        "fetch" => {
            let url = need(&raw.url, "url")?;
            if !(url.get().starts_with("https://") || url.get().starts_with("http://"))
                || url.get().chars().any(char::is_whitespace)
            {
                return Err(url.invalid(
                    &key("url"),
                    "must be an http:// or https:// URL without spaces",
                ));
            }
            let sha = need(&raw.sha256, "sha256")?;
            let sha256 = parse_at(&sha, &key("sha256"), sha.get())?;
            let to = parse_at(
                &need(&raw.to, "to")?,
                &key("to"),
                raw.to.as_ref().map(|t| t.get_ref().as_str()).unwrap_or(""),
            )?;
            let strip = match &raw.strip {
                Some(s) if (0..=16).contains(s.get_ref()) => *s.get_ref() as u32,
                Some(s) => {
                    return Err(RecipeError::Invalid {
                        loc: src.loc(s.span()),
                        key: key("strip"),
                        msg: "must be between 0 and 16".into(),
                    });
                }
                None => 0,
            };
            let inferred = crate::recipe::archive_kind(url.get()).is_some();
            let unpack = raw
                .unpack
                .as_ref()
                .map(|u| *u.get_ref())
                .unwrap_or(inferred);
            if unpack && !inferred {
                return Err(url.invalid(&key("unpack"), "cannot tell the archive type from the file name (.tar.gz, .tgz, .tar.xz, .zip); set `unpack = false`"));
            }
            let mode = match &raw.mode {
                Some(m) => Some(
                    u32::from_str_radix(m.get_ref(), 8)
                        .ok()
                        .filter(|v| *v <= 0o7777)
                        .ok_or_else(|| {
                            at(m).invalid(&key("mode"), "must be an octal mode such as \"0755\"")
                        })?,
                ),
                None => None,
            };
            LayerKind::Fetch {
                url: url.get().clone(),
                sha256,
                to,
                strip,
                unpack,
                mode,
            }
        }
        "pip" => {
            let r = raw
                .requirements
                .as_ref()
                .ok_or_else(|| RecipeError::Invalid {
                    loc: src.loc(raw.name.span()),
                    key: key("requirements"),
                    msg: "a `pip` layer needs `requirements`".into(),
                })?;
            let venv = parse_at(
                &need(&raw.venv, "venv")?,
                &key("venv"),
                raw.venv
                    .as_ref()
                    .map(|t| t.get_ref().as_str())
                    .unwrap_or(""),
            )?;
            let reqs = At {
                value: r.clone(),
                src: src.clone(),
            };
            if r.get_ref().is_empty() {
                return Err(
                    reqs.invalid(&key("requirements"), "must list at least one requirement")
                );
            }
            for req in r.get_ref() {
                if !valid_requirement(req) {
                    return Err(reqs.invalid(&key("requirements"), format!("`{}` is not a requirement like \"name==1.2\" or \"name[extra]>=1\" (no options, URLs or spaces)", req.escape_debug())));
                }
            }
            let python = match &raw.python {
                Some(p)
                    if p.get_ref().split('.').count() == 2
                        && p.get_ref().split('.').all(|x| {
                            !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit())
                        }) =>
                {
                    p.get_ref().clone()
                }
                Some(p) => {
                    return Err(
                        at(p).invalid(&key("python"), "must be a Python version such as \"3.13\"")
                    );
                }
                None => String::new(),
            };
            LayerKind::Pip {
                requirements: r.get_ref().clone(),
                venv,
                python,
            }
        }
        _ => unreachable!("checked by allowed_keys"),
    };
    Ok(Layer {
        name,
        kind,
        loc: l.loc(),
    })
}

/// A PEP 508 requirement without markers, URLs or options:
/// `name`, `name[extra,...]`, each optionally with version clauses.
pub fn valid_requirement(r: &str) -> bool {
    let name_len = r
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
        .count();
    if name_len == 0 || !r.as_bytes()[0].is_ascii_alphanumeric() {
        return false;
    }
    let mut rest = &r[name_len..];
    if let Some(after) = rest.strip_prefix('[') {
        let Some(end) = after.find(']') else {
            return false;
        };
        let extras = &after[..end];
        if extras.is_empty()
            || !extras
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-,".contains(&b))
        {
            return false;
        }
        rest = &after[end + 1..];
    }
    if rest.is_empty() {
        return true;
    }
    rest.split(',').all(|clause| {
        let op = ["===", "==", ">=", "<=", "~=", "!=", "<", ">"]
            .iter()
            .find(|op| clause.starts_with(**op));
        match op {
            Some(op) => {
                let v = &clause[op.len()..];
                !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".*+!_-".contains(&b))
            }
            None => false,
        }
    })
}

/// The archive type of a fetched file, from its name.
pub fn archive_kind(url: &str) -> Option<&'static str> {
    let name = url.rsplit('/').next().unwrap_or(url);
    let name = name.split(['?', '#']).next().unwrap_or(name);
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some("tar.gz")
    } else if name.ends_with(".tar.xz") {
        Some("tar.xz")
    } else if name.ends_with(".zip") {
        Some("zip")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
