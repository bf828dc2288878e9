//! Validated customer values. Each is built only through `FromStr`, which
//! accepts a narrow grammar: nothing that parses here can break out of an
//! nginx directive, a YAML scalar, a TOML string or a shell word.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Why a value was refused; the caller adds file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);
        impl $name {
            #[allow(dead_code)] // not every value type is read as text
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

text_type!(
    /// A customer id: `[a-z0-9-]`, 1 to 40 characters, no leading or trailing `-`.
    Customer
);
text_type!(
    /// A DNS name: at least two labels of `[a-z0-9-]` (1-63, no `-` at an end), 253 at most.
    DomainName
);
text_type!(
    /// A Matrix user localpart, restricted to `[a-z0-9._-]`.
    Localpart
);
text_type!(
    /// A TURN URI: `turn:` or `turns:`, a host, a port, an optional transport.
    TurnUri
);
text_type!(
    /// A block device path: `/dev/vdX`, `/dev/sdX`, `/dev/xvdX`, `/dev/nvmeNnN` or `/dev/disk/by-id/...`.
    DevicePath
);
text_type!(
    /// An OpenSSH public key line: type, base64 blob, optional plain comment.
    SshKey
);
text_type!(
    /// An https URL made of a domain name, an optional port and an optional plain path.
    HttpsUrl
);
text_type!(
    /// An e-mail address for an ACME account: `[a-z0-9._+-]@DOMAIN`.
    Email
);
text_type!(
    /// A short identifier such as a Mattermost team: `[a-z0-9_-]`, 1-64.
    Ident
);

fn ldh_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

impl FromStr for Customer {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        if ldh_label(s) && s.len() <= 40 {
            Ok(Customer(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not a customer id: use 1-40 of a-z, 0-9 and `-` (not at either end)",
                s.escape_debug()
            )))
        }
    }
}

impl FromStr for DomainName {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let labels: Vec<&str> = s.split('.').collect();
        let ok = s.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| ldh_label(l))
            && !labels.last().unwrap().bytes().all(|b| b.is_ascii_digit());
        if ok {
            Ok(DomainName(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not a domain name (lowercase labels of a-z, 0-9 and `-`, separated by dots; no port, no wildcard)",
                s.escape_debug()
            )))
        }
    }
}

impl FromStr for Localpart {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && !s.starts_with(['.', '-'])
            && !s.contains("..");
        if ok {
            Ok(Localpart(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not a Matrix user name: use 1-64 of a-z, 0-9, `.`, `_`, `-`",
                s.escape_debug()
            )))
        }
    }
}

impl FromStr for TurnUri {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let bad = || {
            Refused(format!(
                "`{}` is not a TURN URI like \"turn:turn.example.net:3478?transport=udp\"",
                s.escape_debug()
            ))
        };
        let rest = s
            .strip_prefix("turns:")
            .or_else(|| s.strip_prefix("turn:"))
            .ok_or_else(bad)?;
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        host.parse::<DomainName>().map_err(|_| bad())?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || port.to_string().len() != hostport.len() - host.len() - 1 {
            return Err(bad());
        }
        if let Some(q) = query
            && q != "transport=udp"
            && q != "transport=tcp"
        {
            return Err(bad());
        }
        Ok(TurnUri(s.into()))
    }
}

impl FromStr for DevicePath {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let simple = |prefix: &str| {
            s.strip_prefix(prefix).is_some_and(|r| {
                !r.is_empty() && r.len() <= 3 && r.bytes().all(|b| b.is_ascii_lowercase())
            })
        };
        let nvme = s.strip_prefix("/dev/nvme").is_some_and(|r| {
            let mut parts = r.split('n');
            matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
        });
        let by_id = s.strip_prefix("/dev/disk/by-id/").is_some_and(|r| {
            !r.is_empty()
                && r.len() <= 128
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
                && !r.starts_with('.')
        });
        if simple("/dev/vd") || simple("/dev/sd") || simple("/dev/xvd") || nvme || by_id {
            Ok(DevicePath(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not a disk device such as /dev/vdb or /dev/disk/by-id/NAME",
                s.escape_debug()
            )))
        }
    }
}

impl FromStr for SshKey {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let bad = |why: &str| Refused(format!("not an OpenSSH public key line ({why})"));
        let mut parts = s.splitn(3, ' ');
        let ty = parts.next().unwrap_or("");
        let blob = parts.next().ok_or_else(|| bad("type and key needed"))?;
        let comment = parts.next().unwrap_or("");
        const TYPES: &[&str] = &[
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
        ];
        if !TYPES.contains(&ty) {
            return Err(bad("unknown key type"));
        }
        if blob.len() < 16
            || !blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err(bad("the key is not base64"));
        }
        if comment.len() > 100
            || !comment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b))
        {
            return Err(bad(
                "the comment may hold only letters, digits, `@`, `.`, `_`, `-`",
            ));
        }
        Ok(SshKey(s.into()))
    }
}

impl FromStr for HttpsUrl {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let bad = || {
            Refused(format!(
                "`{}` is not an https URL of a domain name (optional :port) with a plain path",
                s.escape_debug()
            ))
        };
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let host = match hostport.split_once(':') {
            Some((h, port)) => {
                let ok = port
                    .parse::<u16>()
                    .is_ok_and(|p| p > 0 && p.to_string() == port);
                if !ok {
                    return Err(bad());
                }
                h
            }
            None => hostport,
        };
        host.parse::<DomainName>().map_err(|_| bad())?;
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
            || path.contains("..")
        {
            return Err(bad());
        }
        Ok(HttpsUrl(s.into()))
    }
}

impl FromStr for Email {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let ok = s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && local
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(&b))
                && !local.starts_with(['.', '-'])
                && domain.parse::<DomainName>().is_ok()
        });
        if ok {
            Ok(Email(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not an e-mail address like \"ops@example.org\" (lowercase a-z, 0-9, `.`, `_`, `+`, `-` before the @)",
                s.escape_debug()
            )))
        }
    }
}

impl FromStr for Ident {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        if !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        {
            Ok(Ident(s.into()))
        } else {
            Err(Refused(format!(
                "`{}` is not an identifier: use 1-64 of a-z, 0-9, `_`, `-`",
                s.escape_debug()
            )))
        }
    }
}

/// An IPv6 address with a prefix length, such as `2001:db8::20/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl FromStr for Ipv6Net {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let bad = |why: &str| {
            Refused(format!(
                "`{}` is not an IPv6 address with a prefix like \"2001:db8::20/64\" ({why})",
                s.escape_debug()
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("no /prefix"))?;
        let addr = parse_ipv6(a).map_err(|e| bad(&e.0))?;
        let prefix: u8 = p.parse().map_err(|_| bad("the prefix is not a number"))?;
        if !(8..=128).contains(&prefix) || p.len() > 3 || p.starts_with('0') {
            return Err(bad("the prefix must be 8 to 128"));
        }
        Ok(Ipv6Net { addr, prefix })
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Ipv6Net {
    /// Why `addr` cannot be a VM's own static address in this network, if
    /// it cannot: a multicast, loopback or link-local address, or the
    /// all-zero host part (the subnet-router anycast address) of a network
    /// wider than /127.
    pub fn host_address_problem(&self) -> Option<String> {
        let a = self.addr;
        let why = if a.is_multicast() {
            "is a multicast address"
        } else if a.is_loopback() {
            "is the loopback address"
        } else if (a.segments()[0] & 0xffc0) == 0xfe80 {
            "is link-local: a VM's static address must be global or unique-local (the gateway may be link-local)"
        } else if self.prefix < 127 && u128::from(a) & (u128::MAX >> self.prefix) == 0 {
            "has an all-zero host part: it is the network's subnet-router anycast address, not a host's"
        } else {
            return None;
        };
        Some(format!("{a} {why}"))
    }
}

/// A plain IPv6 address (no zone, no IPv4-mapped form, not unspecified).
pub fn parse_ipv6(s: &str) -> Result<Ipv6Addr, Refused> {
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(Refused(format!("`{s}` is IPv4; this network is IPv6-only")));
    }
    let a: Ipv6Addr = s
        .parse()
        .map_err(|_| Refused(format!("`{}` is not an IPv6 address", s.escape_debug())))?;
    if a.is_unspecified() || a.to_ipv4_mapped().is_some() {
        return Err(Refused(format!("`{s}` cannot be used as a host address")));
    }
    Ok(a)
}

/// Sizes for Synapse and nginx: `50M`, `1G`, `512K`; 1K to 100G.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub bytes: u64,
}

impl Size {
    /// The nginx / Synapse form, such as `50M`.
    pub fn text(&self) -> String {
        for (unit, m) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
            if self.bytes % m == 0 {
                return format!("{}{unit}", self.bytes / m);
            }
        }
        self.bytes.to_string()
    }
}

impl FromStr for Size {
    type Err = Refused;
    fn from_str(s: &str) -> Result<Self, Refused> {
        let bad = || {
            Refused(format!(
                "`{}` is not a size like \"50M\" (K, M or G; 1K to 100G)",
                s.escape_debug()
            ))
        };
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return Err(bad());
        }
        let v: u64 = s[..n].parse().map_err(|_| bad())?;
        let m = match &s[n..] {
            "K" => 1u64 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = v * m;
        if bytes == 0 || bytes > 100 << 30 {
            return Err(bad());
        }
        Ok(Size { bytes })
    }
}

/// A secret's text, read from a file: one line of 8 to 512 bytes of UTF-8,
/// any printable character included (spaces, quotes, `$`, `/`, `&`, `+`,
/// `=`, `#`, `\\`); one trailing newline (`\n` or `\r\n`) is ignored. Only
/// what no config file or API can carry as one line is refused: NUL and a
/// line break inside it. It is carried byte for byte (the seed writes it
/// base64-encoded; the VM reads it from its file, never through a shell
/// word, `sed` or a command line). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, Refused> {
        let t = text.strip_suffix('\n').unwrap_or(text);
        let t = t.strip_suffix('\r').unwrap_or(t);
        if t.len() < 8 || t.len() > 512 {
            return Err(Refused("a secret must be 8 to 512 bytes".into()));
        }
        if t.contains(['\n', '\r']) {
            return Err(Refused(
                "a secret must be one line (a line break inside it cannot be carried)".into(),
            ));
        }
        if t.contains('\0') {
            return Err(Refused("a secret cannot hold a NUL byte".into()));
        }
        Ok(Secret(t.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
