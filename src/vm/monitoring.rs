//! Built-in checks of a homeserver's monitoring LAN (`[monitoring]`), run
//! from inside the test network: every metrics endpoint answers on the
//! monitoring address, and the same ports refuse connections on the
//! public address. (A Prometheus scraping them through `mimg targets` is
//! the acceptance test's own script.)

use std::time::{Duration, Instant};

use super::acceptance::{Check, timed};
use crate::overlay::{METRICS, Overlay};

/// `curl ARGS` inside `ns`: its exit status and output.
fn curl(ns: &str, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match crate::tools::netns::output(ns, "curl", &args, &[]) {
        Ok(r) => r,
        Err(e) => (None, e.to_string()),
    }
}

/// The checks of `o`'s monitoring LAN; none without `[monitoring]`.
pub fn checks(ns: &str, o: &Overlay) -> Vec<Check> {
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
    out
}
