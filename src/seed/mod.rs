//! Seeds: render an [`Overlay`] into the three NoCloud files and pack them
//! into a FAT volume labelled `CIDATA`. Pure: the same overlay (and secret
//! files) gives the same bytes.
//!
//! Every customer value reaching a file here has passed the grammars of
//! [`crate::overlay::values`]; on top of that, YAML scalars are written as
//! JSON strings (valid YAML, fully escaped) and file bodies as YAML block
//! literals, so no value can end a scalar or start a new key.
//!
//! What the seed writes into the VM (paths the image's first-boot script
//! and packages read):
//!
//! | path | mode | what |
//! |---|---|---|
//! | `/etc/mimg/overlay.json` | 0644 | the overlay's non-secret values, for the first-boot script |
//! | `/etc/mimg/secrets/*` | 0600 | TURN secret, admin passwords, bridge token |
//! | `/etc/matrix-synapse/conf.d/50-mimg.yaml` | 0644 | server name, base URL, registration, uploads, TURN |
//! | `/etc/nginx/conf.d/mimg-matrix.conf` | 0644 | homeserver proxy, `.well-known`, web client |
//! | `/etc/element-web/config.json` | 0644 | the web client's homeserver |
//! | `/etc/matterbridge/matterbridge.toml` | 0600 | where a bridge is configured |
//! | `/etc/resolv.conf` | 0644 | the overlay's DNS servers |

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::overlay::{Overlay, Registration, Tls};

/// Where the image keeps the seed's secrets.
pub const SECRETS_DIR: &str = "/etc/mimg/secrets";
/// The image's first-boot script, called from the seed's runcmd.
pub const FIRSTBOOT: &str = "/usr/local/sbin/mimg-firstboot";

/// One file the seed writes into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFile {
    pub path: String,
    pub mode: u32,
    pub content: String,
    pub secret: bool,
}

/// The three files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
    pub files: Vec<VmFile>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Render every file for `o`.
pub fn render(o: &Overlay) -> Rendered {
    let mut files = Vec::new();
    let plain = |path: &str, content: String| VmFile {
        path: path.into(),
        mode: 0o644,
        content,
        secret: false,
    };
    let secret = |name: &str, value: &str| VmFile {
        path: format!("{SECRETS_DIR}/{name}"),
        mode: 0o600,
        content: format!("{value}\n"),
        secret: true,
    };

    files.push(plain("/etc/mimg/overlay.json", overlay_json(o)));
    if let Some(t) = &o.turn {
        files.push(secret("turn.secret", t.secret.expose()));
    }
    for a in &o.admins {
        files.push(secret(
            &format!("admin-{}.password", a.user),
            a.password.expose(),
        ));
    }
    files.push(plain(
        "/etc/matrix-synapse/conf.d/50-mimg.yaml",
        synapse_yaml(o),
    ));
    files.push(plain("/etc/nginx/conf.d/mimg-matrix.conf", nginx_conf(o)));
    files.push(plain("/etc/element-web/config.json", element_config(o)));
    if let Some(m) = &o.mattermost {
        files.push(secret("mattermost.token", m.token.expose()));
        files.push(VmFile {
            path: "/etc/matterbridge/matterbridge.toml".into(),
            mode: 0o600,
            content: matterbridge_toml(o),
            secret: true,
        });
    }
    if !o.network.dns.is_empty() {
        let mut r = String::from("# Written by mimg seed.\n");
        for d in &o.network.dns {
            r.push_str(&format!("nameserver {d}\n"));
        }
        files.push(plain("/etc/resolv.conf", r));
    }

    let network_config = network_config(o);
    let user_data = user_data(o, &files);
    let mut h = Sha256::new();
    h.update(network_config.as_bytes());
    h.update(user_data.as_bytes());
    let id = hex::encode(h.finalize());
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&format!("{}-{}", o.customer, &id[..16])),
        q(o.customer.as_str())
    );
    Rendered {
        meta_data,
        user_data,
        network_config,
        files,
    }
}

fn overlay_json(o: &Overlay) -> String {
    let admins: Vec<_> = o.admins.iter().map(|a| json!({ "user": a.user, "password_file": format!("{SECRETS_DIR}/admin-{}.password", a.user) })).collect();
    let v = json!({
        "version": 1,
        "customer": o.customer,
        "server_name": o.server_name,
        "homeserver": o.homeserver,
        "web_client": o.web_client,
        "tls": o.tls,
        "registration": o.registration,
        "admins": admins,
        "data_disk": o.data_disk,
        "turn_secret_file": o.turn.as_ref().map(|_| format!("{SECRETS_DIR}/turn.secret")),
        "bridge": o.mattermost.is_some(),
    });
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

fn synapse_yaml(o: &Overlay) -> String {
    let mut s = format!("# Written by mimg seed for customer {}.\n", o.customer);
    s.push_str(&format!("server_name: {}\n", q(o.server_name.as_str())));
    s.push_str(&format!(
        "public_baseurl: {}\n",
        q(&format!("https://{}/", o.homeserver))
    ));
    s.push_str("serve_server_wellknown: false\n");
    s.push_str(&format!("max_upload_size: {}\n", q(&o.max_upload.text())));
    let (enable, token) = match o.registration {
        Registration::Closed => (false, false),
        Registration::Open => (true, false),
        Registration::Token => (true, true),
    };
    s.push_str(&format!("enable_registration: {enable}\n"));
    if o.registration == Registration::Open {
        s.push_str("enable_registration_without_verification: true\n");
    }
    s.push_str(&format!("registration_requires_token: {token}\n"));
    if let Some(t) = &o.turn {
        s.push_str("turn_uris:\n");
        for u in &t.uris {
            s.push_str(&format!("  - {}\n", q(u.as_str())));
        }
        s.push_str(&format!(
            "turn_shared_secret_path: {}\n",
            q(&format!("{SECRETS_DIR}/turn.secret"))
        ));
        s.push_str("turn_user_lifetime: \"1h\"\nturn_allow_guests: false\n");
    }
    s
}

const SECURITY_HEADERS: &str = "        add_header X-Frame-Options SAMEORIGIN always;\n        add_header X-Content-Type-Options nosniff always;\n        add_header Content-Security-Policy \"frame-ancestors 'self'\" always;\n";

fn listen(o: &Overlay, name: &str) -> String {
    match o.tls {
        Tls::External => "    listen 80;\n    listen [::]:80;\n".to_string(),
        Tls::Acme => format!(
            "    listen 443 ssl;\n    listen [::]:443 ssl;\n    ssl_certificate /etc/letsencrypt/live/{name}/fullchain.pem;\n    ssl_certificate_key /etc/letsencrypt/live/{name}/privkey.pem;\n"
        ),
    }
}

fn nginx_conf(o: &Overlay) -> String {
    let hs = o.homeserver.as_str();
    let sn = o.server_name.as_str();
    let wc = o.web_client.as_str();
    let server_json =
        serde_json::to_string(&json!({ "m.server": format!("{hs}:443") })).expect("json");
    let client_json =
        serde_json::to_string(&json!({ "m.homeserver": { "base_url": format!("https://{hs}") } }))
            .expect("json");
    let mut s = format!("# Written by mimg seed for customer {}.\n", o.customer);
    if o.tls == Tls::Acme {
        s.push_str(&format!(
            "\n# ACME challenges and a redirect to https for all three names.\nserver {{\n    listen 80;\n    listen [::]:80;\n    server_name {hs} {sn} {wc};\n    location /.well-known/acme-challenge/ {{\n        root /var/www/acme;\n    }}\n    location / {{\n        return 301 https://$host$request_uri;\n    }}\n}}\n"
        ));
    }
    s.push_str(&format!(
        "\n# The homeserver: Synapse behind nginx.\nserver {{\n{}    server_name {hs};\n    location ~ ^(/_matrix|/_synapse/client) {{\n        proxy_pass http://127.0.0.1:8008;\n        proxy_set_header X-Forwarded-For $remote_addr;\n        proxy_set_header X-Forwarded-Proto https;\n        proxy_set_header Host $host;\n        proxy_http_version 1.1;\n        client_max_body_size {};\n    }}\n    location = /health {{\n        proxy_pass http://127.0.0.1:8008;\n    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
        listen(o, hs),
        o.max_upload.text()
    ));
    // JSON bodies go inside single quotes: they hold no `'` (values are
    // domain names) and nginx needs no further escaping there.
    s.push_str(&format!(
        "\n# The Matrix domain: delegation through /.well-known.\nserver {{\n{}    server_name {sn};\n    location = /.well-known/matrix/server {{\n        default_type application/json;\n        add_header Access-Control-Allow-Origin * always;\n        return 200 '{server_json}';\n    }}\n    location = /.well-known/matrix/client {{\n        default_type application/json;\n        add_header Access-Control-Allow-Origin * always;\n        return 200 '{client_json}';\n    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
        listen(o, sn)
    ));
    s.push_str(&format!(
        "\n# The web client on its own domain.\nserver {{\n{}    server_name {wc};\n    root /var/www/element;\n    index index.html;\n    location / {{\n{SECURITY_HEADERS}    }}\n    location = /config.json {{\n        alias /etc/element-web/config.json;\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n    location = /index.html {{\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n    location /i18n/ {{\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n}}\n",
        listen(o, wc)
    ));
    s
}

fn element_config(o: &Overlay) -> String {
    let v = json!({
        "default_server_config": {
            "m.homeserver": { "base_url": format!("https://{}", o.homeserver), "server_name": o.server_name }
        },
        "disable_custom_urls": false,
        "disable_guests": true,
        "brand": "Element",
        "default_theme": "light"
    });
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

fn matterbridge_toml(o: &Overlay) -> String {
    let m = o.mattermost.as_ref().expect("called with a bridge");
    let host = m
        .url
        .as_str()
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    format!(
        "# Written by mimg seed for customer {c}.\n# The Matrix side logs in as @matterbridge:{sn}; the first-boot script\n# creates that user and writes its password to /var/lib/mimg/matterbridge.password.\n[mattermost.{team}]\nServer = {server}\nTeam = {team_q}\nToken = {token}\nRemoteNickFormat = \"[{{PROTOCOL}}] <{{NICK}}> \"\n\n[matrix.{c}]\nServer = \"http://127.0.0.1:8008\"\nLogin = \"matterbridge\"\nPasswordFile = \"/var/lib/mimg/matterbridge.password\"\nRemoteNickFormat = \"[{{PROTOCOL}}] <{{NICK}}> \"\n",
        c = o.customer,
        sn = o.server_name,
        team = m.team,
        server = q(&format!("{host}:443")),
        team_q = q(m.team.as_str()),
        token = q(m.token.expose()),
    )
}

fn network_config(o: &Overlay) -> String {
    let n = &o.network;
    let mut s =
        String::from("# Written by mimg seed: IPv6 only, static.\nversion: 2\nethernets:\n");
    s.push_str(&format!("  {}:\n", n.interface));
    if let Some(mac) = &n.mac {
        s.push_str(&format!(
            "    match:\n      macaddress: {}\n    set-name: {}\n",
            q(mac),
            n.interface
        ));
    }
    s.push_str("    dhcp4: false\n    dhcp6: false\n    accept-ra: false\n");
    s.push_str(&format!(
        "    addresses:\n      - {}\n",
        q(&n.address.to_string())
    ));
    s.push_str(&format!(
        "    routes:\n      - to: \"::/0\"\n        via: {}\n",
        q(&n.gateway.to_string())
    ));
    if !n.dns.is_empty() {
        s.push_str("    nameservers:\n      addresses:\n");
        for d in &n.dns {
            s.push_str(&format!("        - {}\n", q(&d.to_string())));
        }
    }
    s
}

fn user_data(o: &Overlay, files: &[VmFile]) -> String {
    let mut s = format!(
        "#cloud-config\n# Written by mimg seed for customer {}. Re-run `mimg seed` to change it.\n",
        o.customer
    );
    s.push_str("ssh_pwauth: false\ndisable_root: true\n");
    s.push_str("users:\n  - default\n");
    if !o.ssh_authorized_keys.is_empty() {
        s.push_str("ssh_authorized_keys:\n");
        for k in &o.ssh_authorized_keys {
            s.push_str(&format!("  - {}\n", q(k.as_str())));
        }
    }
    s.push_str("write_files:\n");
    for f in files {
        s.push_str(&format!(
            "  - path: {}\n    owner: \"root:root\"\n    permissions: {}\n    content: |\n",
            q(&f.path),
            q(&format!("0{:o}", f.mode))
        ));
        for line in f.content.lines() {
            if line.is_empty() {
                s.push('\n');
            } else {
                s.push_str("      ");
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    s.push_str(&format!("runcmd:\n  - [{}]\n", q(FIRSTBOOT)));
    s
}

/// The seed volume: FAT12, label `CIDATA`, the three files at its root.
pub fn image(r: &Rendered, volume_id: u32) -> anyhow::Result<Vec<u8>> {
    crate::stages::fat::fat_image(
        1 << 20,
        *b"CIDATA     ",
        volume_id,
        fatfs::FatType::Fat12,
        &[
            ("meta-data", r.meta_data.as_bytes()),
            ("user-data", r.user_data.as_bytes()),
            ("network-config", r.network_config.as_bytes()),
        ],
    )
}

/// A volume id derived from the rendered content.
pub fn volume_id(r: &Rendered) -> u32 {
    let d =
        Sha256::digest(format!("{}{}{}", r.meta_data, r.user_data, r.network_config).as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests;
