//! Built-in checks of a booted TURN server (`kind = "turn"` overlay) on a
//! test network: real allocations with coturn's own client,
//! `turnutils_uclient` (Debian's `coturn` on the test side), run inside the
//! network's namespace against the VM's address. Credentials are made as
//! Synapse makes them for its users (`use-auth-secret`): the user name
//! `EXPIRY:NAME`, the password base64(HMAC-SHA1(secret, user name)).

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use super::acceptance::Check;
use crate::overlay::TurnServer;

/// The client a TURN check runs (from Debian's `coturn` package).
pub const CLIENT: &str = "turnutils_uclient";

/// A time-limited TURN credential for `secret`, as Synapse's
/// `/voip/turnServer` hands one out.
pub fn credential(secret: &[u8], name: &str) -> (String, String) {
    use base64::Engine;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let user = format!("{expiry}:{name}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(user.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (user, password)
}

/// One run of the client inside `ns`: relays a message through an IPv6
/// allocation (`-x`) between two clients (`-y`); `extra` adds options such
/// as `-t` (TCP to the server) or `-e PEER`. Its exit status and output.
fn allocate(ns: &str, addr: &str, user: &str, password: &str, extra: &[&str]) -> (bool, String) {
    // stderr joins stdout (the client reports errors on either); the
    // credential is a derived, expiring one, never the shared secret.
    let mut args: Vec<String> = vec![
        "-c".into(),
        format!("exec timeout 60 {CLIENT} \"$@\" 2>&1"),
        "sh".into(),
    ];
    args.extend(["-x", "-n", "1", "-m", "1"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "-u".into(),
        user.into(),
        "-w".into(),
        password.into(),
        addr.into(),
    ]);
    match crate::tools::netns::output(ns, "sh", &args, &[]) {
        Ok((code, out)) => (code == Some(0), out),
        Err(e) => (false, e.to_string()),
    }
}

fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Wait (up to `limit`) until coturn on `t`'s address makes an allocation
/// with the first secret, then the rest of the checks.
pub fn checks(
    ns: &str,
    t: &TurnServer,
    limit: Duration,
    alive: &mut dyn FnMut() -> bool,
) -> Vec<Check> {
    let addr = t.network.address.addr.to_string();
    let t0 = Instant::now();
    let mut out = Vec::new();
    if !crate::tools::netns::have(CLIENT) {
        out.push(Check {
            name: "boot until coturn allocates a relay".into(),
            ok: false,
            seconds: 0.0,
            detail: format!(
                "{CLIENT} is not installed\nhint: run `make deps` (or apt-get install coturn)"
            ),
        });
        return out;
    }
    let (user, pw) = credential(t.secrets[0].expose().as_bytes(), "mimg-test");
    let mut last = String::new();
    let up = loop {
        let (ok, o) = allocate(ns, &addr, &user, &pw, &["-y"]);
        if ok {
            break true;
        }
        last = o;
        if t0.elapsed() > limit || !alive() {
            break false;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    out.push(Check {
        name: "boot until coturn allocates a relay (UDP, the first secret)".into(),
        ok: up,
        seconds: t0.elapsed().as_secs_f64(),
        detail: if up {
            format!("realm {}, relayed through {addr}", t.realm)
        } else {
            format!(
                "no allocation within {} s: {}",
                limit.as_secs(),
                tail(&last)
            )
        },
    });
    if !up {
        return out;
    }
    let mut check = |name: String, f: &mut dyn FnMut() -> (bool, String)| {
        let c0 = Instant::now();
        let (ok, detail) = f();
        out.push(Check {
            name,
            ok,
            seconds: c0.elapsed().as_secs_f64(),
            detail,
        });
    };
    check("an allocation over TCP".into(), &mut || {
        let (ok, o) = allocate(ns, &addr, &user, &pw, &["-y", "-t"]);
        (ok, if ok { "relayed".into() } else { tail(&o) })
    });
    for (i, s) in t.secrets.iter().enumerate().skip(1) {
        let (u, p) = credential(s.expose().as_bytes(), "mimg-test");
        check(
            format!(
                "secret {} of {} is accepted too (rotation)",
                i + 1,
                t.secrets.len()
            ),
            &mut || {
                let (ok, o) = allocate(ns, &addr, &u, &p, &["-y"]);
                (ok, if ok { "relayed".into() } else { tail(&o) })
            },
        );
    }
    check(
        "a credential of another secret is refused".into(),
        &mut || {
            let (u, p) = credential(b"not the shared secret", "mimg-test");
            let (ok, o) = allocate(ns, &addr, &u, &p, &["-y"]);
            let refused = !ok && o.contains("Cannot complete Allocation");
            (
                refused,
                if refused {
                    "refused".into()
                } else {
                    format!("not refused as expected: {}", tail(&o))
                },
            )
        },
    );
    for peer in ["::1", "fd00::1"] {
        check(
            format!("a relay to the denied peer {peer} is refused"),
            &mut || {
                let (ok, o) = allocate(ns, &addr, &user, &pw, &["-e", peer]);
                let refused = !ok && o.contains("403");
                (
                    refused,
                    if refused {
                        "403 Forbidden IP".into()
                    } else {
                        format!("not refused as expected: {}", tail(&o))
                    },
                )
            },
        );
    }
    out
}
