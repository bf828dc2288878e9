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
    // The manifest, SBOM and provenance statement too: byte for byte.
    for f in [
        "minimal.manifest.json",
        "minimal.cdx.json",
        "minimal.intoto.json",
    ] {
        let ma = std::fs::read(a.out.join(f)).unwrap();
        let mb = std::fs::read(w.join("out").join(f)).unwrap();
        assert!(ma == mb, "{f} differs between the two stores");
    }
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
    let user = rootless_user();
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
    let rootless = |recipe: &str| {
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
            .args(["build", recipe, "--recipes"])
            .arg(repo().join("recipes"))
            .arg("--out")
            .arg(w.join("out"))
            .current_dir(&w)
            .output()
            .unwrap();
        eprintln!("{}{}", stdout(&o), stderr(&o));
        assert!(o.status.success(), "rootless build of {recipe} failed");
        sha256(&w.join(format!("out/{recipe}.qcow2")))
    };
    assert_eq!(
        rootless("minimal"),
        a.sha,
        "rootless and root builds differ"
    );
    // A run layer too runs rootless in the sandbox's user namespace: the
    // files it makes keep their owners, the bytes are the root build's.
    let root_banner = build("banner", &a.store, &w.join("out-root"));
    assert!(root_banner.status.success());
    assert_eq!(
        rootless("banner"),
        sha256(&w.join("out-root/banner.qcow2")),
        "rootless and root builds of a recipe with a run layer differ"
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
        Duration::from_secs(900),
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
        Duration::from_secs(900),
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
            t0.elapsed() < Duration::from_secs(600),
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
        let s = s.strip_suffix('\n').unwrap_or(&s).as_bytes();
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
        Duration::from_secs(900),
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

/// minimal's image from its committed lock, on any host: every program
/// that writes its bytes comes from the tools environment the lock pins.
/// A change that moves these bytes updates this in a commit of its own,
/// saying why.
const MINIMAL_SHA256: &str = "0c05031e8f6a3d663b520ed0d60b4286e2653101dae462fd29a092f8316c4436";

#[test]
fn minimal_has_the_pinned_digest() {
    let a = minimal();
    assert_eq!(
        a.sha, MINIMAL_SHA256,
        "minimal's image moved: if on purpose, update MINIMAL_SHA256 in its own commit"
    );
}

/// `mimg build --compress`: a qcow2 with zstd clusters, smaller, clean for
/// qemu-img, booting, and the same bytes when another store makes its
/// image step again.
#[test]
fn a_zstd_compressed_image_is_smaller_boots_and_is_reproducible() {
    let a = minimal();
    let w = work("compressed");
    let compressed = |store: &Path, out: &Path| {
        let mut c = mimg();
        c.args(["build", "minimal", "--compress", "--out"])
            .arg(out)
            .env("MIMG_STORE", store);
        let o = run(c);
        assert!(o.status.success(), "mimg build --compress");
        assert!(
            stdout(&o).contains("built 1 steps, reused 3"),
            "only the image step is made again"
        );
        out.join("minimal.qcow2")
    };
    let img = compressed(&a.store, &w.join("out-a"));
    let (small, big) = (
        std::fs::metadata(&img).unwrap().len(),
        std::fs::metadata(&a.image).unwrap().len(),
    );
    assert!(small < big * 3 / 4, "zstd: {small} bytes against {big}");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&img)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
    let ok = |args: &[&str]| {
        let mut c = Command::new("qemu-img");
        c.args(args);
        run(c).status.success()
    };
    assert!(ok(&["check", img.to_str().unwrap()]));
    // Another image key (so other disk GUIDs): not byte-equal to the
    // uncompressed disk, but QEMU reads it and it boots.
    let (t, log) = boot(
        &img,
        Firmware::SeaBios,
        &[],
        "login:",
        Duration::from_secs(900),
    );
    assert!(t.is_some(), "the zstd image gave no login prompt:\n{log}");
    let b = w.join("store-b");
    store_copy(&a.store, &b, &["image"]);
    let again = compressed(&b, &w.join("out-b"));
    assert_eq!(sha256(&img), sha256(&again), "two compressed builds differ");
}

/// A copy of `from` (a store) at `to`: every step but those of the kinds
/// in `without` copied, blobs hard-linked.
fn store_copy(from: &Path, to: &Path, without: &[&str]) {
    let steps = to.join("v1/steps");
    std::fs::create_dir_all(&steps).unwrap();
    cp("-al", &from.join("v1/blobs"), &to.join("v1/blobs"));
    for e in std::fs::read_dir(from.join("v1/steps")).unwrap().flatten() {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap();
        if !without.contains(&meta["kind"].as_str().unwrap()) {
            cp("-a", &e.path(), &steps.join(e.file_name()));
        }
    }
}

/// Every path under `dir` with its size, mtime and mode, to see that
/// nothing changed (compared with [`same_listing`]).
fn listing(dir: &Path) -> Vec<String> {
    let o = Command::new("find")
        .arg(dir)
        .args(["-printf", "%p %s %T@ %m\\n"])
        .output()
        .unwrap();
    let mut lines: Vec<_> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Panics naming the first lines that differ (the listings are long).
fn same_listing(before: &[String], after: &[String], what: &str) {
    let gone: Vec<_> = before
        .iter()
        .filter(|l| !after.contains(l))
        .take(5)
        .collect();
    let new: Vec<_> = after
        .iter()
        .filter(|l| !before.contains(l))
        .take(5)
        .collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "{what}: gone or changed {gone:?}, new or changed {new:?}"
    );
}

#[test]
fn a_damaged_tools_tree_is_named_by_verify_and_made_again_by_the_next_build() {
    let a = minimal();
    let w = work("damaged-tools");
    let store = w.join("store");
    store_copy(&a.store, &store, &[]);
    let tools = std::fs::read_dir(store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("root").is_dir())
        .expect("the tools step");
    let f = tools.join("root/usr/sbin/mke2fs");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();

    let mut c = mimg();
    c.args(["store", "verify"]).env("MIMG_STORE", &store);
    let o = run(c);
    assert!(!o.status.success(), "verify must fail on a damaged tree");
    let err = stderr(&o);
    assert!(
        err.contains("step tools") && err.contains("root/usr/sbin/mke2fs"),
        "verify names the step and the path: {err}"
    );

    // Everything is cached: the build still refuses the damaged tools
    // environment and makes it again; the image is unchanged.
    let o = build("minimal", &store, &w.join("out"));
    assert!(
        stdout(&o).contains("built 1 steps, reused 3"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("is damaged"), "{}", stderr(&o));
    let mut c = mimg();
    c.args(["store", "verify"]).env("MIMG_STORE", &store);
    assert!(run(c).status.success(), "the store is whole again");
    assert_eq!(sha256(&w.join("out/minimal.qcow2")), a.sha);

    // Damaged again, and this time the image step runs: the image is made
    // with a tools environment made again, and equals the first.
    let tools = std::fs::read_dir(store.join("v1/steps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("root").is_dir())
        .unwrap();
    let f = tools.join("root/usr/sbin/mke2fs");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[2000] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    for e in std::fs::read_dir(store.join("v1/steps")).unwrap().flatten() {
        if e.path().join("disk.qcow2").exists() {
            Command::new("rm")
                .arg("-rf")
                .arg(e.path())
                .status()
                .unwrap();
        }
    }
    let o = build("minimal", &store, &w.join("out2"));
    assert!(
        stdout(&o).contains("built 2 steps, reused 2"),
        "{}",
        stdout(&o)
    );
    assert_eq!(sha256(&w.join("out2/minimal.qcow2")), a.sha);
}

#[test]
fn plan_with_a_lock_needs_no_network_and_writes_nothing() {
    let a = minimal();
    let before = listing(&a.store);
    for args in [&["plan", "minimal"][..], &["plan", "minimal", "--json"]] {
        let mut c = Command::new("unshare");
        c.args(["-n", "--"])
            .arg(env!("CARGO_BIN_EXE_mimg"))
            .args(args)
            .env("MIMG_STORE", &a.store)
            .current_dir(repo());
        let o = run(c);
        assert!(o.status.success(), "plan with the network cut");
    }
    same_listing(&before, &listing(&a.store), "plan changed the store");
    // No store at all: plan creates none.
    let w = work("plan-pure");
    let mut c = Command::new("unshare");
    c.args(["-n", "--"])
        .arg(env!("CARGO_BIN_EXE_mimg"))
        .args(["plan", "minimal"])
        .env("MIMG_STORE", w.join("none"))
        .current_dir(repo());
    let o = run(c);
    assert!(o.status.success());
    assert!(stdout(&o).contains("4 of 4 steps to build"));
    assert!(!w.join("none").exists(), "plan made a store");
}

/// `mimg plan --json --offline` of `recipe` in `recipes`: label -> (key, cached).
fn plan_keys(recipes: &Path, recipe: &str, store: &Path) -> Vec<(String, String, bool)> {
    let mut c = mimg();
    c.args(["plan", recipe, "--json", "--offline", "--recipes"])
        .arg(recipes)
        .env("MIMG_STORE", store);
    plan_steps(c)
}

/// Run a `mimg plan --json` command: label, key and cached of each step.
fn plan_steps(c: Command) -> Vec<(String, String, bool)> {
    let o = run(c);
    assert!(o.status.success(), "mimg plan failed");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_pinned_input_in_the_lock_moves_exactly_its_steps_in_plan() {
    let a = minimal();
    let w = work("pins-move-keys");
    let recipes = w.join("recipes");
    cp("-a", &repo().join("recipes"), &recipes);
    let lock = std::fs::read_to_string(recipes.join("minimal.lock")).unwrap();
    // minimal with one pip layer more, its wheel pinned in its own lock.
    std::fs::write(
        recipes.join("pipped.toml"),
        "extends = \"minimal\"\n\n[[layer]]\nname = \"app\"\nkind = \"pip\"\nrequirements = [\"six==1.16.0\"]\nvenv = \"/opt/app\"\n",
    )
    .unwrap();
    let wheel = |sha: &str| {
        format!(
            "[[pip.app]]\nname = \"six\"\nversion = \"1.16.0\"\nfile = \"six-1.16.0-py2.py3-none-any.whl\"\nsha256 = \"{sha}\"\n\n"
        )
    };
    let pipped = |sha: &str| {
        lock.replace("recipe = \"minimal\"", "recipe = \"pipped\"")
            .replace("[pip]\n", &wheel(sha))
            .replace(
                "[pip_requirements]\n",
                "[pip_requirements]\napp = [\"six==1.16.0\"]\n",
            )
    };
    let sha_a = "8".repeat(64);
    std::fs::write(recipes.join("pipped.lock"), pipped(&sha_a)).unwrap();
    let base = plan_keys(&recipes, "pipped", &a.store);
    let labels: Vec<&str> = base.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        labels,
        ["tools", "rootfs", "layer:base-config", "layer:app", "image"]
    );
    assert!(
        base[0].2 && base[1].2 && base[2].2,
        "minimal's steps are cached"
    );

    let moved = |lock_text: String| -> Vec<String> {
        std::fs::write(recipes.join("pipped.lock"), lock_text).unwrap();
        let p = plan_keys(&recipes, "pipped", &a.store);
        base.iter()
            .zip(&p)
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, y)| {
                assert!(!y.2, "{} has a new key but is cached", x.0);
                x.0.clone()
            })
            .collect()
    };
    assert_eq!(
        moved(pipped(&"9".repeat(64))),
        ["layer:app", "image"],
        "a wheel's sha256"
    );
    assert_eq!(
        moved(pipped(&sha_a).replace("version = \"1.16.0\"\nfile", "version = \"1.16.1\"\nfile")),
        ["layer:app", "image"],
        "a wheel's version"
    );
    let first_deb = lock.find("[[debs.rootfs]]").unwrap();
    let sha_at = first_deb + lock[first_deb..].find("sha256 = \"").unwrap() + 10;
    let mut deb_changed = pipped(&sha_a);
    let off = deb_changed.find("[[debs.rootfs]]").unwrap();
    let at = off + deb_changed[off..].find("sha256 = \"").unwrap() + 10;
    deb_changed.replace_range(at..at + 64, &"7".repeat(64));
    assert_ne!(&lock[sha_at..sha_at + 64], "7".repeat(64));
    assert_eq!(moved(deb_changed), ["rootfs", "image"], "a .deb's sha256");
    let epoch_line = lock.lines().find(|l| l.starts_with("epoch = ")).unwrap();
    let epoch: u64 = epoch_line[8..].parse().unwrap();
    assert_eq!(
        moved(pipped(&sha_a).replacen(epoch_line, &format!("epoch = {}", epoch + 1), 1)),
        ["rootfs", "layer:base-config", "layer:app", "image"],
        "the epoch"
    );
    let tools_line = lock
        .lines()
        .find(|l| l.starts_with("tools_epoch = "))
        .unwrap();
    let tools_epoch: u64 = tools_line[14..].parse().unwrap();
    assert_eq!(
        moved(pipped(&sha_a).replace(tools_line, &format!("tools_epoch = {}", tools_epoch + 1))),
        ["tools", "rootfs", "image"],
        "the tools epoch (the tools install the rootfs)"
    );
    // A fetch layer's pinned sha256.
    std::fs::write(recipes.join("pipped.lock"), pipped(&sha_a)).unwrap();
    let fetch = |sha: &str| {
        format!(
            "\n[[layer]]\nname = \"web\"\nkind = \"fetch\"\nurl = \"http://127.0.0.1:9/web.tar.gz\"\nsha256 = \"{sha}\"\nto = \"/var/www\"\n"
        )
    };
    let text = std::fs::read_to_string(recipes.join("pipped.toml")).unwrap();
    std::fs::write(
        recipes.join("fetched.toml"),
        format!("{text}{}", fetch(&"1".repeat(64))),
    )
    .unwrap();
    std::fs::write(
        recipes.join("fetched.lock"),
        pipped(&sha_a).replace("recipe = \"pipped\"", "recipe = \"fetched\""),
    )
    .unwrap();
    let f1 = plan_keys(&recipes, "fetched", &a.store);
    std::fs::write(
        recipes.join("fetched.toml"),
        format!("{text}{}", fetch(&"2".repeat(64))),
    )
    .unwrap();
    let f2 = plan_keys(&recipes, "fetched", &a.store);
    let changed: Vec<&str> = f1
        .iter()
        .zip(&f2)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.as_str())
        .collect();
    assert_eq!(changed, ["layer:web", "image"], "a fetch layer's sha256");
}

#[test]
fn gc_that_cannot_read_a_manifest_or_a_lock_removes_nothing() {
    let a = minimal();
    let w = work("gc-unreadable");
    let store = w.join("store");
    store_copy(&a.store, &store, &[]);
    // What gc may not touch: the steps and the blobs.
    let entries = || {
        [
            listing(&store.join("v1/steps")),
            listing(&store.join("v1/blobs")),
        ]
        .concat()
    };
    let before = entries();
    let keep = w.join("images");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("broken.manifest.json"), "{ \"version\": 1, ").unwrap();
    let mut c = mimg();
    c.args(["store", "gc", "--keep"])
        .arg(&keep)
        .env("MIMG_STORE", &store);
    let o = run(c);
    assert!(!o.status.success(), "gc with a broken manifest must fail");
    assert!(
        stderr(&o).contains("broken.manifest.json"),
        "{}",
        stderr(&o)
    );
    same_listing(&before, &entries(), "gc removed something");

    std::fs::remove_file(keep.join("broken.manifest.json")).unwrap();
    let recipes = w.join("recipes");
    cp("-a", &repo().join("recipes"), &recipes);
    std::fs::write(recipes.join("minimal.lock"), "version = 1\nrecipe = ").unwrap();
    let mut c = mimg();
    c.args(["store", "gc", "--keep"])
        .arg(&a.out)
        .arg("--recipes")
        .arg(&recipes)
        .env("MIMG_STORE", &store);
    let o = run(c);
    assert!(!o.status.success(), "gc with a broken lock must fail");
    assert!(stderr(&o).contains("minimal.lock"), "{}", stderr(&o));
    same_listing(&before, &entries(), "gc removed something");

    let mut c = mimg();
    c.args(["store", "gc", "--keep"])
        .arg(w.join("no such dir"))
        .env("MIMG_STORE", &store);
    assert!(
        !run(c).status.success(),
        "a --keep directory that is not there"
    );
    same_listing(&before, &entries(), "gc removed something");
}

#[test]
fn gc_waits_for_a_running_build_and_sweeps_what_a_killed_one_left() {
    let a = minimal();
    let w = work("gc-running");
    let store = w.join("store");
    // No image step: a build makes it (some seconds), reading the others.
    store_copy(&a.store, &store, &["image"]);
    let build = || {
        let mut c = mimg();
        c.args(["build", "minimal", "-q", "--out"])
            .arg(w.join("out"))
            .env("MIMG_STORE", &store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let tmp = store.join("v1/tmp");
    let wait_for_tmp = |child: &mut std::process::Child| {
        let t0 = std::time::Instant::now();
        while std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "the build made nothing in tmp/"
            );
            assert!(child.try_wait().unwrap().is_none(), "the build ended first");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // A build killed in its image step leaves its pending entry in tmp/.
    let mut child = build().spawn().unwrap();
    wait_for_tmp(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(!left.is_empty(), "the killed build left nothing to sweep");
    let mut c = mimg();
    c.args(["store", "gc", "--keep"])
        .arg(&a.out)
        .env("MIMG_STORE", &store);
    let o = run(c);
    assert!(o.status.success());
    assert!(stdout(&o).contains("removed tmp"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "tmp/ was not swept"
    );

    // gc started while a build runs, keeping only what the output directory
    // names: it waits, then sees the build's manifest and keeps its steps.
    let child = build().spawn().unwrap();
    let mut child = child;
    wait_for_tmp(&mut child);
    let mut c = mimg();
    c.args(["store", "gc", "--keep"])
        .arg(w.join("out"))
        .env("MIMG_STORE", &store);
    let o = run(c);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build during gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("waiting for the builds"),
        "gc did not wait: {}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("removed 0 steps"), "{}", stdout(&o));
    assert_eq!(sha256(&w.join("out/minimal.qcow2")), a.sha);
    let mut c = mimg();
    c.args(["store", "verify"]).env("MIMG_STORE", &store);
    assert!(run(c).status.success());
    let o = build_again(&store, &w.join("out"));
    assert!(
        stdout(&o).contains("built 0 steps, reused 4"),
        "{}",
        stdout(&o)
    );
}

fn build_again(store: &Path, out: &Path) -> std::process::Output {
    let mut c = mimg();
    c.args(["build", "minimal", "--out"])
        .arg(out)
        .env("MIMG_STORE", store);
    run(c)
}

#[test]
fn host_package_tools_neither_move_a_key_nor_take_part_in_a_build() {
    let a = minimal();
    let w = work("host-tool");
    let bin = w.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Every host program that could write a tree, broken: the build must
    // not run them (the tools environment's own do the work).
    for tool in [
        "mmdebstrap",
        "apt",
        "apt-get",
        "dpkg",
        "dpkg-deb",
        "tar",
        "mkfs.ext4",
        "mke2fs",
        "qemu-img",
        "chroot",
    ] {
        let f = bin.join(tool);
        std::fs::write(
            &f,
            "#!/bin/sh\necho \"host $0 must not run\" >&2\nexit 97\n",
        )
        .unwrap();
        assert!(
            Command::new("chmod")
                .arg("+x")
                .arg(&f)
                .status()
                .unwrap()
                .success()
        );
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let keys = |path: Option<&str>| {
        let mut c = mimg();
        c.args(["plan", "minimal", "--json"])
            .env("MIMG_STORE", &a.store);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        plan_steps(c)
    };
    assert_eq!(keys(None), keys(Some(&path)), "host tools are in no key");
    // The rootfs and the image made again with those on PATH: same bytes.
    let store = w.join("store");
    store_copy(&a.store, &store, &["rootfs", "image"]);
    let mut c = mimg();
    c.args(["build", "minimal", "--out"])
        .arg(w.join("out"))
        .env("MIMG_STORE", &store)
        .env("PATH", &path);
    let out = run(c);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("must not run"), "{text}");
    assert_eq!(sha256(&w.join("out/minimal.qcow2")), a.sha);
}

/// `mimg build RECIPE --recipes DIR --json` into `store` and `out`: the
/// image's sha256 and (label, built) of each step.
fn build_json(
    recipe: &str,
    recipes: &Path,
    store: &Path,
    out: &Path,
) -> (String, Vec<(String, bool)>) {
    let mut c = mimg();
    c.args(["build", recipe, "--json", "--recipes"])
        .arg(recipes)
        .arg("--out")
        .arg(out)
        .env("MIMG_STORE", store);
    let o = run(c);
    assert!(o.status.success(), "build of {recipe} failed");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["built"].as_bool().unwrap(),
            )
        })
        .collect();
    (v["sha256"].as_str().unwrap().to_string(), steps)
}

/// A build of `recipe` that must fail (`why` says what it means if it does
/// not); its standard error.
fn failed_build(recipe: &str, recipes: &Path, store: &Path, out: &Path, why: &str) -> String {
    let mut c = mimg();
    c.args(["build", recipe, "--recipes"])
        .arg(recipes)
        .arg("--out")
        .arg(out)
        .env("MIMG_STORE", store);
    let o = run(c);
    assert!(!o.status.success(), "{why}");
    stderr(&o)
}

fn built_labels(steps: &[(String, bool)]) -> Vec<&str> {
    steps.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect()
}

#[test]
fn a_run_layer_between_files_layers_is_a_step_rebuilt_with_the_layer_before_it_and_boots() {
    let a = minimal();
    let w = work("run-layer");
    let recipes = w.join("recipes");
    cp("-a", &repo().join("recipes"), &recipes);
    let store = w.join("store");
    store_copy(&a.store, &store, &["layer", "image"]);
    let (_, steps) = build_json("banner", &recipes, &store, &w.join("out1"));
    assert_eq!(
        built_labels(&steps),
        [
            "layer:base-config",
            "layer:banner-unit",
            "layer:banner-enable",
            "layer:banner-dropin",
            "image"
        ],
        "tools and rootfs are minimal's"
    );

    // The text the files layer before the run layer ships, changed.
    std::fs::write(
        recipes.join("files/banner/etc/mimg/banner.txt"),
        "Changed for this test\nsecond line\n",
    )
    .unwrap();
    let (sha, steps) = build_json("banner", &recipes, &store, &w.join("out2"));
    assert_eq!(
        built_labels(&steps),
        ["layer:banner-unit", "layer:banner-enable", "image"],
        "exactly that layer, the run layer after it and the image"
    );

    // A cold build of the changed recipe (only the downloaded .debs shared).
    let cold = w.join("cold-store");
    store_copy(&a.store, &cold, &["tools", "rootfs", "layer", "image"]);
    let (cold_sha, cold_steps) = build_json("banner", &recipes, &cold, &w.join("out3"));
    assert!(
        cold_steps.iter().all(|s| s.1),
        "the cold build built every step"
    );
    assert_eq!(sha, cold_sha, "the rebuilt image equals a cold build");

    // What the run layer made: the unit enabled and the banner rendered.
    let tar = std::fs::read(
        store
            .join("v1/steps")
            .read_dir()
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p.join("meta.json"))
                    .is_ok_and(|m| m.contains("\"layer:banner-enable\""))
            })
            .expect("the run layer's step")
            .join("layer.tar"),
    )
    .unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    let mut paths = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p == "etc/issue.d/mimg-banner.issue" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert!(s.starts_with("== "), "{s}");
        }
        paths.push(p);
    }
    assert!(
        paths.contains(&"etc/systemd/system/multi-user.target.wants/mimg-banner.service".into()),
        "{paths:?}"
    );

    let (t, log) = boot(
        &w.join("out2/banner.qcow2"),
        Firmware::SeaBios,
        &[],
        "mimg-banner: hello, Changed for this test",
        Duration::from_secs(900),
    );
    assert!(
        t.is_some(),
        "the enabled unit did not say the banner:\n{log}"
    );
}

#[test]
fn a_run_layer_has_no_network_and_its_failure_says_so() {
    let a = minimal();
    let w = work("run-no-net");
    let recipes = w.join("recipes");
    cp("-a", &repo().join("recipes"), &recipes);
    // A listener on the host's loopback: a run layer sharing the host's
    // network would reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(
        recipes.join("reach.toml"),
        format!(
            "extends = \"minimal\"\n\n[[layer]]\nname = \"reach\"\nkind = \"run\"\nscript = \"\"\"\nbash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'\n\"\"\"\n"
        ),
    )
    .unwrap();
    let err = failed_build(
        "reach",
        &recipes,
        &a.store,
        &w.join("out"),
        "the run layer reached the host",
    );
    assert!(err.contains("layer `reach`"), "{err}");
    assert!(err.contains("no network"), "{err}");
    assert!(err.contains("its script failed (exit status 1)"), "{err}");
    assert!(
        err.contains("/dev/tcp/127.0.0.1"),
        "the script's own output: {err}"
    );
    assert!(
        listener.accept().is_err(),
        "nothing connected to the host's loopback"
    );
}

/// Run layers that see no other run layer's output are made side by side
/// while the build goes on (src/ops/build.rs, `deferrable`): both are
/// built and in the image's steps, and one that fails there fails the
/// build with its own layer's name and error.
#[test]
fn run_layers_made_side_by_side_are_built_and_say_their_errors() {
    let a = minimal();
    let w = work("run-side-by-side");
    let recipes = w.join("recipes");
    cp("-a", &repo().join("recipes"), &recipes);
    let layers = |second: &str| {
        format!(
            "extends = \"minimal\"\n\n[[layer]]\nname = \"one\"\nkind = \"run\"\nsees = []\nscript = \"echo one > /etc/side-one\"\n\n[[layer]]\nname = \"two\"\nkind = \"run\"\nsees = [\"files\"]\nscript = \"{second}\"\n"
        )
    };
    std::fs::write(
        recipes.join("side.toml"),
        layers("echo two > /etc/side-two"),
    )
    .unwrap();
    let (_, steps) = build_json("side", &recipes, &a.store, &w.join("out"));
    let built = built_labels(&steps);
    assert!(
        built.contains(&"layer:one") && built.contains(&"layer:two") && built.contains(&"image"),
        "{steps:?}"
    );
    std::fs::write(
        recipes.join("side.toml"),
        layers("echo the second layer fails >&2; exit 3"),
    )
    .unwrap();
    let err = failed_build(
        "side",
        &recipes,
        &a.store,
        &w.join("out"),
        "the failing run layer went unnoticed",
    );
    assert!(err.contains("layer `two`"), "{err}");
    assert!(err.contains("its script failed (exit status 3)"), "{err}");
    assert!(err.contains("the second layer fails"), "{err}");
}

/// The Debian mirror as mimg finds it (`MIMG_DEBIAN_MIRROR`, else the
/// first deb822 source of the host), for the test's own mmdebstrap.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("MIMG_DEBIAN_MIRROR") {
        return m;
    }
    let mut files: Vec<_> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if let Some(uri) = text
            .lines()
            .find_map(|l| l.strip_prefix("URIs:"))
            .and_then(|u| u.split_whitespace().next())
        {
            return uri.to_string();
        }
    }
    let text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| l.split_whitespace().find(|w| w.contains("://")))
        .expect("a Debian mirror is configured (MIMG_DEBIAN_MIRROR or apt sources)")
        .to_string()
}

/// Each path of a tar: type, mode, owner, mtime and content sha256 (or
/// link target), to name what differs between two trees.
fn tar_listing(tar: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest;
    let data = std::fs::read(tar).unwrap();
    let mut ar = tar::Archive::new(&data[..]);
    let mut out = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut body).unwrap();
        let link = e
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(
            path,
            format!(
                "{:?} {:o} {}:{} {} {} {}",
                h.entry_type(),
                h.mode().unwrap_or(0),
                h.uid().unwrap_or(0),
                h.gid().unwrap_or(0),
                h.mtime().unwrap_or(0),
                hex::encode(sha2::Sha256::digest(&body)),
                link
            ),
        );
    }
    out
}

/// The outputs (step label -> step directory) of a store.
fn step_dirs(store_steps: &Path) -> std::collections::BTreeMap<String, std::path::PathBuf> {
    std::fs::read_dir(store_steps)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).ok()?).ok()?;
            Some((meta["label"].as_str()?.to_string(), e.path()))
        })
        .collect()
}

#[test]
fn minimal_built_inside_a_trixie_host_root_is_the_same_image() {
    assert!(
        is_root(),
        "this test makes a second host root: run the suite as root"
    );
    let a = minimal();
    let w = work("second-host");
    let root = w.join("root");
    // The second host: Debian trixie's essential set (its own dpkg, tar,
    // coreutils, of other versions than this host's) and bubblewrap, which
    // is what the README says a host needs to build as root, plus mimg.
    let mut c = Command::new("mmdebstrap");
    c.args([
        "--quiet",
        "--mode=root",
        "--variant=essential",
        "--include=bubblewrap",
        "trixie",
    ])
    .arg(&root)
    .arg(debian_mirror());
    let o = run(c);
    assert!(o.status.success(), "mmdebstrap made the second host root");
    assert!(
        !root.join("usr/bin/mmdebstrap").exists() && !root.join("usr/bin/apt-get").exists(),
        "the second host has no mmdebstrap and no apt"
    );
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_mimg"), root.join("usr/local/bin/mimg")).unwrap();
    std::fs::create_dir_all(root.join("work")).unwrap();
    cp("-a", &repo().join("recipes"), &root.join("work/recipes"));
    for d in ["store", "out", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // Only the downloaded .debs come along (the build is offline); every
    // step is built there, into a store on tmpfs (this side's is on disk).
    let staging = w.join("staging");
    store_copy(&a.store, &staging, &["tools", "rootfs", "layer", "image"]);
    let script = r#"set -e
R="$1"; S="$2"
mount --bind "$R" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t tmpfs tmpfs "$R/tmp"
mount -t tmpfs -o size=8g tmpfs "$R/store"
cp -a "$S/." "$R/store/"
cd "$R"
mkdir -p old
pivot_root . old
/old/usr/bin/umount -l /old
rmdir /old
umask 077
status=0
env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root TZ=Pacific/Chatham \
    LANG=de_DE.UTF-8 LC_ALL=de_DE.UTF-8 MIMG_STORE=/store \
    mimg build minimal --offline --recipes /work/recipes --out /out || status=$?
mkdir -p /out/steps
for d in /store/v1/steps/*/; do
    mkdir -p "/out/steps/$(basename "$d")"
    cp -a "$d/meta.json" "/out/steps/$(basename "$d")/" 2>/dev/null || true
    for f in rootfs.tar layer.tar; do
        [ -f "$d/$f" ] && cp -a "$d/$f" "/out/steps/$(basename "$d")/" || true
    done
done
exit $status
"#;
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--pid",
        "--fork",
        "--propagation",
        "private",
        "--",
    ])
    .args(["/bin/sh", "-c", script, "sh"])
    .arg(&root)
    .arg(&staging);
    let o = run(c);
    let image = root.join("out/minimal.qcow2");
    let other = if o.status.success() {
        sha256(&image)
    } else {
        String::from("(no image)")
    };
    if other != a.sha {
        // Name what differs, step by step.
        let here = step_dirs(&a.store.join("v1/steps"));
        let there = step_dirs(&root.join("out/steps"));
        for (label, dir) in &there {
            let Some(mine) = here.get(label) else {
                eprintln!(
                    "step {label}: {} there, no step of that label here",
                    dir.display()
                );
                continue;
            };
            if mine.file_name() != dir.file_name() {
                eprintln!(
                    "step {label}: keys differ ({:?} here, {:?} there)",
                    mine.file_name(),
                    dir.file_name()
                );
            }
            for f in ["rootfs.tar", "layer.tar"] {
                if !dir.join(f).exists() {
                    continue;
                }
                let (x, y) = (tar_listing(&mine.join(f)), tar_listing(&dir.join(f)));
                let mut shown = 0;
                for p in x
                    .keys()
                    .chain(y.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    if x.get(p) != y.get(p) && shown < 60 {
                        eprintln!(
                            "{label}/{f}: {p}\n  here:  {:?}\n  there: {:?}",
                            x.get(p),
                            y.get(p)
                        );
                        shown += 1;
                    }
                }
            }
        }
    }
    assert!(o.status.success(), "the build on the second host failed");
    assert_eq!(other, a.sha, "the same image on both hosts");
}
