//! TURN server overlays (`kind = "turn"`): the values of the one coturn
//! server every customer's homeserver shares. Same rules as a homeserver
//! overlay: every value checked, file, line and key on an error, secrets
//! only from files.
//!
//! ```toml
//! kind = "turn"
//! customer = "provider-turn"
//! realm = "turn.provider.example"       # the name homeservers' [turn] uris use
//! tls = "files"                         # optional: turns: on 5349
//! tls_cert_file = "secrets/turn.crt"
//! tls_key_file = "secrets/turn.key"
//!
//! [turn_server]
//! secret_files = ["secrets/turn-2026.secret", "secrets/turn-2025.secret"]
//! min_port = 49152                      # the relay ports (default 49152-65535)
//! max_port = 65535
//!
//! [network]                             # as for a homeserver
//! address = "2001:db8:20::10/64"
//! gateway = "2001:db8:20::1"
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;
use toml::Spanned;

use super::{
    Ctx, Customer, DomainName, Network, OverlayError, RawNetwork, Secret, SshKey, TlsFiles,
};

/// Ports coturn listens on: a relay range may not take them.
pub const LISTENING_PORTS: [u16; 2] = [3478, 5349];

/// One TURN server's validated values.
#[derive(Debug, Clone)]
pub struct TurnServer {
    pub customer: Customer,
    /// coturn's realm: the TURN server's domain name.
    pub realm: DomainName,
    /// Shared secrets, the one homeservers use now first; coturn accepts
    /// every one of them, so a secret can be rotated without a gap.
    pub secrets: Vec<Secret>,
    /// The relay port range, inclusive.
    pub min_port: u16,
    pub max_port: u16,
    /// `tls = "files"`: a chain and key for `turns:` on 5349.
    pub tls_files: Option<TlsFiles>,
    pub network: Network,
    pub ssh_authorized_keys: Vec<SshKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[allow(dead_code)]
    kind: Spanned<String>,
    customer: Spanned<String>,
    realm: Spanned<String>,
    tls: Option<Spanned<String>>,
    tls_cert_file: Option<Spanned<String>>,
    tls_key_file: Option<Spanned<String>>,
    turn_server: Spanned<RawServer>,
    network: RawNetwork,
    #[serde(default)]
    ssh_authorized_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    secret_files: Spanned<Vec<Spanned<String>>>,
    min_port: Option<Spanned<i64>>,
    max_port: Option<Spanned<i64>>,
}

/// Validate the TURN server overlay `text`, read from `path`.
pub fn parse(path: &std::path::Path, text: &str) -> Result<TurnServer, OverlayError> {
    let raw: Raw = toml::from_str(text).map_err(|e| super::syntax(path, text, &e))?;
    let c = Ctx { path, text };
    let customer: Customer = c.parse(&raw.customer, "customer")?;
    let realm: DomainName = c.parse(&raw.realm, "realm")?;
    let tls_files = match raw.tls.as_ref().map(|t| t.get_ref().as_str()) {
        None | Some("none") => {
            for (v, key) in [
                (&raw.tls_cert_file, "tls_cert_file"),
                (&raw.tls_key_file, "tls_key_file"),
            ] {
                if let Some(v) = v {
                    return Err(c.err(v, key, "goes with tls = \"files\""));
                }
            }
            None
        }
        Some("files") => Some(super::tls_files(
            &c,
            raw.tls.as_ref().expect("given"),
            raw.tls_cert_file.as_ref(),
            raw.tls_key_file.as_ref(),
            &[&realm],
        )?),
        Some(other) => {
            return Err(c.err(
                raw.tls.as_ref().expect("given"),
                "tls",
                format!(
                    "`{}` is not one of \"none\", \"files\" (a TURN server's TLS is its own certificate)",
                    other.escape_debug()
                ),
            ));
        }
    };
    let server = raw.turn_server.get_ref();
    if server.secret_files.get_ref().is_empty() {
        return Err(c.err(
            &server.secret_files,
            "turn_server.secret_files",
            "needs at least one secret file (the secret the homeservers use)",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut secrets = Vec::new();
    for f in server.secret_files.get_ref() {
        if !seen.insert(f.get_ref().clone()) {
            return Err(c.err(
                f,
                "turn_server.secret_files",
                format!("`{}` is listed twice", f.get_ref().escape_debug()),
            ));
        }
        secrets.push(c.secret(f, "turn_server.secret_files")?);
    }
    let port = |v: &Option<Spanned<i64>>, key: &str, default: u16| -> Result<u16, OverlayError> {
        let Some(v) = v else { return Ok(default) };
        match u16::try_from(*v.get_ref()) {
            Ok(p) if p >= 1024 => Ok(p),
            _ => Err(c.err(
                v,
                key,
                format!("{} is not a port from 1024 to 65535", v.get_ref()),
            )),
        }
    };
    let min_port = port(&server.min_port, "turn_server.min_port", 49152)?;
    let max_port = port(&server.max_port, "turn_server.max_port", 65535)?;
    let range_at = server
        .max_port
        .as_ref()
        .or(server.min_port.as_ref())
        .map(|v| v.span())
        .unwrap_or_else(|| raw.turn_server.span());
    let range_err = |msg: String| OverlayError::Invalid {
        loc: crate::recipe::span_loc(path, text, range_at.clone()),
        key: "turn_server.max_port".into(),
        msg,
    };
    if min_port > max_port {
        return Err(range_err(format!(
            "the relay range {min_port}-{max_port} is empty (min_port is above max_port)"
        )));
    }
    if let Some(p) = LISTENING_PORTS
        .iter()
        .find(|p| (min_port..=max_port).contains(p))
    {
        return Err(range_err(format!(
            "the relay range {min_port}-{max_port} holds {p}, a port coturn listens on"
        )));
    }
    let network = super::network(&c, &raw.network)?;
    let ssh_authorized_keys = c.list(&raw.ssh_authorized_keys, "ssh_authorized_keys")?;
    Ok(TurnServer {
        customer,
        realm,
        secrets,
        min_port,
        max_port,
        tls_files,
        network,
        ssh_authorized_keys,
    })
}
