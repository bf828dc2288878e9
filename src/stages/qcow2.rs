//! The last step: the raw disk becomes a qcow2 with the tools
//! environment's qemu-img: uncompressed by default, or with zstd clusters
//! (`[disk] compress = "zstd"`). Never zlib, whose output depends on the
//! library build; zstd comes from the tools environment's pinned libzstd,
//! and qemu-img convert writes clusters in order (no `-W`), so the bytes
//! are a pure function of the raw disk either way.

use std::path::Path;

use anyhow::Result;

use crate::recipe::Compression;
use crate::tools::{self, ToolsEnv};

/// Convert `scratch/disk.raw` into `work/disk.qcow2`.
pub fn convert(
    tools: &ToolsEnv,
    scratch: &Path,
    work: &Path,
    epoch: u64,
    compress: Option<Compression>,
) -> Result<()> {
    let mut cmd = tools.command_with("qemu-img", work, Some(scratch), epoch)?;
    cmd.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]);
    match compress {
        None => cmd.args(["-o", "compat=1.1,lazy_refcounts=off"]),
        Some(Compression::Zstd) => cmd.args([
            "-c",
            "-o",
            "compat=1.1,lazy_refcounts=off,compression_type=zstd",
        ]),
    };
    cmd.args(["/tmp/scratch/disk.raw", "/mnt/disk.qcow2"]);
    tools::run(cmd, "qemu-img convert")?;
    Ok(())
}
