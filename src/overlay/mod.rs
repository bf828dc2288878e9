//! Overlays: `overlays/CUSTOMER.toml`, one customer's values, parsed and
//! validated into an [`Overlay`] whose every field is checked.
//!
//! Owns the overlay file format. Reads the overlay and the secret files it
//! names; renders nothing (that is [`crate::seed`]). Secrets are held as
//! [`Secret`] values that never print.

pub mod pem;
pub mod turn;
pub mod values;

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use pem::{CertChain, PrivateKey};
pub use turn::TurnServer;
pub use values::*;

use crate::recipe::{Loc, span_loc};

/// An overlay that cannot be used: says file, line, key and why.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read overlay {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{loc}: {msg}")]
    Syntax { loc: Loc, msg: String },
    #[error("{loc}: key `{key}`: {msg}")]
    Invalid { loc: Loc, key: String, msg: String },
}

/// Where TLS for the three names ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// In front of the VM (a proxy or load balancer); the VM speaks HTTP.
    External,
    /// On the VM, certificates from an ACME server (Let's Encrypt unless
    /// the overlay names another) by certbot at first boot.
    Acme,
    /// On the VM, a certificate chain and key from files the overlay names.
    Files,
}

/// Let's Encrypt's production directory: the default ACME server.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How certbot gets the certificate (`tls = "acme"`).
#[derive(Debug, Clone)]
pub struct Acme {
    pub directory: HttpsUrl,
    pub email: Option<Email>,
    /// The CA that signs the ACME server's own TLS certificate, where it is
    /// a private one (a test or in-house ACME server).
    pub ca: Option<CertChain>,
}

/// A certificate and its key from files (`tls = "files"`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub chain: CertChain,
    pub key: PrivateKey,
}

/// Whom Synapse federates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Federation {
    /// With every server (Synapse's default).
    Open,
    /// With none.
    Closed,
    /// Only with these server names (Synapse's `federation_domain_whitelist`).
    Allow(Vec<DomainName>),
}

/// Where Synapse's admin API (`/_synapse/admin`) is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminApi {
    /// On the admin UI's name only (where `admin_ui` names one), never on
    /// the public homeserver name.
    AdminUi,
    /// On the monitoring LAN: `http://[MONITORING_ADDRESS]:8008`
    /// ([`ADMIN_API_PORT`]), nowhere else.
    Monitoring,
    /// Nowhere.
    None,
}

/// Where nginx serves the admin API on the monitoring address
/// (`admin_api = "monitoring"`).
pub const ADMIN_API_PORT: u16 = 8008;

/// Who may register accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Closed,
    Open,
    Token,
}

#[derive(Debug, Clone)]
pub struct Turn {
    pub uris: Vec<TurnUri>,
    pub secret: Secret,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub user: Localpart,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub address: Ipv6Net,
    pub gateway: Ipv6Addr,
    pub dns: Vec<Ipv6Addr>,
    /// The guest's interface name (default `ens3`, QEMU's first virtio NIC).
    pub interface: Ident,
    /// Match the NIC by MAC address instead of by name.
    pub mac: Option<String>,
}

/// The monitoring LAN: a second NIC whose address alone serves metrics.
#[derive(Debug, Clone)]
pub struct Monitoring {
    pub address: Ipv6Net,
    /// The guest's interface name (default `ens4`).
    pub interface: Ident,
    /// Match the NIC by MAC address instead of by name.
    pub mac: Option<String>,
}

/// The metrics endpoints on the monitoring address: job, port, path.
pub const METRICS: [(&str, u16, &str); 3] = [
    ("synapse", 9000, "/_synapse/metrics"),
    ("node", 9100, "/metrics"),
    ("postgres", 9187, "/metrics"),
];

#[derive(Debug, Clone)]
pub struct Mattermost {
    pub url: HttpsUrl,
    pub team: Ident,
    pub token: Secret,
}

/// One customer's validated values.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub customer: Customer,
    pub server_name: DomainName,
    pub homeserver: DomainName,
    pub web_client: DomainName,
    /// Where the Synapse Admin UI is served (absent: not served).
    pub admin_ui: Option<DomainName>,
    pub admin_api: AdminApi,
    pub tls: Tls,
    /// Set when `tls` is `acme`.
    pub acme: Option<Acme>,
    /// Set when `tls` is `files`.
    pub tls_files: Option<TlsFiles>,
    pub federation: Federation,
    /// CAs Synapse trusts for federation instead of the system's
    /// (`federation_custom_ca_list`).
    pub federation_ca: Option<CertChain>,
    /// Key servers Synapse asks for other servers' keys; `None` is
    /// Synapse's default (matrix.org), an empty list asks none.
    pub trusted_key_servers: Option<Vec<DomainName>>,
    /// Ranges Synapse may reach although they are private or reserved
    /// (`ip_range_whitelist`: a private federation, a test network).
    pub federation_ip_allow: Vec<Ipv6Net>,
    pub registration: Registration,
    pub max_upload: Size,
    pub turn: Option<Turn>,
    pub admins: Vec<Admin>,
    pub network: Network,
    pub monitoring: Option<Monitoring>,
    pub data_disk: DevicePath,
    pub mattermost: Option<Mattermost>,
    pub ssh_authorized_keys: Vec<SshKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[allow(dead_code)]
    kind: Option<Spanned<String>>,
    customer: Spanned<String>,
    server_name: Spanned<String>,
    homeserver: Spanned<String>,
    web_client: Spanned<String>,
    admin_ui: Option<Spanned<String>>,
    admin_api: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    acme_directory: Option<Spanned<String>>,
    acme_email: Option<Spanned<String>>,
    acme_ca_file: Option<Spanned<String>>,
    tls_cert_file: Option<Spanned<String>>,
    tls_key_file: Option<Spanned<String>>,
    federation: Option<Spanned<toml::Value>>,
    federation_ca_file: Option<Spanned<String>>,
    trusted_key_servers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    federation_ip_allow: Vec<Spanned<String>>,
    registration: Option<Spanned<String>>,
    max_upload: Option<Spanned<String>>,
    turn: Option<RawTurn>,
    #[serde(default)]
    admin: Vec<RawAdmin>,
    network: RawNetwork,
    monitoring: Option<RawMonitoring>,
    data_disk: Option<RawDisk>,
    bridge: Option<RawBridge>,
    #[serde(default)]
    ssh_authorized_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    uris: Vec<Spanned<String>>,
    secret_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    user: Spanned<String>,
    password_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    address: Spanned<String>,
    gateway: Spanned<String>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    interface: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitoring {
    address: Spanned<String>,
    interface: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    device: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    mattermost: Option<RawMattermost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMattermost {
    url: Spanned<String>,
    team: Spanned<String>,
    token_file: Spanned<String>,
}

/// Reads values with their place in the file.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, v: &Spanned<impl Sized>, key: &str, msg: impl Into<String>) -> OverlayError {
        OverlayError::Invalid {
            loc: span_loc(self.path, self.text, v.span()),
            key: key.into(),
            msg: msg.into(),
        }
    }

    fn parse<T: std::str::FromStr<Err = Refused>>(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<T, OverlayError> {
        v.get_ref().parse::<T>().map_err(|e| self.err(v, key, e.0))
    }

    /// A secret from a file named relative to the overlay.
    fn secret(&self, v: &Spanned<String>, key: &str) -> Result<Secret, OverlayError> {
        let name = v.get_ref();
        if name.is_empty() || name.contains('\0') {
            return Err(self.err(v, key, "must name a file"));
        }
        let p = self.path.parent().unwrap_or(Path::new(".")).join(name);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            self.err(
                v,
                key,
                format!("cannot read secret file {}: {e}", p.display()),
            )
        })?;
        Secret::parse(&text).map_err(|e| self.err(v, key, format!("{}: {}", p.display(), e.0)))
    }

    /// A file named relative to the overlay, read as text.
    fn file(&self, v: &Spanned<String>, key: &str) -> Result<(PathBuf, String), OverlayError> {
        let name = v.get_ref();
        if name.is_empty() || name.contains('\0') {
            return Err(self.err(v, key, "must name a file"));
        }
        let p = self.path.parent().unwrap_or(Path::new(".")).join(name);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| self.err(v, key, format!("cannot read {}: {e}", p.display())))?;
        Ok((p, text))
    }

    /// PEM certificates from a file named relative to the overlay.
    fn certs(&self, v: &Spanned<String>, key: &str) -> Result<CertChain, OverlayError> {
        let (p, text) = self.file(v, key)?;
        CertChain::parse(&text).map_err(|e| self.err(v, key, format!("{}: {}", p.display(), e.0)))
    }

    /// Every value of a list, each checked.
    fn list<T: std::str::FromStr<Err = Refused>>(
        &self,
        v: &[Spanned<String>],
        key: &str,
    ) -> Result<Vec<T>, OverlayError> {
        v.iter().map(|x| self.parse(x, key)).collect()
    }

    fn choice<T: Copy>(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: T,
        options: &[(&str, T)],
    ) -> Result<T, OverlayError> {
        let Some(v) = v else { return Ok(default) };
        options
            .iter()
            .find(|(n, _)| *n == v.get_ref())
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<_> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.err(
                    v,
                    key,
                    format!(
                        "`{}` is not one of {}",
                        v.get_ref().escape_debug(),
                        names.join(", ")
                    ),
                )
            })
    }
}

impl Overlay {
    /// Every name this VM serves: homeserver, server name, web client and,
    /// where there is one, the admin UI's.
    pub fn names(&self) -> Vec<&DomainName> {
        let mut v = vec![&self.homeserver, &self.server_name, &self.web_client];
        v.extend(self.admin_ui.as_ref());
        v
    }

    /// The monitoring address where `/_synapse/admin` is served
    /// (`admin_api = "monitoring"`).
    pub fn admin_api_on_monitoring(&self) -> Option<std::net::Ipv6Addr> {
        match (&self.monitoring, self.admin_api) {
            (Some(m), AdminApi::Monitoring) => Some(m.address.addr),
            _ => None,
        }
    }

    /// Whether `/_synapse/admin` is served on the admin UI's name.
    pub fn admin_api_on_ui(&self) -> bool {
        self.admin_ui.is_some() && self.admin_api == AdminApi::AdminUi
    }
}

/// An overlay of either kind: `kind = "homeserver"` (the default) or
/// `kind = "turn"`.
#[derive(Debug, Clone)]
pub enum AnyOverlay {
    Homeserver(Box<Overlay>),
    Turn(Box<TurnServer>),
}

impl AnyOverlay {
    pub fn customer(&self) -> &Customer {
        match self {
            AnyOverlay::Homeserver(o) => &o.customer,
            AnyOverlay::Turn(t) => &t.customer,
        }
    }

    pub fn network(&self) -> &Network {
        match self {
            AnyOverlay::Homeserver(o) => &o.network,
            AnyOverlay::Turn(t) => &t.network,
        }
    }

    /// `homeserver` or `turn`, as the overlay's `kind` says.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyOverlay::Homeserver(_) => "homeserver",
            AnyOverlay::Turn(_) => "turn",
        }
    }
}

/// Load and validate the overlay at `path`, of whichever kind it is.
pub fn load_any(path: &Path) -> Result<AnyOverlay, OverlayError> {
    let text = std::fs::read_to_string(path).map_err(|source| OverlayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_any(path, &text)
}

/// Validate overlay `text` read from `path`, of the kind its `kind` says.
pub fn parse_any(path: &Path, text: &str) -> Result<AnyOverlay, OverlayError> {
    match &kind_of(path, text)? {
        None => Ok(AnyOverlay::Homeserver(Box::new(parse(path, text)?))),
        Some(v) => match v.get_ref().as_str() {
            Some("homeserver") => Ok(AnyOverlay::Homeserver(Box::new(parse(path, text)?))),
            Some("turn") => Ok(AnyOverlay::Turn(Box::new(turn::parse(path, text)?))),
            _ => Err(OverlayError::Invalid {
                loc: span_loc(path, text, v.span()),
                key: "kind".into(),
                msg: format!("{} is not one of \"homeserver\", \"turn\"", v.get_ref()),
            }),
        },
    }
}

/// The overlay's `kind` value, if it has one.
fn kind_of(path: &Path, text: &str) -> Result<Option<Spanned<toml::Value>>, OverlayError> {
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<Spanned<toml::Value>>,
    }
    let k: Kind = toml::from_str(text).map_err(|e| syntax(path, text, &e))?;
    Ok(k.kind)
}

/// A TOML error, with its place.
fn syntax(path: &Path, text: &str, e: &toml::de::Error) -> OverlayError {
    OverlayError::Syntax {
        loc: span_loc(path, text, e.span().unwrap_or(0..0)),
        msg: e.message().trim().to_string(),
    }
}

/// Load and validate the homeserver overlay at `path`.
#[cfg(test)]
pub fn load(path: &Path) -> Result<Overlay, OverlayError> {
    let text = std::fs::read_to_string(path).map_err(|source| OverlayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validate homeserver overlay `text` as if read from `path` (secret files
/// are read relative to it).
pub fn parse(path: &Path, text: &str) -> Result<Overlay, OverlayError> {
    if let Some(k) = kind_of(path, text)?
        && k.get_ref().as_str() != Some("homeserver")
    {
        return Err(OverlayError::Invalid {
            loc: span_loc(path, text, k.span()),
            key: "kind".into(),
            msg: format!(
                "a homeserver overlay is needed here, and this one is kind = {}",
                k.get_ref()
            ),
        });
    }
    let raw: Raw = toml::from_str(text).map_err(|e| syntax(path, text, &e))?;
    let c = Ctx { path, text };
    let customer: Customer = c.parse(&raw.customer, "customer")?;
    let server_name: DomainName = c.parse(&raw.server_name, "server_name")?;
    let homeserver: DomainName = c.parse(&raw.homeserver, "homeserver")?;
    let web_client: DomainName = c.parse(&raw.web_client, "web_client")?;
    if web_client == homeserver || web_client == server_name {
        return Err(c.err(
            &raw.web_client,
            "web_client",
            "the web client needs a domain of its own (not the homeserver's or the server name)",
        ));
    }
    let admin_ui: Option<DomainName> = match &raw.admin_ui {
        Some(v) => {
            let d: DomainName = c.parse(v, "admin_ui")?;
            if [&server_name, &homeserver, &web_client].contains(&&d) {
                return Err(c.err(
                    v,
                    "admin_ui",
                    "the admin UI needs a domain of its own (not the homeserver's, the server name or the web client's)",
                ));
            }
            Some(d)
        }
        None => None,
    };
    let admin_api = c.choice(
        &raw.admin_api,
        "admin_api",
        AdminApi::AdminUi,
        &[
            ("admin-ui", AdminApi::AdminUi),
            ("monitoring", AdminApi::Monitoring),
            ("none", AdminApi::None),
        ],
    )?;
    if admin_api == AdminApi::Monitoring
        && raw.monitoring.is_none()
        && let Some(v) = &raw.admin_api
    {
        return Err(c.err(
            v,
            "admin_api",
            "\"monitoring\" serves the admin API on the monitoring LAN: add a [monitoring] section with its address",
        ));
    }
    let tls = c.choice(
        &raw.tls,
        "tls",
        Tls::External,
        &[
            ("external", Tls::External),
            ("acme", Tls::Acme),
            ("files", Tls::Files),
        ],
    )?;
    // Keys of one TLS mode given with another are a mistake, not noise.
    let only_with = |v: &Option<Spanned<String>>, key: &str, mode: Tls, name: &str| match v {
        Some(v) if tls != mode => Err(c.err(
            v,
            key,
            format!("goes with tls = \"{name}\" (this overlay's tls is not)"),
        )),
        _ => Ok(()),
    };
    only_with(&raw.acme_directory, "acme_directory", Tls::Acme, "acme")?;
    only_with(&raw.acme_email, "acme_email", Tls::Acme, "acme")?;
    only_with(&raw.acme_ca_file, "acme_ca_file", Tls::Acme, "acme")?;
    only_with(&raw.tls_cert_file, "tls_cert_file", Tls::Files, "files")?;
    only_with(&raw.tls_key_file, "tls_key_file", Tls::Files, "files")?;
    let acme = match tls {
        Tls::Acme => Some(Acme {
            directory: match &raw.acme_directory {
                Some(v) => c.parse(v, "acme_directory")?,
                None => LETS_ENCRYPT.parse().expect("valid"),
            },
            email: match &raw.acme_email {
                Some(v) => Some(c.parse(v, "acme_email")?),
                None => None,
            },
            ca: match &raw.acme_ca_file {
                Some(v) => Some(c.certs(v, "acme_ca_file")?),
                None => None,
            },
        }),
        _ => None,
    };
    let tls_files = match tls {
        Tls::Files => Some(tls_files(
            &c,
            raw.tls.as_ref().expect("tls was given"),
            raw.tls_cert_file.as_ref(),
            raw.tls_key_file.as_ref(),
            &[&server_name, &homeserver, &web_client]
                .into_iter()
                .chain(admin_ui.as_ref())
                .collect::<Vec<_>>(),
        )?),
        _ => None,
    };
    let federation = match &raw.federation {
        None => Federation::Open,
        Some(f) => match f.get_ref() {
            toml::Value::String(m) if m == "open" => Federation::Open,
            toml::Value::String(m) if m == "closed" => Federation::Closed,
            toml::Value::Array(list) => Federation::Allow(
                list.iter()
                    .map(|d| match d {
                        toml::Value::String(d) => d
                            .parse::<DomainName>()
                            .map_err(|e| c.err(f, "federation", e.0)),
                        _ => Err(c.err(f, "federation", "a list of server names (strings)")),
                    })
                    .collect::<Result<Vec<DomainName>, _>>()?,
            ),
            other => {
                return Err(c.err(
                    f,
                    "federation",
                    format!("{other} is not \"open\", \"closed\" or a list of server names"),
                ));
            }
        },
    };
    let federation_ca = match &raw.federation_ca_file {
        Some(v) => Some(c.certs(v, "federation_ca_file")?),
        None => None,
    };
    let trusted_key_servers = match &raw.trusted_key_servers {
        Some(list) => Some(
            list.iter()
                .map(|d| c.parse(d, "trusted_key_servers"))
                .collect::<Result<Vec<DomainName>, _>>()?,
        ),
        None => None,
    };
    let federation_ip_allow = raw
        .federation_ip_allow
        .iter()
        .map(|n| c.parse(n, "federation_ip_allow"))
        .collect::<Result<Vec<Ipv6Net>, _>>()?;
    let registration = c.choice(
        &raw.registration,
        "registration",
        Registration::Closed,
        &[
            ("closed", Registration::Closed),
            ("open", Registration::Open),
            ("token", Registration::Token),
        ],
    )?;
    let max_upload = match &raw.max_upload {
        Some(v) => c.parse(v, "max_upload")?,
        None => Size { bytes: 50 << 20 },
    };
    let turn = match &raw.turn {
        Some(t) => {
            if t.uris.is_empty() {
                return Err(c.err(&t.secret_file, "turn.uris", "needs at least one TURN URI"));
            }
            let uris = t
                .uris
                .iter()
                .map(|u| c.parse(u, "turn.uris"))
                .collect::<Result<Vec<TurnUri>, _>>()?;
            Some(Turn {
                uris,
                secret: c.secret(&t.secret_file, "turn.secret_file")?,
            })
        }
        None => None,
    };
    let mut admins = Vec::new();
    let mut seen = BTreeSet::new();
    for a in &raw.admin {
        let user: Localpart = c.parse(&a.user, "admin.user")?;
        if !seen.insert(user.clone()) {
            return Err(c.err(&a.user, "admin.user", format!("`{user}` is listed twice")));
        }
        admins.push(Admin {
            user,
            password: c.secret(&a.password_file, "admin.password_file")?,
        });
    }
    let network = network(&c, &raw.network)?;
    let monitoring = match &raw.monitoring {
        Some(m) => Some(monitoring(&c, m, &network)?),
        None => None,
    };
    let data_disk = match &raw.data_disk {
        Some(d) => c.parse(&d.device, "data_disk.device")?,
        None => "/dev/vdb".parse().expect("valid"),
    };
    let mattermost = match raw.bridge.as_ref().and_then(|b| b.mattermost.as_ref()) {
        Some(m) => Some(Mattermost {
            url: c.parse(&m.url, "bridge.mattermost.url")?,
            team: c.parse(&m.team, "bridge.mattermost.team")?,
            token: c.secret(&m.token_file, "bridge.mattermost.token_file")?,
        }),
        None => None,
    };
    let ssh_authorized_keys = c.list(&raw.ssh_authorized_keys, "ssh_authorized_keys")?;
    Ok(Overlay {
        customer,
        server_name,
        homeserver,
        web_client,
        admin_ui,
        admin_api,
        tls,
        acme,
        tls_files,
        federation,
        federation_ca,
        trusted_key_servers,
        federation_ip_allow,
        registration,
        max_upload,
        turn,
        admins,
        network,
        monitoring,
        data_disk,
        mattermost,
        ssh_authorized_keys,
    })
}

/// `tls = "files"`: the chain and key the overlay names, which must match
/// each other and cover every one of `names`.
fn tls_files(
    c: &Ctx,
    tls: &Spanned<String>,
    cert: Option<&Spanned<String>>,
    key: Option<&Spanned<String>>,
    names: &[&DomainName],
) -> Result<TlsFiles, OverlayError> {
    let missing = |key: &str| c.err(tls, "tls", format!("tls = \"files\" needs `{key}`"));
    let cv = cert.ok_or_else(|| missing("tls_cert_file"))?;
    let kv = key.ok_or_else(|| missing("tls_key_file"))?;
    let chain = c.certs(cv, "tls_cert_file")?;
    let (kp, ktext) = c.file(kv, "tls_key_file")?;
    let key = PrivateKey::parse(&ktext)
        .map_err(|e| c.err(kv, "tls_key_file", format!("{}: {}", kp.display(), e.0)))?;
    let cp = c.path.parent().unwrap_or(Path::new(".")).join(cv.get_ref());
    if !key.matches(&chain) {
        return Err(c.err(
            kv,
            "tls_key_file",
            format!(
                "the key in {} is not the key of the certificate in {}",
                kp.display(),
                cp.display()
            ),
        ));
    }
    for name in names {
        if !chain.covers(name.as_str()) {
            return Err(c.err(
                cv,
                "tls_cert_file",
                format!(
                    "the certificate in {} does not cover {name} (it names {})",
                    cp.display(),
                    chain.leaf_names().join(", ")
                ),
            ));
        }
    }
    Ok(TlsFiles { chain, key })
}

/// An interface name (at most 15 characters), or `default`.
fn interface(
    c: &Ctx,
    v: Option<&Spanned<String>>,
    key: &str,
    default: &str,
) -> Result<Ident, OverlayError> {
    let Some(i) = v else {
        return Ok(default.parse().expect("valid"));
    };
    let id: Ident = c.parse(i, key)?;
    if id.as_str().len() > 15 {
        return Err(c.err(i, key, "an interface name has at most 15 characters"));
    }
    Ok(id)
}

/// A lowercase MAC address, if given.
fn mac(c: &Ctx, v: Option<&Spanned<String>>, key: &str) -> Result<Option<String>, OverlayError> {
    let Some(m) = v else { return Ok(None) };
    let ok = m.get_ref().len() == 17
        && m.get_ref().split(':').all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
    if !ok {
        return Err(c.err(
            m,
            key,
            "must be a lowercase MAC address like \"52:54:00:12:34:56\"",
        ));
    }
    Ok(Some(m.get_ref().clone()))
}

/// The `[monitoring]` table: an address on a NIC of its own.
fn monitoring(c: &Ctx, m: &RawMonitoring, n: &Network) -> Result<Monitoring, OverlayError> {
    let address: Ipv6Net = c.parse(&m.address, "monitoring.address")?;
    if let Some(why) = address.host_address_problem() {
        return Err(c.err(&m.address, "monitoring.address", why));
    }
    if same_prefix(
        address.addr,
        n.address.addr,
        address.prefix.min(n.address.prefix),
    ) {
        return Err(c.err(
            &m.address,
            "monitoring.address",
            format!(
                "{address} is in the public network {}: the monitoring LAN needs a network of its own",
                n.address
            ),
        ));
    }
    let interface = interface(c, m.interface.as_ref(), "monitoring.interface", "ens4")?;
    let mac = mac(c, m.mac.as_ref(), "monitoring.mac")?;
    if mac.is_none() && interface == n.interface {
        return Err(c.err(
            m.interface.as_ref().unwrap_or(&m.address),
            "monitoring.interface",
            format!("{interface} is the public network's interface: the monitoring LAN needs a NIC of its own"),
        ));
    }
    if mac.is_some() && mac == n.mac {
        return Err(c.err(
            m.mac.as_ref().expect("given"),
            "monitoring.mac",
            "the public network's NIC has this MAC address: the monitoring LAN needs a NIC of its own",
        ));
    }
    Ok(Monitoring {
        address,
        interface,
        mac,
    })
}

/// The `[network]` table, homeserver or TURN server alike.
fn network(c: &Ctx, n: &RawNetwork) -> Result<Network, OverlayError> {
    let address: Ipv6Net = c.parse(&n.address, "network.address")?;
    if let Some(why) = address.host_address_problem() {
        return Err(c.err(&n.address, "network.address", why));
    }
    let gateway =
        parse_ipv6(n.gateway.get_ref()).map_err(|e| c.err(&n.gateway, "network.gateway", e.0))?;
    let link_local = (gateway.segments()[0] & 0xffc0) == 0xfe80;
    if !link_local && !same_prefix(address.addr, gateway, address.prefix) {
        return Err(c.err(
            &n.gateway,
            "network.gateway",
            format!("{gateway} is neither in {address}'s network nor link-local"),
        ));
    }
    if gateway == address.addr {
        return Err(c.err(
            &n.gateway,
            "network.gateway",
            "the gateway cannot be the VM's own address",
        ));
    }
    let dns = n
        .dns
        .iter()
        .map(|d| parse_ipv6(d.get_ref()).map_err(|e| c.err(d, "network.dns", e.0)))
        .collect::<Result<Vec<_>, _>>()?;
    let interface = interface(c, n.interface.as_ref(), "network.interface", "ens3")?;
    let mac = mac(c, n.mac.as_ref(), "network.mac")?;
    Ok(Network {
        address,
        gateway,
        dns,
        interface,
        mac,
    })
}

fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    };
    (u128::from(a) & mask) == (u128::from(b) & mask)
}

#[cfg(test)]
mod tests;
