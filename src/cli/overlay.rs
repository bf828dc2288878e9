//! `mimg overlay check OVERLAY`: validation only.

use std::path::PathBuf;

use anyhow::Result;

use super::Cli;

/// Work with customer overlays.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Validate an overlay, a homeserver's or a TURN server's (`kind =
    /// "turn"`), and the secret and certificate files it names; writes
    /// nothing.
    Check {
        /// The overlay file, e.g. overlays/example.toml.
        overlay: PathBuf,
    },
}

pub fn run(_cli: &Cli, a: &Args) -> Result<()> {
    match &a.command {
        Command::Check { overlay } => {
            match crate::overlay::load_any(overlay)? {
                crate::overlay::AnyOverlay::Homeserver(o) => println!(
                    "{}: ok: customer {}, server name {}, homeserver {}, web client {}, {} admin(s), address {}",
                    overlay.display(),
                    o.customer,
                    o.server_name,
                    o.homeserver,
                    o.web_client,
                    o.admins.len(),
                    o.network.address
                ),
                crate::overlay::AnyOverlay::Turn(t) => println!(
                    "{}: ok: TURN server for customer {}, realm {}, {} secret(s), relay ports {}-{}, tls {}, address {}",
                    overlay.display(),
                    t.customer,
                    t.realm,
                    t.secrets.len(),
                    t.min_port,
                    t.max_port,
                    if t.tls_files.is_some() {
                        "files"
                    } else {
                        "none"
                    },
                    t.network.address
                ),
            }
            Ok(())
        }
    }
}
