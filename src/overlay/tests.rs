//! Overlay validation: the example parses; every bad value is refused with
//! file, line and key.

use super::*;

fn dir_with_secrets() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("s")).unwrap();
    std::fs::write(d.path().join("s/turn"), "turn-secret-0123456789\n").unwrap();
    std::fs::write(d.path().join("s/admin"), "admin-password-0123\n").unwrap();
    std::fs::write(d.path().join("s/token"), "mm-token-0123456789").unwrap();
    std::fs::write(d.path().join("s/bad"), "two\nlines of secret\n").unwrap();
    std::fs::write(d.path().join("s/short"), "abc\n").unwrap();
    d
}

pub const GOOD: &str = r#"customer = "acme-1"
server_name = "example.org"
homeserver = "matrix.example.org"
web_client = "chat.example.org"
tls = "external"
registration = "closed"
max_upload = "50M"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example.org"]
[turn]
uris = ["turn:turn.example.net:3478?transport=udp"]
secret_file = "s/turn"
[[admin]]
user = "admin"
password_file = "s/admin"
[network]
address = "2001:db8:10::20/64"
gateway = "2001:db8:10::1"
dns = ["2001:db8::53"]
[data_disk]
device = "/dev/vdb"
[bridge.mattermost]
url = "https://mattermost.example.org"
team = "ops"
token_file = "s/token"
"#;

#[test]
fn the_good_overlay_parses() {
    let d = dir_with_secrets();
    let o = parse(&d.path().join("o.toml"), GOOD).unwrap();
    assert_eq!(o.customer.as_str(), "acme-1");
    assert_eq!(o.max_upload.text(), "50M");
    assert_eq!(
        o.turn.as_ref().unwrap().secret.expose(),
        "turn-secret-0123456789"
    );
    assert_eq!(o.network.interface.as_str(), "ens3");
    assert!(
        !format!("{o:?}").contains("turn-secret-0123456789"),
        "secrets never print"
    );
}

#[test]
fn the_shipped_example_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/example.toml");
    let o = load(&p).unwrap();
    assert_eq!(o.server_name.as_str(), "example.org");
}

/// (what, line of GOOD to replace (a prefix), replacement, key the error must name)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "double quote in a domain",
        "server_name =",
        "server_name = \"exa\\\"mple.org\"",
        "server_name",
    ),
    (
        "semicolon in a domain",
        "server_name =",
        "server_name = \"example.org; return 200\"",
        "server_name",
    ),
    (
        "newline in a domain",
        "homeserver =",
        "homeserver = \"matrix.example.org\\nserver_name evil\"",
        "homeserver",
    ),
    (
        "braces in a domain",
        "web_client =",
        "web_client = \"chat.example.org{}\"",
        "web_client",
    ),
    (
        "shell substitution",
        "homeserver =",
        "homeserver = \"$(reboot).example.org\"",
        "homeserver",
    ),
    (
        "space in a domain",
        "server_name =",
        "server_name = \"example .org\"",
        "server_name",
    ),
    (
        "empty domain",
        "server_name =",
        "server_name = \"\"",
        "server_name",
    ),
    (
        "dot-dot in a domain",
        "server_name =",
        "server_name = \"example..org\"",
        "server_name",
    ),
    (
        "wildcard domain",
        "web_client =",
        "web_client = \"*.example.org\"",
        "web_client",
    ),
    (
        "domain with a port",
        "homeserver =",
        "homeserver = \"matrix.example.org:8448\"",
        "homeserver",
    ),
    (
        "upper case domain",
        "homeserver =",
        "homeserver = \"Matrix.example.org\"",
        "homeserver",
    ),
    (
        "single-label domain",
        "server_name =",
        "server_name = \"localhost\"",
        "server_name",
    ),
    (
        "IPv4 as a domain",
        "server_name =",
        "server_name = \"192.0.2.1\"",
        "server_name",
    ),
    (
        "web client on the homeserver's name",
        "web_client =",
        "web_client = \"matrix.example.org\"",
        "web_client",
    ),
    (
        "path traversal in customer",
        "customer =",
        "customer = \"../etc\"",
        "customer",
    ),
    (
        "slash in customer",
        "customer =",
        "customer = \"a/b\"",
        "customer",
    ),
    (
        "upper case customer",
        "customer =",
        "customer = \"Acme\"",
        "customer",
    ),
    (
        "empty customer",
        "customer =",
        "customer = \"\"",
        "customer",
    ),
    ("unknown tls mode", "tls =", "tls = \"letsencrypt\"", "tls"),
    (
        "unknown registration",
        "registration =",
        "registration = \"invite\"",
        "registration",
    ),
    (
        "bad size unit",
        "max_upload =",
        "max_upload = \"50MB\"",
        "max_upload",
    ),
    (
        "size with a semicolon",
        "max_upload =",
        "max_upload = \"50M;\"",
        "max_upload",
    ),
    (
        "zero size",
        "max_upload =",
        "max_upload = \"0M\"",
        "max_upload",
    ),
    (
        "IPv4 address on an IPv6-only network",
        "address =",
        "address = \"192.0.2.20/24\"",
        "network.address",
    ),
    (
        "address without prefix",
        "address =",
        "address = \"2001:db8:10::20\"",
        "network.address",
    ),
    (
        "prefix out of range",
        "address =",
        "address = \"2001:db8:10::20/129\"",
        "network.address",
    ),
    (
        "prefix not a number",
        "address =",
        "address = \"2001:db8:10::20/6x\"",
        "network.address",
    ),
    (
        "multicast address",
        "address =",
        "address = \"ff02::1/64\"",
        "network.address",
    ),
    (
        "loopback address",
        "address =",
        "address = \"::1/64\"",
        "network.address",
    ),
    (
        "link-local static address",
        "address =",
        "address = \"fe80::20/64\"",
        "network.address",
    ),
    (
        "all-zero host part",
        "address =",
        "address = \"2001:db8:10::/64\"",
        "network.address",
    ),
    (
        "IPv4 gateway",
        "gateway =",
        "gateway = \"192.0.2.1\"",
        "network.gateway",
    ),
    (
        "gateway outside the network",
        "gateway =",
        "gateway = \"2001:db8:99::1\"",
        "network.gateway",
    ),
    (
        "zone in the gateway",
        "gateway =",
        "gateway = \"fe80::1%eth0\"",
        "network.gateway",
    ),
    ("IPv4 DNS", "dns =", "dns = [\"192.0.2.53\"]", "network.dns"),
    (
        "bad TURN scheme",
        "uris =",
        "uris = [\"stun:turn.example.net:3478\"]",
        "turn.uris",
    ),
    (
        "TURN URI without port",
        "uris =",
        "uris = [\"turn:turn.example.net\"]",
        "turn.uris",
    ),
    (
        "TURN URI with extra query",
        "uris =",
        "uris = [\"turn:turn.example.net:3478?transport=udp&x=1\"]",
        "turn.uris",
    ),
    (
        "TURN port out of range",
        "uris =",
        "uris = [\"turn:turn.example.net:70000\"]",
        "turn.uris",
    ),
    (
        "missing secret file",
        "secret_file =",
        "secret_file = \"s/nope\"",
        "turn.secret_file",
    ),
    (
        "secret with a line break inside",
        "secret_file =",
        "secret_file = \"s/bad\"",
        "turn.secret_file",
    ),
    (
        "secret too short",
        "password_file =",
        "password_file = \"s/short\"",
        "admin.password_file",
    ),
    (
        "admin with a colon",
        "user =",
        "user = \"admin:evil.org\"",
        "admin.user",
    ),
    (
        "admin with a quote",
        "user =",
        "user = \"ad'min\"",
        "admin.user",
    ),
    (
        "data disk path traversal",
        "device =",
        "device = \"/dev/../etc/passwd\"",
        "data_disk.device",
    ),
    (
        "data disk not a disk",
        "device =",
        "device = \"/etc/shadow\"",
        "data_disk.device",
    ),
    (
        "ssh key with a newline",
        "ssh_authorized_keys =",
        "ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\\nssh-rsa x\"]",
        "ssh_authorized_keys",
    ),
    (
        "ssh key of unknown type",
        "ssh_authorized_keys =",
        "ssh_authorized_keys = [\"ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAI\"]",
        "ssh_authorized_keys",
    ),
    (
        "bridge URL over http",
        "url =",
        "url = \"http://mattermost.example.org\"",
        "bridge.mattermost.url",
    ),
    (
        "bridge URL with a quote",
        "url =",
        "url = \"https://mattermost.example.org/\\\"x\"",
        "bridge.mattermost.url",
    ),
    (
        "bridge team with a space",
        "team =",
        "team = \"o ps\"",
        "bridge.mattermost.team",
    ),
];

fn replace_line(text: &str, prefix: &str, with: &str) -> (String, usize) {
    let mut line_no = 0;
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if l.starts_with(prefix) && line_no == 0 {
                line_no = i + 1;
                with.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(line_no > 0, "no line starts with {prefix}");
    (lines.join("\n") + "\n", line_no)
}

#[test]
fn every_bad_value_is_refused_with_file_line_and_key() {
    let d = dir_with_secrets();
    let path = d.path().join("o.toml");
    for (what, prefix, with, key) in BAD {
        let (text, line) = replace_line(GOOD, prefix, with);
        let e = match parse(&path, &text) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("o.toml:{line}:")),
            "{what}: wrong place: {e}"
        );
        assert!(e.contains(&format!("`{key}`")), "{what}: wrong key: {e}");
    }
}

#[test]
fn unknown_keys_and_missing_keys_are_errors() {
    let d = dir_with_secrets();
    let path = d.path().join("o.toml");
    let e = parse(
        &path,
        &GOOD.replace(
            "max_upload = \"50M\"",
            "max_upload = \"50M\"\nlisten = \"[::]:80\"",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("o.toml:8:") && e.contains("listen"), "{e}");
    let e = parse(&path, &GOOD.replace("server_name = \"example.org\"\n", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("server_name"), "{e}");
}

#[test]
fn any_printable_one_line_secret_is_taken_as_it_is() {
    use super::Secret;
    for s in [
        " lead and trail ",
        "q\"uo'te $HOME `x` /&+=#;{}\\",
        "ünï côdé päss",
        "tab\tinside",
    ] {
        assert_eq!(Secret::parse(&format!("{s}\n")).unwrap().expose(), s);
        assert_eq!(Secret::parse(&format!("{s}\r\n")).unwrap().expose(), s);
        assert_eq!(Secret::parse(s).unwrap().expose(), s);
    }
    // Only what cannot be carried as one line is refused.
    for (bad, why) in [
        ("two\nlines ok", "one line"),
        ("carriage\rreturn", "one line"),
        ("nul\0inside-it", "NUL"),
        ("short", "8 to 512"),
    ] {
        let e = Secret::parse(bad).unwrap_err().0;
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    // Two trailing newlines: the second is a line break inside.
    assert!(Secret::parse("password-1\n\n").is_err());
}

/// A self-signed certificate for `names` and its key, written to `dir`.
fn cert_files(dir: &Path, stem: &str, names: &[&str]) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let c = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), c.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

fn with_tls(lines: &str) -> String {
    GOOD.replace("tls = \"external\"\n", lines)
}

#[test]
fn tls_files_takes_a_matching_key_and_a_certificate_for_the_three_names() {
    let d = dir_with_secrets();
    let names = ["example.org", "matrix.example.org", "chat.example.org"];
    cert_files(d.path(), "good", &names);
    cert_files(d.path(), "other", &names);
    cert_files(d.path(), "narrow", &["matrix.example.org"]);
    let p = d.path().join("o.toml");
    let o = parse(
        &p,
        &with_tls("tls = \"files\"\ntls_cert_file = \"good.crt\"\ntls_key_file = \"good.key\"\n"),
    )
    .unwrap();
    assert_eq!(o.tls, Tls::Files);
    assert!(
        !format!("{o:?}").contains("PRIVATE KEY"),
        "keys never print"
    );

    let e = parse(
        &p,
        &with_tls("tls = \"files\"\ntls_cert_file = \"good.crt\"\ntls_key_file = \"other.key\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("o.toml:7:") && e.contains("`tls_key_file`"),
        "{e}"
    );
    assert!(
        e.contains("other.key") && e.contains("good.crt"),
        "names both files: {e}"
    );

    let e = parse(
        &p,
        &with_tls(
            "tls = \"files\"\ntls_cert_file = \"narrow.crt\"\ntls_key_file = \"narrow.key\"\n",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`tls_cert_file`") && e.contains("does not cover"),
        "{e}"
    );

    let e = parse(
        &p,
        &with_tls("tls = \"files\"\ntls_cert_file = \"good.crt\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tls_key_file"), "{e}");

    std::fs::write(d.path().join("junk.crt"), "not a certificate\n").unwrap();
    let e = parse(
        &p,
        &with_tls("tls = \"files\"\ntls_cert_file = \"junk.crt\"\ntls_key_file = \"good.key\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`tls_cert_file`") && e.contains("junk.crt"),
        "{e}"
    );

    let e = parse(
        &p,
        &with_tls("tls = \"external\"\ntls_cert_file = \"good.crt\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`tls_cert_file`") && e.contains("goes with"),
        "{e}"
    );
}

#[test]
fn acme_defaults_to_lets_encrypt_and_takes_a_private_server() {
    let d = dir_with_secrets();
    cert_files(d.path(), "ca", &["acme.test.example"]);
    let p = d.path().join("o.toml");
    let o = parse(&p, &with_tls("tls = \"acme\"\n")).unwrap();
    let a = o.acme.unwrap();
    assert_eq!(a.directory.as_str(), LETS_ENCRYPT);
    assert!(a.email.is_none() && a.ca.is_none());
    let o = parse(
        &p,
        &with_tls("tls = \"acme\"\nacme_directory = \"https://acme.test.example:14000/dir\"\nacme_email = \"ops+matrix@example.org\"\nacme_ca_file = \"ca.crt\"\n"),
    )
    .unwrap();
    let a = o.acme.unwrap();
    assert_eq!(a.directory.as_str(), "https://acme.test.example:14000/dir");
    assert!(a.ca.is_some());
    for (bad, key) in [
        (
            "acme_directory = \"http://acme.test.example/dir\"",
            "acme_directory",
        ),
        (
            "acme_directory = \"https://acme.test.example:0/dir\"",
            "acme_directory",
        ),
        ("acme_email = \"ops@example.org; rm\"", "acme_email"),
        ("acme_email = \"not-an-address\"", "acme_email"),
        ("acme_ca_file = \"s/turn\"", "acme_ca_file"),
    ] {
        let e = parse(&p, &with_tls(&format!("tls = \"acme\"\n{bad}\n")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("o.toml:6:") && e.contains(&format!("`{key}`")),
            "{bad}: {e}"
        );
    }
}

#[test]
fn federation_is_open_closed_or_a_list_and_key_servers_are_explicit() {
    let d = dir_with_secrets();
    let p = d.path().join("o.toml");
    let o = parse(&p, GOOD).unwrap();
    assert_eq!(o.federation, Federation::Open);
    assert!(o.trusted_key_servers.is_none() && o.federation_ip_allow.is_empty());
    let o = parse(
        &p,
        &with_tls("federation = [\"example.net\", \"matrix.example.com\"]\ntrusted_key_servers = []\nfederation_ip_allow = [\"2001:db8:20::/64\"]\n"),
    )
    .unwrap();
    assert_eq!(
        o.federation,
        Federation::Allow(vec![
            "example.net".parse().unwrap(),
            "matrix.example.com".parse().unwrap()
        ])
    );
    assert_eq!(o.trusted_key_servers, Some(vec![]));
    assert_eq!(o.federation_ip_allow[0].to_string(), "2001:db8:20::/64");
    let o = parse(&p, &with_tls("federation = \"closed\"\n")).unwrap();
    assert_eq!(o.federation, Federation::Closed);
    for (bad, key) in [
        ("federation = \"sometimes\"", "federation"),
        ("federation = [\"example.net; evil\"]", "federation"),
        (
            "trusted_key_servers = [\"matrix.org:8448\"]",
            "trusted_key_servers",
        ),
        (
            "federation_ip_allow = [\"10.0.0.0/8\"]",
            "federation_ip_allow",
        ),
        ("federation_ca_file = \"s/turn\"", "federation_ca_file"),
    ] {
        let e = parse(&p, &with_tls(&format!("{bad}\n")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("o.toml:5:") && e.contains(&format!("`{key}`")),
            "{bad}: {e}"
        );
    }
}

const TURN: &str = r#"kind = "turn"
customer = "provider-turn"
realm = "turn.example.net"
[turn_server]
secret_files = ["s/turn", "s/admin"]
min_port = 50000
max_port = 50100
[network]
address = "2001:db8:20::10/64"
gateway = "2001:db8:20::1"
"#;

#[test]
fn a_turn_overlay_parses_by_its_kind_and_a_homeserver_one_stays_as_it_was() {
    let d = dir_with_secrets();
    let path = d.path().join("t.toml");
    let t = match parse_any(&path, TURN).unwrap() {
        AnyOverlay::Turn(t) => t,
        AnyOverlay::Homeserver(_) => panic!("a turn overlay read as a homeserver's"),
    };
    assert_eq!(t.realm.as_str(), "turn.example.net");
    assert_eq!(
        t.secrets.iter().map(|s| s.expose()).collect::<Vec<_>>(),
        ["turn-secret-0123456789", "admin-password-0123"]
    );
    assert_eq!((t.min_port, t.max_port), (50000, 50100));
    assert!(t.tls_files.is_none());
    assert!(!format!("{t:?}").contains("turn-secret-0123456789"));
    let t = match parse_any(
        &path,
        &TURN.replace("min_port = 50000\nmax_port = 50100\n", ""),
    )
    .unwrap()
    {
        AnyOverlay::Turn(t) => t,
        _ => unreachable!(),
    };
    assert_eq!(
        (t.min_port, t.max_port),
        (49152, 65535),
        "coturn's default range"
    );
    assert!(matches!(
        parse_any(&d.path().join("o.toml"), GOOD).unwrap(),
        AnyOverlay::Homeserver(_)
    ));
    let hs = format!("kind = \"homeserver\"\n{GOOD}");
    assert!(matches!(
        parse_any(&d.path().join("o.toml"), &hs).unwrap(),
        AnyOverlay::Homeserver(_)
    ));
    // A turn overlay where a homeserver's is needed says so.
    let e = parse(&path, TURN).unwrap_err().to_string();
    assert!(e.contains("t.toml:1:") && e.contains("`kind`"), "{e}");
}

#[test]
fn bad_turn_values_are_refused_with_file_line_and_key() {
    let d = dir_with_secrets();
    let path = d.path().join("t.toml");
    for (what, prefix, with, key) in [
        ("unknown kind", "kind =", "kind = \"stun\"", "kind"),
        (
            "realm not a domain",
            "realm =",
            "realm = \"turn example\"",
            "realm",
        ),
        (
            "no secret",
            "secret_files =",
            "secret_files = []",
            "turn_server.secret_files",
        ),
        (
            "a secret twice",
            "secret_files =",
            "secret_files = [\"s/turn\", \"s/turn\"]",
            "turn_server.secret_files",
        ),
        (
            "unreadable secret",
            "secret_files =",
            "secret_files = [\"s/none\"]",
            "turn_server.secret_files",
        ),
        (
            "two-line secret",
            "secret_files =",
            "secret_files = [\"s/bad\"]",
            "turn_server.secret_files",
        ),
        (
            "privileged port",
            "min_port =",
            "min_port = 80",
            "turn_server.min_port",
        ),
        (
            "port out of range",
            "max_port =",
            "max_port = 70000",
            "turn_server.max_port",
        ),
        (
            "empty range",
            "min_port =",
            "min_port = 60000",
            "turn_server.max_port",
        ),
        (
            "range over the listener",
            "min_port =",
            "min_port = 3000",
            "turn_server.max_port",
        ),
        (
            "multicast address",
            "address =",
            "address = \"ff05::2/64\"",
            "network.address",
        ),
        (
            "all-zero host part",
            "address =",
            "address = \"2001:db8:20::/64\"",
            "network.address",
        ),
        (
            "unknown key",
            "realm =",
            "realm = \"turn.example.net\"\nlisten = \"x\"",
            "listen",
        ),
        (
            "cert without tls = files",
            "realm =",
            "realm = \"turn.example.net\"\ntls_cert_file = \"c.pem\"",
            "tls_cert_file",
        ),
    ] {
        let (text, line) = replace_line(TURN, prefix, with);
        let e = match parse_any(&path, &text) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("t.toml:{line}:"))
                || key == "listen"
                || key == "tls_cert_file"
                || key == "turn_server.max_port",
            "{what}: wrong place: {e}"
        );
        assert!(e.contains(key), "{what}: wrong key: {e}");
    }
}

#[test]
fn a_turn_server_with_tls_files_needs_a_certificate_for_its_realm() {
    let d = dir_with_secrets();
    cert_files(d.path(), "t", &["turn.example.net"]);
    cert_files(d.path(), "o", &["other.example.net"]);
    let path = d.path().join("t.toml");
    let with = |stem: &str| {
        TURN.replace(
            "[turn_server]",
            &format!("tls = \"files\"\ntls_cert_file = \"{stem}.crt\"\ntls_key_file = \"{stem}.key\"\n[turn_server]"),
        )
    };
    match parse_any(&path, &with("t")).unwrap() {
        AnyOverlay::Turn(t) => assert!(t.tls_files.is_some()),
        _ => unreachable!(),
    }
    let e = parse_any(&path, &with("o")).unwrap_err().to_string();
    assert!(e.contains("does not cover turn.example.net"), "{e}");
}

#[test]
fn a_host_address_must_be_a_usable_unicast_one() {
    let ok = |s: &str| s.parse::<Ipv6Net>().unwrap().host_address_problem();
    assert_eq!(ok("2001:db8:10::20/64"), None);
    assert_eq!(ok("fd00:1::5/64"), None, "unique-local is a host address");
    assert_eq!(
        ok("2001:db8:10::/128"),
        None,
        "a /128 has no host part to be zero"
    );
    for (bad, why) in [
        ("ff02::1/64", "multicast"),
        ("::1/128", "loopback"),
        ("fe80::20/64", "link-local"),
        ("2001:db8:10::/64", "all-zero host part"),
    ] {
        let e = ok(bad).unwrap_or_default();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn the_admin_ui_needs_a_name_of_its_own_and_a_known_admin_api() {
    let d = dir_with_secrets();
    let path = d.path().join("o.toml");
    let with = |lines: &str| {
        GOOD.replace(
            "tls = \"external\"",
            &format!("tls = \"external\"\n{lines}"),
        )
    };
    let o = parse(&path, &with("admin_ui = \"admin.example.org\"")).unwrap();
    assert_eq!(o.admin_ui.as_ref().unwrap().as_str(), "admin.example.org");
    assert!(o.admin_api_on_ui());
    assert_eq!(o.names().len(), 4);
    let o = parse(
        &path,
        &with("admin_ui = \"admin.example.org\"\nadmin_api = \"none\""),
    )
    .unwrap();
    assert!(!o.admin_api_on_ui());
    for (lines, key, why) in [
        ("admin_ui = \"matrix.example.org\"", "admin_ui", "own"),
        ("admin_ui = \"not a name\"", "admin_ui", ""),
        ("admin_api = \"public\"", "admin_api", "not one of"),
        (
            "admin_api = \"monitoring\"",
            "admin_api",
            "add a [monitoring] section",
        ),
    ] {
        let e = parse(&path, &with(lines)).unwrap_err().to_string();
        assert!(
            e.contains("o.toml:6:") && e.contains(&format!("`{key}`")) && e.contains(why),
            "{lines}: {e}"
        );
    }
}

#[test]
fn the_monitoring_lan_needs_a_network_and_a_nic_of_its_own() {
    let d = dir_with_secrets();
    let path = d.path().join("o.toml");
    let with = |lines: &str| {
        GOOD.replace(
            "[data_disk]",
            &format!("[monitoring]\n{lines}\n[data_disk]"),
        )
    };
    let o = parse(&path, &with("address = \"2001:db8:99::20/64\"")).unwrap();
    let m = o.monitoring.as_ref().unwrap();
    assert_eq!(m.interface.as_str(), "ens4");
    assert_eq!(m.mac, None);
    let o = parse(
        &path,
        &with("address = \"fd00:99::20/64\"\nmac = \"52:54:00:6e:00:01\""),
    )
    .unwrap();
    assert_eq!(
        o.monitoring.unwrap().mac.as_deref(),
        Some("52:54:00:6e:00:01")
    );
    for (lines, key, why) in [
        (
            "address = \"2001:db8:10::99/64\"",
            "monitoring.address",
            "public network",
        ),
        (
            "address = \"ff02::1/64\"",
            "monitoring.address",
            "multicast",
        ),
        (
            "address = \"2001:db8:99::20/64\"\ninterface = \"ens3\"",
            "monitoring.interface",
            "NIC of its own",
        ),
        (
            "address = \"2001:db8:99::20/64\"\nmac = \"52:54:00:XX:00:01\"",
            "monitoring.mac",
            "MAC address",
        ),
        (
            "address = \"2001:db8:99::20/64\"\nport = 9100",
            "port",
            "unknown field",
        ),
    ] {
        let e = parse(&path, &with(lines)).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(why), "{lines}: {e}");
    }
}
