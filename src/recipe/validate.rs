//! Validation of one layer and of sizes: every field of every layer kind
//! checked, unknown keys refused, each error naming file, line and key.

use std::collections::BTreeMap;

use toml::Spanned;

use super::raw::*;
use super::*;

pub(super) fn parse_at<T: std::str::FromStr<Err = names::InvalidName>, V>(
    at: &At<V>,
    key: &str,
    text: &str,
) -> Result<T, RecipeError> {
    text.parse::<T>().map_err(|e| at.invalid(key, e.0))
}

pub(super) fn parse_list<T: std::str::FromStr<Err = names::InvalidName>>(
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
pub(super) fn allowed_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "apt" => &["packages", "source"],
        "files" => &["from", "to"],
        "run" => &["script", "sees"],
        "fetch" => &["url", "sha256", "to", "strip", "unpack", "mode"],
        "pip" => &["requirements", "venv", "python"],
        _ => return None,
    })
}

pub(super) fn validate_layer(
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
    let present: [(&str, Option<std::ops::Range<usize>>); 14] = [
        ("python", raw.python.as_ref().map(|v| v.span())),
        ("packages", raw.packages.as_ref().map(|v| v.span())),
        ("source", raw.source.as_ref().map(|v| v.span())),
        ("from", raw.from.as_ref().map(|v| v.span())),
        ("to", raw.to.as_ref().map(|v| v.span())),
        ("script", raw.script.as_ref().map(|v| v.span())),
        ("sees", raw.sees.as_ref().map(|v| v.span())),
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
            let sees = match &raw.sees {
                None => None,
                Some(v) => Some(parse_sees(
                    &At {
                        value: v.clone(),
                        src: src.clone(),
                    },
                    &key("sees"),
                )?),
            };
            LayerKind::Run {
                script: s.get().clone(),
                sees,
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

/// A run layer's `sees`: the kinds of the layers before it whose files its
/// script runs over, besides the rootfs (which holds every `apt` layer and
/// is always there). Sorted, each once.
fn parse_sees(v: &At<Vec<String>>, key: &str) -> Result<Vec<String>, RecipeError> {
    let mut kinds = Vec::new();
    for k in v.get() {
        match k.as_str() {
            "files" | "fetch" | "pip" | "run" => kinds.push(k.clone()),
            "apt" => {
                return Err(v.invalid(
                    key,
                    "`apt` is not needed: every apt layer is in the rootfs, which a run layer always sees",
                ));
            }
            _ => {
                return Err(v.invalid(
                    key,
                    format!("unknown layer kind `{k}`; use files, fetch, pip or run"),
                ));
            }
        }
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}
