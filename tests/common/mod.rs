//! Helpers shared by the integration tests: run the real binary, share one
//! cold build of `minimal` between tests, boot images with QEMU.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under target/test-work/BINARY (the test binary's
/// name), emptied first.
///
/// The first call in a test binary empties its own directory as a whole:
/// what an earlier run of it left there (stores, images, a bucket:
/// gigabytes each) is no longer used, and keeping it filled the disk of a
/// CI run. `make test` runs two binaries side by side, so a binary never
/// touches another's directory. Tools the tests install live in
/// target/test-tools and are kept.
pub fn work(name: &str) -> PathBuf {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let root = repo()
        .join("target/test-work")
        .join(env!("CARGO_CRATE_NAME"));
    SWEPT.get_or_init(|| {
        let _ = Command::new("rm").arg("-rf").arg(&root).status();
    });
    let p = root.join(name);
    let _ = Command::new("rm").arg("-rf").arg(&p).status();
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn mimg() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mimg"));
    c.current_dir(repo());
    c
}

/// Run and return output; print it so failures are readable.
pub fn run(mut c: Command) -> Output {
    let out = c.stdin(Stdio::null()).output().expect("mimg runs");
    eprintln!(
        "--- {:?}\n{}{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `mimg build RECIPE --out OUT FLAGS...` with the network cut
/// (`unshare -n`); returns its output (printed).
pub fn build_without_network(recipe: &Path, store: &Path, out: &Path, flags: &[&str]) -> Output {
    let mut c = Command::new("unshare");
    c.args(["-n", "--"])
        .arg(env!("CARGO_BIN_EXE_mimg"))
        .arg("build")
        .args(flags)
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .env("MIMG_STORE", store)
        .current_dir(repo());
    run(c)
}

/// Build `recipe` into `store` and `out`; panics unless it succeeds.
pub fn build(recipe: &str, store: &Path, out: &Path) -> Output {
    let mut c = mimg();
    c.args(["build", recipe, "--out"])
        .arg(out)
        .env("MIMG_STORE", store);
    let o = run(c);
    assert!(o.status.success(), "build of {recipe} failed");
    o
}

pub struct Built {
    pub store: PathBuf,
    pub out: PathBuf,
    pub image: PathBuf,
    pub sha: String,
}

/// One cold build of `minimal`, shared by the tests of this binary.
pub fn minimal() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let w = work("minimal-a");
        let store = w.join("store");
        let out = w.join("out");
        let o = build("minimal", &store, &out);
        assert!(
            stdout(&o).contains("built 4 steps, reused 0"),
            "a cold build runs every step"
        );
        let image = out.join("minimal.qcow2");
        let sha = sha256(&image);
        Built {
            store,
            out,
            image,
            sha,
        }
    })
}

/// Firmware for [`boot`].
#[derive(Clone, Copy, Debug)]
pub enum Firmware {
    SeaBios,
    Ovmf,
}

/// Boot `image` (through a throw-away overlay) with TCG until `want`
/// appears on the serial console; returns the seconds it took and the log.
pub fn boot(
    image: &Path,
    fw: Firmware,
    extra: &[&str],
    want: &str,
    limit: Duration,
) -> (Option<f64>, String) {
    // One directory per boot: tests of one binary boot side by side, and
    // `work` empties the directory it names.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let w = work(&format!("boot-{fw:?}-{}-{n}", std::process::id()));
    let overlay = w.join("overlay.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(st.success());
    let serial = w.join("serial.log");
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        "-monitor",
        "none",
        "-display",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-drive")
    .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
    .args(["-nic", "user,model=virtio-net-pci"]);
    if let Firmware::Ovmf = fw {
        let vars = w.join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("ovmf is installed (make deps)");
        c.args(["-machine", "q35"])
            .arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    c.args(extra);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let t0 = Instant::now();
    let mut found = None;
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if log.contains(want) {
            found = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    let _ = std::fs::remove_dir_all(&w);
    (found, format!("{log}\n--- qemu stderr:\n{err}"))
}

/// Serve a stand-in web client tarball; returns the server and its sha256.
pub fn standin(dir: &Path) -> (Server, String) {
    let src = dir.join("src/element-v0.0.0-standin");
    std::fs::create_dir_all(src.join("i18n")).unwrap();
    std::fs::write(src.join("index.html"), "<html>stand-in web client</html>\n").unwrap();
    std::fs::write(src.join("i18n/en_EN.json"), "{}\n").unwrap();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let tarball = www.join("element-v0.0.0-standin.tar.gz");
    tar_gz(&dir.join("src"), "element-v0.0.0-standin", &tarball);
    (serve_dir(&www), sha256(&tarball))
}

/// `DIR/NAME` as a reproducible tar.gz at `out`.
fn tar_gz(dir: &Path, name: &str, out: &Path) {
    let st = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@1600000000",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-czf",
        ])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(name)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A stand-in for the Synapse Admin UI's release tarball (it unpacks to
/// `synapse-admin/`), put where `srv` serves; returns its sha256.
pub fn admin_ui_standin(dir: &Path, srv: &Server) -> String {
    let src = dir.join("src-admin/synapse-admin");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "<html>stand-in admin UI</html>\n").unwrap();
    std::fs::write(src.join("config.json"), "{}\n").unwrap();
    let tarball = srv.dir.join("synapse-admin-standin.tar.gz");
    tar_gz(&dir.join("src-admin"), "synapse-admin", &tarball);
    sha256(&tarball)
}

/// A recipe extending `recipe` with the admin UI's layer (as
/// recipes/layers/synapse-admin.toml has it) from the stand-in.
pub fn with_admin_ui(recipe: &Path, port: u16, sha: &str) -> PathBuf {
    let p = recipe.with_file_name("with-admin-ui.toml");
    std::fs::write(
        &p,
        format!(
            "extends = \"{}\"\n\n[[layer]]\nname = \"synapse-admin\"\nkind = \"fetch\"\nurl = \"http://127.0.0.1:{port}/synapse-admin-standin.tar.gz\"\nsha256 = \"{sha}\"\nto = \"/var/www/synapse-admin\"\nstrip = 1\n",
            recipe.display()
        ),
    )
    .unwrap();
    p
}

/// A recipe extending `recipe` with ungleich-prod's matterbridge layers,
/// the binary being tests/fixtures/matterbridge-standin.py (served by
/// `srv`): it logs in to Synapse as the bridge's user from the config the
/// first-boot script wrote, and names itself in that user's display name.
pub fn with_matterbridge(recipe: &Path, srv: &Server) -> PathBuf {
    let bin = srv.dir.join("matterbridge-standin");
    std::fs::copy(repo().join("tests/fixtures/matterbridge-standin.py"), &bin).unwrap();
    let p = recipe.with_file_name("with-matterbridge.toml");
    std::fs::write(
        &p,
        format!(
            "extends = \"{}\"\n\n[[layer]]\nname = \"matterbridge\"\nkind = \"fetch\"\nurl = \"http://127.0.0.1:{}/matterbridge-standin\"\nsha256 = \"{}\"\nto = \"/usr/local/bin/matterbridge\"\nunpack = false\nmode = \"0755\"\n\n[[layer]]\nname = \"matterbridge-config\"\nkind = \"files\"\nfrom = \"{}\"\nto = \"/\"\n",
            recipe.display(),
            srv.port,
            sha256(&bin),
            repo().join("recipes/files/matterbridge").display()
        ),
    )
    .unwrap();
    p
}

/// A recipe extending `base` whose `element` layer is the stand-in.
pub fn test_recipe(dir: &Path, base: &str, port: u16, sha: &str) -> PathBuf {
    let p = dir.join(format!("{base}-test.toml"));
    std::fs::write(
        &p,
        format!(
            "extends = \"{}\"\n\n[[layer]]\nname = \"element\"\nkind = \"fetch\"\nurl = \"http://127.0.0.1:{port}/element-v0.0.0-standin.tar.gz\"\nsha256 = \"{sha}\"\nto = \"/var/www/element\"\nstrip = 1\n",
            repo().join("recipes").join(format!("{base}.toml")).display()
        ),
    )
    .unwrap();
    p
}

/// A local HTTP server (tests/fixtures/serve.py) over a directory.
pub struct Server {
    child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serve `dir` on 127.0.0.1 at a free port.
pub fn serve_dir(dir: &Path) -> Server {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/fixtures/serve.py"))
        .arg(dir)
        // The server exits when this pipe closes, when the test binary
        // exits: a server kept in a static is never dropped.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    Server {
        port: line.trim().parse().unwrap(),
        child,
        dir: dir.to_path_buf(),
    }
}

pub fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

/// An ordinary user for rootless builds (made once, with /etc/subuid and
/// /etc/subgid ranges as useradd gives them); run as root only.
pub fn rootless_user() -> &'static str {
    let user = "mimg-rootless";
    if !Command::new("id")
        .arg(user)
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            Command::new("useradd")
                .args(["-m", user])
                .status()
                .unwrap()
                .success()
        );
    }
    user
}
