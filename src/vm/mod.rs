//! Booting images: QEMU with the image opened through a throw-away
//! overlay (never modified), an optional seed and data disk, the serial
//! console to a log file, and TCP forwards from 127.0.0.1 into the guest.
//!
//! The guest is IPv6-only, and QEMU's user network cannot forward to an
//! IPv6 guest. So as root the VM runs in a private network namespace with a
//! tap device whose host side holds the seed's gateway address, and each
//! forward relays into that namespace over IPv6. Without root (no
//! /dev/net/tun, no namespaces to make) mimg says so and falls back to
//! QEMU's user network, where forwards reach the guest only over IPv4.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{Context, Result};

pub mod acceptance;
pub mod ca;
pub mod dns;
pub mod federation;
pub mod monitoring;
pub mod net;
pub mod turn;

/// A forward `HOSTPORT:GUESTPORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (h, g) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not HOSTPORT:GUESTPORT"))?;
        let p = |x: &str| {
            x.parse::<u16>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("`{x}` is not a port (1-65535)"))
        };
        Ok(Forward {
            host: p(h)?,
            guest: p(g)?,
        })
    }
}

/// The guest's address and gateway, read from a seed's network-config.
pub fn seed_network(seed: &Path) -> Result<Option<(Ipv6Addr, u8, Ipv6Addr)>> {
    let data =
        std::fs::read(seed).with_context(|| format!("cannot read seed {}", seed.display()))?;
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(data), fatfs::FsOptions::new())
        .context("the seed is not a FAT volume")?;
    let mut text = String::new();
    match fs.root_dir().open_file("network-config") {
        Ok(mut f) => {
            f.read_to_string(&mut text)?;
        }
        Err(_) => return Ok(None),
    }
    let unq = |l: &str| {
        l.trim()
            .trim_start_matches("- ")
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let mut addr = None;
    let mut gw = None;
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "addresses:" && addr.is_none() {
            if let Some(next) = lines.next() {
                let v = unq(next);
                if let Some((a, p)) = v.split_once('/') {
                    addr = a.parse::<Ipv6Addr>().ok().zip(p.parse::<u8>().ok());
                }
            }
        } else if let Some(v) = l
            .trim()
            .strip_prefix("gateway6:")
            .or_else(|| l.trim().strip_prefix("via:"))
        {
            gw = unq(v).parse::<Ipv6Addr>().ok();
        }
    }
    Ok(addr.zip(gw).map(|((a, p), g)| (a, p, g)))
}

/// How to boot.
pub struct RunSpec {
    pub image: PathBuf,
    pub seed: Option<PathBuf>,
    pub data_disk: Option<PathBuf>,
    /// The data disk is a throwaway the caller made (a test's blank disk):
    /// the guest's flushes need not reach the host's disk. Never for a
    /// disk a user named.
    pub scratch_data: bool,
    pub forwards: Vec<Forward>,
    pub serial_log: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub uefi: bool,
    /// Join a test network's namespace on this tap (made by
    /// [`net::TestNet`]) instead of a private namespace of its own.
    pub attach: Option<Attach>,
}

/// A tap in a test network for one VM.
#[derive(Debug, Clone)]
pub struct Attach {
    pub netns: String,
    pub tap: String,
    /// The NIC's MAC address: VMs on one bridge need their own.
    pub mac: String,
    /// A second NIC on the monitoring LAN: its tap and MAC address.
    pub monitoring: Option<(String, String)>,
}

/// A running VM; stopped (QEMU killed, namespace removed) on drop.
pub struct Vm {
    child: Child,
    netns: Option<String>,
    /// Whether the namespace is this VM's own (removed on drop).
    owns_netns: bool,
    _work: tempfile::TempDir,
    pub serial_log: PathBuf,
    pub guest: Option<Ipv6Addr>,
    pub mode: &'static str,
    /// The accelerator QEMU runs with: `kvm` or `tcg`.
    pub accel: &'static str,
    errors_shown: bool,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A QEMU that stopped by itself says why.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.show_errors();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(ns) = &self.netns
            && self.owns_netns
        {
            crate::tools::netns::delete(ns);
        }
    }
}

impl Vm {
    /// Wait for QEMU to exit; returns its exit status.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let st = self.child.wait()?;
        self.show_errors();
        Ok(st)
    }

    /// QEMU's stderr on ours, once.
    fn show_errors(&mut self) {
        if !self.errors_shown {
            self.errors_shown = true;
            eprint!("{}", self.qemu_errors());
        }
    }
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Whether QEMU still runs a guest (a guest KVM failed on is paused
    /// for good while QEMU lives on: not running).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
            && (self.accel != "kvm" || !self.qemu_errors().contains(KVM_INTERNAL_ERROR))
    }
    /// The serial console so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }
}

/// The PCI slot of the public NIC (the guest names it ens3); the
/// monitoring NIC's is the next.
const SLOT_NIC: u8 = 3;
/// Every NIC without its option ROM: the guest boots from its disk, and
/// the ROM's network boot firmware (iPXE) only waited seconds at every
/// boot for a key press ("Press Ctrl-B"), longer under emulation.
const NO_ROM: &str = ",romfile=";
/// The PCI slot of the root disk; the data disk and the seed follow.
const SLOT_ROOT: u8 = 5;

/// Whether KVM works: /dev/kvm can exist and still fail at the first vCPU
/// reset, so start a paused QEMU with it and see whether it survives.
/// `MIMG_ACCEL=tcg` or `=kvm` decides without probing; otherwise a failure
/// remembered for this host ([`kvm_failed_file`]) says no without probing.
fn kvm_usable() -> bool {
    match std::env::var("MIMG_ACCEL").as_deref() {
        Ok("tcg") => return false,
        Ok("kvm") => return true,
        _ => {}
    }
    if let Some(f) = kvm_failed_before() {
        // Said once: every later VM of this process boots with TCG.
        KVM_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "mimg: a guest failed under KVM on this host before (remembered in {}): booting with TCG (MIMG_ACCEL=kvm tries KVM again)",
            f.display()
        );
        return false;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    crate::tools::qemu::kvm_works()
}

/// Set once a guest failed under KVM in this process: later VMs boot with
/// TCG straight away.
static KVM_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A guest that failed under KVM is remembered for this host, so that the
/// next `mimg run` or `mimg test` does not wait for it again (20 s after
/// GRUB): `$XDG_STATE_HOME/mimg/kvm-failed` (else
/// `~/.local/state/mimg/kvm-failed`), holding the kernel release and the
/// QEMU version it failed with. Either changed, KVM is tried again; a guest
/// that boots under KVM (`MIMG_ACCEL=kvm` forces a try) removes the file.
fn kvm_failed_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").filter(|p| !p.is_empty())?).join(".local/state")
        }
    };
    Some(base.join("mimg/kvm-failed"))
}

/// This host's kernel release and QEMU version: what a remembered KVM
/// failure holds.
fn kvm_host() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu = crate::tools::qemu::system_version();
    format!("kernel {}; {}\n", kernel.trim(), qemu.trim())
}

/// Whether a guest failed under KVM on this host before (same kernel and
/// QEMU): the file that says so.
fn kvm_failed_before() -> Option<PathBuf> {
    let f = kvm_failed_file()?;
    let said = std::fs::read_to_string(&f).ok()?;
    (said == kvm_host()).then_some(f)
}

/// What QEMU prints when KVM cannot run the guest's code (it then pauses
/// the guest for good, and stays alive).
const KVM_INTERNAL_ERROR: &str = "KVM internal error";

/// Boot per `spec`. Forwards are served by threads of this process.
///
/// With KVM, the boot is watched until the guest's kernel speaks on the
/// serial console: on some hosts /dev/kvm opens and a paused QEMU answers
/// (the probe passes) and yet the guest's first kernel instructions end in
/// "KVM internal error" (seen under nested virtualisation), with QEMU
/// alive and the guest paused for good. Then the VM is started again with
/// TCG, and so is every later one of this process.
pub fn start(spec: &RunSpec) -> Result<Vm> {
    let kvm = !KVM_FAILED.load(std::sync::atomic::Ordering::Relaxed) && kvm_usable();
    let vm = if kvm {
        let mut vm = launch(spec, "kvm")?;
        if vm.kvm_boots() {
            if let Some(f) = kvm_failed_file() {
                let _ = std::fs::remove_file(f);
            }
            vm
        } else {
            KVM_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            let errors = vm.qemu_errors();
            let remembered = kvm_failed_file().and_then(|f| {
                std::fs::create_dir_all(f.parent()?).ok()?;
                std::fs::write(&f, kvm_host()).ok()?;
                Some(f)
            });
            eprintln!(
                "mimg: the guest failed under KVM ({}): booting it with TCG instead{}",
                errors
                    .lines()
                    .find(|l| l.contains(KVM_INTERNAL_ERROR))
                    .unwrap_or("its kernel never started"),
                remembered
                    .map(|f| format!(
                        " (remembered for this host in {}: later boots go straight to TCG)",
                        f.display()
                    ))
                    .unwrap_or_default()
            );
            drop(vm);
            let _ = std::fs::remove_file(&spec.serial_log);
            launch(spec, "tcg,thread=multi")?
        }
    } else {
        launch(spec, "tcg,thread=multi")?
    };
    if let (Some(ns), Some(g)) = (&vm.netns, vm.guest) {
        for f in &spec.forwards {
            relay(f.host, ns.clone(), g, f.guest)?;
        }
    }
    Ok(vm)
}

impl Vm {
    /// What QEMU wrote to its stderr so far.
    fn qemu_errors(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self._work.path().join("qemu.err")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Under KVM: whether the guest's kernel gets to speak, within 20 s of
    /// GRUB starting it (90 s in all). Under KVM that takes a second or
    /// two even on a busy host; a guest KVM failed on is silent for good,
    /// whether QEMU says so or not.
    fn kvm_boots(&mut self) -> bool {
        let t0 = std::time::Instant::now();
        let mut booting: Option<std::time::Instant> = None;
        while t0.elapsed() < std::time::Duration::from_secs(90)
            && booting.is_none_or(|b| b.elapsed() < std::time::Duration::from_secs(20))
        {
            if self.qemu_errors().contains(KVM_INTERNAL_ERROR) || !self.running() {
                return false;
            }
            let serial = self.serial();
            if serial.contains("Linux version") {
                return true;
            }
            if booting.is_none() && serial.contains("Booting `") {
                booting = Some(std::time::Instant::now());
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        false
    }
}

/// Start QEMU for `spec` with `accel`; no forwards yet.
fn launch(spec: &RunSpec, accel: &str) -> Result<Vm> {
    let work = tempfile::Builder::new().prefix("mimg-run-").tempdir()?;
    let overlay = work.path().join("overlay.qcow2");
    let image = std::fs::canonicalize(&spec.image)
        .with_context(|| format!("no image at {}", spec.image.display()))?;
    crate::tools::qemu::create_qcow2(&overlay, Some(&image), None).with_context(|| {
        format!(
            "qemu-img could not make an overlay of {}",
            spec.image.display()
        )
    })?;
    let mut args: Vec<String> = vec!["-accel".into(), accel.into(), "-cpu".into(), "max".into()];
    args.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
    ]);
    args.extend([
        "-nographic".into(),
        "-monitor".into(),
        "none".into(),
        "-display".into(),
        "none".into(),
    ]);
    args.extend([
        "-serial".into(),
        format!("file:{}", spec.serial_log.display()),
    ]);
    // Every device at a fixed PCI slot, so the guest's names never depend
    // on which others are there: the public NIC in slot 3 (ens3), the
    // monitoring NIC in slot 4 (ens4), then the disks in slots 5 to 7, so
    // the guest names them vda (root), vdb (data), then the seed. The data
    // disk's serial number also gives it a name that does not depend on
    // which other disks are there: /dev/disk/by-id/virtio-mimg-data.
    let mut disk = |id: &str, slot: u8, file: &Path, opts: &str, serial: Option<&str>| {
        let mut dev = format!("virtio-blk-pci,drive={id},addr={slot:#x}");
        if let Some(sn) = serial {
            dev.push_str(&format!(",serial={sn}"));
        }
        args.extend([
            "-drive".into(),
            format!("file={},if=none,id={id},{opts}", file.display()),
            "-device".into(),
            dev,
        ]);
    };
    // The root disk is this run's own overlay of the image, removed when
    // the VM stops: the guest's flushes (fsync) need not reach the host's
    // disk (`cache=unsafe`). Likewise a test's blank data disk; a data disk
    // a user named keeps QEMU's default, every flush written through. (On
    // this project's 2-core TCG host the first boot took about as long
    // either way: PostgreSQL's setup 21.0 s with it, 21.7 s without.)
    disk(
        "root",
        SLOT_ROOT,
        &overlay,
        "format=qcow2,cache=unsafe",
        None,
    );
    if let Some(d) = &spec.data_disk {
        let fmt = if d.extension().is_some_and(|e| e == "qcow2") {
            "format=qcow2"
        } else {
            "format=raw"
        };
        let opts = if spec.scratch_data {
            format!("{fmt},cache=unsafe")
        } else {
            fmt.to_string()
        };
        disk("data", SLOT_ROOT + 1, d, &opts, Some("mimg-data"));
    }
    if let Some(s) = &spec.seed {
        disk("seed", SLOT_ROOT + 2, s, "format=raw,readonly=on", None);
    }
    if spec.uefi {
        let vars = work.path().join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .context("OVMF is not installed (make deps)")?;
        args.extend(["-machine".into(), "q35".into()]);
        args.extend([
            "-drive".into(),
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        ]);
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    let net = match &spec.seed {
        Some(s) => seed_network(s)?,
        None => None,
    };
    let root = crate::tools::is_root();
    let (netns, guest, mode) = match (net, &spec.attach) {
        (Some((addr, _, _)), Some(at)) => {
            args.extend([
                "-netdev".into(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", at.tap),
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev=n0,mac={},addr={SLOT_NIC:#x}{NO_ROM}",
                    at.mac
                ),
            ]);
            if let Some((mtap, mmac)) = &at.monitoring {
                args.extend([
                    "-netdev".into(),
                    format!("tap,id=m0,ifname={mtap},script=no,downscript=no"),
                    "-device".into(),
                    format!(
                        "virtio-net-pci,netdev=m0,mac={mmac},addr={:#x}{NO_ROM}",
                        SLOT_NIC + 1
                    ),
                ]);
            }
            (
                Some(at.netns.clone()),
                Some(addr),
                "IPv6 on the test network (tap)",
            )
        }
        (Some((addr, prefix, gw)), None) if root => {
            let ns = format!("mimg-{}", std::process::id());
            let ip = |a: &[&str]| -> Result<()> { Ok(crate::tools::netns::ip(a)?) };
            ip(&["netns", "add", &ns])?;
            let setup = (|| -> Result<()> {
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&["-n", &ns, "tuntap", "add", "dev", "tap0", "mode", "tap"])?;
                ip(&[
                    "-n",
                    &ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{gw}/{prefix}"),
                    "dev",
                    "tap0",
                    "nodad",
                ])?;
                ip(&["-n", &ns, "link", "set", "tap0", "up"])?;
                Ok(())
            })();
            if let Err(e) = setup {
                crate::tools::netns::delete(&ns);
                return Err(e);
            }
            args.extend([
                "-netdev".into(),
                "tap,id=n0,ifname=tap0,script=no,downscript=no".into(),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,addr={SLOT_NIC:#x}{NO_ROM}"),
            ]);
            (
                Some(ns),
                Some(addr),
                "IPv6 in a private network namespace (tap)",
            )
        }
        _ => {
            if net.is_some() {
                eprintln!(
                    "mimg run: not root, so no network namespace or tap device: falling back to QEMU's user network; forwards reach the guest over IPv4 only"
                );
            }
            let mut nic = "user,id=n0,ipv6-net=fec0::/64".to_string();
            for f in &spec.forwards {
                nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
            }
            args.extend([
                "-netdev".into(),
                nic,
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,addr={SLOT_NIC:#x}{NO_ROM}"),
            ]);
            (None, None, "QEMU user network (IPv4 forwards)")
        }
    };
    // QEMU's stderr: kept, to see whether KVM failed, and shown when the
    // VM is stopped.
    let err = std::fs::File::create(work.path().join("qemu.err"))?;
    let child = crate::tools::qemu::start(&args, netns.as_deref(), err.into())
        .context("cannot start qemu-system-x86_64")?;
    let vm = Vm {
        child,
        netns: netns.clone(),
        owns_netns: spec.attach.is_none(),
        _work: work,
        serial_log: spec.serial_log.clone(),
        guest,
        mode,
        accel: if accel == "kvm" { "kvm" } else { "tcg" },
        errors_shown: false,
    };
    Ok(vm)
}

/// Listen on 127.0.0.1:`host`; relay each connection to [`guest`]:`port`
/// inside the namespace through `mimg __relay` run there.
pub(crate) fn relay(host: u16, ns: String, guest: Ipv6Addr, port: u16) -> Result<()> {
    let l = TcpListener::bind(("127.0.0.1", host))
        .with_context(|| format!("cannot listen on 127.0.0.1:{host}"))?;
    // Not current_exe(): that path may be gone if the binary was replaced.
    let exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (ns, exe) = (ns.clone(), exe.clone());
            std::thread::spawn(move || {
                let child = crate::tools::netns::spawn_piped(
                    &ns,
                    &exe,
                    &["__relay".to_string(), format!("[{guest}]:{port}")],
                );
                let Ok(mut child) = child else { return };
                let mut to_child = child.stdin.take().expect("piped");
                let mut from_child = child.stdout.take().expect("piped");
                let mut c2 = match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let mut c1 = conn;
                let up = std::thread::spawn(move || pump(&mut c1, &mut to_child));
                pump(&mut from_child, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
                let _ = up.join();
                let _ = child.kill();
                let _ = child.wait();
            });
        }
    });
    Ok(())
}

/// Copy until EOF with plain reads and writes, each chunk passed on at
/// once (no buffering, no splice: a request must reach the guest before
/// its reply is awaited).
fn pump(from: &mut dyn Read, to: &mut dyn Write) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    break;
                }
            }
        }
    }
}

/// The helper side of a relay: stdin/stdout <-> a TCP connection.
pub fn relay_stdio(target: &str) -> Result<()> {
    let s = TcpStream::connect(target).with_context(|| format!("cannot connect to {target}"))?;
    let mut r = s.try_clone()?;
    let mut w = s;
    // Not joined: see below.
    std::thread::spawn(move || {
        pump(&mut std::io::stdin().lock(), &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    // Flush every chunk: stdout is line-buffered, and an HTTP body need not
    // end in a newline while the connection stays open.
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
    // The guest closed the connection (nginx does on reload, on its
    // keep-alive limits, after an error): return, and the process exits,
    // closing stdout, so the client sees the close at once. Waiting for
    // stdin to end instead kept the client's side open: its next request on
    // that pooled connection went nowhere and hung until its timeout.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        assert_eq!(
            "8080:80".parse::<Forward>().unwrap(),
            Forward {
                host: 8080,
                guest: 80
            }
        );
        assert!("80".parse::<Forward>().is_err());
        assert!("0:80".parse::<Forward>().is_err());
    }
}
