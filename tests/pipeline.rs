//! The core pipeline end to end: a recipe becomes a bootable,
//! bit-reproducible qcow2. These build real images from the Debian mirror
//! the host is configured with, and boot them with QEMU (TCG).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn two_fresh_stores_give_identical_images_whatever_tz_umask_locale() {
    let a = minimal();
    let w = work("minimal-b");
    // Another store path, another time zone, umask and locale, and the
    // raw disk on disk rather than in memory (`MIMG_SCRATCH`).
    let scratch = w.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut c = mimg();
    c.args(["build", "minimal", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", w.join("another store name"))
        .env("MIMG_SCRATCH", &scratch)
        .env("TZ", "Pacific/Chatham")
        .env("LANG", "de_DE.UTF-8")
        .env("LC_ALL", "de_DE.UTF-8");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        sh.env(k, v.unwrap());
    }
    sh.current_dir(repo());
    let o = run(sh);
    assert!(o.status.success());
    let b = sha256(&w.join("out/minimal.qcow2"));
    assert_eq!(a.sha, b, "two cold builds differ");
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "the scratch raw disk was left behind"
    );
    let ma = std::fs::read(a.out.join("minimal.manifest.json")).unwrap();
    let mb = std::fs::read(w.join("out/minimal.manifest.json")).unwrap();
    assert!(ma == mb, "manifests differ");
}

#[test]
fn rootless_build_matches_the_root_build() {
    let a = minimal();
    if !is_root() {
        // Running as an ordinary user: this very build is rootless; compare
        // it against nothing else here (CI runs as root and does the real check).
        eprintln!("not root: the shared build above was already rootless");
        return;
    }
    let user = "mimg-rootless";
    if !Command::new("id")
        .arg(user)
        .output()
        .unwrap()
        .status
        .success()
    {
        // useradd gives the user /etc/subuid and /etc/subgid ranges.
        assert!(
            Command::new("useradd")
                .args(["-m", user])
                .status()
                .unwrap()
                .success()
        );
    }
    let w = work("rootless");
    assert!(
        Command::new("chown")
            .arg(format!("{user}:"))
            .arg(&w)
            .status()
            .unwrap()
            .success()
    );
    // Under umask 077, as on hardened hosts: what mimg hands to another uid
    // (the store's directories, the local repository) has explicit modes.
    let o = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .arg(format!("HOME=/home/{user}"))
        .arg(format!("MIMG_STORE={}", w.join("store").display()))
        .args(["sh", "-c", "umask 077; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_mimg"))
        .args(["build", "minimal", "--recipes"])
        .arg(repo().join("recipes"))
        .arg("--out")
        .arg(w.join("out"))
        .current_dir(&w)
        .output()
        .unwrap();
    eprintln!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "rootless build failed");
    assert_eq!(
        sha256(&w.join("out/minimal.qcow2")),
        a.sha,
        "rootless and root builds differ"
    );
}

/// `cp FLAG FROM TO`, which must succeed.
fn cp(flag: &str, from: &Path, to: &Path) {
    assert!(
        Command::new("cp")
            .arg(flag)
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success(),
        "cp {flag} {} {}",
        from.display(),
        to.display()
    );
}

fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

#[test]
fn a_rebuild_with_nothing_changed_runs_no_step() {
    let a = minimal();
    let o = build("minimal", &a.store, &a.out);
    assert!(
        stdout(&o).contains("built 0 steps, reused 4"),
        "{}",
        stdout(&o)
    );
    assert_eq!(sha256(&a.image), a.sha);
    let mut c = mimg();
    c.args(["plan", "minimal"]).env("MIMG_STORE", &a.store);
    let p = run(c);
    assert!(stdout(&p).contains("0 of 4 steps to build"));
}

#[test]
fn changing_one_file_rebuilds_that_layer_and_the_image_only() {
    let a = minimal();
    let w = work("files-change");
    cp("-a", &repo().join("recipes"), &w.join("recipes"));
    std::fs::write(w.join("recipes/files/minimal/etc/motd"), "changed\n").unwrap();
    let mut c = mimg();
    c.args(["plan", "minimal", "--json", "--recipes"])
        .arg(w.join("recipes"))
        .env("MIMG_STORE", &a.store);
    let p = run(c);
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let cached: Vec<(String, bool)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cached,
        [
            ("tools".into(), true),
            ("rootfs".into(), true),
            ("layer:base-config".into(), false),
            ("image".into(), false)
        ]
    );
    let mut c = mimg();
    c.args(["build", "minimal", "--recipes"])
        .arg(w.join("recipes"))
        .arg("--out")
        .arg(w.join("out"))
        .env("MIMG_STORE", &a.store);
    let o = run(c);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("built 2 steps, reused 2"),
        "{}",
        stdout(&o)
    );
    assert_ne!(sha256(&w.join("out/minimal.qcow2")), a.sha);
}

/// Tools from the tools environment in the store, checked on a raw copy.
fn check_tool(store: &Path, args: &[&str], dir: &Path) -> std::process::Output {
    let tools = std::fs::read_dir(store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("root"))
        .find(|p| p.join("usr/sbin/e2fsck").exists())
        .expect("a tools environment in the store");
    let o = Command::new("bwrap")
        .arg("--ro-bind")
        .arg(&tools)
        .arg("/")
        .args(["--dev", "/dev", "--proc", "/proc", "--bind"])
        .arg(dir)
        .arg("/mnt")
        .args(["--unshare-all", "--"])
        .args(args)
        .output()
        .unwrap();
    eprintln!("{args:?}\n{}{}", stdout(&o), stderr(&o));
    o
}

#[test]
fn the_image_passes_qemu_img_check_sfdisk_verify_and_e2fsck() {
    let a = minimal();
    let o = Command::new("qemu-img")
        .arg("check")
        .arg(&a.image)
        .output()
        .unwrap();
    assert!(o.status.success(), "qemu-img check: {}", stdout(&o));
    let w = work("checks");
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&a.image)
            .arg(w.join("disk.raw"))
            .status()
            .unwrap()
            .success()
    );
    let o = Command::new("sfdisk")
        .arg("--verify")
        .arg(w.join("disk.raw"))
        .output()
        .unwrap();
    assert!(
        o.status.success() && stdout(&o).contains("No errors detected"),
        "sfdisk: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = Command::new("sfdisk")
        .arg("--dump")
        .arg(w.join("disk.raw"))
        .output()
        .unwrap();
    let dump = stdout(&o);
    assert!(dump.contains("label: gpt"));
    assert_eq!(
        dump.matches("start=").count(),
        3,
        "BIOS boot, ESP and root: {dump}"
    );
    // The root starts at 34 MiB (see src/stages/disk.rs).
    let o = check_tool(
        &a.store,
        &["e2fsck", "-fn", "/mnt/disk.raw?offset=35651584"],
        &w,
    );
    assert!(o.status.success(), "e2fsck -fn found problems");
    let o = check_tool(
        &a.store,
        &[
            "debugfs",
            "-R",
            "cat /etc/hostname",
            "/mnt/disk.raw?offset=35651584",
        ],
        &w,
    );
    assert_eq!(stdout(&o), "localhost\n");
    let o = check_tool(
        &a.store,
        &[
            "debugfs",
            "-R",
            "ls -l /etc/ssh",
            "/mnt/disk.raw?offset=35651584",
        ],
        &w,
    );
    assert!(
        stdout(&o).contains("sshd_config") && !stdout(&o).contains("ssh_host_"),
        "no ssh host keys in the image"
    );
}

#[test]
fn boots_to_a_login_prompt_under_seabios() {
    let a = minimal();
    let (t, log) = boot(
        &a.image,
        Firmware::SeaBios,
        &[],
        "login:",
        Duration::from_secs(300),
    );
    assert!(t.is_some(), "no login prompt under SeaBIOS:\n{log}");
    eprintln!("SeaBIOS: login prompt after {:.1}s", t.unwrap());
}

#[test]
fn boots_to_a_login_prompt_under_ovmf() {
    let a = minimal();
    let (t, log) = boot(
        &a.image,
        Firmware::Ovmf,
        &[],
        "login:",
        Duration::from_secs(300),
    );
    assert!(t.is_some(), "no login prompt under OVMF:\n{log}");
    assert!(log.contains("GNU GRUB"), "booted through GRUB's EFI image");
    eprintln!("OVMF: login prompt after {:.1}s", t.unwrap());
}

#[test]
fn a_killed_build_leaves_the_store_consistent() {
    let a = minimal();
    let w = work("killed");
    cp("-a", &repo().join("recipes"), &w.join("recipes"));
    std::fs::write(w.join("recipes/files/minimal/etc/motd"), "killed\n").unwrap();
    // Kill at several points of the image step; whatever the point, every
    // entry in steps/ must be complete and the next build must finish.
    // The raw disks go to a scratch directory of the test's own, which the
    // next build must leave empty (a killed build's is swept).
    let scratch = w.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let build = || {
        let mut c = mimg();
        c.args(["build", "minimal", "-q", "--recipes"])
            .arg(w.join("recipes"))
            .arg("--out")
            .arg(w.join("out"))
            .env("MIMG_STORE", &a.store)
            .env("MIMG_SCRATCH", &scratch);
        c
    };
    for delay_ms in [300u64, 1500, 2500] {
        let mut child = build().spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        for e in std::fs::read_dir(a.store.join("v1/steps"))
            .unwrap()
            .flatten()
        {
            assert!(
                e.path().join("meta.json").is_file(),
                "incomplete entry {}",
                e.path().display()
            );
        }
    }
    // Once more, killed while its raw disk exists.
    std::fs::write(w.join("recipes/files/minimal/etc/motd"), "killed again\n").unwrap();
    let mut child = build().spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .any(|d| d.path().join("disk.raw").exists())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no raw disk appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "the build ended first");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let left = std::fs::read_dir(&scratch).unwrap().count();
    assert!(
        left >= 1,
        "the killed build's scratch should still be there"
    );
    assert!(run(build()).status.success());
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch raw disks were left behind"
    );
    let o = Command::new("qemu-img")
        .arg("check")
        .arg(w.join("out/minimal.qcow2"))
        .output()
        .unwrap();
    assert!(o.status.success());
    // The store's record of the image matches the file it holds.
    let meta_files: Vec<_> = std::fs::read_dir(a.store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for dir in meta_files {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        for (name, sum) in meta["files"].as_object().unwrap() {
            assert_eq!(
                sha256(&dir.join(name)),
                sum["sha256"].as_str().unwrap(),
                "{} in {}",
                name,
                dir.display()
            );
        }
    }
}

/// The minimal image's root, unpacked once, to run its own tools (cloud-init).
fn minimal_root() -> std::path::PathBuf {
    let a = minimal();
    let root = work("minimal-root");
    let rootfs = std::fs::read_dir(a.store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs.tar"))
        .find(|p| p.exists())
        .expect("a rootfs in the store");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&rootfs)
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    root
}

#[test]
fn cloud_init_schema_accepts_every_seed_file() {
    let root = minimal_root();
    let w = work("seed-schema");
    let mut c = mimg();
    c.args(["seed", "overlays/example.toml", "--out"])
        .arg(w.join("seed.img"));
    assert!(run(c).status.success());
    for f in ["user-data", "network-config", "meta-data"] {
        let st = Command::new("mcopy")
            .arg("-i")
            .arg(w.join("seed.img"))
            .arg(format!("::{f}"))
            .arg(root.join("tmp").join(f))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let schema = |args: &[&str]| {
        let o = Command::new("bwrap")
            .arg("--bind")
            .arg(&root)
            .arg("/")
            .args(["--dev", "/dev", "--proc", "/proc", "--unshare-all", "--"])
            .args(["cloud-init", "schema"])
            .args(args)
            .output()
            .unwrap();
        eprintln!("{args:?}: {}{}", stdout(&o), stderr(&o));
        o
    };
    let o = schema(&["--config-file", "/tmp/user-data"]);
    assert!(
        o.status.success() && stdout(&o).contains("Valid schema"),
        "user-data refused by cloud-init schema"
    );
    let o = schema(&[
        "--schema-type",
        "network-config",
        "--config-file",
        "/tmp/network-config",
    ]);
    assert!(
        o.status.success() && stdout(&o).contains("Valid schema"),
        "network-config refused by cloud-init schema"
    );
    // The check can fail: a broken cloud-config is refused.
    std::fs::write(root.join("tmp/broken"), "#cloud-config\nwrite_files: 7\n").unwrap();
    assert!(!schema(&["--config-file", "/tmp/broken"]).status.success());
}

#[test]
fn no_secret_of_the_example_is_in_the_image() {
    let a = minimal();
    let bytes = std::fs::read(&a.image).unwrap();
    for f in ["turn.secret", "admin.password", "mattermost.token"] {
        let s = std::fs::read_to_string(repo().join("overlays/example-secrets").join(f)).unwrap();
        let s = s.trim().as_bytes();
        assert!(
            !bytes.windows(s.len()).any(|w| w == s),
            "{f} found in the image"
        );
    }
}

#[test]
fn a_seed_configures_the_vm_at_first_boot() {
    let a = minimal();
    let w = work("seed-boot");
    // QEMU's user network offers IPv6 on fec0::/64 with the gateway at fec0::2.
    let text = std::fs::read_to_string(repo().join("overlays/example.toml"))
        .unwrap()
        .replace("customer = \"example\"", "customer = \"seedtest\"")
        .replace("2001:db8:10::20/64", "fec0::20/64")
        .replace("2001:db8:10::1", "fec0::2")
        .replace("2001:db8::53", "fec0::3")
        .replace(
            "example-secrets/",
            &format!("{}/overlays/example-secrets/", repo().display()),
        );
    std::fs::write(w.join("seedtest.toml"), text).unwrap();
    let mut c = mimg();
    c.arg("seed")
        .arg(w.join("seedtest.toml"))
        .arg("--out")
        .arg(w.join("seed.img"));
    assert!(run(c).status.success());
    let drive = format!(
        "file={},if=virtio,format=raw,readonly=on",
        w.join("seed.img").display()
    );
    let (t, log) = boot(
        &a.image,
        Firmware::SeaBios,
        &["-drive", &drive],
        "seedtest login:",
        Duration::from_secs(300),
    );
    assert!(
        t.is_some(),
        "the VM did not take its hostname from the seed:\n{log}"
    );
    eprintln!("seeded boot: login prompt after {:.1}s", t.unwrap());
}

#[test]
fn a_damaged_stored_tar_is_never_used() {
    let a = minimal();
    let w = work("damaged");
    let steps = w.join("store/v1/steps");
    std::fs::create_dir_all(&steps).unwrap();
    cp("-al", &a.store.join("v1/blobs"), &w.join("store/v1/blobs"));
    // Every step but the image, so the next build makes the image again.
    let mut rootfs = None;
    for e in std::fs::read_dir(a.store.join("v1/steps"))
        .unwrap()
        .flatten()
    {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap();
        match meta["kind"].as_str().unwrap() {
            "image" => continue,
            "rootfs" => rootfs = Some(steps.join(e.file_name())),
            _ => {}
        }
        cp("-a", &e.path(), &steps.join(e.file_name()));
    }
    // One byte of the stored rootfs tar flipped, in the middle of it.
    let tar = rootfs.unwrap().join("rootfs.tar");
    let mut bytes = std::fs::read(&tar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tar, bytes).unwrap();
    let mut c = mimg();
    c.args(["build", "minimal", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", w.join("store"));
    let o = run(c);
    assert!(
        !o.status.success(),
        "a build from a damaged store must fail"
    );
    let err = stderr(&o);
    assert!(
        err.contains("is damaged") && err.contains("rootfs.tar has sha256"),
        "{err}"
    );
    assert!(
        !w.join("out/minimal.qcow2").exists(),
        "no image is published"
    );
    for e in std::fs::read_dir(&steps).unwrap().flatten() {
        let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap();
        assert!(
            !meta.contains("\"kind\": \"image\""),
            "no image step is kept"
        );
    }
}
