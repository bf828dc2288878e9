//! `mimg build RECIPE [--out DIR]`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::Cli;

/// Build a recipe into DIR/NAME.qcow2 and DIR/NAME.manifest.json.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe name in recipes/ or a path to a .toml file.
    recipe: String,
    /// Output directory.
    #[arg(long, default_value = "images")]
    out: PathBuf,
    /// Fail if the recipe changed since its lock (or has no lock).
    #[arg(long)]
    locked: bool,
    /// Never touch the network: use the lock, the store and file://
    /// substituters only.
    #[arg(long)]
    offline: bool,
    /// Take no step from a substituter (MIMG_SUBSTITUTERS, mimg.toml):
    /// build every step the store lacks.
    #[arg(long)]
    no_substitute: bool,
    /// Print the result as one JSON document on stdout (image, sha256,
    /// manifest, key, and each step: label, key, built, seconds); no
    /// progress is shown.
    #[arg(long)]
    json: bool,
    /// Compress the qcow2's clusters with zstd for this build, as
    /// `[disk] compress = "zstd"` does (another image key, other bytes).
    #[arg(long)]
    compress: bool,
    /// Sign the image, manifest, SBOM and provenance statement with this
    /// minisign secret key (as `mimg sign` does).
    #[arg(long, value_name = "KEYFILE")]
    sign: Option<PathBuf>,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    let t0 = Instant::now();
    let mut recipe = cli.recipe(&a.recipe)?;
    if a.compress {
        recipe.disk.compress = Some(crate::recipe::Compression::Zstd);
    }
    let store = cli.store()?;
    let rep = super::progress::Progress::new(cli.quiet || a.json);
    let out = crate::ops::build::build(
        &recipe,
        &store,
        &a.out,
        &rep,
        crate::ops::build::Options {
            offline: a.offline,
            locked: a.locked,
            no_substitute: a.no_substitute,
        },
    );
    rep.finish();
    let out = out?;
    // A key that cannot sign fails the command; the image stays published.
    let signatures = match &a.sign {
        Some(key) => crate::ops::sign::sign_image(&out.image, key)?,
        None => Vec::new(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "recipe": recipe.name,
                "image": out.image,
                "sha256": out.sha256,
                "manifest": out.manifest,
                "key": out.key,
                "built": out.built,
                "substituted": out.substituted,
                "reused": out.reused,
                "seconds": t0.elapsed().as_secs_f64(),
                "steps": out.steps,
                "signatures": signatures,
            }))?
        );
        return Ok(());
    }
    println!("{}  sha256 {}", out.image.display(), out.sha256);
    println!("{}", out.manifest.display());
    for sig in &signatures {
        println!("{}", sig.display());
    }
    let substituted = if out.substituters > 0 {
        format!("substituted {}, ", out.substituted)
    } else {
        String::new()
    };
    println!(
        "built {} steps, {substituted}reused {} in {:.2}s",
        out.built,
        out.reused,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
