//! The FAT writer: a whole FAT volume made in memory from a list of files,
//! for the EFI system partition ([`super::disk::esp_image`]) and the
//! cloud-init seed ([`crate::seed`]). Pure: no clock, no disk.

use std::io::{Cursor, Seek, SeekFrom, Write};

use anyhow::{Context, Result};

/// A FAT volume of `bytes` holding `files` (path, data). File times are
/// fatfs's fixed 1980-01-01 (no clock is read), so the bytes depend only
/// on the arguments.
pub fn fat_image(
    bytes: u64,
    label: [u8; 11],
    volume_id: u32,
    fat_type: fatfs::FatType,
    files: &[(&str, &[u8])],
) -> Result<Vec<u8>> {
    let mut img = vec![0u8; bytes as usize];
    {
        let mut cur = Cursor::new(&mut img[..]);
        let opts = fatfs::FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(label)
            .fat_type(fat_type);
        fatfs::format_volume(&mut cur, opts).context("formatting a FAT volume")?;
        cur.seek(SeekFrom::Start(0))?;
        let fs =
            fatfs::FileSystem::new(cur, fatfs::FsOptions::new()).context("opening a FAT volume")?;
        for (path, data) in files {
            let mut dir = fs.root_dir();
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            for d in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d)?,
                };
            }
            let mut f = dir.create_file(parts[parts.len() - 1])?;
            f.truncate()?;
            f.write_all(data)?;
        }
        fs.unmount()?;
    }
    Ok(img)
}
