//! Overlay validation: the example parses; every bad value is refused with
//! file, line and key.

use super::*;

fn dir_with_secrets() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("s")).unwrap();
    std::fs::write(d.path().join("s/turn"), "turn-secret-0123456789\n").unwrap();
    std::fs::write(d.path().join("s/admin"), "admin-password-0123\n").unwrap();
    std::fs::write(d.path().join("s/token"), "mm-token-0123456789").unwrap();
    std::fs::write(d.path().join("s/bad"), "has a space\n").unwrap();
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
        "secret with a space",
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
