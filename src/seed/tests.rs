//! Golden files for `overlays/example.toml`, and the seed's stability.

use std::path::Path;

use super::*;

fn example() -> Overlay {
    crate::overlay::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/example.toml"))
        .unwrap()
}

#[test]
fn golden_user_data() {
    insta::assert_snapshot!(render(&example()).user_data);
}

#[test]
fn golden_network_config() {
    insta::assert_snapshot!(render(&example()).network_config);
}

#[test]
fn golden_meta_data() {
    insta::assert_snapshot!(render(&example()).meta_data);
}

#[test]
fn golden_nginx_and_synapse() {
    let r = render(&example());
    let get = |p: &str| {
        r.files
            .iter()
            .find(|f| f.path == p)
            .unwrap()
            .content
            .clone()
    };
    insta::assert_snapshot!("nginx", get("/etc/mimg/nginx/mimg-matrix.conf"));
    // nginx itself includes only what the first-boot script installs in
    // /run when it is done: nothing of the customer's is served before.
    let active = get("/etc/nginx/conf.d/mimg-matrix.conf");
    let lines: Vec<&str> = active.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, ["include /run/mimg/nginx/*.conf;"]);
    insta::assert_snapshot!("synapse", get("/etc/matrix-synapse/conf.d/50-mimg.yaml"));
    insta::assert_snapshot!("element", get("/etc/element-web/config.json"));
}

#[test]
fn secrets_are_0600_and_only_in_secret_files() {
    let o = example();
    let r = render(&o);
    let turn = o.turn.as_ref().unwrap().secret.expose().to_string();
    for f in &r.files {
        if f.content.contains(&turn) {
            assert!(
                f.secret && f.mode == 0o600,
                "{} holds the TURN secret",
                f.path
            );
        }
    }
    assert!(!r.meta_data.contains(&turn) && !r.network_config.contains(&turn));
}

#[test]
fn same_overlay_same_seed_bytes_and_changes_change_the_instance_id() {
    let o = example();
    let a = render(&o);
    let b = render(&o);
    assert!(image(&a, volume_id(&a)).unwrap() == image(&b, volume_id(&b)).unwrap());
    let mut o2 = o.clone();
    o2.max_upload = "10M".parse().unwrap();
    assert_ne!(render(&o2).meta_data, a.meta_data);
}

#[test]
fn the_seed_is_a_cidata_fat_volume() {
    let r = render(&example());
    let img = image(&r, volume_id(&r)).unwrap();
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(img), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label(), "CIDATA");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut fs.root_dir().open_file("user-data").unwrap(), &mut s)
        .unwrap();
    assert!(s.starts_with("#cloud-config\n"));
    assert!(
        fs.root_dir().open_file("meta-data").is_ok()
            && fs.root_dir().open_file("network-config").is_ok()
    );
}

#[test]
fn awkward_secrets_are_carried_byte_for_byte() {
    use base64::Engine;
    let awkward = [
        " lead and trail ",
        "q\"uo'te $HOME `x` \\n/&+=#;{}",
        "ünï côdé päss wörd",
    ];
    for s in awkward {
        let mut o = example();
        let secret = crate::overlay::Secret::parse(&format!("{s}\n")).unwrap();
        o.turn.as_mut().unwrap().secret = secret.clone();
        o.admins[0].password = secret;
        let r = render(&o);
        // In the user-data, each secret file is base64 of its exact bytes.
        let mut blocks = r.user_data.split("  - path: ").skip(1);
        let mut seen = 0;
        for f in r.files.iter().filter(|f| f.secret) {
            let block = blocks
                .find(|b| b.starts_with(&q(&f.path)))
                .expect("every file is written");
            let b64 = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("content: "))
                .unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(bytes, f.content.as_bytes(), "{}", f.path);
            seen += 1;
        }
        assert!(
            seen >= 3,
            "turn secret, Synapse's secrets file, admin password"
        );
        let file = |p: &str| {
            r.files
                .iter()
                .find(|f| f.path == p)
                .unwrap()
                .content
                .clone()
        };
        assert_eq!(file("/etc/mimg/secrets/turn.secret"), format!("{s}\n"));
        assert_eq!(
            file("/etc/mimg/secrets/admin-admin.password"),
            format!("{s}\n")
        );
        // Synapse's YAML: a double-quoted (JSON) string holding the secret.
        let yaml = file("/etc/matrix-synapse/conf.d/60-mimg-secrets.yaml");
        let line = yaml
            .lines()
            .find_map(|l| l.strip_prefix("turn_shared_secret: "))
            .unwrap();
        assert_eq!(serde_json::from_str::<String>(line).unwrap(), s);
    }
}

/// The example overlay with other TLS and federation values.
fn example_with(extra: &str, files: &[(&str, String)]) -> Overlay {
    let d = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays");
    let text = std::fs::read_to_string(dir.join("example.toml"))
        .unwrap()
        .replace("tls = \"external\"", extra)
        .replace(
            "example-secrets/",
            &format!("{}/example-secrets/", dir.display()),
        );
    for (name, body) in files {
        std::fs::write(d.path().join(name), body).unwrap();
    }
    crate::overlay::parse(&d.path().join("o.toml"), &text).unwrap()
}

fn file<'a>(r: &'a Rendered, path: &str) -> &'a VmFile {
    r.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path} in the seed"))
}

#[test]
fn acme_waits_on_port_80_until_the_certificate_and_then_serves_443() {
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["acme.test.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let o = example_with(
        "tls = \"acme\"\nacme_directory = \"https://acme.test.example:14000/dir\"\nacme_ca_file = \"ca.pem\"\nfederation_ca_file = \"ca.pem\"\ntrusted_key_servers = []\nfederation = [\"example.net\"]\nfederation_ip_allow = [\"2001:db8::/32\"]",
        &[("ca.pem", ca.clone())],
    );
    let r = render(&o);
    let pending = &file(&r, "/etc/mimg/nginx/mimg-matrix-pending.conf").content;
    assert!(pending.contains("acme-challenge") && pending.contains("return 503"));
    assert!(
        !pending.contains("443") && !pending.contains("return 301"),
        "no redirect to nothing: {pending}"
    );
    let tls = &file(&r, "/etc/mimg/nginx/mimg-matrix.conf").content;
    assert!(
        tls.contains("listen [::]:443 ssl;")
            && tls.contains("/etc/letsencrypt/live/mimg/fullchain.pem")
    );
    assert!(tls.contains("return 301 https://$host$request_uri;"));
    assert_eq!(file(&r, "/etc/mimg/acme-ca.pem").content, ca);
    assert!(
        file(&r, "/etc/systemd/system/certbot.service.d/mimg.conf")
            .content
            .contains("REQUESTS_CA_BUNDLE=/etc/mimg/acme-ca.pem")
    );
    let j: serde_json::Value =
        serde_json::from_str(&file(&r, "/etc/mimg/overlay.json").content).unwrap();
    assert_eq!(
        j["acme"]["directory"],
        "https://acme.test.example:14000/dir"
    );
    assert_eq!(
        j["acme"]["names"],
        json!(["matrix.example.org", "example.org", "chat.example.org"])
    );
    let syn = &file(&r, "/etc/matrix-synapse/conf.d/50-mimg.yaml").content;
    for want in [
        "federation_domain_whitelist:\n  - \"example.net\"\n",
        "federation_custom_ca_list:\n  - \"/etc/mimg/federation-ca/0.pem\"\n",
        "trusted_key_servers: []\n",
        "ip_range_whitelist:\n  - \"2001:db8::/32\"\n",
    ] {
        assert!(syn.contains(want), "{want} in {syn}");
    }
}

#[test]
fn tls_files_carries_the_chain_and_the_key_0600() {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = ["example.org", "matrix.example.org", "chat.example.org"];
    let crt =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
    let o = example_with(
        "tls = \"files\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\nfederation = \"closed\"",
        &[("c.pem", crt.clone()), ("k.pem", key.serialize_pem())],
    );
    let r = render(&o);
    assert_eq!(file(&r, "/etc/mimg/tls/fullchain.pem").content, crt);
    let k = file(&r, "/etc/mimg/secrets/tls.key");
    assert!(k.secret && k.mode == 0o600 && k.content == key.serialize_pem());
    assert!(
        !r.user_data.contains("PRIVATE KEY"),
        "the key travels base64, as a secret"
    );
    let nginx = &file(&r, "/etc/mimg/nginx/mimg-matrix.conf").content;
    assert!(nginx.contains("ssl_certificate_key /etc/mimg/secrets/tls.key;"));
    assert!(nginx.contains("return 301 https://"));
    assert!(
        file(&r, "/etc/matrix-synapse/conf.d/50-mimg.yaml")
            .content
            .contains("federation_domain_whitelist: []\n")
    );
}

fn turn_example() -> TurnServer {
    match crate::overlay::load_any(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/turn-example.toml"),
    )
    .unwrap()
    {
        AnyOverlay::Turn(t) => *t,
        AnyOverlay::Homeserver(_) => panic!("turn-example.toml is a TURN server's"),
    }
}

#[test]
fn golden_turn_user_data() {
    insta::assert_snapshot!(render_turn(&turn_example()).user_data);
}

#[test]
fn a_turn_seed_carries_every_secret_byte_for_byte_and_only_in_private_files() {
    let t = turn_example();
    let r = render_turn(&t);
    let secrets: Vec<&VmFile> = r.files.iter().filter(|f| f.secret).collect();
    assert_eq!(secrets.len(), t.secrets.len());
    for (f, s) in secrets.iter().zip(&t.secrets) {
        assert_eq!(f.mode, 0o600, "{}", f.path);
        assert_eq!(f.content, format!("{}\n", s.expose()), "byte for byte");
        assert!(
            !r.user_data.contains(s.expose()),
            "only base64 in user-data"
        );
    }
    let v: serde_json::Value = serde_json::from_str(
        &r.files
            .iter()
            .find(|f| f.path == "/etc/mimg/overlay.json")
            .unwrap()
            .content,
    )
    .unwrap();
    assert_eq!(v["kind"], "turn");
    assert_eq!(v["realm"], "turn.example.net");
    assert_eq!(v["address"], "2001:db8:20::10");
    assert_eq!(v["turn_secret_files"].as_array().unwrap().len(), 2);
    assert!(
        !serde_json::to_string(&v)
            .unwrap()
            .contains(t.secrets[0].expose())
    );
    assert_eq!(render_turn(&t), r, "same overlay, same seed");
}

/// The nginx `server` block whose `server_name` line names `name`.
fn server_block<'a>(conf: &'a str, name: &str) -> &'a str {
    conf.split("\nserver {")
        .find(|b| {
            b.lines()
                .any(|l| l.trim() == format!("server_name {name};"))
        })
        .unwrap_or_else(|| panic!("no server block for {name} in {conf}"))
}

#[test]
fn the_admin_ui_gets_its_own_name_and_the_admin_api_is_served_only_there() {
    let o = example_with("tls = \"external\"\nadmin_ui = \"admin.example.org\"", &[]);
    let r = render(&o);
    let conf = &file(&r, "/etc/mimg/nginx/mimg-matrix.conf").content;
    let ui = server_block(conf, "admin.example.org");
    assert!(ui.contains("root /var/www/synapse-admin;"), "{ui}");
    assert!(ui.contains("alias /etc/synapse-admin/config.json;"), "{ui}");
    assert!(
        ui.contains("location /_synapse/admin {\n        proxy_pass http://127.0.0.1:8008;"),
        "{ui}"
    );
    for name in ["matrix.example.org", "example.org", "chat.example.org"] {
        assert!(
            !server_block(conf, name).contains("/_synapse/admin"),
            "the admin API is not served on {name}"
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&file(&r, "/etc/synapse-admin/config.json").content).unwrap();
    assert_eq!(j["restrictBaseUrl"], "https://admin.example.org");

    // admin_api = "none": the UI is served, the API nowhere.
    let o = example_with(
        "tls = \"external\"\nadmin_ui = \"admin.example.org\"\nadmin_api = \"none\"",
        &[],
    );
    let conf = file(&render(&o), "/etc/mimg/nginx/mimg-matrix.conf")
        .content
        .clone();
    let ui = server_block(&conf, "admin.example.org");
    assert!(
        ui.contains("location /_synapse/admin {\n        return 403;"),
        "{ui}"
    );

    // With TLS on the VM the certificate covers the UI's name too.
    let o = example_with("tls = \"acme\"\nadmin_ui = \"admin.example.org\"", &[]);
    let r = render(&o);
    let j: serde_json::Value =
        serde_json::from_str(&file(&r, "/etc/mimg/overlay.json").content).unwrap();
    assert!(
        j["acme"]["names"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("admin.example.org"))
    );
    assert!(
        file(&r, "/etc/mimg/nginx/mimg-matrix.conf")
            .content
            .contains("admin.example.org;")
    );
    // Without admin_ui nothing of it is in the seed.
    let r = render(&example());
    assert!(r.files.iter().all(|f| !f.path.contains("synapse-admin")));
}

#[test]
fn monitoring_binds_every_metrics_endpoint_to_the_monitoring_address_alone() {
    let mut o = example();
    o.monitoring = Some(crate::overlay::Monitoring {
        address: "2001:db8:99::20/64".parse().unwrap(),
        interface: "ens4".parse().unwrap(),
        mac: Some("52:54:00:6e:00:01".into()),
    });
    let r = render(&o);
    let syn = &file(&r, "/etc/matrix-synapse/conf.d/50-mimg.yaml").content;
    assert!(
        syn.contains("enable_metrics: true\nlisteners:\n  - port: 8008\n"),
        "{syn}"
    );
    assert!(
        syn.contains(
            "  - port: 9000\n    type: metrics\n    bind_addresses: [\"2001:db8:99::20\"]\n"
        ),
        "{syn}"
    );
    for (f, port) in [
        ("/etc/default/prometheus-node-exporter", 9100),
        ("/etc/default/prometheus-postgres-exporter", 9187),
    ] {
        assert!(
            file(&r, f)
                .content
                .contains(&format!("--web.listen-address=[2001:db8:99::20]:{port}")),
            "{f}"
        );
    }
    assert!(
        r.network_config
            .contains("macaddress: \"52:54:00:6e:00:01\"")
    );
    assert!(r.network_config.contains("\"2001:db8:99::20/64\""));
    // The admin API is not on the monitoring LAN unless admin_api says so;
    // then there alone.
    let sites = |r: &Rendered| file(r, "/etc/mimg/nginx/mimg-matrix.conf").content.clone();
    assert!(!sites(&r).contains("2001:db8:99::20"));
    o.admin_api = crate::overlay::AdminApi::Monitoring;
    let conf = sites(&render(&o));
    let mon = server_block(&conf, "_");
    assert!(mon.contains("listen [2001:db8:99::20]:8008;"), "{mon}");
    assert!(
        mon.contains("location /_synapse/admin {\n        proxy_pass http://127.0.0.1:8008;"),
        "{mon}"
    );
    for name in ["matrix.example.org", "example.org", "chat.example.org"] {
        assert!(!server_block(&conf, name).contains("/_synapse/admin"));
    }
    // Without [monitoring]: no metrics listener, no exporter settings.
    let r = render(&example());
    assert!(r.files.iter().all(|f| !f.path.contains("prometheus")));
    assert!(
        !file(&r, "/etc/matrix-synapse/conf.d/50-mimg.yaml")
            .content
            .contains("metrics")
    );
}

#[test]
fn a_bridge_config_leaves_the_matrix_password_to_first_boot() {
    let d = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays");
    let text = std::fs::read_to_string(dir.join("example.toml"))
        .unwrap()
        .replace(
            "example-secrets/",
            &format!("{}/example-secrets/", dir.display()),
        )
        + "\n[bridge.mattermost]\nurl = \"https://mattermost.example.org\"\nteam = \"ops\"\ntoken_file = \"token\"\n";
    std::fs::write(d.path().join("token"), "tok'en \"$x\n").unwrap();
    let o = crate::overlay::parse(&d.path().join("o.toml"), &text).unwrap();
    let r = render(&o);
    let t = file(&r, "/etc/mimg/matterbridge.toml.in");
    assert!(t.secret && t.mode == 0o600, "it holds the Mattermost token");
    let v: toml::Value = toml::from_str(&t.content).unwrap();
    assert_eq!(
        v["mattermost"]["ops"]["Token"].as_str(),
        Some("tok'en \"$x")
    );
    assert_eq!(
        v["mattermost"]["ops"]["Server"].as_str(),
        Some("mattermost.example.org:443")
    );
    let m = &v["matrix"]["example"];
    assert_eq!(m["Login"].as_str(), Some("matterbridge"));
    assert_eq!(m["Server"].as_str(), Some("http://127.0.0.1:8008"));
    assert!(m.get("Password").is_none(), "first boot adds it: {m}");
    assert!(
        !r.files
            .iter()
            .any(|f| f.path == "/etc/matterbridge/matterbridge.toml"),
        "first boot writes matterbridge's own file"
    );
}
