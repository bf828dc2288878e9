//! `mimg cache keygen|push|verify`: binary caches that CI runners share.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Cli;

/// Share built steps through a signed binary cache (S3, HTTP, a directory).
///
/// A build takes the steps it lacks from the caches in MIMG_SUBSTITUTERS
/// (or `[cache] substituters` in mimg.toml) when a key in
/// MIMG_TRUSTED_KEYS (`[cache] trusted_keys`) signed them.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make an ed25519 key pair for signing cache entries.
    Keygen(KeygenArgs),
    /// Upload the steps of each recipe's last build and the files its lock
    /// pins, skipping what the cache holds; each step's entry is signed.
    Push(PushArgs),
    /// Check every entry's signature and re-hash every blob of a cache.
    Verify(VerifyArgs),
}

/// FILE gets the secret key (mode 0600; an existing file is never
/// replaced), FILE.pub the public key line NAME:BASE64 that consumers put
/// in MIMG_TRUSTED_KEYS.
#[derive(clap::Args)]
struct KeygenArgs {
    /// The key's name, e.g. ci.example.org-1 (letters, digits, `.`, `-`, `_`).
    name: String,
    /// Where the secret key goes.
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PushArgs {
    /// The cache: s3://BUCKET/PREFIX?endpoint=URL&region=R or file:///PATH
    /// (S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or
    /// AWS_PROFILE in ~/.aws/credentials).
    url: String,
    /// Recipes whose last build (in this store) is pushed.
    #[arg(required = true, value_name = "RECIPE")]
    names: Vec<String>,
    /// The secret key that signs the entries (`mimg cache keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Uploads at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Print one JSON document (what was uploaded and skipped).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The cache: s3://... or file:///... (a web server cannot list it).
    url: String,
    /// A public key line (NAME:BASE64) to trust; repeatable. Default:
    /// MIMG_TRUSTED_KEYS or mimg.toml's `[cache] trusted_keys`.
    #[arg(long = "trusted-key", value_name = "LINE")]
    trusted_keys: Vec<String>,
    /// Blobs re-hashed at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<()> {
    match &a.command {
        Command::Keygen(k) => keygen(k),
        Command::Push(p) => push(cli, p),
        Command::Verify(v) => verify(v),
    }
}

fn keygen(a: &KeygenArgs) -> Result<()> {
    let (pub_path, line) = crate::ops::cache::keygen(&a.name, &a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "secret_key": a.out, "public_key_file": pub_path, "public_key": line,
            }))?
        );
        return Ok(());
    }
    println!(
        "secret key: {} (mode 0600; keep it out of git)",
        a.out.display()
    );
    println!("public key: {} ({line})", pub_path.display());
    println!("consumers: MIMG_TRUSTED_KEYS=\"{line}\"");
    Ok(())
}

fn push(cli: &Cli, a: &PushArgs) -> Result<()> {
    let key = crate::cache::keys::SecretKey::read(&a.key)?;
    let recipes = a
        .names
        .iter()
        .map(|r| cli.recipe(r))
        .collect::<Result<Vec<_>>>()?;
    let store = cli.store()?;
    let quiet = cli.quiet || a.json;
    let note = |t: &str| {
        if !quiet {
            eprintln!("{t}");
        }
    };
    let p = crate::ops::cache::push(&store, &a.url, &recipes, &key, a.jobs, &note)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!(
        "pushed {} steps ({} already there), {} blobs ({} already there), {:.1} MiB in {:.1}s to {}",
        p.steps_uploaded,
        p.steps_skipped,
        p.blobs_uploaded,
        p.blobs_skipped,
        p.bytes_uploaded as f64 / (1 << 20) as f64,
        p.seconds,
        p.url
    );
    if p.blobs_absent > 0 {
        println!(
            "{} pinned files are not in this store and were not pushed (`mimg store fetch RECIPE` fetches them)",
            p.blobs_absent
        );
    }
    Ok(())
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let trusted = if a.trusted_keys.is_empty() {
        crate::cache::config::Config::load()?.trusted_keys
    } else {
        a.trusted_keys
            .iter()
            .map(|l| crate::cache::keys::PublicKey::parse("--trusted-key", l))
            .collect::<Result<Vec<_>, _>>()?
    };
    if trusted.is_empty() {
        bail!(
            "no trusted key to check the signatures with\nhint: --trusted-key NAME:BASE64, or set MIMG_TRUSTED_KEYS"
        );
    }
    let v = crate::ops::cache::verify(&a.url, &trusted, a.jobs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for b in &v.bad {
            println!("bad: {b}");
        }
        println!(
            "{}: {} entries, {} blobs ({:.1} MiB) checked in {:.1}s: {}",
            v.url,
            v.entries,
            v.blobs,
            v.bytes as f64 / (1 << 20) as f64,
            v.seconds,
            if v.bad.is_empty() {
                "all good".to_string()
            } else {
                format!("{} bad", v.bad.len())
            }
        );
    }
    if !v.bad.is_empty() {
        bail!("{} bad entries or blobs in {}", v.bad.len(), v.url);
    }
    Ok(())
}
