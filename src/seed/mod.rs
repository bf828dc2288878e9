//! Seeds: render an [`Overlay`] into the three NoCloud files and pack them
//! into a FAT volume labelled `CIDATA`. Pure: the same overlay (and secret
//! files) gives the same bytes.
//!
//! Every customer value reaching a file here has passed the grammars of
//! [`crate::overlay::values`]; on top of that, YAML scalars are written as
//! JSON strings (valid YAML, fully escaped) and file bodies as YAML block
//! literals, so no value can end a scalar or start a new key. Secret files
//! are written base64-encoded (`encoding: b64`): byte for byte, whatever
//! printable characters the secret holds.
//!
//! What the seed writes into the VM (paths the image's first-boot script
//! and packages read):
//!
//! | path | mode | what |
//! |---|---|---|
//! | `/etc/mimg/overlay.json` | 0644 | the overlay's non-secret values, for the first-boot script |
//! | `/etc/mimg/secrets/*` | 0600 | TURN secret, admin passwords, bridge token |
//! | `/etc/matrix-synapse/conf.d/50-mimg.yaml` | 0644 | server name, base URL, registration, uploads, TURN |
//! | `/etc/matrix-synapse/conf.d/60-mimg-secrets.yaml` | 0600 (0640 group matrix-synapse after first boot) | the TURN shared secret |
//! | `/etc/nginx/conf.d/mimg-matrix.conf` | 0644 | one line: `include /run/mimg/nginx/*.conf;` (empty at every boot, so until first boot is done the customer's names get the image's "not configured yet" page, 503) |
//! | `/etc/mimg/nginx/mimg-matrix.conf` | 0644 | the sites: homeserver proxy, `.well-known`, web client, admin UI; copied to `/run/mimg/nginx/` by `sites.py` when first boot is done (`tls = "acme"`: and certbot has the certificate) |
//! | `/etc/mimg/nginx/mimg-matrix-pending.conf` | 0644 | `tls = "acme"`: port 80 while the certificate is missing (the ACME challenges, and 503 "not configured yet"), in `/run/mimg/nginx/` from the start of first boot |
//! | `/etc/mimg/tls/fullchain.pem`, `/etc/mimg/secrets/tls.key` | 0644, 0600 | `tls = "files"`: the overlay's certificate chain and key |
//! | `/etc/mimg/acme-ca.pem` | 0644 | the CA of a private ACME server's TLS certificate (`acme_ca_file`) |
//! | `/etc/systemd/system/certbot.service.d/mimg.conf` | 0644 | renewals trust that CA too |
//! | `/etc/mimg/federation-ca/N.pem` | 0644 | CAs Synapse trusts for federation (`federation_ca_file`), one per file |
//! | `/etc/element-web/config.json` | 0644 | the web client's homeserver |
//! | `/etc/synapse-admin/config.json` | 0644 | `admin_ui`: the admin UI restricted to this homeserver (through the UI's own name, where nginx serves `/_synapse/admin` when `admin_api = "admin-ui"`; `admin_api = "monitoring"`: on the monitoring address, port 8008, in the sites file) |
//! | `/etc/mimg/matterbridge.toml.in` | 0600 | where a bridge is configured: matterbridge's config but the Matrix password; the first-boot script registers the bridge's Matrix user (its `Login`) with a password it makes once on the data disk and writes `/etc/matterbridge/matterbridge.toml` (0640, group matterbridge) |
//! | `/etc/resolv.conf` | 0644 | the overlay's DNS servers |
//! | `/etc/mimg/monitoring.json` | 0644 | `[monitoring]`: the monitoring address and the metrics endpoints (the exporters' units start only where it exists) |
//! | `/etc/default/prometheus-{node,postgres}-exporter` | 0644 | `[monitoring]`: the exporters listen on the monitoring address alone |

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::overlay::{
    ADMIN_API_PORT, AnyOverlay, Customer, DomainName, Federation, Ident, Ipv6Net, METRICS,
    Monitoring, Network, Overlay, Registration, SshKey, Tls, TurnServer,
};

/// Where the image keeps the seed's secrets.
pub const SECRETS_DIR: &str = "/etc/mimg/secrets";
/// certbot's certificate name (`--cert-name`): one certificate for the
/// three names.
pub const ACME_CERT_NAME: &str = "mimg";
const ACME_CA: &str = "/etc/mimg/acme-ca.pem";
const ACME_WEBROOT: &str = "/var/www/acme";
/// One file per CA: Synapse reads only the first certificate of each
/// file in `federation_custom_ca_list`.
fn federation_ca_path(i: usize) -> String {
    format!("/etc/mimg/federation-ca/{i}.pem")
}
const TLS_CHAIN: &str = "/etc/mimg/tls/fullchain.pem";
const ADMIN_UI_CONFIG: &str = "/etc/synapse-admin/config.json";
const MATTERBRIDGE_TEMPLATE: &str = "/etc/mimg/matterbridge.toml.in";
/// nginx's part of the seed: the sites are served from `/run` (empty at
/// every boot), where the first-boot script puts them once it is done.
const NGINX_INCLUDE: &str = "# Written by mimg seed: the first-boot script installs the sites in\n# /run/mimg/nginx when it is done (until then the image's \"not configured yet\" page).\ninclude /run/mimg/nginx/*.conf;\n";
const NGINX_SITES: &str = "/etc/mimg/nginx/mimg-matrix.conf";
const NGINX_PENDING: &str = "/etc/mimg/nginx/mimg-matrix-pending.conf";
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
        // A YAML double-quoted string is a JSON string: any printable
        // character, escaped. The first-boot script lets Synapse read it.
        files.push(VmFile {
            path: "/etc/matrix-synapse/conf.d/60-mimg-secrets.yaml".into(),
            mode: 0o600,
            content: format!(
                "# Written by mimg seed: secrets Synapse reads.\nturn_shared_secret: {}\n",
                q(t.secret.expose())
            ),
            secret: true,
        });
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
    files.push(plain(
        "/etc/nginx/conf.d/mimg-matrix.conf",
        NGINX_INCLUDE.to_string(),
    ));
    files.push(plain(NGINX_SITES, nginx_conf(o)));
    match o.tls {
        Tls::External => {}
        Tls::Files => {
            let f = o.tls_files.as_ref().expect("tls = files has files");
            files.push(plain(TLS_CHAIN, f.chain.text().to_string()));
            files.push(VmFile {
                path: format!("{SECRETS_DIR}/tls.key"),
                mode: 0o600,
                content: f.key.expose().to_string(),
                secret: true,
            });
        }
        Tls::Acme => {
            files.push(plain(NGINX_PENDING, nginx_acme_pending(o)));
            let a = o.acme.as_ref().expect("tls = acme has acme");
            if let Some(ca) = &a.ca {
                files.push(plain(ACME_CA, ca.text().to_string()));
                files.push(plain(
                    "/etc/systemd/system/certbot.service.d/mimg.conf",
                    format!("# Written by mimg seed: renewals trust the ACME server's CA.\n[Service]\nEnvironment=REQUESTS_CA_BUNDLE={ACME_CA}\n"),
                ));
            }
        }
    }
    if let Some(ca) = &o.federation_ca {
        for (i, pem) in ca.pems().into_iter().enumerate() {
            files.push(plain(&federation_ca_path(i), pem));
        }
    }
    files.push(plain("/etc/element-web/config.json", element_config(o)));
    if let Some(name) = &o.admin_ui {
        files.push(plain(ADMIN_UI_CONFIG, admin_ui_config(name)));
    }
    if let Some(m) = &o.monitoring {
        files.extend(monitoring_files(m));
    }
    if let Some(m) = &o.mattermost {
        files.push(secret("mattermost.token", m.token.expose()));
        files.push(VmFile {
            path: MATTERBRIDGE_TEMPLATE.into(),
            mode: 0o600,
            content: matterbridge_toml(o),
            secret: true,
        });
    }
    if let Some(r) = resolv_conf(&o.network) {
        files.push(r);
    }

    finish(
        &o.customer,
        &o.network,
        o.monitoring.as_ref(),
        &o.ssh_authorized_keys,
        files,
    )
}

/// The seed of either kind of overlay.
pub fn render_any(o: &AnyOverlay) -> Rendered {
    match o {
        AnyOverlay::Homeserver(o) => render(o),
        AnyOverlay::Turn(t) => render_turn(t),
    }
}

/// The seed of a TURN server: the shared secrets (one file each, 0600),
/// the TLS chain and key where it has them, and the values the first-boot
/// script writes coturn's configuration from (it puts each secret into the
/// configuration itself, from its file: never through sed or a shell word).
pub fn render_turn(t: &TurnServer) -> Rendered {
    let mut files = Vec::new();
    let secret_files: Vec<String> = (0..t.secrets.len())
        .map(|i| format!("{SECRETS_DIR}/turn-{i}.secret"))
        .collect();
    let v = json!({
        "version": 1,
        "kind": "turn",
        "customer": t.customer,
        "realm": t.realm,
        "address": t.network.address.addr.to_string(),
        "min_port": t.min_port,
        "max_port": t.max_port,
        "tls": if t.tls_files.is_some() { "files" } else { "none" },
        "turn_secret_files": secret_files,
    });
    files.push(VmFile {
        path: "/etc/mimg/overlay.json".into(),
        mode: 0o644,
        content: serde_json::to_string_pretty(&v).expect("json") + "\n",
        secret: false,
    });
    for (path, s) in secret_files.iter().zip(&t.secrets) {
        files.push(VmFile {
            path: path.clone(),
            mode: 0o600,
            content: format!("{}\n", s.expose()),
            secret: true,
        });
    }
    if let Some(f) = &t.tls_files {
        files.push(VmFile {
            path: TLS_CHAIN.into(),
            mode: 0o644,
            content: f.chain.text().to_string(),
            secret: false,
        });
        files.push(VmFile {
            path: format!("{SECRETS_DIR}/tls.key"),
            mode: 0o600,
            content: f.key.expose().to_string(),
            secret: true,
        });
    }
    if let Some(r) = resolv_conf(&t.network) {
        files.push(r);
    }
    finish(&t.customer, &t.network, None, &t.ssh_authorized_keys, files)
}

fn resolv_conf(n: &Network) -> Option<VmFile> {
    if n.dns.is_empty() {
        return None;
    }
    let mut r = String::from("# Written by mimg seed.\n");
    for d in &n.dns {
        r.push_str(&format!("nameserver {d}\n"));
    }
    Some(VmFile {
        path: "/etc/resolv.conf".into(),
        mode: 0o644,
        content: r,
        secret: false,
    })
}

/// The three NoCloud files around `files`; the instance id derives from
/// what the seed says, so a changed seed runs cloud-init's first-boot
/// modules again.
fn finish(
    customer: &Customer,
    n: &Network,
    mon: Option<&Monitoring>,
    ssh: &[SshKey],
    files: Vec<VmFile>,
) -> Rendered {
    let network_config = network_config(n, mon);
    let user_data = user_data(customer, ssh, &files);
    let mut h = Sha256::new();
    h.update(network_config.as_bytes());
    h.update(user_data.as_bytes());
    let id = hex::encode(h.finalize());
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&format!("{}-{}", customer, &id[..16])),
        q(customer.as_str())
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
        "acme": o.acme.as_ref().map(|a| json!({
            "directory": a.directory,
            "email": a.email,
            "ca_file": a.ca.as_ref().map(|_| ACME_CA),
            "cert_name": ACME_CERT_NAME,
            "webroot": ACME_WEBROOT,
            "names": o.names(),
        })),
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
        // The shared secret itself is in 60-mimg-secrets.yaml (secret):
        // Synapse strips what it reads from a turn_shared_secret_path file,
        // and a secret may begin or end with a space.
        s.push_str("turn_user_lifetime: \"1h\"\nturn_allow_guests: false\n");
    }
    match &o.federation {
        Federation::Open => {}
        Federation::Closed => s.push_str("federation_domain_whitelist: []\n"),
        Federation::Allow(list) => {
            s.push_str("federation_domain_whitelist:\n");
            for d in list {
                s.push_str(&format!("  - {}\n", q(d.as_str())));
            }
        }
    }
    if let Some(ca) = &o.federation_ca {
        s.push_str("federation_custom_ca_list:\n");
        for i in 0..ca.pems().len() {
            s.push_str(&format!("  - {}\n", q(&federation_ca_path(i))));
        }
    }
    match &o.trusted_key_servers {
        None => s.push_str("trusted_key_servers:\n  - server_name: \"matrix.org\"\n"),
        Some(l) if l.is_empty() => s.push_str("trusted_key_servers: []\n"),
        Some(l) => {
            s.push_str("trusted_key_servers:\n");
            for d in l {
                s.push_str(&format!("  - server_name: {}\n", q(d.as_str())));
            }
        }
    }
    if let Some(m) = &o.monitoring {
        // conf.d replaces top-level keys: the image's listener again, and
        // the metrics listener on the monitoring address alone.
        let (_, port, _) = METRICS[0];
        s.push_str(&format!(
            "enable_metrics: true\nlisteners:\n  - port: 8008\n    tls: false\n    type: http\n    x_forwarded: true\n    bind_addresses: [\"127.0.0.1\", \"::1\"]\n    resources:\n      - names: [client, federation]\n        compress: false\n  - port: {port}\n    type: metrics\n    bind_addresses: [{}]\n",
            q(&m.address.addr.to_string())
        ));
    }
    if !o.federation_ip_allow.is_empty() {
        s.push_str("ip_range_whitelist:\n");
        for n in &o.federation_ip_allow {
            s.push_str(&format!("  - {}\n", q(&n.to_string())));
        }
    }
    s
}

const SECURITY_HEADERS: &str = "        add_header X-Frame-Options SAMEORIGIN always;\n        add_header X-Content-Type-Options nosniff always;\n        add_header Content-Security-Policy \"frame-ancestors 'self'\" always;\n";

fn listen(o: &Overlay) -> String {
    let (chain, key) = match o.tls {
        Tls::External => return "    listen 80;\n    listen [::]:80;\n".to_string(),
        Tls::Acme => (
            format!("/etc/letsencrypt/live/{ACME_CERT_NAME}/fullchain.pem"),
            format!("/etc/letsencrypt/live/{ACME_CERT_NAME}/privkey.pem"),
        ),
        Tls::Files => (TLS_CHAIN.to_string(), format!("{SECRETS_DIR}/tls.key")),
    };
    format!(
        "    listen 443 ssl;\n    listen [::]:443 ssl;\n    ssl_certificate {chain};\n    ssl_certificate_key {key};\n"
    )
}

/// Port 80 of the three names while TLS is on the VM: ACME challenges
/// from the webroot, everything else `last` (a redirect to https, or the
/// "not configured yet" answer while certbot has no certificate).
fn port80(o: &Overlay, last: &str) -> String {
    let names: Vec<&str> = o.names().iter().map(|n| n.as_str()).collect();
    format!(
        "server {{\n    listen 80;\n    listen [::]:80;\n    server_name {};\n    location /.well-known/acme-challenge/ {{\n        root {ACME_WEBROOT};\n    }}\n    location / {{\n{last}    }}\n}}\n",
        names.join(" ")
    )
}

/// The proxy to Synapse inside a `location` block.
fn synapse_proxy(o: &Overlay) -> String {
    format!(
        "        proxy_pass http://127.0.0.1:8008;\n        proxy_set_header X-Forwarded-For $remote_addr;\n        proxy_set_header X-Forwarded-Proto https;\n        proxy_set_header Host $host;\n        proxy_http_version 1.1;\n        # A join or a room creation can take minutes on a slow host\n        # (nginx gives up after 60 s by default: HTTP 504).\n        proxy_read_timeout 300s;\n        client_max_body_size {};\n",
        o.max_upload.text()
    )
}

/// The Synapse Admin UI on its own name, with the client API its login
/// needs and, where `admin_api` says so, the admin API: only here, never
/// on the public homeserver name.
fn nginx_admin_ui(o: &Overlay, name: &DomainName) -> String {
    let admin = if o.admin_api_on_ui() {
        format!(
            "    location /_synapse/admin {{\n{}    }}\n",
            synapse_proxy(o)
        )
    } else {
        "    location /_synapse/admin {\n        return 403;\n    }\n".to_string()
    };
    format!(
        "\n# The Synapse Admin UI on its own domain.\nserver {{\n{}    server_name {name};\n    root /var/www/synapse-admin;\n    index index.html;\n    location / {{\n{SECURITY_HEADERS}    }}\n    location = /config.json {{\n        alias {ADMIN_UI_CONFIG};\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n    location ~ ^(/_matrix|/_synapse/client) {{\n{}    }}\n{admin}}}\n",
        listen(o),
        synapse_proxy(o)
    )
}

/// What serves metrics on the monitoring address alone: the exporters'
/// listen addresses (Debian's /etc/default files, read by their units,
/// which start only where /etc/mimg/monitoring.json exists), and the
/// values the first-boot script reads.
fn monitoring_files(m: &Monitoring) -> Vec<VmFile> {
    let a = m.address.addr;
    let port = |job: &str| {
        METRICS
            .iter()
            .find(|(j, _, _)| *j == job)
            .map(|(_, p, _)| *p)
            .expect("a known job")
    };
    let plain = |path: &str, content: String| VmFile {
        path: path.into(),
        mode: 0o644,
        content,
        secret: false,
    };
    vec![
        plain(
            "/etc/mimg/monitoring.json",
            serde_json::to_string_pretty(&json!({
                "address": a.to_string(),
                "metrics": METRICS.iter().map(|(job, port, path)| json!({"job": job, "port": port, "path": path})).collect::<Vec<_>>(),
            }))
            .expect("json")
                + "\n",
        ),
        plain(
            "/etc/default/prometheus-node-exporter",
            format!(
                "# Written by mimg seed: the monitoring LAN only.\nARGS=\"--web.listen-address=[{a}]:{}\"\n",
                port("node")
            ),
        ),
        plain(
            "/etc/default/prometheus-postgres-exporter",
            format!(
                "# Written by mimg seed: the monitoring LAN only; PostgreSQL through its\n# socket as the role prometheus (made by the first-boot script, pg_monitor).\nDATA_SOURCE_NAME='host=/run/postgresql user=prometheus dbname=postgres sslmode=disable'\nARGS=\"--web.listen-address=[{a}]:{}\"\n",
                port("postgres")
            ),
        ),
    ]
}

/// The admin UI's `config.json`: restricted to this customer's
/// homeserver, reached through the UI's own name.
fn admin_ui_config(name: &DomainName) -> String {
    serde_json::to_string_pretty(&json!({ "restrictBaseUrl": format!("https://{name}") }))
        .expect("json")
        + "\n"
}

/// `tls = "acme"` before certbot has the certificate: port 80 only.
fn nginx_acme_pending(o: &Overlay) -> String {
    format!(
        "# Written by mimg seed for customer {}: until certbot has the\n# certificate (mimg-acme installs the TLS sites then).\n{}",
        o.customer,
        port80(
            o,
            "        default_type text/plain;\n        return 503 \"mimg: this server is not configured yet (waiting for its certificate)\\n\";\n"
        )
    )
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
    if o.tls != Tls::External {
        s.push_str("\n# ACME challenges and a redirect to https for all three names.\n");
        s.push_str(&port80(
            o,
            "        return 301 https://$host$request_uri;\n",
        ));
    }
    s.push_str(&format!(
        "\n# The homeserver: Synapse behind nginx.\nserver {{\n{}    server_name {hs};\n    location ~ ^(/_matrix|/_synapse/client) {{\n{}    }}\n    location = /health {{\n        proxy_pass http://127.0.0.1:8008;\n    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
        listen(o),
        synapse_proxy(o)
    ));
    // JSON bodies go inside single quotes: they hold no `'` (values are
    // domain names) and nginx needs no further escaping there.
    s.push_str(&format!(
        "\n# The Matrix domain: delegation through /.well-known.\nserver {{\n{}    server_name {sn};\n    location = /.well-known/matrix/server {{\n        default_type application/json;\n        add_header Access-Control-Allow-Origin * always;\n        return 200 '{server_json}';\n    }}\n    location = /.well-known/matrix/client {{\n        default_type application/json;\n        add_header Access-Control-Allow-Origin * always;\n        return 200 '{client_json}';\n    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
        listen(o)
    ));
    if let Some(name) = &o.admin_ui {
        s.push_str(&nginx_admin_ui(o, name));
    }
    if let Some(addr) = o.admin_api_on_monitoring() {
        s.push_str(&format!(
            "\n# The admin API on the monitoring LAN (admin_api = \"monitoring\"), nowhere else.\nserver {{\n    listen [{addr}]:{ADMIN_API_PORT};\n    server_name _;\n    location /_synapse/admin {{\n{}    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
            synapse_proxy(o)
        ));
    }
    s.push_str(&format!(
        "\n# The web client on its own domain.\nserver {{\n{}    server_name {wc};\n    root /var/www/element;\n    index index.html;\n    location / {{\n{SECURITY_HEADERS}    }}\n    location = /config.json {{\n        alias /etc/element-web/config.json;\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n    location = /index.html {{\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n    location /i18n/ {{\n        add_header Cache-Control \"no-cache\" always;\n{SECURITY_HEADERS}    }}\n}}\n",
        listen(o)
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
        "# Written by mimg seed for customer {c}.\n# The Matrix side logs in as @matterbridge:{sn}: the first-boot script\n# registers that user and writes this file, with its password after Login,\n# to /etc/matterbridge/matterbridge.toml (0640, group matterbridge).\n[mattermost.{team}]\nServer = {server}\nTeam = {team_q}\nToken = {token}\nRemoteNickFormat = \"[{{PROTOCOL}}] <{{NICK}}> \"\n\n[matrix.{c}]\nServer = \"http://127.0.0.1:8008\"\nLogin = \"matterbridge\"\nRemoteNickFormat = \"[{{PROTOCOL}}] <{{NICK}}> \"\n",
        c = o.customer,
        sn = o.server_name,
        team = m.team,
        server = q(&format!("{host}:443")),
        team_q = q(m.team.as_str()),
        token = q(m.token.expose()),
    )
}

/// One static ethernet entry: matched by MAC (renamed) or by name.
fn ethernet(s: &mut String, interface: &Ident, mac: Option<&String>, address: &Ipv6Net) {
    s.push_str(&format!("  {interface}:\n"));
    if let Some(mac) = mac {
        s.push_str(&format!(
            "    match:\n      macaddress: {}\n    set-name: {interface}\n",
            q(mac)
        ));
    }
    s.push_str("    dhcp4: false\n    dhcp6: false\n    accept-ra: false\n");
    s.push_str(&format!(
        "    addresses:\n      - {}\n",
        q(&address.to_string())
    ));
}

fn network_config(n: &Network, mon: Option<&Monitoring>) -> String {
    let mut s =
        String::from("# Written by mimg seed: IPv6 only, static.\nversion: 2\nethernets:\n");
    ethernet(&mut s, &n.interface, n.mac.as_ref(), &n.address);
    // `gateway6`, not a `routes` entry: the image's ifupdown gets it as the
    // interface's `gateway` (set with `ip`), while cloud-init renders a
    // route as `post-up route add ... || true`, and the image has no
    // net-tools `route`: the default route silently never came, and only
    // the on-link network was reachable.
    s.push_str(&format!("    gateway6: {}\n", q(&n.gateway.to_string())));
    if !n.dns.is_empty() {
        s.push_str("    nameservers:\n      addresses:\n");
        for d in &n.dns {
            s.push_str(&format!("        - {}\n", q(&d.to_string())));
        }
    }
    if let Some(m) = mon {
        // The monitoring LAN: its address only, no gateway, no DNS.
        ethernet(&mut s, &m.interface, m.mac.as_ref(), &m.address);
    }
    s
}

fn user_data(customer: &Customer, ssh: &[SshKey], files: &[VmFile]) -> String {
    let mut s = format!(
        "#cloud-config\n# Written by mimg seed for customer {customer}. Re-run `mimg seed` to change it.\n"
    );
    s.push_str("ssh_pwauth: false\ndisable_root: true\n");
    s.push_str("users:\n  - default\n");
    if !ssh.is_empty() {
        s.push_str("ssh_authorized_keys:\n");
        for k in ssh {
            s.push_str(&format!("  - {}\n", q(k.as_str())));
        }
    }
    s.push_str("write_files:\n");
    for f in files {
        s.push_str(&format!(
            "  - path: {}\n    owner: \"root:root\"\n    permissions: {}\n",
            q(&f.path),
            q(&format!("0{:o}", f.mode))
        ));
        if f.secret {
            // Byte for byte: a YAML block would eat a leading space, and a
            // secret may hold any printable character.
            use base64::Engine;
            s.push_str(&format!(
                "    encoding: b64\n    content: {}\n",
                base64::engine::general_purpose::STANDARD.encode(f.content.as_bytes())
            ));
            continue;
        }
        s.push_str("    content: |\n");
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
    // `--wait`: the final stage waits for the unit's run (so `cloud-init
    // status --wait` returns after it) and repeats none of it.
    s.push_str(&format!(
        "runcmd:\n  - [{}, {}]\n",
        q(FIRSTBOOT),
        q("--wait")
    ));
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
