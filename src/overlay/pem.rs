//! Certificates and keys an overlay names: parsed as PEM and X.509 before
//! anything is rendered, so a seed never carries a file nginx, certbot or
//! Synapse would choke on at first boot.
//!
//! Pure: values in, values out; the overlay reads the files.

use std::fmt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::values::Refused;

/// One or more X.509 certificates in PEM (a chain, or a list of CAs),
/// each parsed. Kept as the text it was given (normalised to end in a
/// newline), so it reaches the VM byte for byte.
#[derive(Clone, PartialEq, Eq)]
pub struct CertChain {
    text: String,
    /// The certificates' DER, in file order.
    ders: Vec<Vec<u8>>,
}

impl CertChain {
    pub fn parse(text: &str) -> Result<CertChain, Refused> {
        let mut ders = Vec::new();
        for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
            let c = c.map_err(|e| Refused(format!("not PEM certificates: {e}")))?;
            x509_parser::parse_x509_certificate(&c).map_err(|e| {
                Refused(format!(
                    "certificate {} does not parse as X.509: {e}",
                    ders.len() + 1
                ))
            })?;
            ders.push(c.to_vec());
        }
        if ders.is_empty() {
            return Err(Refused(
                "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            ));
        }
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(CertChain { text, ders })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Each certificate as a PEM block of its own, in file order (Synapse
    /// reads one certificate from each file of `federation_custom_ca_list`).
    pub fn pems(&self) -> Vec<String> {
        use base64::Engine;
        self.ders
            .iter()
            .map(|d| {
                let b = base64::engine::general_purpose::STANDARD.encode(d);
                let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
                for chunk in b.as_bytes().chunks(64) {
                    s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                    s.push('\n');
                }
                s.push_str("-----END CERTIFICATE-----\n");
                s
            })
            .collect()
    }

    /// The certificates' DER, in file order.
    #[cfg(test)]
    pub fn ders(&self) -> &[Vec<u8>] {
        &self.ders
    }

    /// The first (leaf) certificate's SubjectPublicKeyInfo, DER.
    fn leaf_spki(&self) -> Vec<u8> {
        let (_, c) = x509_parser::parse_x509_certificate(&self.ders[0]).expect("parsed before");
        c.tbs_certificate.subject_pki.raw.to_vec()
    }

    /// The DNS names the leaf certificate is valid for (subjectAltName).
    pub fn leaf_names(&self) -> Vec<String> {
        let (_, c) = x509_parser::parse_x509_certificate(&self.ders[0]).expect("parsed before");
        let mut names = Vec::new();
        if let Ok(Some(san)) = c.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        names
    }

    /// Whether the leaf certificate covers `name` (exactly, or by a
    /// one-label wildcard).
    pub fn covers(&self, name: &str) -> bool {
        self.leaf_names().iter().any(|n| {
            n == name
                || n.strip_prefix("*.").is_some_and(|rest| {
                    name.split_once('.')
                        .is_some_and(|(first, tail)| !first.is_empty() && tail == rest)
                })
        })
    }
}

impl fmt::Debug for CertChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertChain({} certificates)", self.ders.len())
    }
}

/// A private key in PEM (PKCS#8, PKCS#1 RSA or SEC1 EC). A secret: never
/// printed, carried byte for byte.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    text: String,
    /// Its public half, as a SubjectPublicKeyInfo (DER).
    spki: Vec<u8>,
}

impl PrivateKey {
    pub fn parse(text: &str) -> Result<PrivateKey, Refused> {
        let der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
            Refused(format!(
                "not a PEM private key (PKCS#8, RSA or EC; unencrypted): {e}"
            ))
        })?;
        let kp = rcgen::KeyPair::try_from(&der).map_err(|e| {
            Refused(format!(
                "the private key cannot be used: {e} (supported: RSA, ECDSA P-256/P-384, Ed25519)"
            ))
        })?;
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(PrivateKey {
            text,
            spki: rcgen::PublicKeyData::subject_public_key_info(&kp),
        })
    }

    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Whether this key is the one `chain`'s leaf certificate was made for.
    pub fn matches(&self, chain: &CertChain) -> bool {
        self.spki == chain.leaf_spki()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_match_and_another_key_does_not() {
        let (c, k) = cert(&["matrix.example.org", "*.example.net"]);
        let chain = CertChain::parse(&c).unwrap();
        let key = PrivateKey::parse(&k).unwrap();
        assert!(key.matches(&chain));
        let (_, other) = cert(&["x.example.org"]);
        assert!(!PrivateKey::parse(&other).unwrap().matches(&chain));
        assert!(chain.covers("matrix.example.org"));
        assert!(chain.covers("chat.example.net"));
        assert!(!chain.covers("a.b.example.net"));
        assert!(!chain.covers("example.org"));
        assert!(!format!("{key:?}").contains("PRIVATE"), "keys never print");
        let (c2, _) = cert(&["other.example.org"]);
        let two = CertChain::parse(&format!("{c}{c2}")).unwrap();
        let pems = two.pems();
        assert_eq!(pems.len(), 2);
        assert_eq!(CertChain::parse(&pems[1]).unwrap().ders(), &two.ders()[1..]);
    }

    #[test]
    fn what_is_not_pem_is_refused() {
        assert!(CertChain::parse("hello\n").is_err());
        assert!(
            CertChain::parse("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(
            PrivateKey::parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
        let (c, _) = cert(&["a.example.org"]);
        assert!(PrivateKey::parse(&c).is_err(), "a certificate is not a key");
    }
}
