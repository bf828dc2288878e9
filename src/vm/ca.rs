//! The test network's own CA: made fresh for every run of the multi-VM
//! driver (as Complement does), it signs the TLS certificate of the test
//! network's ACME server (Pebble) and whatever else a test needs. Pure:
//! keys and certificates are made in memory and returned as PEM.

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA that signs leaf certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[String]) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_signed_by_the_ca_and_covers_its_names() {
        let ca = TestCa::new("mimg test CA").unwrap();
        let l = ca
            .leaf(&["acme.mimg.test".into(), "fd00:6d69:6d67::53".into()])
            .unwrap();
        let chain = crate::overlay::CertChain::parse(&l.cert_pem).unwrap();
        assert!(chain.covers("acme.mimg.test"));
        let key = crate::overlay::PrivateKey::parse(&l.key_pem).unwrap();
        assert!(key.matches(&chain));
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain.ders()[0]).unwrap();
        let ca_chain = crate::overlay::CertChain::parse(ca.pem()).unwrap();
        let (_, cac) = x509_parser::parse_x509_certificate(&ca_chain.ders()[0]).unwrap();
        assert_eq!(leaf.issuer(), cac.subject());
    }
}
