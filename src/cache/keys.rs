//! The cache's signing keys: ed25519, written the way Nix writes its
//! binary-cache keys. A public key is one line `NAME:BASE64` (32 bytes); a
//! secret key file holds `NAME:BASE64` of the 32-byte seed followed by the
//! public key (64 bytes), mode 0600. NAME says whose key it is
//! (`ci.example.org-1`); a signature names it, so a consumer trusting
//! several keys knows which one to check.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what}: not a key line `NAME:BASE64`{detail}\nhint: {hint}")]
    Malformed {
        what: String,
        detail: String,
        hint: &'static str,
    },
    #[error("cannot read the secret key {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret key {} may be read by others (mode {mode:04o})\nhint: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed { path: std::path::PathBuf, mode: u32 },
}

/// A key that may sign entries.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

/// Never prints the secret.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

/// A key an entry's signature is checked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

fn split<'a>(
    what: &str,
    line: &'a str,
    hint: &'static str,
) -> Result<(&'a str, Vec<u8>), KeyError> {
    let bad = |detail: String| KeyError::Malformed {
        what: what.to_string(),
        detail,
        hint,
    };
    let (name, b64) = line
        .trim()
        .split_once(':')
        .ok_or_else(|| bad(String::new()))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
    {
        return Err(bad(format!(
            " (the name `{name}` must be letters, digits, `.`, `-`, `_`)"
        )));
    }
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| bad(format!(" (base64: {e})")))?;
    Ok((name, bytes))
}

impl SecretKey {
    /// A new key pair named `name` from the system's random source.
    pub fn generate(name: &str) -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom").map_err(|source| KeyError::Read {
            path: "/dev/urandom".into(),
            source,
        })?;
        std::io::Read::read_exact(&mut f, &mut seed).map_err(|source| KeyError::Read {
            path: "/dev/urandom".into(),
            source,
        })?;
        let line = format!("{name}:{}", B64.encode([0u8; 32]));
        split("the key name", &line, "name it like `ci.example.org-1`")?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parse a secret key file's text.
    pub fn parse(what: &str, text: &str) -> Result<SecretKey, KeyError> {
        let hint = "make one with `mimg cache keygen NAME --out FILE`";
        let (name, bytes) = split(what, text, hint)?;
        let Ok(pair) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return Err(KeyError::Malformed {
                what: what.to_string(),
                detail: format!(" (a secret key holds 64 bytes, this {})", bytes.len()),
                hint,
            });
        };
        let key = SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::Malformed {
            what: what.to_string(),
            detail: " (its public half does not belong to its secret half)".into(),
            hint,
        })?;
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }

    /// Read a secret key file, refusing one that others may read.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let md = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.into(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        SecretKey::parse(&path.display().to_string(), &text)
    }

    /// The secret key file's line.
    pub fn line(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `NAME:BASE64` of the signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        format!(
            "{}:{}",
            self.name,
            B64.encode(self.key.sign(message).to_bytes())
        )
    }
}

impl PublicKey {
    /// Parse a public key line `NAME:BASE64`.
    pub fn parse(what: &str, line: &str) -> Result<PublicKey, KeyError> {
        let hint = "a trusted key is the line `mimg cache keygen` printed (NAME:BASE64)";
        let (name, bytes) = split(what, line, hint)?;
        let bad = |detail: &str| KeyError::Malformed {
            what: what.to_string(),
            detail: detail.to_string(),
            hint,
        };
        let arr = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| bad(" (a public key holds 32 bytes)"))?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|_| bad(" (not an ed25519 point)"))?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    /// Every key of a space- or newline-separated list of lines.
    pub fn parse_list(what: &str, text: &str) -> Result<Vec<PublicKey>, KeyError> {
        text.split_whitespace()
            .map(|l| PublicKey::parse(what, l))
            .collect()
    }

    pub fn line(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }

    /// Whether `signature` (`NAME:BASE64`) is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let Some((name, b64)) = signature.split_once(':') else {
            return false;
        };
        let Ok(bytes) = B64.decode(b64) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        name == self.name && self.key.verify(message, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let a = SecretKey::generate("a.example-1").unwrap();
        let b = SecretKey::generate("b.example-1").unwrap();
        let sig = a.sign(b"message");
        assert!(a.public().verifies(b"message", &sig));
        assert!(!a.public().verifies(b"messagf", &sig));
        assert!(!b.public().verifies(b"message", &sig));
        // Same name, other key: refused.
        let b_as_a = PublicKey::parse(
            "k",
            &format!(
                "a.example-1:{}",
                b.public().line().split_once(':').unwrap().1
            ),
        )
        .unwrap();
        assert!(!b_as_a.verifies(b"message", &sig));
    }

    #[test]
    fn keys_round_trip_through_their_lines() {
        let a = SecretKey::generate("ci-1").unwrap();
        let again = SecretKey::parse("f", &a.line()).unwrap();
        assert_eq!(again.public(), a.public());
        assert_eq!(
            PublicKey::parse("p", &a.public().line()).unwrap(),
            a.public()
        );
        let two = format!("{} {}\n", a.public().line(), again.public().line());
        assert_eq!(
            PublicKey::parse_list("MIMG_TRUSTED_KEYS", &two)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn malformed_keys_say_what_is_wrong() {
        let e = PublicKey::parse("MIMG_TRUSTED_KEYS", "nocolon")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MIMG_TRUSTED_KEYS") && e.contains("NAME:BASE64"),
            "{e}"
        );
        let e = PublicKey::parse("k", "ci:AAAA").unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        let e = SecretKey::parse("key.sec", "ci:AAAA")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("64 bytes") && e.contains("mimg cache keygen"),
            "{e}"
        );
        assert!(SecretKey::generate("bad name").is_err());
    }
}
