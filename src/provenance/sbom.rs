//! The SBOM beside an image, `NAME.cdx.json`: CycloneDX 1.5 JSON rendered
//! from the image's manifest. Pure and deterministic: the same manifest
//! gives the same bytes (no clock; the serial number derives from the image
//! key). Scanners (trivy, grype) read Debian packages only from an SBOM with
//! one `operating-system` component and the purls' `distro` qualifier, so
//! both are always there.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::manifest::Manifest;
use crate::plan::StepKey;

/// What a purl part may hold unescaped (the unreserved characters).
const PURL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn esc(s: &str) -> String {
    utf8_percent_encode(s, PURL).to_string()
}

/// Debian's release number of a suite name, for the `operating-system`
/// component and the purls' `distro=debian-N`.
pub fn debian_version(suite: &str) -> Option<&'static str> {
    Some(match suite {
        "buster" => "10",
        "bullseye" => "11",
        "bookworm" => "12",
        "trixie" => "13",
        "forky" => "14",
        "duke" => "15",
        "sid" | "unstable" => "unstable",
        _ => return None,
    })
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-N`.
pub fn deb_purl(name: &str, version: &str, arch: &str, distro: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}&distro={}",
        esc(name),
        esc(version),
        esc(arch),
        esc(distro)
    )
}

/// `pkg:pypi/NAME@VERSION` (the name normalised as PEP 503 says).
pub fn pypi_purl(name: &str, version: &str) -> String {
    let n = name.to_lowercase().replace(['_', '.'], "-");
    format!("pkg:pypi/{}@{}", esc(&n), esc(version))
}

fn sha(s: &str) -> Value {
    json!([{ "alg": "SHA-256", "content": s }])
}

/// The CycloneDX 1.5 document of the image `file_name` that `m` describes.
pub fn render(m: &Manifest, file_name: &str) -> Result<Value, String> {
    let key: StepKey = m.recipe_key.parse()?;
    let base = m
        .base
        .as_ref()
        .ok_or("the manifest does not name its base suite (a manifest of version 1)")?;
    // A suite whose number mimg does not know is named as it is.
    let os_version = debian_version(&base.suite).unwrap_or(base.suite.as_str());
    let distro = format!("debian-{os_version}");
    let mut components = vec![json!({
        "type": "operating-system",
        "bom-ref": format!("os:{distro}"),
        "name": base.distribution,
        "version": os_version,
    })];
    let mut seen = std::collections::BTreeSet::new();
    for p in &m.packages {
        let purl = deb_purl(&p.name, &p.version, &p.arch, &distro);
        if !seen.insert(purl.clone()) {
            continue;
        }
        let mut c = json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
        });
        if let Some(s) = m.deb_sha256.get(&format!("{}:{}", p.name, p.arch)) {
            c["hashes"] = sha(s);
        }
        components.push(c);
    }
    for w in &m.wheels {
        let purl = pypi_purl(&w.name, &w.version);
        if !seen.insert(purl.clone()) {
            continue;
        }
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": w.name,
            "version": w.version,
            "purl": purl,
            "hashes": sha(&w.sha256),
        }));
    }
    for f in &m.fetched {
        let name = f.url.rsplit('/').next().unwrap_or(&f.url);
        components.push(json!({
            "type": "file",
            "bom-ref": format!("fetch:{}", f.layer),
            "name": name,
            "hashes": sha(&f.sha256),
            "externalReferences": [{ "type": "distribution", "url": f.url }],
        }));
    }
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", key.derive_uuid("sbom")),
        "version": 1,
        "metadata": {
            "tools": { "components": [{
                "type": "application",
                "name": "mimg",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "file",
                "bom-ref": "image",
                "name": file_name,
                "version": m.recipe_key,
                "hashes": sha(&m.image.sha256),
            },
        },
        "components": components,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_escape_epochs_and_plus_signs() {
        assert_eq!(
            deb_purl("libstdc++6", "1:14.2.0-19", "amd64", "debian-13"),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A14.2.0-19?arch=amd64&distro=debian-13"
        );
        assert_eq!(
            pypi_purl("Twisted_Web", "25.5.0"),
            "pkg:pypi/twisted-web@25.5.0"
        );
        assert_eq!(debian_version("trixie"), Some("13"));
    }
}
