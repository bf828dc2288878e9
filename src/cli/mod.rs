//! Command line: parse, dispatch, print errors with their causes.
//! One file per subcommand; each parses options and calls one operation.

mod build;
mod cache;
mod diff;
mod lock;
mod overlay;
mod plan;
mod progress;
mod run;
mod seed;
mod sign;
mod store;
mod targets;
mod test;
mod why;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build immutable, bit-reproducible VM images from recipes.
#[derive(Parser)]
#[command(name = "mimg", version, about, long_about = None)]
pub struct Cli {
    /// Store directory (default: $XDG_CACHE_HOME/mimg or ~/.cache/mimg).
    #[arg(long, global = true, env = "MIMG_STORE", hide_env_values = true)]
    store: Option<PathBuf>,
    /// Directory holding recipes (for names given without a path).
    #[arg(long, global = true, default_value = "recipes")]
    recipes: PathBuf,
    /// Print less: no progress, only results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a recipe into a qcow2 image and its manifest.
    Build(build::Args),
    /// Pin every .deb, wheel, release file and the epoch in NAME.lock.
    Lock(lock::Args),
    /// Show every step of a build, its key and whether it is cached.
    Plan(plan::Args),
    /// Render a customer overlay into a cloud-init seed volume.
    Seed(seed::Args),
    /// Check customer overlays.
    Overlay(overlay::Args),
    /// Inspect, verify, clean and fill the store.
    Store(store::Args),
    /// Boot an image with a seed and a data disk in QEMU.
    Run(run::Args),
    /// Build, seed and boot a recipe, then check it as a Matrix client would.
    Test(test::Args),
    /// Say which input differs from the last build, for each step to build.
    Why(why::Args),
    /// Show what differs between two images' manifests (or two recipes' locks).
    Diff(diff::Args),
    /// Sign an image and its manifest, SBOM and provenance (minisign format).
    Sign(sign::SignArgs),
    /// Check an image's signature and that its provenance files match it.
    Verify(sign::VerifyArgs),
    /// Make a minisign key pair for `mimg sign`.
    Keygen(sign::KeygenArgs),
    /// Share built steps through signed binary caches (keygen, push, verify).
    Cache(cache::Args),
    /// Prometheus file_sd targets for every overlay with [monitoring].
    Targets(targets::Args),
    /// (internal) relay stdin/stdout to a TCP address, for `run` forwards.
    #[command(name = "__relay", hide = true)]
    Relay { target: String },
    /// (internal) the test network's DNS server, for `test --vm`.
    #[command(name = "__dns", hide = true)]
    Dns {
        /// ADDR:PORT to answer on (UDP and TCP); repeatable.
        #[arg(long, required = true)]
        listen: Vec<std::net::SocketAddr>,
        /// NAME=IPV6 to answer with; repeatable.
        #[arg(long)]
        record: Vec<String>,
    },
}

impl Cli {
    fn store_root(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(crate::store::Store::default_root)
    }

    fn store(&self) -> anyhow::Result<crate::store::Store> {
        Ok(crate::store::Store::open(&self.store_root())?)
    }

    /// The store, for reading only: nothing is created.
    fn store_to_read(&self) -> crate::store::Store {
        crate::store::Store::at(&self.store_root())
    }

    fn recipe(&self, arg: &str) -> anyhow::Result<crate::recipe::Recipe> {
        let path = crate::recipe::locate(arg, &self.recipes)?;
        Ok(crate::recipe::load(&path)?)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIMG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match &cli.command {
        Command::Build(a) => build::run(&cli, a),
        Command::Plan(a) => plan::run(&cli, a),
        Command::Lock(a) => lock::run(&cli, a),
        Command::Seed(a) => seed::run(&cli, a),
        Command::Targets(a) => targets::run(&cli, a),
        Command::Overlay(a) => overlay::run(&cli, a),
        Command::Store(a) => store::run(&cli, a),
        Command::Run(a) => run::run(&cli, a),
        Command::Test(a) => test::run(&cli, a),
        Command::Why(a) => why::run(&cli, a),
        Command::Sign(a) => sign::sign(&cli, a),
        Command::Verify(a) => sign::verify(&cli, a),
        Command::Keygen(a) => sign::keygen(&cli, a),
        Command::Cache(a) => cache::run(&cli, a),
        Command::Diff(a) => {
            return match diff::run(&cli, a) {
                Ok(code) => code,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(2)
                }
            };
        }
        Command::Relay { target } => crate::vm::relay_stdio(target),
        Command::Dns { listen, record } => {
            crate::vm::dns::zone_from_records(record).and_then(|z| crate::vm::dns::serve(listen, z))
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// `error: ...` then each cause as `caused by: ...`; a `hint:` line in any
/// message is printed last.
fn print_error(e: &anyhow::Error) {
    let mut hints = Vec::new();
    let mut first = true;
    for cause in e.chain() {
        let text = cause.to_string();
        let mut lines = Vec::new();
        for l in text.lines() {
            if l.starts_with("hint:") {
                hints.push(l.to_string());
            } else {
                lines.push(l);
            }
        }
        let body = lines.join("\n");
        if first {
            eprintln!("error: {body}");
            first = false;
        } else {
            eprintln!("caused by: {body}");
        }
    }
    for h in hints {
        eprintln!("{h}");
    }
}
