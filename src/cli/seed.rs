//! `mimg seed OVERLAY [--out FILE]`: a customer's cloud-init seed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::Cli;

/// Render an overlay into a NoCloud seed volume (FAT, label CIDATA, mode 0600).
#[derive(clap::Args)]
pub struct Args {
    /// The overlay file, e.g. overlays/example.toml (a homeserver's, or a
    /// TURN server's: `kind = "turn"`).
    overlay: PathBuf,
    /// Output file (default: images/CUSTOMER-seed.img).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(_cli: &Cli, a: &Args) -> Result<()> {
    let t0 = Instant::now();
    let o = crate::overlay::load_any(&a.overlay)?;
    let r = crate::seed::render_any(&o);
    let img = crate::seed::image(&r, crate::seed::volume_id(&r))?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("images").join(format!("{}-seed.img", o.customer())));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Secrets inside: the file is private from its first byte.
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&img)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot rename into {}", out.display()))?;
    let instance = r
        .meta_data
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("instance-id: ")
        .trim_matches('"')
        .to_string();
    println!(
        "{}  customer {}  {instance}  in {:.3}s",
        out.display(),
        o.customer(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
