//! Where a cache lives: a directory (`file:///path`), a read-only web
//! server (`http://`, `https://`), or an S3 bucket
//! (`s3://BUCKET/PREFIX?endpoint=URL&region=R`). Each is a flat space of
//! objects named by relative paths (see the layout in [`super`]); nothing
//! here knows what they hold.
//!
//! S3 requests are signed by `rusty-s3` (presigned URLs) and sent with the
//! HTTP client; credentials come the way every S3 tool takes them:
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`),
//! else the profile `AWS_PROFILE` (default `default`) of
//! `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`; without any, the
//! bucket is read anonymously.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "{url}: not a cache URL: {why}\nhint: use s3://BUCKET/PREFIX?endpoint=URL&region=R, http(s)://HOST/PATH or file:///PATH"
    )]
    BadUrl { url: String, why: String },
    #[error("{url}: {reason}")]
    Failed { url: String, reason: String },
    #[error(
        "{url} is read-only (a web server)\nhint: push to the directory it serves (file:///...) or to S3"
    )]
    ReadOnly { url: String },
}

/// A cache's storage: objects by relative path.
pub trait Remote: Send + Sync {
    /// The cache's URL as the user gave it (credentials are never in it).
    fn url(&self) -> &str;
    /// An object's bytes as a stream; `None` when it does not exist.
    fn get(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, RemoteError>;
    /// Whether an object exists.
    fn exists(&self, path: &str) -> Result<bool, RemoteError>;
    /// Write an object from a file (whole, or not at all where the storage allows).
    fn put_file(&self, path: &str, file: &Path) -> Result<(), RemoteError>;
    /// Write an object from bytes.
    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError>;
    /// Every object's path under `prefix` (a directory, ending in `/`).
    fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError>;
    /// Whether it can only be read (a web server).
    fn read_only(&self) -> bool {
        false
    }
}

/// Open the cache at `url`.
pub fn open(url: &str) -> Result<Box<dyn Remote>, RemoteError> {
    let bad = |why: &str| RemoteError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file URL names an absolute path: file:///PATH"));
        }
        return Ok(Box::new(Dir {
            url: url.to_string(),
            root: PathBuf::from(path),
        }));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        return Ok(Box::new(Web {
            url: url.to_string(),
            base: url.trim_end_matches('/').to_string(),
        }));
    }
    if url.starts_with("s3://") {
        return Ok(Box::new(S3::parse(url)?));
    }
    Err(bad("its scheme is none of s3, http, https, file"))
}

fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Per read of a body, and for the response to a request: a
            // cache that stalls is given up (the build builds instead).
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client builds")
    })
}

/// How long an upload of `size` bytes may take to be answered (10 MB/s at least).
fn upload_limit(size: u64) -> Duration {
    Duration::from_secs(60 + size / 10_000_000)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A cache in a local directory.
struct Dir {
    url: String,
    root: PathBuf,
}

impl Dir {
    fn fail(&self, path: &str, e: std::io::Error) -> RemoteError {
        RemoteError::Failed {
            url: format!("{}/{path}", self.url.trim_end_matches('/')),
            reason: e.to_string(),
        }
    }

    /// Write through a temporary name in the same directory, then rename:
    /// a reader never sees half an object.
    fn put_with(
        &self,
        path: &str,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<(), RemoteError> {
        let dest = self.root.join(path);
        let dir = dest.parent().expect("objects lie in directories");
        std::fs::create_dir_all(dir).map_err(|e| self.fail(path, e))?;
        let tmp = crate::paths::tmp_beside(&dest);
        let res = write(&tmp)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                // Served by a web server running as another user.
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            })
            .and_then(|_| std::fs::rename(&tmp, &dest));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail(path, e));
        }
        Ok(())
    }
}

impl Remote for Dir {
    fn url(&self) -> &str {
        &self.url
    }
    fn get(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, RemoteError> {
        match std::fs::File::open(self.root.join(path)) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.root.is_dir() {
                    Ok(None)
                } else {
                    Err(self.fail(
                        "",
                        std::io::Error::other("the cache directory does not exist"),
                    ))
                }
            }
            Err(e) => Err(self.fail(path, e)),
        }
    }
    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        Ok(self.root.join(path).is_file())
    }
    fn put_file(&self, path: &str, file: &Path) -> Result<(), RemoteError> {
        self.put_with(path, |tmp| std::fs::copy(file, tmp).map(|_| ()))
    }
    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put_with(path, |tmp| std::fs::write(tmp, bytes))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let dir = self.root.join(prefix);
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Temporary names of writes under way start with a dot.
                    if !name.starts_with('.') && e.path().is_file() {
                        out.push(format!("{prefix}{name}"));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.fail(prefix, e)),
        }
        out.sort();
        Ok(out)
    }
}

/// A cache served read-only over HTTP.
struct Web {
    url: String,
    base: String,
}

impl Web {
    fn at(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }
}

/// A response's body when it is there, `None` for 404 (and 403, which
/// web servers and S3 give for a missing object without list rights).
fn body_of(
    url: &str,
    r: reqwest::Result<reqwest::blocking::Response>,
) -> Result<Option<Box<dyn Read + Send>>, RemoteError> {
    let fail = |reason: String| RemoteError::Failed {
        url: url.to_string(),
        reason,
    };
    let r = r.map_err(|e| fail(chain(&e)))?;
    match r.status().as_u16() {
        200..=299 => Ok(Some(Box::new(r))),
        403 | 404 => Ok(None),
        s => Err(fail(format!("HTTP status {s}"))),
    }
}

fn exists_of(
    url: &str,
    r: reqwest::Result<reqwest::blocking::Response>,
) -> Result<bool, RemoteError> {
    Ok(body_of(url, r)?.is_some())
}

impl Remote for Web {
    fn url(&self) -> &str {
        &self.url
    }
    fn read_only(&self) -> bool {
        true
    }
    fn get(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, RemoteError> {
        let u = self.at(path);
        body_of(&u, client().get(&u).send())
    }
    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        let u = self.at(path);
        exists_of(&u, client().head(&u).send())
    }
    fn put_file(&self, _: &str, _: &Path) -> Result<(), RemoteError> {
        Err(RemoteError::ReadOnly {
            url: self.url.clone(),
        })
    }
    fn put_bytes(&self, _: &str, _: &[u8]) -> Result<(), RemoteError> {
        Err(RemoteError::ReadOnly {
            url: self.url.clone(),
        })
    }
    fn list(&self, _: &str) -> Result<Vec<String>, RemoteError> {
        Err(RemoteError::Failed {
            url: self.url.clone(),
            reason: "a web server does not list what it holds".into(),
        })
    }
}

/// A cache in an S3 bucket, under a prefix.
struct S3 {
    url: String,
    bucket: Bucket,
    prefix: String,
    credentials: Option<Credentials>,
}

/// How long a presigned request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

impl S3 {
    fn parse(url: &str) -> Result<S3, RemoteError> {
        let bad = |why: String| RemoteError::BadUrl {
            url: url.to_string(),
            why,
        };
        let u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let name = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("it names no bucket".into()))?
            .to_string();
        let prefix = u.path().trim_matches('/').to_string();
        let mut endpoint = None;
        let mut region = None;
        for (k, v) in u.query_pairs() {
            match &*k {
                "endpoint" => endpoint = Some(v.into_owned()),
                "region" => region = Some(v.into_owned()),
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{other}` (endpoint, region)"
                    )));
                }
            }
        }
        let region = region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = url::Url::parse(&endpoint).map_err(|e| bad(format!("endpoint: {e}")))?;
        let bucket = Bucket::new(endpoint, UrlStyle::Path, name, region)
            .map_err(|e| bad(format!("endpoint: {e}")))?;
        Ok(S3 {
            url: url.to_string(),
            bucket,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            credentials: credentials(),
        })
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    fn shown(&self, path: &str) -> String {
        format!(
            "{}/{path}",
            self.url
                .split('?')
                .next()
                .unwrap_or(&self.url)
                .trim_end_matches('/')
        )
    }

    fn put(&self, path: &str, body: reqwest::blocking::Body, size: u64) -> Result<(), RemoteError> {
        let key = self.key(path);
        let url = self
            .bucket
            .put_object(self.credentials.as_ref(), &key)
            .sign(SIGNED_FOR);
        let fail = |reason: String| RemoteError::Failed {
            url: self.shown(path),
            reason,
        };
        let r = client()
            .put(url)
            .timeout(upload_limit(size))
            .body(body)
            .send()
            .map_err(|e| fail(chain(&e)))?;
        if !r.status().is_success() {
            let s = r.status();
            let text = r.text().unwrap_or_default();
            return Err(fail(format!("HTTP status {s}: {}", text.trim())));
        }
        Ok(())
    }
}

impl Remote for S3 {
    fn url(&self) -> &str {
        &self.url
    }
    fn get(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, RemoteError> {
        let u = self
            .bucket
            .get_object(self.credentials.as_ref(), &self.key(path))
            .sign(SIGNED_FOR);
        body_of(&self.shown(path), client().get(u).send())
    }
    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        let u = self
            .bucket
            .head_object(self.credentials.as_ref(), &self.key(path))
            .sign(SIGNED_FOR);
        exists_of(&self.shown(path), client().head(u).send())
    }
    fn put_file(&self, path: &str, file: &Path) -> Result<(), RemoteError> {
        let f = std::fs::File::open(file).map_err(|e| RemoteError::Failed {
            url: self.shown(path),
            reason: format!("{}: {e}", file.display()),
        })?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.put(path, reqwest::blocking::Body::sized(f, size), size)
    }
    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put(path, bytes.to_vec().into(), bytes.len() as u64)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let full = self.key(prefix);
        loop {
            let mut action = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_prefix(full.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let u = action.sign(SIGNED_FOR);
            let fail = |reason: String| RemoteError::Failed {
                url: self.shown(prefix),
                reason,
            };
            let r = client().get(u).send().map_err(|e| fail(chain(&e)))?;
            if !r.status().is_success() {
                return Err(fail(format!("listing: HTTP status {}", r.status())));
            }
            let text = r.text().map_err(|e| fail(chain(&e)))?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| fail(format!("listing: {e}")))?;
            for c in parsed.contents {
                if let Some(rel) = c.key.strip_prefix(&self.prefix) {
                    out.push(rel.to_string());
                }
            }
            match parsed.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

/// S3 credentials from the environment, else from the shared credentials file.
fn credentials() -> Option<Credentials> {
    if let Some(c) = Credentials::from_env() {
        return Some(c);
    }
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let (key, secret, token) = profile_values(&text, &profile)?;
    Some(match token {
        Some(t) => Credentials::new_with_token(key, secret, t),
        None => Credentials::new(key, secret),
    })
}

/// `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token`
/// of `[profile]` in an AWS credentials file (INI).
fn profile_values(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut current = String::new();
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((key?, secret?, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart_and_bad_ones_named() {
        assert_eq!(open("file:///tmp/c").unwrap().url(), "file:///tmp/c");
        assert!(open("http://127.0.0.1:8080/cache").is_ok());
        let s3 =
            S3::parse("s3://bucket/ci/cache?endpoint=http://127.0.0.1:8333&region=eu-1").unwrap();
        assert_eq!(s3.prefix, "ci/cache/");
        assert_eq!(s3.bucket.region(), "eu-1");
        assert!(
            s3.bucket
                .object_url(&s3.key("v1/blobs/x"))
                .as_str()
                .starts_with("http://127.0.0.1:8333/bucket/ci/cache/v1/blobs/x")
        );
        for (url, says) in [
            ("ftp://x/y", "scheme"),
            ("file://relative", "absolute"),
            ("s3://bucket/p?endpint=http://x", "endpint"),
        ] {
            let e = open(url).err().expect("refused").to_string();
            assert!(e.contains(url) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn a_profile_is_read_from_the_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[ci]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        assert_eq!(
            profile_values(text, "default"),
            Some(("A".into(), "B".into(), None))
        );
        assert_eq!(
            profile_values(text, "ci"),
            Some(("C".into(), "D".into(), Some("T".into())))
        );
        assert_eq!(profile_values(text, "none"), None);
    }

    #[test]
    fn a_directory_cache_writes_whole_objects_and_lists_them() {
        let d = tempfile::tempdir().unwrap();
        let r = open(&format!("file://{}", d.path().display())).unwrap();
        assert!(r.get("v1/steps/a.json").unwrap().is_none());
        r.put_bytes("v1/steps/a.json", b"{}").unwrap();
        assert!(r.exists("v1/steps/a.json").unwrap());
        let mut s = String::new();
        r.get("v1/steps/a.json")
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "{}");
        assert_eq!(r.list("v1/steps/").unwrap(), vec!["v1/steps/a.json"]);
        let gone = open("file:///nonexistent-mimg-cache").unwrap();
        assert!(
            gone.get("v1/steps/a.json").is_err(),
            "a missing cache directory is an error, not a miss"
        );
    }
}
