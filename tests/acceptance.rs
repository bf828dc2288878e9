//! The image pipeline's acceptance tests: `mimg test` on maas-homeserver
//! and maas-homeserver-deb (stand-in web client) with an IPv6-only overlay,
//! two customers federating over TLS on one test network
//! (`mimg test --vm`), the image pipeline script, and the upgrade check:
//! a rebuilt v2 boots from the data disk and seed the pipeline's test left,
//! and the user, the message and the Synapse signing key survive the swap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn store() -> std::path::PathBuf {
    static S: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    S.get_or_init(|| work("acceptance-store")).clone()
}

// maas-homeserver's one-VM `mimg test` runs in the image pipeline test
// (tls = "external", registration closed) and, with TLS on the VM and the
// token and open registration modes, on the test network below.

/// Debian's own Synapse (from sid) over trixie, configured the same way,
/// passes the same checks.
#[test]
fn mimg_test_proves_maas_homeserver_deb_with_an_ipv6_only_overlay() {
    prove("maas-homeserver-deb", "open");
}

/// `mimg test` of `base` (stand-in web client) with overlays/example.toml
/// (its awkward admin password and TURN secret) and the registration mode
/// `registration`: every check passes, and the checks cover what the
/// service promises (a client registers as the mode allows).
fn prove(base: &str, registration: &str) {
    let w = work(&format!("acceptance-test-{base}"));
    let (srv, sha) = standin(&w);
    let recipe = test_recipe(&w, base, srv.port, &sha);
    let overlay = w.join("example.toml");
    let text = std::fs::read_to_string(repo().join("overlays/example.toml"))
        .unwrap()
        .replace(
            "registration = \"closed\"",
            &format!("registration = \"{registration}\""),
        )
        .replace(
            "example-secrets/",
            &format!("{}/overlays/example-secrets/", repo().display()),
        );
    std::fs::write(&overlay, text).unwrap();
    let mut c = mimg();
    c.arg("test")
        .arg(&recipe)
        .arg("--overlay")
        .arg(&overlay)
        // make test runs another test binary beside this one: a first boot
        // under TCG may take twice as long as on an idle machine.
        .args(["--timeout", "1500", "--json", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", store());
    let o = run(c);
    let report: Value = serde_json::from_slice(&o.stdout).expect("a JSON report");
    for ch in report["checks"].as_array().unwrap() {
        eprintln!(
            "{} {:>6.1}s {} ({})",
            if ch["ok"] == json!(true) {
                "ok  "
            } else {
                "FAIL"
            },
            ch["seconds"].as_f64().unwrap(),
            ch["name"],
            ch["detail"]
        );
    }
    assert!(
        o.status.success() && report["ok"] == json!(true),
        "mimg test failed"
    );
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let registers = match registration {
        "open" => "registration is open: a new user registers and logs in",
        "token" => "registration needs a token: refused without one and with a wrong one",
        _ => "registration is refused",
    };
    for want in [
        "logs in",
        "TURN",
        registers,
        "IPv6 address",
        "well-known/matrix/client",
        "config.json",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no check about {want}"
        );
    }
}

/// One run of ci/image-pipeline.sh as a CI job runs it, on
/// maas-homeserver with the stand-in web client: build, `mimg test` (with a
/// data disk kept for the upgrade test), signatures checked, the diff
/// against the image "in production" (here: the same build, so no change),
/// the push to a file cache. Shared by the two tests below, so the image
/// boots once for both.
struct PipelineRun {
    w: std::path::PathBuf,
    recipe: std::path::PathBuf,
    output: std::process::Output,
    /// The data disk `mimg test` booted with.
    data: std::path::PathBuf,
    /// The report the script keeps beside the image.
    report: Value,
    _srv: Server,
}

fn pipeline_run() -> &'static PipelineRun {
    static P: std::sync::OnceLock<PipelineRun> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let w = work("acceptance-pipeline");
        let (srv, sha) = standin(&w);
        let recipe = test_recipe(&w, "maas-homeserver", srv.port, &sha);
        let prev = w.join("prev");
        let mut c = mimg();
        c.arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(&prev)
            .env("MIMG_STORE", store());
        assert!(run(c).status.success(), "the build in production");
        let mut c = mimg();
        c.arg("keygen").arg(w.join("key"));
        assert!(run(c).status.success());
        let mut c = mimg();
        c.args(["cache", "keygen", "ci-1", "--out"])
            .arg(w.join("cache.sec"));
        assert!(run(c).status.success());
        let data = w.join("data.qcow2");
        assert!(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&data)
                .arg("4G")
                .status()
                .unwrap()
                .success()
        );
        let cache = format!("file://{}", w.join("cache").display());
        let mut c = Command::new("bash");
        c.arg(repo().join("ci/image-pipeline.sh"))
            .arg(&recipe)
            .arg("overlays/example.toml")
            .current_dir(repo())
            .env("MIMG", env!("CARGO_BIN_EXE_mimg"))
            .env("MIMG_STORE", store())
            .env("MIMG_OUT", w.join("out"))
            // The stand-in recipe has no lock of its own: --locked would refuse it.
            .env("MIMG_BUILD_FLAGS", "")
            .env(
                "MIMG_TEST_FLAGS",
                format!("--timeout 1500 --data-disk {}", data.display()),
            )
            .env("MIMG_SIGN_KEY", w.join("key"))
            .env("MIMG_CACHE", &cache)
            .env("MIMG_CACHE_KEY", w.join("cache.sec"))
            .env(
                "MIMG_PREVIOUS",
                prev.join("maas-homeserver-test.manifest.json"),
            );
        let output = run(c);
        let report = std::fs::read(w.join("out/maas-homeserver-test.test.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        PipelineRun {
            w,
            recipe,
            output,
            data,
            report,
            _srv: srv,
        }
    })
}

impl PipelineRun {
    /// The detail of the report's check whose name contains `name`.
    fn detail(&self, name: &str) -> String {
        self.report["checks"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["name"].as_str().is_some_and(|n| n.contains(name)))
            })
            .and_then(|c| c["detail"].as_str())
            .unwrap_or_else(|| panic!("no check `{name}` in the report: {}", self.report))
            .to_string()
    }
}

/// ci/image-pipeline.sh builds, tests (its report kept beside the image),
/// signs, diffs and pushes, and says so.
#[test]
fn the_image_pipeline_script_builds_tests_signs_and_diffs() {
    let p = pipeline_run();
    let w = &p.w;
    assert!(p.output.status.success(), "the pipeline failed");
    assert_eq!(p.report["ok"], json!(true), "the kept report: {}", p.report);
    let said = stdout(&p.output);
    // Every step of the recipe is pushed: as many as its plan has.
    let mut c = mimg();
    c.args(["plan", "--json"])
        .arg(w.join("maas-homeserver-test.toml"))
        .env("MIMG_STORE", store());
    let plan: Value = serde_json::from_slice(&run(c).stdout).expect("plan --json");
    let steps = plan["steps"].as_array().expect("steps").len();
    let pushed = format!("pushed {steps} steps");
    for want in [
        "== test ",
        "verified, sha256",
        "no change",
        "== push to file://",
        pushed.as_str(),
        "== done: ",
    ] {
        assert!(said.contains(want), "the pipeline did not say `{want}`");
    }
    let cache = format!("file://{}", w.join("cache").display());
    let mut c = mimg();
    c.args(["cache", "verify", &cache, "--trusted-key"]).arg(
        std::fs::read_to_string(w.join("cache.sec.pub"))
            .unwrap()
            .trim(),
    );
    let o = run(c);
    assert!(
        o.status.success() && stdout(&o).contains(&format!("{steps} entries")),
        "the pushed cache verifies"
    );
    let mut m = Command::new("minisign");
    m.arg("-Vm")
        .arg(w.join("out/maas-homeserver-test.qcow2"))
        .arg("-p")
        .arg(w.join("key.pub"));
    assert!(
        run(m).status.success(),
        "minisign verifies the pipeline's image"
    );
}

struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        // SIGINT: mimg run stops QEMU and removes its network namespace.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn boot(image: &Path, seed: &Path, data: Option<&Path>, port: u16, log: &Path) -> Vm {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mimg"));
    c.arg("run").arg(image).arg("--seed").arg(seed);
    if let Some(d) = data {
        c.arg("--data-disk").arg(d);
    }
    let child = c
        .arg("--forward")
        .arg(format!("{port}:80"))
        .arg("--serial-log")
        .arg(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Vm(child)
}

struct Http {
    port: u16,
    c: reqwest::blocking::Client,
}

impl Http {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut r = self
            .c
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", self.port),
            )
            .header("Host", "matrix.example.org");
        if let Some(t) = token {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().ok()?;
        let st = resp.status().as_u16();
        Some((
            st,
            serde_json::from_str(&resp.text().ok()?).unwrap_or(Value::Null),
        ))
    }

    /// Log in as the example's admin, waiting (bounded) until the first-boot
    /// script registered it: poll its public profile, not the login (whose
    /// failures count against Synapse's rate limit).
    fn login(&self, limit: Duration) -> String {
        let t0 = Instant::now();
        while !matches!(
            self.call(
                "GET",
                "/_matrix/client/v3/profile/%40admin%3Aexample.org",
                None,
                None
            ),
            Some((200, _))
        ) {
            assert!(
                t0.elapsed() < limit,
                "@admin not registered within {}s",
                limit.as_secs()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        let pw = std::fs::read_to_string(repo().join("overlays/example-secrets/admin.password"))
            .unwrap();
        // Byte for byte but the one trailing newline: it ends with a space.
        let pw = pw.strip_suffix('\n').unwrap_or(&pw);
        let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "admin" }, "password": pw });
        let (st, v) = self
            .call("POST", "/_matrix/client/v3/login", None, Some(body))
            .expect("login answers");
        assert_eq!(st, 200, "login: {v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    fn key_ids(&self) -> Vec<String> {
        let (_, v) = self
            .call("GET", "/_matrix/key/v2/server", None, None)
            .unwrap();
        v["verify_keys"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}

/// The upgrade: v1 is the pipeline's image, whose `mimg test` made the
/// admin, a room and a message on its data disk; v2 (the same recipe with
/// one layer changed) boots from that disk and the same seed, and the user,
/// the message and the Synapse signing key are still there.
#[test]
fn an_image_swap_keeps_users_messages_and_the_signing_key() {
    let p = pipeline_run();
    assert!(
        p.output.status.success(),
        "v1's pipeline (build and test) failed"
    );
    let w = work("upgrade");
    let room = p
        .detail("creates a room")
        .strip_prefix("room ")
        .expect("the check names its room")
        .to_string();
    let keys_v1: Vec<String> = p
        .detail("signing key")
        .split(", ")
        .map(String::from)
        .collect();
    // v2: the same recipe with one layer changed.
    std::fs::create_dir_all(w.join("motd/etc")).unwrap();
    std::fs::write(w.join("motd/etc/motd"), "v2 of the image\n").unwrap();
    let v2 = w.join("v2.toml");
    std::fs::write(&v2, format!("extends = \"{}\"\n\n[[layer]]\nname = \"base-config\"\nkind = \"files\"\nfrom = \"{}\"\nto = \"/\"\n", p.recipe.display(), w.join("motd").display())).unwrap();
    let o = build(v2.to_str().unwrap(), &store(), &w.join("out"));
    // The changed layer and the image; nothing else. The bytecode run
    // layer after it sees only the rootfs and the pip layers
    // (`sees = ["pip"]`): a files layer does not run it again.
    // (The summary is on stdout, each step's line on stderr.)
    let steps = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        stdout(&o).contains("built 2 steps")
            && steps
                .lines()
                .any(|l| l.trim_start().starts_with("layer:bytecode ")
                    && l.trim_end().ends_with("cached")),
        "only the changed layer and the image: {}{steps}",
        stdout(&o)
    );
    // The seed mimg test made from the same overlay: seeds are
    // reproducible, so this is byte for byte the same.
    let seed = w.join("seed.img");
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(&seed);
    assert!(run(c).status.success());
    let http = |port| Http {
        port,
        // No pooled connections: nginx may close an idle one just as a
        // request goes out on it (see src/vm/acceptance.rs).
        c: reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
    };
    let image = w.join("out/v2.qcow2");
    data_disk_absent_or_foreign_starts_nothing(&w, &image, &seed, &http);
    let port = free_port();
    let vm = boot(&image, &seed, Some(&p.data), port, &w.join("v2.log"));
    let h = http(port);
    let t0 = Instant::now();
    let token = h.login(Duration::from_secs(1500));
    eprintln!("v2: logged in after {:.0}s", t0.elapsed().as_secs_f64());
    // Ready means ready: the console said so, and cloud-init's final stage
    // waited for the first-boot script's end (its runcmd's `--wait` takes
    // the running one's lock, then says how it ended), so `cloud-init
    // status --wait` returns only after it.
    let log = w.join("v2.log");
    let waited = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let ready = text.lines().any(|l| {
            l.trim_end()
                .ends_with("mimg: ready: first boot is done for customer example")
        });
        let final_stage = text.lines().any(|l| {
            l.contains("cloud-init[")
                && l.contains("mimg-firstboot: [")
                && l.trim_end().ends_with("configured this boot: done")
        });
        if ready && final_stage {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(600),
            "v2: no ready line ({ready}) or cloud-init did not run first boot to its end ({final_stage})"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(h.key_ids(), keys_v1, "the signing key changed");
    let (st, v) = h
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(st, 200, "the room of v1 is gone: {v}");
    assert!(
        v.to_string().contains("hello from mimg test"),
        "the message of v1 is gone: {v}"
    );
    drop(vm);
}

/// Before v2 boots from v1's data disk, two boots side by side where the
/// data disk is not right, each with nothing started and the reason on
/// the console: the disk the seed names never comes (by id: the seed's own
/// drive takes its place in the /dev/vdX order), or it holds a partition
/// table (a customer's disk, say). That disk is not changed by one byte.
fn data_disk_absent_or_foreign_starts_nothing(
    w: &Path,
    image: &Path,
    seed: &Path,
    http: &dyn Fn(u16) -> Http,
) {
    let by_id = w.join("by-id.toml");
    let secrets = repo().join("overlays/example-secrets");
    std::fs::write(
        &by_id,
        std::fs::read_to_string(repo().join("overlays/example.toml"))
            .unwrap()
            .replace("example-secrets/", &format!("{}/", secrets.display()))
            .replace("/dev/vdb", "/dev/disk/by-id/virtio-mimg-data"),
    )
    .unwrap();
    let absent_seed = w.join("by-id.img");
    let mut c = mimg();
    c.arg("seed").arg(&by_id).arg("--out").arg(&absent_seed);
    assert!(run(c).status.success());
    // A DOS partition table with one partition, and data behind it.
    let foreign = w.join("foreign.raw");
    let mut disk = vec![0u8; 64 << 20];
    disk[446..462].copy_from_slice(&[
        0x00, 0x20, 0x21, 0x00, 0x83, 0x20, 0x21, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0xf8, 0x01,
        0x00,
    ]);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[1 << 20..(1 << 20) + 21].copy_from_slice(b"a customer's own data");
    std::fs::write(&foreign, &disk).unwrap();
    let before = sha256(&foreign);

    let cases = [
        (
            "absent",
            absent_seed.as_path(),
            None,
            "did not appear within 120 s: services stay stopped",
        ),
        (
            "foreign",
            seed,
            Some(foreign.as_path()),
            "is left untouched and services stay stopped",
        ),
    ];
    let vms: Vec<(u16, PathBuf, Vm)> = cases
        .iter()
        .map(|(name, seed, data, _)| {
            let port = free_port();
            let log = w.join(format!("{name}.log"));
            let vm = boot(image, seed, *data, port, &log);
            (port, log, vm)
        })
        .collect();
    let t0 = Instant::now();
    for ((name, _, _, want), (port, log, _)) in cases.iter().zip(&vms) {
        loop {
            let text =
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            if text.contains(want) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1200),
                "{name}: no \"{want}\" on the console after {}s:\n{}",
                t0.elapsed().as_secs(),
                text.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        // Nothing of the customer's is served: nginx has only the image's
        // "not configured yet" page, Synapse is not behind it.
        let (st, _) = http(*port)
            .call("GET", "/_matrix/client/versions", None, None)
            .expect("nginx answers");
        assert_eq!(st, 503, "{name}: the customer's names are not served");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains("mimg: ready"),
            "{name}: first boot said it was ready"
        );
        eprintln!(
            "data disk {name}: services stopped, the console says why ({:.0}s)",
            t0.elapsed().as_secs_f64()
        );
    }
    drop(vms);
    assert_eq!(sha256(&foreign), before, "the foreign disk was changed");
}

/// An overlay for `customer` on its own prefix, with the example's awkward
/// secrets; `extra` lines go after `tls`.
fn network_overlay(
    dir: &Path,
    customer: &str,
    net: &str,
    registration: &str,
    tls_lines: &str,
) -> std::path::PathBuf {
    let secrets = repo().join("overlays/example-secrets");
    let p = dir.join(format!("{customer}.toml"));
    std::fs::write(
        &p,
        format!(
            "customer = \"{customer}\"\nserver_name = \"{customer}.example\"\nhomeserver = \"matrix.{customer}.example\"\nweb_client = \"chat.{customer}.example\"\n{tls_lines}\nregistration = \"{registration}\"\n\n[turn]\nuris = [\"turn:turn.example.net:3478?transport=udp\"]\nsecret_file = \"{s}/turn.secret\"\n\n[[admin]]\nuser = \"admin\"\npassword_file = \"{s}/admin.password\"\n\n[network]\naddress = \"2001:db8:{net}::20/64\"\ngateway = \"2001:db8:{net}::1\"\ndns = [\"2001:db8::53\"]\n",
            s = secrets.display()
        ),
    )
    .unwrap();
    p
}

/// Two customers from one maas-homeserver image on one test network: one
/// with `tls = "acme"` against the network's Pebble (its certificate issued
/// at first boot over HTTP-01, https checks with Pebble's root) and
/// registration by token, one with `tls = "files"` (a certificate from a
/// CA made here, named as its federation CA) and open registration. Both
/// pass the built-in checks over https, they federate (keys through the
/// delegated name, a room, an invite, a message each way), and a command
/// inside the network resolves the names and trusts the network's CAs
/// through SSL_CERT_FILE. Alpha also serves the Synapse Admin UI on a name
/// of its own, the only place its admin API answers. Beside them the provider's shared TURN server
/// (`kind = "turn"`, a light VM): alpha's TURN credentials make real
/// allocations on it with coturn's client, over UDP and TCP; a wrong
/// password and relays to denied ranges are refused. (Two `acme`
/// customers federate the same way; three homeservers side by side do not
/// become healthy within the test's time on two TCG cores, so the suite
/// boots two.)
#[test]
fn customers_federate_over_tls_acme_and_files_and_share_a_turn_server_on_one_test_network() {
    let w = work("federation");
    let (srv, sha) = standin(&w);
    let recipe = test_recipe(&w, "maas-homeserver", srv.port, &sha);
    let admin_sha = admin_ui_standin(&w, &srv);
    let recipe = with_admin_ui(&recipe, srv.port, &admin_sha);
    let recipe = with_matterbridge(&recipe, &srv);
    let a = network_overlay(
        &w,
        "alpha",
        "a",
        "token",
        "tls = \"acme\"\nacme_email = \"ops@alpha.example\"\nadmin_ui = \"admin.alpha.example\"",
    );
    // Charlie's own CA and certificate for its three names.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "charlie's CA");
    let ca_cert = ca_params.clone().self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![
        "charlie.example".to_string(),
        "matrix.charlie.example".to_string(),
        "chat.charlie.example".to_string(),
    ])
    .unwrap()
    .signed_by(&key, &issuer)
    .unwrap();
    std::fs::write(w.join("charlie.crt"), leaf.pem()).unwrap();
    std::fs::write(w.join("charlie.key"), key.serialize_pem()).unwrap();
    std::fs::write(w.join("charlie-ca.pem"), ca_cert.pem()).unwrap();
    let c = network_overlay(
        &w,
        "charlie",
        "c",
        "open",
        "tls = \"files\"\ntls_cert_file = \"charlie.crt\"\ntls_key_file = \"charlie.key\"\nfederation_ca_file = \"charlie-ca.pem\"\nadmin_api = \"monitoring\"",
    );
    // Charlie's metrics on a monitoring LAN (a second NIC, by MAC).
    let mut text = std::fs::read_to_string(&c).unwrap();
    text.push_str("\n[monitoring]\naddress = \"2001:db8:f::20/64\"\nmac = \"52:54:00:6e:00:63\"\n");
    // And a bridge (the stand-in binary logs in as its Matrix user).
    std::fs::write(w.join("mattermost.token"), "a token with \"quotes\" & $x\n").unwrap();
    text.push_str(&format!(
        "\n[bridge.mattermost]\nurl = \"https://mattermost.charlie.example\"\nteam = \"ops\"\ntoken_file = \"{}\"\n",
        w.join("mattermost.token").display()
    ));
    std::fs::write(&c, text).unwrap();
    // The provider's shared TURN server: alpha's [turn] names its realm
    // and shares its first secret; a second one is still accepted.
    let secrets = repo().join("overlays/example-secrets");
    let t = w.join("turn.toml");
    std::fs::write(
        &t,
        format!(
            "kind = \"turn\"\ncustomer = \"provider-turn\"\nrealm = \"turn.example.net\"\n\n[turn_server]\nsecret_files = [\"{s}/turn.secret\", \"{s}/turn-previous.secret\"]\n\n[network]\naddress = \"2001:db8:e::10/64\"\ngateway = \"2001:db8:e::1\"\n",
            s = secrets.display()
        ),
    )
    .unwrap();
    // Inside the network: every server's delegation over https, trusting
    // only the network's CAs (SSL_CERT_FILE), found through MIMG_VMS; then
    // the TURN credentials alpha's Synapse hands its logged-in admin make
    // real allocations on the TURN server with coturn's own client, over
    // UDP and TCP, and what must be refused is.
    let script = w.join("inside.py");
    std::fs::write(
        &script,
        format!(
            r#"import json, os, ssl, subprocess, urllib.request
ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])
vms = json.loads(os.environ['MIMG_VMS'])
for vm in vms:
    if vm['kind'] != 'homeserver':
        continue
    url = 'https://%s/.well-known/matrix/server' % vm['server_name']
    body = json.load(urllib.request.urlopen(url, context=ctx, timeout=30))
    assert body['m.server'] == vm['homeserver'] + ':443', body
    print('inside: %s delegates to %s' % (vm['server_name'], body['m.server']), flush=True)

def call(url, body=None, token=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    req.add_header('Content-Type', 'application/json')
    if token:
        req.add_header('Authorization', 'Bearer ' + token)
    return json.load(urllib.request.urlopen(req, context=ctx, timeout=120))

turn = [vm for vm in vms if vm['kind'] == 'turn'][0]
alpha = [vm for vm in vms if vm['customer'] == 'alpha'][0]
password = open({pw:?}, 'rb').read().rstrip(b'\n').decode()
base = 'https://%s/_matrix/client/v3' % alpha['homeserver']
token = call(base + '/login', {{'type': 'm.login.password', 'identifier': {{'type': 'm.id.user', 'user': 'admin'}}, 'password': password}})['access_token']
creds = call(base + '/voip/turnServer', token=token)
assert any(turn['realm'] in u for u in creds['uris']), creds['uris']

def uclient(user, pw, *extra):
    p = subprocess.run(['timeout', '90', 'turnutils_uclient', '-x', '-n', '1', '-m', '1', *extra, '-u', user, '-w', pw, turn['address']], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout

for how, extra in [('UDP', ['-y']), ('TCP', ['-y', '-t'])]:
    rc, out = uclient(creds['username'], creds['password'], *extra)
    assert rc == 0, out
    print("inside: turn allocation over %s with alpha's credentials: relayed" % how, flush=True)
rc, out = uclient(creds['username'], 'AAAA' + creds['password'][4:], '-y')
assert rc != 0 and 'Cannot complete Allocation' in out, out
print('inside: turn: a wrong password is refused', flush=True)
for peer in ['::1', 'fd00::1']:
    rc, out = uclient(creds['username'], creds['password'], '-e', peer)
    assert rc != 0 and '403' in out, out
    print('inside: turn: a relay to %s is refused' % peer, flush=True)

# Charlie's bridge: the first-boot script registered its Matrix user as
# its config says and wrote the config its service user reads; the
# (stand-in) bridge logged in with it and named itself.
charlie = [vm for vm in vms if vm['customer'] == 'charlie'][0]
url = 'https://%s/_matrix/client/v3/profile/%%40matterbridge%%3Acharlie.example/displayname' % charlie['homeserver']
name = json.load(urllib.request.urlopen(url, context=ctx, timeout=30)).get('displayname')
print('inside: the bridge user of charlie is named %r' % name, flush=True)
assert name == 'stand-in matterbridge for charlie', name

# A real Prometheus on the monitoring LAN finds charlie through the file
# `mimg targets` writes, and scrapes all three jobs.
import tempfile, time
d = tempfile.mkdtemp(prefix='mimg-prometheus-')
subprocess.run([{mimg:?}, 'targets', {charlie:?}, '--out', d + '/targets.json'], check=True)
open(d + '/prometheus.yml', 'w').write('global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: mimg\n    file_sd_configs:\n      - files: [%s/targets.json]\n' % d)
subprocess.run(['promtool', 'check', 'config', d + '/prometheus.yml'], check=True, stdout=subprocess.DEVNULL)
prom = subprocess.Popen(['prometheus', '--config.file=' + d + '/prometheus.yml', '--storage.tsdb.path=' + d + '/data', '--web.listen-address=[::1]:19090'], stdout=subprocess.DEVNULL, stderr=open(d + '/prometheus.log', 'w'))
try:
    up = {{}}
    for _ in range(60):
        time.sleep(3)
        try:
            r = json.load(urllib.request.urlopen('http://[::1]:19090/api/v1/query?query=up', timeout=10))
        except OSError:
            continue
        up = {{x['metric']['job']: x['value'][1] for x in r['data']['result'] if x['metric'].get('customer') == 'charlie'}}
        if sorted(up) == ['node', 'postgres', 'synapse'] and all(v == '1' for v in up.values()):
            break
    print('inside: prometheus up: %s' % json.dumps(up, sort_keys=True), flush=True)
    assert sorted(up) == ['node', 'postgres', 'synapse'] and all(v == '1' for v in up.values()), up
finally:
    prom.kill()
    prom.wait()
"#,
            pw = secrets.join("admin.password").display().to_string(),
            mimg = env!("CARGO_BIN_EXE_mimg"),
            charlie = c.display().to_string(),
        ),
    )
    .unwrap();
    let mut cmd = mimg();
    cmd.arg("test");
    for o in [&a, &c] {
        cmd.arg("--vm")
            .arg(format!("{}:{}", recipe.display(), o.display()));
    }
    cmd.arg("--vm").arg(format!(
        "{}:{}",
        repo().join("recipes/turn.toml").display(),
        t.display()
    ));
    cmd.arg("--exec")
        .arg(format!("python3 {}", script.display()))
        // Two VMs share the two TCG cores, and make test runs another test
        // binary beside this one: a first boot takes much longer.
        .args(["--timeout", "2400", "--json", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", store());
    let o = run(cmd);
    let report: Value = serde_json::from_slice(&o.stdout).expect("a JSON report");
    let mut names = Vec::new();
    for (who, ch) in report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| {
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| (v["customer"].as_str().unwrap().to_string(), c))
        })
        .chain(
            report["federation"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| ("federation".to_string(), c)),
        )
    {
        eprintln!(
            "{} {:>6.1}s {who}: {} ({})",
            if ch["ok"] == json!(true) {
                "ok  "
            } else {
                "FAIL"
            },
            ch["seconds"].as_f64().unwrap(),
            ch["name"],
            ch["detail"]
        );
        names.push(format!("{who}: {}", ch["name"].as_str().unwrap()));
    }
    assert!(
        o.status.success() && report["ok"] == json!(true),
        "mimg test --vm failed"
    );
    for who in ["alpha", "charlie"] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(who) && n.contains("https")),
            "{who} was checked over https"
        );
    }
    for (who, mode) in [
        ("alpha", "registration needs a token"),
        ("charlie", "registration is open"),
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(who) && n.contains(mode)),
            "{who}: no check that {mode}"
        );
    }
    for pair in ["alpha.example and charlie.example federate"] {
        assert!(names.iter().any(|n| n.contains(pair)), "no check: {pair}");
    }
    let exec = &report["exec"];
    assert_eq!(exec["status"], json!(0), "{exec}");
    for sn in ["alpha.example", "charlie.example"] {
        assert!(
            exec["output"]
                .as_str()
                .unwrap()
                .contains(&format!("inside: {sn} delegates to matrix.{sn}:443")),
            "{exec}"
        );
    }
    for line in [
        "the bridge user of charlie is named 'stand-in matterbridge for charlie'",
        "turn allocation over UDP with alpha's credentials: relayed",
        "turn allocation over TCP with alpha's credentials: relayed",
        "turn: a wrong password is refused",
        "turn: a relay to ::1 is refused",
        "turn: a relay to fd00::1 is refused",
    ] {
        assert!(
            exec["output"].as_str().unwrap().contains(line),
            "{line}: {exec}"
        );
    }
    // Alpha's admin UI: served on its name (with a certificate from the
    // network's ACME server), the admin API there for an admin only, not
    // on the homeserver's name; a registration token an admin made there
    // lets a newcomer register.
    for check in [
        "alpha: the admin UI and its config.json on its own name",
        "alpha: the admin API answers an admin on the admin UI's name only, never a non-admin",
    ] {
        assert!(names.iter().any(|n| n == check), "no check: {check}");
    }
    let token_detail = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["customer"] == "alpha")
        .flat_map(|v| v["checks"].as_array().unwrap())
        .find(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("registration needs a token")
        })
        .map(|c| c["detail"].as_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        token_detail.contains("registered with a token an admin made on admin.alpha.example"),
        "{token_detail}"
    );
    // Charlie's monitoring LAN: every endpoint there, none on the public
    // address, and a Prometheus that found them through `mimg targets`.
    for check in [
        "charlie: metrics answer on the monitoring address (Synapse, node, PostgreSQL)",
        "charlie: the metrics ports refuse connections on the public address",
        "charlie: the admin API answers an admin on the monitoring address only",
    ] {
        assert!(names.iter().any(|n| n == check), "no check: {check}");
    }
    assert!(
        exec["output"].as_str().unwrap().contains(
            "inside: prometheus up: {\"node\": \"1\", \"postgres\": \"1\", \"synapse\": \"1\"}"
        ),
        "{exec}"
    );
    // The TURN server's own checks: both secrets, refusals.
    for check in [
        "provider-turn: boot until coturn allocates a relay",
        "provider-turn: secret 2 of 2 is accepted too (rotation)",
        "provider-turn: a credential of another secret is refused",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(check)),
            "no check: {check}"
        );
    }
    // Nothing of the test network is left behind.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains("mimg-net-"),
        "a test network's namespace is left"
    );
    let ps = Command::new("pgrep")
        .args(["-x", "pebble"])
        .output()
        .unwrap();
    assert!(!ps.status.success(), "Pebble is left running");
}
