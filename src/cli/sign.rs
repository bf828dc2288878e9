//! `mimg sign`, `mimg verify` and `mimg keygen`: minisign signatures over
//! images and their provenance files.

use std::path::PathBuf;

use anyhow::Result;

use super::Cli;

/// Sign an image (NAME.qcow2.minisig, minisign's format) and the manifest,
/// SBOM and provenance statement beside it. The key is a minisign secret key
/// (`minisign -G`, or `mimg keygen`); a password-protected one is opened with
/// the password in the file named by MIMG_SIGN_PASSWORD_FILE.
#[derive(clap::Args)]
pub struct SignArgs {
    /// The image: NAME.qcow2.
    image: PathBuf,
    /// The secret key file.
    #[arg(long)]
    key: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Check an image's signature, and that its manifest, SBOM and provenance
/// statement name the image's sha256 (and their signatures, where present).
/// Exit status 0 when all hold; the first failure is said otherwise.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image: NAME.qcow2 with NAME.qcow2.minisig beside it.
    image: PathBuf,
    /// The public key: a file as `minisign -G` writes it, or the key itself.
    #[arg(long)]
    pubkey: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Make a minisign key pair for signing images: FILE (secret, mode 0600,
/// without a password) and FILE.pub. An existing FILE is never replaced.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where the secret key goes.
    out: PathBuf,
}

pub fn sign(_cli: &Cli, a: &SignArgs) -> Result<()> {
    let sigs = crate::ops::sign::sign_image(&a.image, &a.key)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "signatures": sigs }))?
        );
    } else {
        for s in sigs {
            println!("{}", s.display());
        }
    }
    Ok(())
}

pub fn verify(_cli: &Cli, a: &VerifyArgs) -> Result<()> {
    let v = crate::ops::sign::verify_image(&a.image, &a.pubkey)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for c in &v.checked {
        println!("ok: {c}");
    }
    for f in &v.absent {
        println!("absent (not checked): {f}");
    }
    println!("{}: verified, sha256 {}", v.image, v.sha256);
    Ok(())
}

pub fn keygen(_cli: &Cli, a: &KeygenArgs) -> Result<()> {
    let (pub_path, b64) = crate::provenance::sign::keygen(&a.out)?;
    println!(
        "secret key: {} (mode 0600; keep it out of git)",
        a.out.display()
    );
    println!("public key: {} ({b64})", pub_path.display());
    Ok(())
}
