//! Merging: read a recipe file and follow `extends` and `include` (rules in
//! the table of [`super`]), then validate the merged form into a
//! [`Recipe`]. The only module of `recipe` that reads files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::*;
use super::validate::*;
use super::*;

#[derive(Default)]
pub(super) struct Merged {
    pub(super) distribution: Option<At<String>>,
    pub(super) suite: Option<At<String>>,
    pub(super) components: Option<At<Vec<String>>>,
    pub(super) sources: BTreeMap<String, At<RawSource>>,
    pub(super) size: Option<At<String>>,
    pub(super) boot: Option<At<Vec<String>>>,
    pub(super) compress: Option<At<String>>,
    pub(super) layers: Vec<At<RawLayer>>,
}

pub(super) fn read_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(T, SourceText), RecipeError> {
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

pub(super) fn load_merged(path: &Path, chain: &mut Vec<PathBuf>) -> Result<Merged, RecipeError> {
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
        merged.compress = from(disk.compress, &src).or(merged.compress);
    }
    merged.add_sources(raw.sources, &src);
    merged.add_layers(raw.layers, &src)?;
    Ok(merged)
}

/// `extends = "name"` means `name.toml` beside the file; anything with a `/`
/// or ending in `.toml` is a path relative to the file.
pub(super) fn resolve_relative(src: &SourceText, value: &str, name_allowed: bool) -> PathBuf {
    if name_allowed && !value.contains('/') && !value.ends_with(".toml") {
        src.dir().join(format!("{value}.toml"))
    } else {
        src.dir().join(value)
    }
}

impl Merged {
    pub(super) fn add_sources(
        &mut self,
        sources: BTreeMap<String, Spanned<RawSource>>,
        src: &SourceText,
    ) {
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

    pub(super) fn add_layers(
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

    pub(super) fn validate(
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
                    check_valid_until: raw.check_valid_until.as_ref().is_none_or(|v| *v.get_ref()),
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

        let compress = match &self.compress {
            None => None,
            Some(c) => match c.get().as_str() {
                "none" => None,
                "zstd" => Some(Compression::Zstd),
                other => {
                    return Err(c.invalid(
                        "disk.compress",
                        format!("unknown compression `{other}`; use \"zstd\" or \"none\""),
                    ));
                }
            },
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
            disk: Disk {
                size,
                boot,
                compress,
            },
            layers,
        })
    }
}
