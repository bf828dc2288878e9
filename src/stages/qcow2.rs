//! The last step: the raw disk becomes a qcow2 with the tools
//! environment's qemu-img (no compression: zlib output depends on the
//! library build; qcow2 without it is a pure function of the raw bytes).

use std::path::Path;

use anyhow::Result;

use crate::tools::{self, ToolsEnv};

/// Convert `scratch/disk.raw` into `work/disk.qcow2`.
pub fn convert(tools: &ToolsEnv, scratch: &Path, work: &Path, epoch: u64) -> Result<()> {
    let mut cmd = tools.command_with("qemu-img", work, Some(scratch), epoch)?;
    cmd.args([
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compat=1.1,lazy_refcounts=off",
        "/tmp/scratch/disk.raw",
        "/mnt/disk.qcow2",
    ]);
    tools::run(cmd, "qemu-img convert")?;
    Ok(())
}
