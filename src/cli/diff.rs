//! `mimg diff A B`: what differs between two images (or locks).

use std::process::ExitCode;

use anyhow::Result;

use super::Cli;

/// Packages (Debian and Python) added, removed and changed, each layer's
/// size and changed paths, fetched files. A and B are manifests
/// (`NAME.manifest.json`), images with their manifest beside them, output
/// directories holding one manifest, or recipes (their locks). Exit status
/// 0 when equal (nothing printed), 1 when different, 2 on error.
#[derive(clap::Args)]
pub struct Args {
    /// The old side: a manifest (NAME.manifest.json), an image (NAME.qcow2,
    /// its manifest beside it), an output directory holding one manifest,
    /// or a recipe (its lock and files layers). Exit 0 equal, 1 different.
    a: String,
    /// The new side, of any of the same kinds.
    b: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<ExitCode> {
    let (x, _) = crate::ops::diff::side(&a.a, &cli.recipes)?;
    let (y, _) = crate::ops::diff::side(&a.b, &cli.recipes)?;
    let d = crate::provenance::diff::diff(&x, &y);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", crate::provenance::diff::render(&d));
    }
    Ok(if d.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
