//! The image pipeline's acceptance tests: `mimg test` on maas-homeserver
//! and maas-homeserver-deb (stand-in web client) with an IPv6-only overlay,
//! and the upgrade check:
//! v1 and a rebuilt v2 boot from the same data disk and seed, and the user,
//! the message and the Synapse signing key survive the swap.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn store() -> std::path::PathBuf {
    static S: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    S.get_or_init(|| work("acceptance-store")).clone()
}

#[test]
fn mimg_test_proves_maas_homeserver_with_an_ipv6_only_overlay() {
    prove("maas-homeserver");
}

/// Debian's own Synapse (from sid) over trixie, configured the same way,
/// passes the same checks.
#[test]
fn mimg_test_proves_maas_homeserver_deb_with_an_ipv6_only_overlay() {
    prove("maas-homeserver-deb");
}

/// `mimg test` of `base` (stand-in web client) with overlays/example.toml:
/// every check passes, and the checks cover what the service promises.
fn prove(base: &str) {
    let w = work(&format!("acceptance-test-{base}"));
    let (srv, sha) = standin(&w);
    let recipe = test_recipe(&w, base, srv.port, &sha);
    let mut c = mimg();
    c.arg("test")
        .arg(&recipe)
        .args(["--overlay", "overlays/example.toml", "--json", "--out"])
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
    for want in [
        "logs in",
        "TURN",
        "registration is refused",
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

/// ci/image-pipeline.sh as a CI job runs it, on maas-homeserver with the
/// stand-in web client: build, `mimg test`, signatures checked, the diff
/// against the image "in production" (here: the same build, so no change).
#[test]
fn the_image_pipeline_script_builds_tests_signs_and_diffs() {
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
        .env("MIMG_SIGN_KEY", w.join("key"))
        .env(
            "MIMG_PREVIOUS",
            prev.join("maas-homeserver-test.manifest.json"),
        );
    let o = run(c);
    assert!(o.status.success(), "the pipeline failed");
    let said = stdout(&o);
    for want in ["== test ", "verified, sha256", "no change", "== done: "] {
        assert!(said.contains(want), "the pipeline did not say `{want}`");
    }
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

fn boot(image: &Path, seed: &Path, data: &Path, port: u16, log: &Path) -> Vm {
    let child = Command::new(env!("CARGO_BIN_EXE_mimg"))
        .arg("run")
        .arg(image)
        .arg("--seed")
        .arg(seed)
        .arg("--data-disk")
        .arg(data)
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
        let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "admin" }, "password": pw.trim() });
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

#[test]
fn an_image_swap_keeps_users_messages_and_the_signing_key() {
    let w = work("upgrade");
    let (srv, sha) = standin(&w);
    let v1 = test_recipe(&w, "maas-homeserver", srv.port, &sha);
    assert!(
        build(v1.to_str().unwrap(), &store(), &w.join("out"))
            .status
            .success()
    );
    // v2: the same recipe with one layer changed.
    std::fs::create_dir_all(w.join("motd/etc")).unwrap();
    std::fs::write(w.join("motd/etc/motd"), "v2 of the image\n").unwrap();
    let v2 = w.join("v2.toml");
    std::fs::write(&v2, format!("extends = \"{}\"\n\n[[layer]]\nname = \"base-config\"\nkind = \"files\"\nfrom = \"{}\"\nto = \"/\"\n", v1.display(), w.join("motd").display())).unwrap();
    let o = build(v2.to_str().unwrap(), &store(), &w.join("out"));
    assert!(
        stdout(&o).contains("built 2 steps"),
        "only the changed layer and the image: {}",
        stdout(&o)
    );

    let seed = w.join("seed.img");
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(&seed);
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

    // v1: a user (the admin), a room, a message.
    let port = free_port();
    let vm = boot(
        &w.join("out/maas-homeserver-test.qcow2"),
        &seed,
        &data,
        port,
        &w.join("v1.log"),
    );
    let h = http(port);
    let t0 = Instant::now();
    let token = h.login(Duration::from_secs(900));
    eprintln!("v1: logged in after {:.0}s", t0.elapsed().as_secs_f64());
    let keys_v1 = h.key_ids();
    let (st, v) = h
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({ "room_alias_name": "upgrade" })),
        )
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let room = v["room_id"].as_str().unwrap().to_string();
    let (st, _) = h
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            Some(&token),
            Some(json!({ "msgtype": "m.text", "body": "written by v1" })),
        )
        .unwrap();
    assert_eq!(st, 200);
    drop(vm);

    // v2 on the same data disk and seed.
    let port = free_port();
    let vm = boot(
        &w.join("out/v2.qcow2"),
        &seed,
        &data,
        port,
        &w.join("v2.log"),
    );
    let h = http(port);
    let t0 = Instant::now();
    let token = h.login(Duration::from_secs(900));
    eprintln!("v2: logged in after {:.0}s", t0.elapsed().as_secs_f64());
    assert_eq!(h.key_ids(), keys_v1, "the signing key changed");
    let (st, v) = h
        .call(
            "GET",
            "/_matrix/client/v3/directory/room/%23upgrade:example.org",
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(st, 200, "the room of v1 is gone: {v}");
    assert_eq!(v["room_id"], json!(room));
    let (st, v) = h
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(st, 200);
    assert!(
        v.to_string().contains("written by v1"),
        "the message of v1 is gone"
    );
    drop(vm);
}
