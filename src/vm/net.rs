//! The private IPv6 network of a multi-VM test (`mimg test --vm ...`):
//! one network namespace that is every VM's router. Each distinct
//! `[network]` of the overlays (gateway and prefix) gets a bridge holding
//! the gateway's address, each VM a tap on its bridge, so VMs in different
//! prefixes reach each other through the router and VMs in one prefix
//! share a link. The namespace's loopback holds the services' address
//! ([`SERVICES`]) and every DNS address an overlay names; the test
//! network's DNS server (`mimg __dns`, [`super::dns`]) answers there for
//! every name the overlays serve, and a local ACME server (Pebble) can be
//! started beside it. `ip netns exec` gives commands run there
//! `/etc/netns/NAME/resolv.conf`, so names resolve for them too.
//!
//! Everything is removed on drop: the processes are killed, the namespace
//! (with its bridges and taps) deleted, `/etc/netns/NAME` removed; on
//! SIGINT or SIGTERM the same is done before mimg exits, and a namespace
//! that a killed mimg left (its process gone) is removed by the next run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::{Context, Result, bail};

use crate::tools::netns;

/// The address of the test network's services (DNS, ACME) on the router.
pub const SERVICES: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6d69, 0x6d67, 0, 0, 0, 0, 0x53);
/// The name the ACME server answers to (its certificate names it).
pub const ACME_NAME: &str = "acme.mimg.test";

/// One VM's place on the network.
#[derive(Debug, Clone)]
pub struct Member {
    pub address: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
    pub dns: Vec<Ipv6Addr>,
    /// Names served by this VM (answered with its address).
    pub names: Vec<String>,
    /// The overlay's MAC address, if it names one.
    pub mac: Option<String>,
    /// The monitoring LAN's address, prefix and MAC (if the overlay names
    /// one), where the overlay has `[monitoring]`.
    pub monitoring: Option<(Ipv6Addr, u8, Option<String>)>,
}

/// What a signal handler must remove: each live network's namespace,
/// its /etc/netns directory and the processes in it.
type Live = (String, Vec<PathBuf>, Vec<u32>);
static LIVE: std::sync::Mutex<Vec<Live>> = std::sync::Mutex::new(Vec::new());

fn teardown(ns: &str, dirs: &[PathBuf], pids: &[u32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    netns::delete(ns);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn on_signal_tear_down() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            eprintln!("mimg: interrupted: stopping the test network");
            if let Ok(live) = LIVE.lock() {
                for (ns, dirs, pids) in live.iter() {
                    teardown(ns, dirs, pids);
                }
            }
            std::process::exit(130);
        });
    });
}

/// Remove test networks whose mimg is gone (killed before it could).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("mimg-net-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            netns::delete(&name);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&name));
        }
    }
}

/// A running test network; torn down on drop.
pub struct TestNet {
    pub ns: String,
    /// One per member, in order.
    pub attach: Vec<super::Attach>,
    /// Where names resolve (the DNS server listens on each).
    pub dns: Vec<Ipv6Addr>,
    children: Vec<(String, Child)>,
    etc: PathBuf,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        netns::delete(&self.ns);
        let _ = std::fs::remove_dir_all(&self.etc);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|(ns, _, _)| ns != &self.ns);
        }
    }
}

/// The router's address on a monitoring LAN: the network's `::fffe`, or
/// the next one down that no VM has.
fn monitoring_router_address(net: Ipv6Addr, prefix: u8, members: &[Member]) -> Ipv6Addr {
    let used: Vec<Ipv6Addr> = members
        .iter()
        .filter_map(|m| m.monitoring.as_ref().map(|(a, _, _)| *a))
        .collect();
    let host_bits = 128 - prefix as u32;
    let top = if host_bits >= 16 {
        0xfffe
    } else {
        (1u128 << host_bits) - 2
    };
    (1..=top)
        .rev()
        .map(|h| Ipv6Addr::from(u128::from(net) | h))
        .find(|a| !used.contains(a))
        .unwrap_or(net)
}

/// The network part of `addr/prefix`.
pub fn network_of(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    };
    Ipv6Addr::from(u128::from(addr) & mask)
}

fn ip(args: &[&str]) -> Result<()> {
    Ok(netns::ip(args)?)
}

/// `ADDR/PREFIX` on `dev` in `ns`, without duplicate address detection
/// (the test network's addresses are its own).
fn addr_add(ns: &str, cidr: &str, dev: &str) -> Result<()> {
    ip(&["-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad"])
}

impl TestNet {
    /// Make the namespace, bridges, taps and addresses, and start the DNS
    /// server with `extra` names beside the members'.
    pub fn start(members: &[Member], extra: &[(String, Ipv6Addr)]) -> Result<TestNet> {
        if !crate::tools::is_root() {
            bail!(
                "a test network needs root (network namespaces and tap devices)\nhint: run mimg test --vm as root, or test one VM with `mimg test RECIPE --overlay FILE`"
            );
        }
        sweep_stale();
        on_signal_tear_down();
        let ns = format!("mimg-net-{}", std::process::id());
        netns::delete(&ns);
        let etc = PathBuf::from("/etc/netns").join(&ns);
        LIVE.lock()
            .expect("not poisoned")
            .push((ns.clone(), vec![etc.clone()], Vec::new()));
        ip(&["netns", "add", &ns])?;
        let mut net = TestNet {
            ns: ns.clone(),
            attach: Vec::new(),
            dns: Vec::new(),
            children: Vec::new(),
            etc,
        };
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ])?;
        let mut bridges: BTreeMap<(Ipv6Addr, u8), String> = BTreeMap::new();
        let mut taken: Vec<Ipv6Addr> = Vec::new();
        let mut monitoring_bridges: BTreeMap<(Ipv6Addr, u8), String> = BTreeMap::new();
        for (i, m) in members.iter().enumerate() {
            let key = (m.gateway, m.prefix);
            let br = match bridges.get(&key) {
                Some(b) => b.clone(),
                None => {
                    let b = format!("br{}", bridges.len());
                    ip(&["-n", &ns, "link", "add", &b, "type", "bridge"])?;
                    addr_add(&ns, &format!("{}/{}", m.gateway, m.prefix), &b)?;
                    ip(&["-n", &ns, "link", "set", &b, "up"])?;
                    taken.push(m.gateway);
                    bridges.insert(key, b.clone());
                    b
                }
            };
            let tap = format!("tap{i}");
            ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip(&["-n", &ns, "link", "set", &tap, "master", &br])?;
            ip(&["-n", &ns, "link", "set", &tap, "up"])?;
            let mac = m
                .mac
                .clone()
                .unwrap_or_else(|| format!("52:54:00:6d:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff));
            // The monitoring LAN: a bridge per network, on which the
            // router (where a Prometheus of the test runs) has an address.
            let monitoring = match &m.monitoring {
                None => None,
                Some((addr, prefix, mmac)) => {
                    let key = (network_of(*addr, *prefix), *prefix);
                    let br = match monitoring_bridges.get(&key) {
                        Some(b) => b.clone(),
                        None => {
                            let b = format!("mon{}", monitoring_bridges.len());
                            ip(&["-n", &ns, "link", "add", &b, "type", "bridge"])?;
                            let own = monitoring_router_address(key.0, *prefix, members);
                            addr_add(&ns, &format!("{own}/{prefix}"), &b)?;
                            ip(&["-n", &ns, "link", "set", &b, "up"])?;
                            monitoring_bridges.insert(key, b.clone());
                            b
                        }
                    };
                    let mtap = format!("mtap{i}");
                    ip(&["-n", &ns, "tuntap", "add", "dev", &mtap, "mode", "tap"])?;
                    ip(&["-n", &ns, "link", "set", &mtap, "master", &br])?;
                    ip(&["-n", &ns, "link", "set", &mtap, "up"])?;
                    let mmac = mmac.clone().unwrap_or_else(|| {
                        format!("52:54:00:6e:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
                    });
                    Some((mtap, mmac))
                }
            };
            net.attach.push(super::Attach {
                netns: ns.clone(),
                tap,
                mac,
                monitoring,
            });
        }
        // The services' address and every DNS server an overlay names.
        let mut dns = vec![SERVICES];
        for m in members {
            for d in &m.dns {
                if !dns.contains(d) && !taken.contains(d) {
                    dns.push(*d);
                }
            }
        }
        for d in &dns {
            addr_add(&ns, &format!("{d}/128"), "lo")?;
        }
        net.dns = dns;
        std::fs::create_dir_all(&net.etc)
            .with_context(|| format!("cannot make {}", net.etc.display()))?;
        std::fs::write(
            net.etc.join("resolv.conf"),
            format!("# mimg test network\nnameserver {SERVICES}\n"),
        )?;

        let mut args: Vec<String> = vec!["__dns".into()];
        for d in &net.dns {
            args.push("--listen".into());
            args.push(format!("[{d}]:53"));
        }
        for m in members {
            for n in &m.names {
                args.push("--record".into());
                args.push(format!("{n}={}", m.address));
            }
        }
        for (n, a) in extra {
            args.push("--record".into());
            args.push(format!("{n}={a}"));
        }
        let exe = format!("/proc/{}/exe", std::process::id());
        let mut dns = netns::spawn(&ns, &exe, &args, &[], Stdio::piped(), Stdio::inherit())?;
        net.track(dns.id());
        let mut line = String::new();
        BufReader::new(dns.stdout.take().expect("piped")).read_line(&mut line)?;
        net.children.push(("dns".into(), dns));
        if line.trim() != "ready" {
            bail!("the test network's DNS server did not start");
        }
        Ok(net)
    }

    /// Run `program` in the namespace until the network is dropped.
    pub fn spawn_service(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> Result<()> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let c = netns::spawn(&self.ns, program, args, env, out.into(), err.into())
            .with_context(|| format!("cannot start {name} in the test network"))?;
        self.track(c.id());
        self.children.push((name.into(), c));
        Ok(())
    }

    /// Kill `pid` too if mimg is interrupted (a VM's QEMU).
    pub fn track(&self, pid: u32) {
        if let Ok(mut live) = LIVE.lock()
            && let Some(l) = live.iter_mut().find(|(ns, _, _)| ns == &self.ns)
        {
            l.2.push(pid);
        }
    }

    /// Remove `dir` too if mimg is interrupted (the run's work directory:
    /// seeds, data disks, serial logs).
    pub fn remove_on_signal(&self, dir: &std::path::Path) {
        if let Ok(mut live) = LIVE.lock()
            && let Some(l) = live.iter_mut().find(|(ns, _, _)| ns == &self.ns)
        {
            l.1.push(dir.to_path_buf());
        }
    }

    /// Whether every service still runs; names the first that stopped.
    pub fn check_services(&mut self) -> Result<()> {
        for (n, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("the test network's {n} stopped ({st})");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_of_masks_the_host_part() {
        let a: Ipv6Addr = "2001:db8:10::20".parse().unwrap();
        assert_eq!(network_of(a, 64).to_string(), "2001:db8:10::");
        assert_eq!(network_of(a, 128), a);
    }
}
