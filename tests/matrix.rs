//! The Matrix images: maas-homeserver (with a stand-in web client served
//! from a local HTTP server) builds bit-identically into two fresh stores,
//! holds what it should and nothing secret; the turn image holds coturn;
//! Synapse and nginx accept configuration rendered from an overlay.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn lock(recipe: &Path, store: &Path) {
    let mut c = mimg();
    c.arg("lock").arg(recipe).env("MIMG_STORE", store);
    assert!(run(c).status.success(), "mimg lock failed");
}

/// The image's tree: the rootfs and layer tars of its manifest, unpacked.
fn image_root(store: &Path, manifest: &Path, into: &Path) {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    for s in m["steps"].as_array().unwrap() {
        let dir = store.join("v1/steps").join(s["key"].as_str().unwrap());
        for f in ["rootfs.tar", "layer.tar"] {
            if dir.join(f).exists() {
                assert!(
                    Command::new("tar")
                        .arg("-xf")
                        .arg(dir.join(f))
                        .arg("-C")
                        .arg(into)
                        .status()
                        .unwrap()
                        .success()
                );
            }
        }
    }
}

/// Run a command inside an unpacked image root (as root, no network).
fn inside(root: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new("bwrap")
        .arg("--bind")
        .arg(root)
        .arg("/")
        .args([
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/run",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--",
        ])
        .args(args)
        .output()
        .unwrap();
    eprintln!("inside {args:?}: {}{}", stdout(&o), stderr(&o));
    o
}

fn files_matching(root: &Path, pred: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_matching(&e.path(), pred, out);
        } else if pred(&e.path()) {
            out.push(e.path());
        }
    }
}

#[test]
fn maas_homeserver_is_reproducible_and_holds_what_it_should() {
    let w = work("matrix");
    let (srv, sha) = standin(&w);
    let recipe = test_recipe(&w, "maas-homeserver", srv.port, &sha);
    let store_a = w.join("store-a");
    let store_b = w.join("store-b");
    lock(&recipe, &store_a);
    let o = build(recipe.to_str().unwrap(), &store_a, &w.join("out-a"));
    assert!(stdout(&o).contains("reused 0"));
    let o = build(recipe.to_str().unwrap(), &store_b, &w.join("out-b"));
    assert!(stdout(&o).contains("reused 0"));
    let a = sha256(&w.join("out-a/maas-homeserver-test.qcow2"));
    assert_eq!(
        a,
        sha256(&w.join("out-b/maas-homeserver-test.qcow2")),
        "two fresh stores differ"
    );
    let o = Command::new("qemu-img")
        .arg("check")
        .arg(w.join("out-a/maas-homeserver-test.qcow2"))
        .output()
        .unwrap();
    assert!(o.status.success());

    let root = w.join("root");
    std::fs::create_dir_all(&root).unwrap();
    image_root(
        &store_a,
        &w.join("out-a/maas-homeserver-test.manifest.json"),
        &root,
    );
    // What the image holds.
    assert_eq!(
        std::fs::read_to_string(root.join("var/www/element/index.html")).unwrap(),
        "<html>stand-in web client</html>\n"
    );
    assert!(root.join("usr/sbin/nginx").exists());
    assert!(root.join("usr/local/sbin/mimg-firstboot").exists());
    // systemd ignores a unit in a .wants directory that is not a symlink.
    for unit in ["mimg-firstboot.service", "mimg-boot-report.service"] {
        let w = root
            .join("etc/systemd/system/multi-user.target.wants")
            .join(unit);
        assert!(
            std::fs::symlink_metadata(&w).is_ok_and(|m| m.file_type().is_symlink()),
            "{} is not a symlink: systemd would not start it",
            w.display()
        );
    }
    let pg: Vec<_> = std::fs::read_dir(root.join("usr/lib/postgresql"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        pg.iter().any(|v| v.path().join("bin/postgres").exists()),
        "PostgreSQL binaries"
    );
    // Bytecode made at build time (recipes/layers/bytecode.toml), in PEP
    // 552's checked-hash mode (flags 0b11), for the venv and the stdlib;
    // the two stores above agree on its bytes.
    let pycs = [
        "opt/venvs/matrix-synapse/lib/python3.13/site-packages/synapse/__pycache__/__init__.cpython-313.pyc",
        "usr/lib/python3.13/__pycache__/os.cpython-313.pyc",
    ];
    let before: Vec<Vec<u8>> = pycs
        .iter()
        .map(|p| std::fs::read(root.join(p)).unwrap_or_else(|_| panic!("no bytecode {p}")))
        .collect();
    for (p, b) in pycs.iter().zip(&before) {
        assert_eq!(b[4] & 3, 3, "{p} is not checked-hash bytecode");
    }
    let o = inside(
        &root,
        &[
            "/opt/venvs/matrix-synapse/bin/python",
            "-c",
            "import synapse, psycopg2; print(synapse.__version__)",
        ],
    );
    assert!(
        o.status.success() && stdout(&o).starts_with("1."),
        "Synapse imports in its venv"
    );
    for (p, b) in pycs.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(root.join(p)).unwrap(),
            b,
            "importing compiled {p} again: its bytecode did not match its source"
        );
    }
    // What it must not hold: a cluster, host keys, generated keys.
    for d in ["var/lib/postgresql", "etc/postgresql"] {
        let mut found = Vec::new();
        files_matching(&root.join(d), &|_| true, &mut found);
        assert!(
            found.is_empty(),
            "no PostgreSQL cluster at build time: {found:?}"
        );
    }
    template_cluster(&root, &pg[0].file_name().to_string_lossy());
    let mut keys = Vec::new();
    files_matching(
        &root,
        &|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("ssh_host_")
                || n == "ssl-cert-snakeoil.key"
                || n.ends_with(".signing.key")
        },
        &mut keys,
    );
    assert!(keys.is_empty(), "private keys in the image: {keys:?}");
    let mut pem = Vec::new();
    for d in ["etc", "var", "root", "srv"] {
        files_matching(
            &root.join(d),
            &|p| std::fs::read(p).is_ok_and(|b| b.windows(11).any(|w| w == b"PRIVATE KEY")),
            &mut pem,
        );
    }
    assert!(
        pem.is_empty(),
        "private keys under /etc, /var, /root, /srv: {pem:?}"
    );
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap().len(), 0);

    // Configuration rendered from the example overlay passes Synapse's and nginx's own checks.
    let seed = w.join("seed.img");
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(&seed);
    assert!(run(c).status.success());
    let ud = w.join("user-data");
    assert!(
        Command::new("mcopy")
            .arg("-i")
            .arg(&seed)
            .arg("::user-data")
            .arg(&ud)
            .status()
            .unwrap()
            .success()
    );
    let text = std::fs::read_to_string(&ud).unwrap();
    for (path, body) in write_files(&text) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::create_dir_all(root.join("var/lib/matrix-synapse")).unwrap();
    for s in [
        "registration_shared_secret",
        "macaroon_secret_key",
        "form_secret",
    ] {
        std::fs::write(
            root.join("var/lib/matrix-synapse").join(s),
            "test-only-secret\n",
        )
        .unwrap();
    }
    let o = inside(
        &root,
        &[
            "/opt/venvs/matrix-synapse/bin/generate_signing_key",
            "-o",
            "/var/lib/matrix-synapse/homeserver.signing.key",
        ],
    );
    assert!(o.status.success());
    let check = [
        "/opt/venvs/matrix-synapse/bin/python",
        "-m",
        "synapse.config",
        "read",
        "server_name",
        "-c",
        "/etc/matrix-synapse/homeserver.yaml",
        "-c",
        "/etc/matrix-synapse/conf.d/",
    ];
    let o = inside(&root, &check);
    assert!(
        stdout(&o).contains("Config parses OK"),
        "Synapse refused the rendered config"
    );
    // The example's TURN secret (it begins with a space and holds quotes,
    // `$`, `/`, `&`, `+`, `=`, `#`) is the one Synapse reads, byte for byte.
    let mut read = check.to_vec();
    read[4] = "voip.turn_shared_secret";
    let o = inside(&root, &read);
    let secret =
        std::fs::read_to_string(repo().join("overlays/example-secrets/turn.secret")).unwrap();
    let said = stdout(&o);
    let got = said
        .lines()
        .find_map(|l| l.strip_prefix("voip.turn_shared_secret: "))
        .unwrap_or_else(|| panic!("Synapse did not say its TURN secret: {said}"));
    assert_eq!(
        got,
        secret.strip_suffix('\n').unwrap(),
        "Synapse's TURN secret is the overlay's"
    );
    // The check can fail: a bad value is refused by Synapse.
    let conf = root.join("etc/matrix-synapse/conf.d/50-mimg.yaml");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        good.replace("max_upload_size: \"50M\"", "max_upload_size: \"fifty\""),
    )
    .unwrap();
    assert!(!stdout(&inside(&root, &check)).contains("Config parses OK"));
    std::fs::write(&conf, good).unwrap();
    // nginx takes the sites from /run once first boot is done (sites.py
    // ready copies them there): the same here, and nginx read them.
    let o = inside(
        &root,
        &[
            "sh",
            "-c",
            "mkdir -p /run/mimg/nginx && cp /etc/mimg/nginx/mimg-matrix.conf /run/mimg/nginx/ && nginx -T",
        ],
    );
    assert!(o.status.success(), "nginx -t refused the rendered sites");
    assert!(
        stdout(&o).contains("# configuration file /run/mimg/nginx/mimg-matrix.conf:")
            && stdout(&o).contains("server_name matrix.example.org;"),
        "nginx did not read the sites"
    );

    // The first-boot script with the seed's overlay: a data disk that never
    // comes, or one holding anything but its ext4, stops it before anything
    // is written or started, and the disk is left as it was.
    let disk = repo().join("overlays/example.toml");
    let disk = std::fs::read_to_string(disk).unwrap();
    let disk = disk
        .lines()
        .find_map(|l| l.strip_prefix("device = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the example names its data disk")
        .to_string();
    let o = firstboot(&root, &disk, None);
    assert!(!o.status.success(), "a missing data disk is an error");
    assert!(
        stdout(&o).contains(&format!(
            "the data disk {disk} did not appear within 2 s: services stay stopped"
        )),
        "{}",
        stdout(&o)
    );
    for what in ["swap", "a GPT partition table"] {
        let f = w.join("foreign.img");
        std::fs::write(&f, vec![0u8; 64 << 20]).unwrap();
        if what == "swap" {
            assert!(
                Command::new("mkswap")
                    .arg("-q")
                    .arg(&f)
                    .status()
                    .unwrap()
                    .success()
            );
        } else {
            let mut ch = Command::new("sfdisk")
                .arg("-q")
                .arg(&f)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(b"label: gpt\n").unwrap();
            assert!(ch.wait().unwrap().success());
        }
        let before = sha256(&f);
        let o = firstboot(&root, &disk, Some(&f));
        assert!(!o.status.success(), "{what}: the script went on");
        assert!(
            stdout(&o).contains("left untouched and services stay stopped"),
            "{what}: {}",
            stdout(&o)
        );
        assert_eq!(sha256(&f), before, "{what}: the data disk was changed");
        std::fs::remove_file(&f).unwrap();
    }
    let mut made = Vec::new();
    files_matching(&root.join("var/lib/postgresql"), &|_| true, &mut made);
    assert!(
        made.is_empty(),
        "a cluster on the root filesystem: {made:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The image's template cluster (recipes/layers/postgresql.toml) has no
/// identity of its own: system identifier, mock-authentication nonce and
/// clocks zero, no WAL. Two copies made ready as the first-boot script
/// does (`pg-identity new`, pg_resetwal) get two identifiers, and start
/// with the role and the database the first-boot script expects.
fn template_cluster(root: &Path, version: &str) {
    let tpl = root.join("usr/lib/mimg/postgresql-template");
    let data = tpl.join(format!("data/{version}/main"));
    let control = std::fs::read(data.join("global/pg_control")).unwrap();
    assert_eq!(
        &control[..8],
        &[0u8; 8],
        "the template has a system identifier"
    );
    assert_eq!(
        u64::from_le_bytes(control[24..32].try_into().unwrap()),
        0,
        "the template's pg_control holds a time"
    );
    let mut wal = Vec::new();
    files_matching(&data.join("pg_wal"), &|_| true, &mut wal);
    assert!(wal.is_empty(), "the template holds WAL: {wal:?}");
    let script = format!(
        r#"cp -a {t}/data/{v}/main /tmp/c
runuser -u postgres -- python3 {t}/pg-identity.py new /tmp/c
runuser -u postgres -- /usr/lib/postgresql/{v}/bin/pg_resetwal -D /tmp/c >/dev/null
runuser -u postgres -- /usr/lib/postgresql/{v}/bin/pg_controldata /tmp/c | sed -n 's/^Database system identifier: *//p'
touch /tmp/c/postgresql.conf
printf '%s
' "SELECT rolname FROM pg_roles WHERE rolname = 'matrix-synapse';"     "SELECT datname, datcollate FROM pg_database WHERE datname = 'synapse';" |
    runuser -u postgres -- /usr/lib/postgresql/{v}/bin/postgres --single -D /tmp/c     -c dynamic_shared_memory_type=sysv postgres
# A second run is refused: a live cluster keeps its identifier.
! runuser -u postgres -- python3 {t}/pg-identity.py new /tmp/c
"#,
        t = "/usr/lib/mimg/postgresql-template",
        v = version
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let o = inside(root, &["sh", "-ec", &script]);
        assert!(o.status.success(), "a copy of the template did not start");
        let out = stdout(&o);
        let id = out.lines().next().unwrap_or("").trim().to_string();
        assert!(
            !id.is_empty() && id != "0",
            "the copy has no identifier: {out}"
        );
        assert!(
            out.contains(r#"rolname = "matrix-synapse""#)
                && out.contains(r#"datname = "synapse""#)
                && out.contains(r#"datcollate = "C""#),
            "the role or the database is missing: {out}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two copies got one system identifier");
}

/// `mimg-firstboot` in the image root (as root, no network, waiting 2 s for
/// its data disk), with `disk`, when given, attached as `device` through a
/// loop device.
fn firstboot(root: &Path, device: &str, disk: Option<&Path>) -> std::process::Output {
    let lo = disk.map(|d| {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        stdout(&o).trim().to_string()
    });
    let mut c = Command::new("bwrap");
    c.arg("--bind").arg(root).arg("/").args([
        "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run",
    ]);
    if let Some(l) = &lo {
        c.args(["--dev-bind", l, device]);
    }
    c.args([
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--setenv",
        "MIMG_DATA_DISK_WAIT",
        "2",
        "--",
        "/usr/local/sbin/mimg-firstboot",
    ]);
    let o = c.output().unwrap();
    if let Some(l) = &lo {
        let _ = Command::new("losetup").args(["-d", l]).status();
    }
    eprintln!(
        "mimg-firstboot ({device}: {disk:?}): {}{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// `write_files` of a user-data, parsed from what `mimg seed` writes
/// (block literals, and base64 for secret files).
fn write_files(user_data: &str) -> Vec<(String, String)> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut path = None;
    let mut body = String::new();
    let mut in_content = false;
    for line in user_data.lines() {
        if let Some(p) = line.strip_prefix("  - path: ") {
            if let Some(prev) = path.take() {
                out.push((prev, std::mem::take(&mut body)));
            }
            path = Some(serde_json::from_str::<String>(p).unwrap());
            in_content = false;
        } else if line.starts_with("    content: |") {
            in_content = true;
        } else if let Some(b64) = line.strip_prefix("    content: ") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            body = String::from_utf8(bytes).unwrap();
            in_content = false;
        } else if in_content && (line.starts_with("      ") || line.is_empty()) {
            body.push_str(line.strip_prefix("      ").unwrap_or(""));
            body.push('\n');
        } else if !line.starts_with("    ") {
            in_content = false;
        }
    }
    if let Some(prev) = path {
        out.push((prev, body));
    }
    out
}

#[test]
fn the_turn_image_holds_coturn_and_its_config_template() {
    let w = work("turn");
    let store = w.join("store");
    let mut c = mimg();
    c.args(["build", "turn", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", &store);
    assert!(run(c).status.success());
    let root = w.join("root");
    std::fs::create_dir_all(&root).unwrap();
    image_root(&store, &w.join("out/turn.manifest.json"), &root);
    assert!(root.join("usr/bin/turnserver").exists());
    let t = std::fs::read_to_string(root.join("etc/mimg/turnserver.conf.in")).unwrap();
    for want in [
        "use-auth-secret",
        "no-tcp-relay",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        assert!(t.contains(want), "{want}");
    }
    // The first-boot helper writes coturn's config from a TURN server
    // seed's values, each secret as it is: in quotes, which coturn strips
    // (one leading, one trailing) and takes what is between literally; no
    // sed, no shell word. Two secrets: coturn accepts both (rotation).
    let secret = " a/b&c+d=e \"q\" $HOME #x\\y ";
    let older = "older secret: 'still' valid";
    std::fs::write(
        root.join("etc/mimg/test-turn.secret"),
        format!("{secret}\n"),
    )
    .unwrap();
    std::fs::write(root.join("etc/mimg/test-turn-2.secret"), older).unwrap();
    std::fs::write(
        root.join("etc/mimg/test-overlay.json"),
        r#"{"kind": "turn", "realm": "turn.example.net", "address": "2001:db8:20::10",
            "min_port": 50000, "max_port": 50999, "tls": "none",
            "turn_secret_files": ["/etc/mimg/test-turn.secret", "/etc/mimg/test-turn-2.secret"]}"#,
    )
    .unwrap();
    let o = inside(
        &root,
        &[
            "python3",
            "/usr/local/lib/mimg/secrets.py",
            "turnserver",
            "/etc/mimg/turnserver.conf.in",
            "/etc/mimg/test-turnserver.conf",
            "/etc/mimg/test-overlay.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let conf = std::fs::read_to_string(root.join("etc/mimg/test-turnserver.conf")).unwrap();
    for line in [
        "realm=turn.example.net".to_string(),
        "min-port=50000".to_string(),
        "max-port=50999".to_string(),
        "relay-ip=2001:db8:20::10".to_string(),
        format!("static-auth-secret=\"{secret}\""),
        format!("static-auth-secret=\"{older}\""),
    ] {
        assert!(conf.lines().any(|l| l == line), "{line}: {conf}");
    }
    assert!(
        !conf.lines().any(|l| l.starts_with('@')),
        "a placeholder is left: {conf}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.join("etc/mimg/test-turnserver.conf")).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o640,
        "secrets inside: not world-readable"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn every_shipped_recipe_parses_and_plans_offline() {
    // ungleich-prod-buster cannot be fetched here: its plan is made from its lock-free
    // parse; the others plan from their committed locks without the network.
    for r in [
        "minimal",
        "maas-homeserver",
        "ungleich-prod",
        "ungleich-staging",
        "turn",
    ] {
        let mut c = mimg();
        c.args(["plan", r, "--offline"])
            .env("MIMG_STORE", work("plan-store"));
        let o = run(c);
        assert!(o.status.success(), "{r}");
        assert!(stdout(&o).contains("image"), "{r}");
    }
    let mut c = mimg();
    c.args(["plan", "ungleich-prod-buster"])
        .env("MIMG_STORE", work("plan-store"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("buster"),
        "says which suite it could not find: {}",
        stderr(&o)
    );
}
