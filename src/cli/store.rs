//! `mimg store ls | verify | gc | add FILE | fetch RECIPE`.

use std::collections::BTreeSet;
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
    /// Re-hash every entry; exit non-zero naming each damaged one.
    Verify,
    /// Remove steps and blobs that no manifest in the output directories and
    /// no pin of a recipe (its fetch layers, its lock's .debs and wheels) in
    /// the recipes directory needs.
    Gc {
        /// Directories holding image manifests whose steps are kept.
        #[arg(long = "keep", default_value = "images")]
        keep: Vec<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
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
        Command::Verify => {
            let bad = store.verify()?;
            let n = store.keys()?.len() + store.blobs()?.len();
            if bad.is_empty() {
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
        Command::Gc { keep, dry_run } => {
            let mut keys = BTreeSet::new();
            for dir in keep {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().ends_with(".manifest.json")
                        && let Ok(m) = serde_json::from_slice::<crate::build::Manifest>(
                            &std::fs::read(e.path())?,
                        )
                    {
                        keys.extend(m.steps.into_iter().map(|s| s.key));
                    }
                }
            }
            let mut pins = BTreeSet::new();
            if let Ok(rd) = std::fs::read_dir(&cli.recipes) {
                for e in rd.flatten() {
                    if e.path().extension().is_some_and(|x| x == "toml")
                        && let Ok(r) = crate::recipe::load(&e.path())
                    {
                        for l in &r.layers {
                            if let crate::recipe::LayerKind::Fetch { sha256, .. } = &l.kind {
                                pins.insert(sha256.to_string());
                            }
                        }
                        if let Ok(Some(lock)) = crate::lock::read(&r) {
                            let debs = lock.debs.rootfs.iter().chain(&lock.debs.tools);
                            pins.extend(debs.map(|d| d.sha256.clone()));
                            pins.extend(lock.pip.values().flatten().map(|w| w.sha256.clone()));
                        }
                    }
                }
            }
            let (mut steps, mut blobs) = (0, 0);
            for k in store.keys()? {
                if !keys.contains(k.as_str()) {
                    println!(
                        "{} step {k}",
                        if *dry_run { "would remove" } else { "removed" }
                    );
                    if !dry_run {
                        let _l = store.lock(&k)?;
                        store.remove_step(&k);
                    }
                    steps += 1;
                }
            }
            for b in store.blobs()? {
                if !pins.contains(&b) {
                    println!(
                        "{} blob {b}",
                        if *dry_run { "would remove" } else { "removed" }
                    );
                    if !dry_run {
                        store.remove_blob(&b);
                    }
                    blobs += 1;
                }
            }
            println!(
                "gc: {steps} steps and {blobs} blobs {}; kept {} steps named by manifests",
                if *dry_run { "to remove" } else { "removed" },
                keys.len()
            );
            Ok(())
        }
        Command::Fetch { recipe, jobs } => {
            let recipe = cli.recipe(recipe)?;
            let jobs = jobs.unwrap_or_else(crate::build::fetch_jobs);
            let got = crate::build::prefetch(&recipe, &store, jobs)?;
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
