//! Validated identifiers used by recipes: once you hold one, it is valid.
//!
//! Each newtype is built only through `FromStr`, which rejects anything that
//! could smuggle a path, a shell word or an apt option into a later stage.

use std::fmt;
use std::str::FromStr;

/// Why a value was refused; the caller adds file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

fn check(
    value: &str,
    what: &str,
    max: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
) -> Result<(), InvalidName> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidName(format!("{what} must not be empty")));
    }
    if bytes.len() > max {
        return Err(InvalidName(format!(
            "{what} `{value}` is longer than {max} characters"
        )));
    }
    if !first(bytes[0]) || !bytes[1..].iter().all(|b| rest(*b)) {
        return Err(InvalidName(format!("`{value}` is not a valid {what}")));
    }
    Ok(())
}

fn lower_digit(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:expr, $max:expr, $first:expr, $rest:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check(s, $what, $max, $first, $rest)?;
                Ok(Self(s.to_string()))
            }
        }

        impl $name {
            /// The validated text.
            #[allow(dead_code)] // not every name type is read as text
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A recipe's name: the file stem of `recipes/NAME.toml`.
    RecipeName, "recipe name", 64, lower_digit,
    |b| lower_digit(b) || b == b'-' || b == b'_' || b == b'.'
);
name_type!(
    /// A layer's name, unique within a recipe.
    LayerName, "layer name", 64, lower_digit,
    |b| lower_digit(b) || b == b'-' || b == b'_'
);
name_type!(
    /// A named apt source (`[sources.NAME]`).
    SourceName, "source name", 64, lower_digit,
    |b| lower_digit(b) || b == b'-' || b == b'_'
);
name_type!(
    /// A Debian suite or codename, such as `trixie-backports`.
    Suite, "suite", 64, lower_digit,
    |b| lower_digit(b) || b == b'-' || b == b'.'
);
name_type!(
    /// A Debian archive component, such as `main`.
    Component, "component", 32, lower_digit,
    |b| lower_digit(b) || b == b'-'
);
name_type!(
    /// A Debian binary package name (Debian policy 5.6.1).
    PackageName, "Debian package name", 128, lower_digit,
    |b| lower_digit(b) || b == b'+' || b == b'-' || b == b'.'
);

/// A hex sha256 digest (64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl FromStr for Sha256Hex {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidName(format!(
                "`{s}` is not a sha256 (64 hex digits)"
            )));
        }
        Ok(Self(lower))
    }
}

impl Sha256Hex {
    /// The digest as lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An absolute path inside the image, normalised: starts with `/`, no `.`,
/// `..` or empty components, no NUL, no trailing slash (except `/` itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ImagePath(String);

impl FromStr for ImagePath {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('/') {
            return Err(InvalidName(format!(
                "`{s}` must be an absolute path in the image"
            )));
        }
        if s.bytes().any(|b| b == 0 || b == b'\n' || b == b'\\') {
            return Err(InvalidName(format!(
                "`{}` holds a forbidden character",
                s.escape_debug()
            )));
        }
        let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(InvalidName(format!("`{s}` must not contain `.` or `..`")));
        }
        Ok(Self(format!("/{}", parts.join("/"))))
    }
}

impl ImagePath {
    /// The path with its leading `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        assert!("linux-image-cloud-amd64".parse::<PackageName>().is_ok());
        assert!("libstdc++6".parse::<PackageName>().is_ok());
        for bad in ["", "Nginx", "-o", "a b", "foo;rm", "x/y", "pkg=1.0"] {
            assert!(bad.parse::<PackageName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn image_paths_are_normalised_and_safe() {
        assert_eq!(
            "/var//www/".parse::<ImagePath>().unwrap().as_str(),
            "/var/www"
        );
        assert_eq!("/".parse::<ImagePath>().unwrap().as_str(), "/");
        for bad in ["var/www", "/var/../etc", "/a/./b", "/a\0b"] {
            assert!(bad.parse::<ImagePath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_is_checked() {
        let ok = "E5C35879EE3AE5E2562DA0CB9D9E4FB7E5C056283DFE971A603B2E660EC5A757";
        assert_eq!(ok.parse::<Sha256Hex>().unwrap().as_str(), ok.to_lowercase());
        assert!("abc".parse::<Sha256Hex>().is_err());
    }
}
