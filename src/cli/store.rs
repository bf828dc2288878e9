//! `mimg store ls | verify | gc | add FILE | fetch RECIPE`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Cli;

/// Inspect and maintain the store.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List finished steps and blobs with their sizes.
    Ls,
    /// Re-hash every entry (files and trees); exit non-zero naming each
    /// damaged one.
    Verify {
        /// Print `{"entries": N, "damaged": [...]}` as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove steps that no image manifest in the --keep directories names,
    /// blobs that no recipe in the recipes directory pins (its fetch layers,
    /// its lock's .debs and wheels), and leftovers of dead processes in
    /// tmp/. Waits for running builds; fails, removing nothing, when a
    /// manifest, recipe or lock cannot be read.
    Gc {
        /// Directories holding image manifests whose steps are kept
        /// (repeatable; default: images, when it exists).
        #[arg(long = "keep")]
        keep: Vec<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON (removed and kept entries, each with why).
        #[arg(long)]
        json: bool,
    },
    /// Put a file in the store by content (for pinned `fetch` layers on an
    /// air-gapped machine); prints its sha256.
    Add { file: PathBuf },
    /// Download every file a recipe's lock pins (.debs, wheels, fetch
    /// layers) into the store, so that later builds can run offline.
    Fetch {
        /// A recipe name in recipes/ or a path to a .toml file.
        recipe: String,
        /// Downloads at once (default: $MIMG_FETCH_JOBS, else 8).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    if let Command::Gc {
        keep,
        dry_run,
        json,
    } = &a.command
    {
        // Not opened as the others do: gc takes the store-wide lock exclusive.
        return gc(cli, keep, *dry_run, *json);
    }
    let store = cli.store()?;
    match &a.command {
        Command::Ls => {
            println!("store {}", store.root().display());
            for k in store.keys()? {
                match store.meta(&k) {
                    Ok(m) => {
                        let size: u64 = m.files.values().map(|f| f.size).sum();
                        println!(
                            "  step {k}  {:<20} {:>10} bytes  built in {:.1}s",
                            m.label, size, m.seconds
                        );
                    }
                    Err(e) => println!("  step {k}  damaged: {e}"),
                }
            }
            for b in store.blobs()? {
                let size = std::fs::metadata(store.blob(&b))
                    .map(|m| m.len())
                    .unwrap_or(0);
                println!("  blob {b}  {size:>10} bytes");
            }
            Ok(())
        }
        Command::Verify { json } => {
            let bad = store.verify()?;
            let n = store.keys()?.len() + store.blobs()?.len();
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "entries": n, "damaged": bad })
                    )?
                );
            }
            if bad.is_empty() {
                if *json {
                    return Ok(());
                }
                println!("{n} entries verified, none damaged");
                Ok(())
            } else {
                for b in &bad {
                    eprintln!("damaged: {b}");
                }
                bail!(
                    "{} of {n} store entries are damaged\nhint: the next build that needs a damaged step makes it again; or remove the entries named",
                    bad.len()
                )
            }
        }
        Command::Gc { .. } => unreachable!("handled above"),
        Command::Fetch { recipe, jobs } => {
            let recipe = cli.recipe(recipe)?;
            let jobs = jobs.unwrap_or_else(crate::ops::build::fetch_jobs);
            let rep = super::progress::Progress::new(cli.quiet);
            let got = crate::ops::build::prefetch(&recipe, &store, jobs, &rep);
            rep.finish();
            let got = got?;
            println!(
                "fetched {} files ({:.1} MiB) in {:.2}s with {jobs} jobs; the store has every file {} pins",
                got.files,
                got.bytes as f64 / (1 << 20) as f64,
                got.seconds,
                recipe.name
            );
            Ok(())
        }
        Command::Add { file } => {
            let sum = store.add_file(file)?;
            println!(
                "{}  sha256 {}  {} bytes",
                file.display(),
                sum.sha256,
                sum.size
            );
            Ok(())
        }
    }
}

fn gc(cli: &Cli, keep: &[PathBuf], dry_run: bool, json: bool) -> Result<()> {
    let k = crate::ops::gc::Keep {
        missing_ok: keep.is_empty(),
        manifest_dirs: if keep.is_empty() {
            vec![PathBuf::from("images")]
        } else {
            keep.to_vec()
        },
        recipes: cli.recipes.clone(),
    };
    let report = crate::ops::gc::gc(&cli.store_root(), &k, dry_run)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let named = |e: &crate::ops::gc::Entry| match &e.label {
        Some(l) => format!("{} {} ({l})", e.kind, e.name),
        None => format!("{} {}", e.kind, e.name),
    };
    for e in &report.removed {
        println!("{verb} {}, {} bytes: {}", named(e), e.bytes, e.why);
    }
    if !cli.quiet {
        for e in &report.kept {
            println!("kept {}: {}", named(e), e.why);
        }
    }
    let count =
        |kind: &str, v: &[crate::ops::gc::Entry]| v.iter().filter(|e| e.kind == kind).count();
    println!(
        "gc: {verb} {} steps, {} blobs and {} tmp/ leftovers ({:.1} MiB); kept {} steps and {} blobs",
        count("step", &report.removed),
        count("blob", &report.removed),
        count("tmp", &report.removed),
        report.bytes_removed() as f64 / (1 << 20) as f64,
        count("step", &report.kept),
        count("blob", &report.kept),
    );
    Ok(())
}
