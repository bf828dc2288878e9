//! Built-in checks of a homeserver's monitoring LAN (`[monitoring]`), run
//! from inside the test network: every metrics endpoint answers on the
//! monitoring address, and the same ports refuse connections on the
//! public address. Where `admin_api = "monitoring"`, the admin API
//! answers an admin there and nowhere else. (A Prometheus scraping them
//! through `mimg targets` is the acceptance test's own script.)

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::acceptance::{Check, Client, login, timed};
use crate::overlay::{ADMIN_API_PORT, METRICS, Overlay};

/// `curl ARGS` inside `ns`: its exit status and output.
fn curl(ns: &str, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match crate::tools::netns::output(ns, "curl", &args, &[]) {
        Ok(r) => r,
        Err(e) => (None, e.to_string()),
    }
}

/// The checks of `o`'s monitoring LAN; none without `[monitoring]`. `c`
/// reaches the homeserver's public names (an admin logs in there).
pub fn checks(ns: &str, o: &Overlay, c: &Client) -> Vec<Check> {
    let Some(m) = &o.monitoring else {
        return Vec::new();
    };
    let mon = m.address.addr;
    let public = o.network.address.addr;
    let mut out = Vec::new();
    out.push(timed(
        "metrics answer on the monitoring address (Synapse, node, PostgreSQL)",
        || {
            let mut seen = Vec::new();
            for (job, port, path) in METRICS {
                let url = format!("http://[{mon}]:{port}{path}");
                // The exporters start at the end of the first boot.
                let t0 = Instant::now();
                loop {
                    let (code, body) = curl(ns, &["-sf", "--max-time", "20", &url]);
                    if code == Some(0) && body.contains("# TYPE") {
                        seen.push(format!("{job} {url}"));
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(300) {
                        anyhow::bail!("{url}: curl exit status {code:?}");
                    }
                    std::thread::sleep(Duration::from_secs(3));
                }
            }
            Ok(seen.join(", "))
        },
    ));
    out.push(timed(
        "the metrics ports refuse connections on the public address",
        || {
            let mut said = Vec::new();
            for (job, port, path) in METRICS {
                let url = format!("http://[{public}]:{port}{path}");
                let (code, _) = curl(ns, &["-s", "-o", "/dev/null", "--max-time", "10", &url]);
                // 7: the connection was refused.
                if code != Some(7) {
                    anyhow::bail!("{job}: {url}: curl exit status {code:?}, not 7 (refused)");
                }
                said.push(format!("{port} refused"));
            }
            Ok(format!("{public}: {}", said.join(", ")))
        },
    ));
    if let Some(mon) = o.admin_api_on_monitoring() {
        out.push(timed(
            "the admin API answers an admin on the monitoring address only",
            || admin_api(ns, o, c, mon, public),
        ));
    }
    out
}

/// `admin_api = "monitoring"`: with an admin's token the user list on the
/// monitoring address; refused without a token; the port refuses
/// connections on the public address; not served on the homeserver name.
fn admin_api(
    ns: &str,
    o: &Overlay,
    c: &Client,
    mon: std::net::Ipv6Addr,
    public: std::net::Ipv6Addr,
) -> anyhow::Result<String> {
    let a = o.admins.first().context("the overlay has no [[admin]]")?;
    let token = login(c, o, a.user.as_str(), a.password.expose())?;
    // The token reaches curl in a file, not on its command line.
    let dir = tempfile::tempdir()?;
    let header = dir.path().join("auth");
    std::fs::write(&header, format!("Authorization: Bearer {token}\n"))?;
    let header = format!("@{}", header.display());
    let path = "/_synapse/admin/v2/users?limit=10";
    let url = format!("http://[{mon}]:{ADMIN_API_PORT}{path}");
    let out_code = |args: &[&str]| -> (Option<i32>, String) {
        let mut v = vec!["-s", "--max-time", "60", "-w", "\n%{http_code}"];
        v.extend(args);
        curl(ns, &v)
    };
    let (code, body) = out_code(&["-H", &header, &url]);
    let (text, status) = body.rsplit_once('\n').unwrap_or(("", body.as_str()));
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let users = v["users"].as_array().map(|u| u.len()).unwrap_or(0);
    if code != Some(0) || status != "200" || users == 0 {
        bail!("{url} with an admin's token: curl {code:?}, HTTP {status}: {text}");
    }
    let (_, body) = out_code(&[&url]);
    let status = body.rsplit('\n').next().unwrap_or("");
    if status != "401" {
        bail!("{url} without a token: HTTP {status}, not 401");
    }
    let public_url = format!("http://[{public}]:{ADMIN_API_PORT}{path}");
    let (code, _) = out_code(&["-H", &header, &public_url]);
    if code != Some(7) {
        bail!("{public_url}: curl exit status {code:?}, not 7 (refused)");
    }
    let (st, _, _) = c.get(o.homeserver.as_str(), path, Some(&token))?;
    if st != 404 {
        bail!(
            "{}{path} with an admin's token: HTTP {st}, not 404",
            o.homeserver
        );
    }
    Ok(format!(
        "{users} users at {url}; 401 without a token; {public} refuses port {ADMIN_API_PORT}; 404 on {}",
        o.homeserver
    ))
}
