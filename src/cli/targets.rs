//! `mimg targets OVERLAY... [--out FILE]`: Prometheus file_sd targets.

use std::path::PathBuf;

use anyhow::Result;

use super::Cli;

/// Print (or write) Prometheus `file_sd` JSON for every overlay with a
/// [monitoring] section.
#[derive(clap::Args)]
#[command(
    after_help = "Example (prometheus.yml):\n  scrape_configs:\n    - job_name: mimg\n      file_sd_configs:\n        - files: [/etc/prometheus/mimg-targets.json]\n\nmimg targets overlays/*.toml --out /etc/prometheus/mimg-targets.json\n\nEach VM with [monitoring] gives three targets on its monitoring address:\nSynapse (9000, /_synapse/metrics), the node exporter (9100) and the\nPostgreSQL exporter (9187), labelled job, customer, role and server_name.\nOverlays without [monitoring] (and TURN servers) give none."
)]
pub struct Args {
    /// Overlay files (homeserver or TURN server overlays), e.g. overlays/*.toml.
    #[arg(required = true)]
    overlays: Vec<PathBuf>,
    /// Write the JSON here (atomically) instead of printing it: Prometheus
    /// re-reads the file when it changes.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(_cli: &Cli, a: &Args) -> Result<()> {
    let overlays = a
        .overlays
        .iter()
        .map(|p| crate::overlay::load_any(p))
        .collect::<Result<Vec<_>, _>>()?;
    let json = serde_json::to_string_pretty(&crate::ops::targets::file_sd(&overlays))? + "\n";
    match &a.out {
        Some(f) => crate::paths::atomic_write(f, json.as_bytes())?,
        None => print!("{json}"),
    }
    Ok(())
}
