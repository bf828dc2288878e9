//! Which caches a build substitutes from and which keys it trusts.
//!
//! From the environment, else from a config file:
//! - `MIMG_SUBSTITUTERS`: cache URLs separated by spaces, tried in order;
//! - `MIMG_TRUSTED_KEYS`: public key lines (`NAME:BASE64`) separated by spaces;
//! - the file `$MIMG_CONFIG`, else `./mimg.toml`, else
//!   `$XDG_CONFIG_HOME/mimg/mimg.toml` (`~/.config/mimg/mimg.toml`):
//!
//! ```toml
//! [cache]
//! substituters = ["s3://ci-cache/mimg?endpoint=https://s3.example.org&region=eu-1"]
//! trusted_keys = ["ci.example.org-1:BASE64..."]
//! ```
//!
//! A variable that is set wins over the file's value (an empty one turns
//! that value off).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::keys::{KeyError, PublicKey};

#[derive(Debug, Default, Clone)]
pub struct Config {
    pub substituters: Vec<String>,
    pub trusted_keys: Vec<PublicKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    cache: CacheSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    #[serde(default)]
    substituters: Vec<String>,
    #[serde(default)]
    trusted_keys: Vec<String>,
}

impl Config {
    /// The configuration of this process (environment and config file).
    pub fn load() -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        Config::from(
            env("MIMG_SUBSTITUTERS"),
            env("MIMG_TRUSTED_KEYS"),
            config_file(),
        )
    }

    fn from(
        substituters: Option<String>,
        trusted: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let parsed = match &file {
            Some(p) => read_file(p)?,
            None => File::default(),
        };
        let substituters = match substituters {
            Some(v) => v.split_whitespace().map(str::to_string).collect(),
            None => parsed.cache.substituters,
        };
        let trusted_keys = match trusted {
            Some(v) => PublicKey::parse_list("MIMG_TRUSTED_KEYS", &v)?,
            None => {
                let what = format!(
                    "{}: cache.trusted_keys",
                    file.as_deref().unwrap_or(Path::new("config")).display()
                );
                parsed
                    .cache
                    .trusted_keys
                    .iter()
                    .map(|l| PublicKey::parse(&what, l))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Config {
            substituters,
            trusted_keys,
        })
    }
}

/// The config file to read, if one exists.
fn config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MIMG_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("mimg.toml");
    if local.is_file() {
        return Some(local);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let p = base.join("mimg/mimg.toml");
    p.is_file().then_some(p)
}

fn read_file(p: &Path) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        ConfigError::Parse {
            path: p.to_path_buf(),
            message: format!("{at}{}", e.message()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_over_the_file() {
        let d = tempfile::tempdir().unwrap();
        let k = super::super::keys::SecretKey::generate("ci-1")
            .unwrap()
            .public()
            .line();
        let f = d.path().join("mimg.toml");
        std::fs::write(
            &f,
            format!("[cache]\nsubstituters = [\"file:///a\", \"http://127.0.0.1:1/c\"]\ntrusted_keys = [\"{k}\"]\n"),
        )
        .unwrap();
        let c = Config::from(None, None, Some(f.clone())).unwrap();
        assert_eq!(c.substituters, ["file:///a", "http://127.0.0.1:1/c"]);
        assert_eq!(c.trusted_keys.len(), 1);
        let c = Config::from(Some("file:///b".into()), Some(String::new()), Some(f)).unwrap();
        assert_eq!(c.substituters, ["file:///b"]);
        assert!(c.trusted_keys.is_empty());
    }

    #[test]
    fn a_bad_file_names_its_line() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("mimg.toml");
        std::fs::write(
            &f,
            "[cache]\nsubstituters = [\"file:///a\"]\ntrusted = []\n",
        )
        .unwrap();
        let e = Config::from(None, None, Some(f.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mimg.toml") && e.contains("line 3") && e.contains("trusted"),
            "{e}"
        );
        std::fs::write(&f, "[cache]\ntrusted_keys = [\"nope\"]\n").unwrap();
        let e = Config::from(None, None, Some(f)).unwrap_err().to_string();
        assert!(
            e.contains("cache.trusted_keys") && e.contains("NAME:BASE64"),
            "{e}"
        );
    }
}
