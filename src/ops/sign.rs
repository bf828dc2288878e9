//! `mimg sign` and `mimg verify`: minisign signatures over an image and the
//! provenance files beside it (manifest, SBOM, in-toto statement), and the
//! check that all of them speak of the same image bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::provenance::manifest::Manifest;
use crate::provenance::sign;

/// The files published beside `NAME.qcow2`: manifest, SBOM, statement.
pub fn companions(image: &Path) -> Result<[PathBuf; 3]> {
    let s = image.to_string_lossy();
    let Some(stem) = s.strip_suffix(".qcow2") else {
        bail!("{} is not an image (NAME.qcow2)", image.display());
    };
    Ok([
        PathBuf::from(format!("{stem}.manifest.json")),
        PathBuf::from(format!("{stem}.cdx.json")),
        PathBuf::from(format!("{stem}.intoto.json")),
    ])
}

/// Sign the image and each of its provenance files that exists; gives the
/// signatures written.
pub fn sign_image(image: &Path, key: &Path) -> Result<Vec<PathBuf>> {
    let sk = sign::secret_key(key)?;
    let sum = crate::store::hash_file(image)
        .with_context(|| format!("cannot read {}", image.display()))?;
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut out = vec![sign::sign(
        image,
        &sk,
        &format!("mimg image {name} sha256 {}", sum.sha256),
    )?];
    for c in companions(image)? {
        if c.is_file() {
            let cname = c
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push(sign::sign(
                &c,
                &sk,
                &format!("mimg {cname} of {name} sha256 {}", sum.sha256),
            )?);
        }
    }
    Ok(out)
}

/// What `verify_image` checked.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub image: String,
    pub sha256: String,
    /// One line per check passed.
    pub checked: Vec<String>,
    /// Files that were not there to check.
    pub absent: Vec<String>,
}

/// Check the image's signature, then that the manifest, SBOM and statement
/// beside it name the image's sha256 (and their own signatures, where
/// there are some). The first failure is the error.
pub fn verify_image(image: &Path, pubkey: &str) -> Result<Verified> {
    let pk = sign::public_key(pubkey)?;
    let comment = sign::verify(image, &pk)?;
    let sum = crate::store::hash_file(image)
        .with_context(|| format!("cannot read {}", image.display()))?;
    let mut v = Verified {
        image: image.display().to_string(),
        sha256: sum.sha256.clone(),
        checked: vec![format!("signature of {} ({comment})", image.display())],
        absent: vec![],
    };
    let [manifest, sbom, statement] = companions(image)?;
    let said: [(&Path, fn(&serde_json::Value) -> Option<String>); 3] = [
        (&manifest, |j| {
            j["image"]["sha256"].as_str().map(String::from)
        }),
        (&sbom, |j| {
            j["metadata"]["component"]["hashes"][0]["content"]
                .as_str()
                .map(String::from)
        }),
        (&statement, |j| {
            j["subject"][0]["digest"]["sha256"]
                .as_str()
                .map(String::from)
        }),
    ];
    for (path, sha_of) in said {
        if !path.is_file() {
            v.absent.push(path.display().to_string());
            continue;
        }
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if path == manifest.as_path() {
            Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let j: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let named =
            sha_of(&j).with_context(|| format!("{} names no image sha256", path.display()))?;
        if named != sum.sha256 {
            bail!(
                "{} names image sha256 {named}, but {} has sha256 {}\nhint: they are of another build; publish them again with `mimg build`",
                path.display(),
                image.display(),
                sum.sha256
            );
        }
        v.checked
            .push(format!("{} names sha256 {}", path.display(), sum.sha256));
        if sign::sig_path(path).is_file() {
            sign::verify(path, &pk)?;
            v.checked.push(format!("signature of {}", path.display()));
        }
    }
    Ok(v)
}
