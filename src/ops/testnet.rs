//! `mimg test --vm RECIPE:OVERLAY ... [--exec CMD]`: several VMs on one
//! private IPv6 test network ([`crate::vm::net`]) with its own DNS and,
//! when an overlay says `tls = "acme"`, a local ACME server (Pebble, its
//! TLS certificate from a CA made for the run). Each VM gets its seed and a
//! blank data disk; the built-in checks run on every VM (over https where
//! TLS ends on it), the federation checks between every two homeservers,
//! then CMD inside the test network. Returns the report; prints nothing.
//!
//! What the driver sets in every overlay, whatever it says (the test
//! network is not the Internet): an `acme` overlay's directory is the
//! local Pebble and its `acme_ca_file` the run's CA; every homeserver's
//! `federation_ca_file` holds the CAs of the network (Pebble's issuing
//! root, the run's CA, and every overlay's own `federation_ca_file` and
//! `acme_ca_file`); `trusted_key_servers` is empty; the network's prefixes
//! are in `federation_ip_allow`; an overlay without DNS servers gets the
//! network's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::overlay::{AnyOverlay, CertChain, Ipv6Net, Overlay, Tls, TurnServer};
use crate::recipe::Recipe;
use crate::report::Reporter;
use crate::store::Store;
use crate::vm::acceptance::{self, Check, Client, TlsTarget};
use crate::vm::net::{self, ACME_NAME, Member, SERVICES, TestNet};

/// One VM to boot: a homeserver, or a TURN server (`kind = "turn"`).
pub struct VmSpec {
    pub recipe: Recipe,
    pub overlay: AnyOverlay,
}

/// A booted VM's part on the network, as the driver set it up.
enum Role {
    Homeserver(Overlay, Client),
    Turn(TurnServer),
}

impl Role {
    fn customer(&self) -> String {
        match self {
            Role::Homeserver(o, _) => o.customer.to_string(),
            Role::Turn(t) => t.customer.to_string(),
        }
    }

    fn address(&self) -> std::net::Ipv6Addr {
        match self {
            Role::Homeserver(o, _) => o.network.address.addr,
            Role::Turn(t) => t.network.address.addr,
        }
    }
}

pub struct NetOptions {
    pub out: PathBuf,
    /// Seconds each VM may take until Synapse answers.
    pub timeout: u64,
    /// Run inside the test network after the checks.
    pub exec: Option<String>,
}

#[derive(Serialize)]
pub struct VmReport {
    pub customer: String,
    pub recipe: String,
    pub image: PathBuf,
    pub address: String,
    pub accel: &'static str,
    pub checks: Vec<Check>,
    #[serde(skip)]
    pub serial_tail: String,
}

#[derive(Serialize)]
pub struct ExecReport {
    pub command: String,
    pub status: Option<i32>,
    pub output: String,
}

#[derive(Serialize)]
pub struct NetReport {
    pub ok: bool,
    pub seconds: f64,
    pub vms: Vec<VmReport>,
    pub federation: Vec<Check>,
    pub exec: Option<ExecReport>,
}

impl NetReport {
    /// The first failed check, with the VM it ran on.
    pub fn first_failure(&self) -> Option<(String, &Check)> {
        for v in &self.vms {
            if let Some(c) = v.checks.iter().find(|c| !c.ok) {
                return Some((v.customer.clone(), c));
            }
        }
        self.federation
            .iter()
            .find(|c| !c.ok)
            .map(|c| ("federation".to_string(), c))
    }
}

fn pem_join(parts: &[&str]) -> String {
    let mut s = String::new();
    for p in parts {
        s.push_str(p.trim_end());
        s.push('\n');
    }
    s
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Pebble on the test network; returns its issuing root (PEM).
fn start_acme(
    tn: &mut TestNet,
    ca: &crate::vm::ca::TestCa,
    work: &Path,
    rep: &dyn Reporter,
) -> Result<String> {
    if !crate::tools::netns::have("pebble") {
        bail!(
            "an overlay says tls = \"acme\" and the test network's ACME server, Pebble, is not installed\nhint: run `make deps` (or apt-get install pebble)"
        );
    }
    let dir = work.join("pebble");
    std::fs::create_dir_all(&dir)?;
    let leaf = ca.leaf(&[ACME_NAME.to_string(), SERVICES.to_string()])?;
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem)?;
    std::fs::write(dir.join("key.pem"), &leaf.key_pem)?;
    let cfg = serde_json::json!({ "pebble": {
        "listenAddress": "[::]:14000",
        "managementListenAddress": "[::]:15000",
        "certificate": dir.join("cert.pem"),
        "privateKey": dir.join("key.pem"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    tn.spawn_service(
        "ACME server (Pebble)",
        "pebble",
        &[
            "-config".into(),
            dir.join("config.json").display().to_string(),
            "-dnsserver".into(),
            format!("[{SERVICES}]:53"),
        ],
        &[
            // Validation stays real (HTTP-01 against the VM's nginx);
            // only Pebble's random waits and refused nonces are off.
            ("PEBBLE_VA_NOSLEEP".into(), "1".into()),
            ("PEBBLE_WFE_NONCEREJECT".into(), "0".into()),
        ],
        &work.join("pebble.log"),
    )?;
    let port = free_port()?;
    crate::vm::relay(port, tn.ns.clone(), SERVICES, 15000)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes())?)
        .resolve(
            ACME_NAME,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()?;
    let t0 = Instant::now();
    loop {
        tn.check_services()
            .with_context(|| format!("see {}", work.join("pebble.log").display()))?;
        if let Ok(r) = client
            .get(format!("https://{ACME_NAME}:{port}/roots/0"))
            .send()
            && r.status().is_success()
        {
            let root = r.text()?;
            CertChain::parse(&root).map_err(|e| anyhow::anyhow!("Pebble's root: {}", e.0))?;
            rep.note(&format!(
                "ACME server (Pebble) up at https://{ACME_NAME}:14000/dir after {:.1}s",
                t0.elapsed().as_secs_f64()
            ));
            return Ok(root);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "Pebble did not serve its root within 60 s (see {})",
                work.join("pebble.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Boot every VM on one test network and check them, then run `exec`.
pub fn test_network(
    specs: Vec<VmSpec>,
    store: Store,
    opts: &NetOptions,
    rep: &dyn Reporter,
) -> Result<NetReport> {
    let t0 = Instant::now();
    if specs.is_empty() {
        bail!("no VM to test\nhint: mimg test --vm RECIPE:OVERLAY [--vm RECIPE:OVERLAY ...]");
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &specs {
        let a = s.overlay.network().address.addr;
        if !seen.insert(a) {
            bail!("two overlays have the address {a}: every VM of a test network needs its own");
        }
    }
    let mut images = Vec::new();
    for s in &specs {
        let built = crate::ops::build::build(
            &s.recipe,
            &store,
            &opts.out,
            rep,
            crate::ops::Options::default(),
        )?;
        images.push(built.image);
    }
    drop(store);
    let work = tempfile::Builder::new().prefix("mimg-testnet-").tempdir()?;
    let members: Vec<Member> = specs
        .iter()
        .map(|s| {
            let n = s.overlay.network();
            Member {
                address: n.address.addr,
                prefix: n.address.prefix,
                gateway: n.gateway,
                dns: n.dns.clone(),
                names: match &s.overlay {
                    AnyOverlay::Homeserver(o) => o.names().iter().map(|n| n.to_string()).collect(),
                    AnyOverlay::Turn(t) => vec![t.realm.to_string()],
                },
                mac: n.mac.clone(),
                monitoring: match &s.overlay {
                    AnyOverlay::Homeserver(o) => o
                        .monitoring
                        .as_ref()
                        .map(|m| (m.address.addr, m.address.prefix, m.mac.clone())),
                    AnyOverlay::Turn(_) => None,
                },
            }
        })
        .collect();
    let mut tn = TestNet::start(&members, &[(ACME_NAME.to_string(), SERVICES)])?;
    tn.remove_on_signal(work.path());
    rep.note(&format!(
        "test network {}: DNS at {}",
        tn.ns,
        tn.dns
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The CAs of the network.
    let ca = crate::vm::ca::TestCa::new("mimg test network CA")?;
    let homeservers = || {
        specs.iter().filter_map(|s| match &s.overlay {
            AnyOverlay::Homeserver(o) => Some(&**o),
            AnyOverlay::Turn(_) => None,
        })
    };
    let acme = homeservers().any(|o| o.tls == Tls::Acme);
    let pebble_root = if acme {
        Some(start_acme(&mut tn, &ca, work.path(), rep)?)
    } else {
        None
    };
    let mut bundle_parts: Vec<String> = vec![ca.pem().to_string()];
    bundle_parts.extend(pebble_root.clone());
    for o in homeservers() {
        if let Some(c) = &o.federation_ca {
            bundle_parts.push(c.text().to_string());
        }
        if let Some(c) = o.acme.as_ref().and_then(|a| a.ca.as_ref()) {
            bundle_parts.push(c.text().to_string());
        }
    }
    let bundle = pem_join(&bundle_parts.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let bundle_file = work.path().join("ca.pem");
    std::fs::write(&bundle_file, &bundle)?;
    let bundle_chain =
        CertChain::parse(&bundle).map_err(|e| anyhow::anyhow!("the CA bundle: {}", e.0))?;
    let test_ca = CertChain::parse(ca.pem()).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let allow: Vec<Ipv6Net> = members
        .iter()
        .map(|m| Ipv6Net {
            addr: net::network_of(m.address, m.prefix),
            prefix: m.prefix,
        })
        .collect();

    // VMs side by side share the host's cores: under TCG a vCPU is a host
    // thread, and more vCPUs than cores only adds contention.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let cpus = (cores / specs.len()).clamp(1, 2) as u32;
    // Each VM: the overlay as the network needs it, its seed, a data disk.
    let mut vms = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let o = match &s.overlay {
            AnyOverlay::Homeserver(o) => {
                let mut o = (**o).clone();
                if let Some(a) = o.acme.as_mut() {
                    a.directory = format!("https://{ACME_NAME}:14000/dir")
                        .parse()
                        .expect("valid");
                    a.ca = Some(test_ca.clone());
                }
                o.federation_ca = Some(bundle_chain.clone());
                o.trusted_key_servers = Some(Vec::new());
                for n in &allow {
                    if !o.federation_ip_allow.contains(n) {
                        o.federation_ip_allow.push(*n);
                    }
                }
                if o.network.dns.is_empty() {
                    o.network.dns = vec![SERVICES];
                }
                AnyOverlay::Homeserver(Box::new(o))
            }
            AnyOverlay::Turn(t) => {
                let mut t = (**t).clone();
                if t.network.dns.is_empty() {
                    t.network.dns = vec![SERVICES];
                }
                AnyOverlay::Turn(Box::new(t))
            }
        };
        let rendered = crate::seed::render_any(&o);
        let seed = work.path().join(format!("seed-{i}.img"));
        std::fs::write(
            &seed,
            crate::seed::image(&rendered, crate::seed::volume_id(&rendered))?,
        )?;
        let data = work.path().join(format!("data-{i}.qcow2"));
        crate::tools::qemu::create_qcow2(&data, None, Some("8G"))
            .context("qemu-img could not make a data disk")?;
        let (p80, p443) = (free_port()?, free_port()?);
        let hs = matches!(o, AnyOverlay::Homeserver(_));
        let spec = crate::vm::RunSpec {
            image: images[i].clone(),
            seed: Some(seed),
            data_disk: Some(data),
            scratch_data: true,
            forwards: if hs {
                vec![
                    crate::vm::Forward {
                        host: p80,
                        guest: 80,
                    },
                    crate::vm::Forward {
                        host: p443,
                        guest: 443,
                    },
                ]
            } else {
                Vec::new()
            },
            serial_log: work.path().join(format!("serial-{}.log", o.customer())),
            // coturn alone needs far less than Synapse and PostgreSQL.
            memory_mib: if hs { 2048 } else { 1024 },
            cpus,
            uefi: false,
            attach: Some(tn.attach[i].clone()),
        };
        let vm = crate::vm::start(&spec)?;
        tn.track(vm.pid());
        rep.note(&format!(
            "booting {} for {} ({}) at {} ({})",
            images[i].display(),
            o.customer(),
            o.kind(),
            o.network().address.addr,
            vm.accel.to_uppercase()
        ));
        let role = match o {
            AnyOverlay::Homeserver(o) => {
                let tls = (o.tls != Tls::External).then(|| TlsTarget {
                    port: p443,
                    names: o.names().iter().map(|n| n.to_string()).collect(),
                    ca_pem: &bundle,
                });
                let client = Client::with_tls(p80, tls)?;
                Role::Homeserver(*o, client)
            }
            AnyOverlay::Turn(t) => Role::Turn(*t),
        };
        vms.push((vm, role));
    }

    // Every VM's checks, side by side.
    let limit = Duration::from_secs(opts.timeout);
    let ns = tn.ns.as_str();
    let reports: Vec<Vec<Check>> = std::thread::scope(|sc| {
        let handles: Vec<_> = vms
            .iter_mut()
            .map(|(vm, role)| {
                let guest = vm.guest;
                let accel = vm.accel;
                let mode = vm.mode;
                let role = &*role;
                sc.spawn(move || match role {
                    Role::Homeserver(o, client) => {
                        let boot = Instant::now();
                        let healthy =
                            acceptance::wait_healthy(client, o, limit, &mut || vm.running());
                        let mut checks = vec![Check {
                            name: "boot until Synapse answers through nginx".into(),
                            ok: healthy.is_ok(),
                            seconds: boot.elapsed().as_secs_f64(),
                            detail: match &healthy {
                                Ok(_) => format!("{}, {mode}", accel.to_uppercase()),
                                Err(e) => e.to_string(),
                            },
                        }];
                        if let Ok(h) = &healthy {
                            checks.push(acceptance::ready_check(h));
                            checks.extend(acceptance::run_checks(client, o, guest));
                            checks.extend(crate::vm::monitoring::checks(ns, o, client));
                        }
                        checks
                    }
                    Role::Turn(t) => crate::vm::turn::checks(ns, t, limit, &mut || vm.running()),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let all_up = reports.iter().all(|c| c.first().is_some_and(|c| c.ok));

    let servers: Vec<crate::vm::federation::Server> = vms
        .iter()
        .filter_map(|(_, role)| match role {
            Role::Homeserver(o, client) => {
                Some(crate::vm::federation::Server { overlay: o, client })
            }
            Role::Turn(_) => None,
        })
        .collect();
    let federation = if servers.len() >= 2 && all_up {
        rep.note("checking federation between the homeservers");
        crate::vm::federation::checks(&servers)
    } else {
        Vec::new()
    };
    drop(servers);

    let checks_ok = reports.iter().flatten().chain(&federation).all(|c| c.ok);
    let roles: Vec<&Role> = vms.iter().map(|(_, r)| r).collect();
    let exec = match &opts.exec {
        Some(cmd) if checks_ok => Some(run_exec(&tn, cmd, &specs, &roles, &bundle_file)?),
        _ => None,
    };

    let mut out = Vec::new();
    for (((vm, role), checks), (s, image)) in vms.iter().zip(reports).zip(specs.iter().zip(&images))
    {
        out.push(VmReport {
            customer: role.customer(),
            recipe: s.recipe.name.to_string(),
            image: image.clone(),
            address: role.address().to_string(),
            accel: vm.accel,
            checks,
            serial_tail: super::test::serial_tail(&vm.serial()),
        });
    }
    drop(vms);
    drop(tn);
    let ok = checks_ok && exec.as_ref().is_none_or(|e| e.status == Some(0));
    Ok(NetReport {
        ok,
        seconds: t0.elapsed().as_secs_f64(),
        vms: out,
        federation,
        exec,
    })
}

/// `sh -c CMD` inside the test network, with the names resolving, the
/// network's CAs as `SSL_CERT_FILE` and `MIMG_CA_FILE` (and
/// `CURL_CA_BUNDLE`, `REQUESTS_CA_BUNDLE`), and `MIMG_VMS`.
fn run_exec(
    tn: &TestNet,
    cmd: &str,
    specs: &[VmSpec],
    roles: &[&Role],
    ca_file: &Path,
) -> Result<ExecReport> {
    let vms: Vec<serde_json::Value> = specs
        .iter()
        .zip(roles)
        .map(|(s, r)| match r {
            Role::Homeserver(o, _) => serde_json::json!({
                "customer": o.customer,
                "kind": "homeserver",
                "recipe": s.recipe.name.to_string(),
                "address": o.network.address.addr.to_string(),
                "server_name": o.server_name,
                "homeserver": o.homeserver,
                "web_client": o.web_client,
                "admin_ui": o.admin_ui,
                "tls": o.tls,
            }),
            Role::Turn(t) => serde_json::json!({
                "customer": t.customer,
                "kind": "turn",
                "recipe": s.recipe.name.to_string(),
                "address": t.network.address.addr.to_string(),
                "realm": t.realm,
            }),
        })
        .collect();
    let env = vec![
        ("SSL_CERT_FILE".to_string(), ca_file.display().to_string()),
        ("MIMG_CA_FILE".to_string(), ca_file.display().to_string()),
        // What curl and Python's requests read instead of SSL_CERT_FILE.
        ("CURL_CA_BUNDLE".to_string(), ca_file.display().to_string()),
        (
            "REQUESTS_CA_BUNDLE".to_string(),
            ca_file.display().to_string(),
        ),
        ("MIMG_VMS".to_string(), serde_json::to_string(&vms)?),
    ];
    // Its errors are shown with its output, in order.
    let script = format!("exec 2>&1\n{cmd}");
    let out = crate::tools::netns::output(&tn.ns, "sh", &["-c".into(), script], &env)?;
    Ok(ExecReport {
        command: cmd.to_string(),
        status: out.0,
        output: out.1,
    })
}
