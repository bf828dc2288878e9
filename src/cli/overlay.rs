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
    /// Validate an overlay (and the secret files it names); writes nothing.
    Check {
        /// The overlay file, e.g. overlays/example.toml.
        overlay: PathBuf,
    },
}

pub fn run(_cli: &Cli, a: &Args) -> Result<()> {
    match &a.command {
        Command::Check { overlay } => {
            let o = crate::overlay::load(overlay)?;
            println!(
                "{}: ok: customer {}, server name {}, homeserver {}, web client {}, {} admin(s), address {}",
                overlay.display(),
                o.customer,
                o.server_name,
                o.homeserver,
                o.web_client,
                o.admins.len(),
                o.network.address
            );
            Ok(())
        }
    }
}
