//! `mimg targets OVERLAY...`: Prometheus file-based service discovery
//! (`file_sd_configs`) for every overlay with a `[monitoring]` section, so
//! that a Prometheus on the monitoring LAN finds every VM's metrics. Pure:
//! overlays in, JSON out.
//!
//! One target group per VM and endpoint:
//!
//! | endpoint | port | path | labels |
//! |---|---|---|---|
//! | Synapse's metrics listener | 9000 | `/_synapse/metrics` | `job="synapse"`, `customer`, `role="homeserver"`, `server_name` |
//! | prometheus-node-exporter | 9100 | `/metrics` | `job="node"`, likewise |
//! | prometheus-postgres-exporter | 9187 | `/metrics` | `job="postgres"`, likewise |
//!
//! `__metrics_path__` is set where it is not Prometheus' default, so one
//! scrape job with this file scrapes all three.

use serde_json::{Value, json};

use crate::overlay::{AnyOverlay, METRICS};

/// The file_sd target groups of `overlays` (those without `[monitoring]`
/// have none).
pub fn file_sd(overlays: &[AnyOverlay]) -> Value {
    let mut groups = Vec::new();
    for o in overlays {
        let AnyOverlay::Homeserver(o) = o else {
            continue;
        };
        let Some(m) = &o.monitoring else { continue };
        for (job, port, path) in METRICS {
            let mut labels = json!({
                "job": job,
                "customer": o.customer,
                "role": "homeserver",
                "server_name": o.server_name,
            });
            if path != "/metrics" {
                labels["__metrics_path__"] = json!(path);
            }
            groups.push(json!({
                "targets": [format!("[{}]:{port}", m.address.addr)],
                "labels": labels,
            }));
        }
    }
    Value::Array(groups)
}
