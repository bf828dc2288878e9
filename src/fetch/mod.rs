//! HTTP: the one module that talks to the network. Finds the Debian mirror
//! from configuration and reads a suite's `InRelease`, whose sha256 pins
//! what an unlocked build resolves against and whose date is the build epoch.
//!
//! The mirror is transport only: its URL never enters a key or an image.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no Debian mirror configured\nhint: set MIMG_DEBIAN_MIRROR=http://MIRROR/debian or add a deb822 source under /etc/apt/sources.list.d/"
    )]
    NoMirror,
    #[error(
        "cannot reach the Debian mirror at {url}: {reason}\nhint: check the network or set MIMG_DEBIAN_MIRROR to a reachable mirror"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url}: HTTP status {status}\nhint: is `{suite}` a suite this mirror carries?")]
    Status {
        url: String,
        status: u16,
        suite: String,
    },
    #[error("{url}: no `Date:` field in InRelease")]
    NoDate { url: String },
}

/// The Debian mirror's base URL: `$MIMG_DEBIAN_MIRROR`, else the first
/// Debian source of the host's apt configuration.
pub fn debian_mirror() -> Result<String, FetchError> {
    if let Ok(m) = std::env::var("MIMG_DEBIAN_MIRROR")
        && !m.trim().is_empty()
    {
        return Ok(m.trim().trim_end_matches('/').to_string());
    }
    mirror_from_apt(Path::new("/etc/apt")).ok_or(FetchError::NoMirror)
}

/// The first `URIs:` (deb822) or `deb URI` (one-line) entry that is not a
/// security archive.
pub fn mirror_from_apt(etc_apt: &Path) -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "sources" || e == "list")
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                texts.push(t);
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        texts.insert(0, t);
    }
    for t in texts {
        for line in t.lines() {
            let line = line.trim();
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| !w.starts_with('['))
            } else {
                None
            };
            if let Some(u) = uri
                && (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains("security")
            {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// A suite's release file as fetched: its sha256 and its date.
#[derive(Debug, Clone)]
pub struct Release {
    pub sha256: String,
    pub epoch: u64,
    /// The file as fetched (clearsigned).
    pub bytes: Vec<u8>,
}

/// One client for the process: its connection pool is shared by every
/// download (a client per request costs a runtime and a connection each).
fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(900))
            .build()
            .expect("HTTP client builds")
    })
}

/// Fetch `dists/SUITE/InRelease` from the mirror (three tries).
pub fn release(mirror: &str, suite: &str) -> Result<Release, FetchError> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * attempt));
        }
        match client().get(&url).send() {
            Ok(r) if r.status().is_success() => match r.bytes() {
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body);
                    let epoch = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Date:"))
                        .and_then(|d| parse_rfc2822(d.trim()))
                        .ok_or_else(|| FetchError::NoDate { url: url.clone() })?;
                    return Ok(Release {
                        sha256: hex::encode(Sha256::digest(&body)),
                        epoch,
                        bytes: body.to_vec(),
                    });
                }
                Err(e) => last = e.to_string(),
            },
            Ok(r) if r.status().is_client_error() => {
                return Err(FetchError::Status {
                    url,
                    status: r.status().as_u16(),
                    suite: suite.into(),
                });
            }
            Ok(r) => last = format!("HTTP status {}", r.status()),
            Err(e) => last = error_chain(&e),
        }
    }
    Err(FetchError::Unreachable { url, reason: last })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Seconds since 1970 of a date such as `Sat, 08 Nov 2025 09:07:59 UTC`
/// (a Release file's `Date:`: an HTTP date but for the zone's name).
pub fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.trim();
    let rest = ["UTC", "+0000", "GMT"]
        .iter()
        .find_map(|z| s.strip_suffix(z))?;
    // An HTTP date has a two-digit day; some archives write `Sat, 8 Nov`.
    let gmt = match rest.split_once(", ") {
        Some((wd, tail)) if tail.as_bytes().get(1) == Some(&b' ') => format!("{wd}, 0{tail}GMT"),
        _ => format!("{rest}GMT"),
    };
    let t = httpdate::parse_http_date(&gmt).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates() {
        assert_eq!(
            parse_rfc2822("Sat, 01 Jan 2000 00:00:00 UTC"),
            Some(946684800)
        );
        assert_eq!(
            parse_rfc2822("Sat, 09 Aug 2025 09:26:03 UTC"),
            Some(1754731563)
        );
        assert_eq!(
            parse_rfc2822("Sat, 9 Aug 2025 09:26:03 UTC"),
            Some(1754731563)
        );
        assert_eq!(parse_rfc2822("garbage"), None);
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_apt(d.path()).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        let e = tempfile::tempdir().unwrap();
        std::fs::write(
            e.path().join("sources.list"),
            "# x\ndeb [arch=amd64] http://m.invalid/debian/ bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_apt(e.path()).as_deref(),
            Some("http://m.invalid/debian")
        );
    }
}

/// Why a pinned file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "the sha256 of {name} did not match: expected {expected}, got {got}\nhint: the upstream file changed or the download was cut; check the pin in the recipe"
    )]
    Mismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error(
        "cannot download {url}: {reason}\nhint: fetch the file elsewhere and put it in the store with `mimg store add FILE` (it must have sha256 {sha256})"
    )]
    Failed {
        url: String,
        sha256: String,
        reason: String,
    },
    #[error("{url}: the transfer was cut after {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Download `url` into `dest`, hashing while streaming; the file is left
/// only if its sha256 is `expected`. Three tries for network failures;
/// `progress` gets (bytes so far, total if known).
pub fn download(
    url: &str,
    expected: &str,
    dest: &Path,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<(), DownloadError> {
    use std::io::{Read, Write};
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let mut last = String::new();
    for attempt in 0..3u64 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * attempt));
        }
        let resp = match client().get(url).send() {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => {
                return Err(DownloadError::Failed {
                    url: url.into(),
                    sha256: expected.into(),
                    reason: format!("HTTP status {}", r.status()),
                });
            }
            Ok(r) => {
                last = format!("HTTP status {}", r.status());
                continue;
            }
            Err(e) => {
                last = error_chain(&e);
                continue;
            }
        };
        let total = resp.content_length();
        let mut f = std::fs::File::create(dest).map_err(|source| DownloadError::Write {
            path: dest.into(),
            source,
        })?;
        let mut h = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut r = resp;
        let res: Result<(), String> = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    h.update(&buf[..n]);
                    f.write_all(&buf[..n])
                        .map_err(|source| DownloadError::Write {
                            path: dest.into(),
                            source,
                        })?;
                    got += n as u64;
                    progress(got, total);
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(e) = res {
            last = e;
            let _ = std::fs::remove_file(dest);
            continue;
        }
        if let Some(t) = total
            && t != got
        {
            let _ = std::fs::remove_file(dest);
            last = DownloadError::Truncated {
                url: url.into(),
                got,
                expected: t,
            }
            .to_string();
            continue;
        }
        let sum = hex::encode(h.finalize());
        if sum != expected {
            let _ = std::fs::remove_file(dest);
            return Err(DownloadError::Mismatch {
                name,
                expected: expected.into(),
                got: sum,
            });
        }
        f.sync_all().map_err(|source| DownloadError::Write {
            path: dest.into(),
            source,
        })?;
        return Ok(());
    }
    Err(DownloadError::Failed {
        url: url.into(),
        sha256: expected.into(),
        reason: last,
    })
}
