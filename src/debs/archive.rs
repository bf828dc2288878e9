//! The .deb format, read in memory: an `ar` archive of `debian-binary`,
//! `control.tar.*` and `data.tar.*`. Pure: takes bytes, returns readers.

use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};

/// The member of `deb` whose name starts with `prefix` (`control.tar`,
/// `data.tar`): its full name and bytes.
pub fn member<'a>(deb: &'a [u8], prefix: &str) -> Result<(String, &'a [u8])> {
    let mut rest = deb
        .strip_prefix(b"!<arch>\n".as_slice())
        .ok_or_else(|| anyhow!("not a .deb (no ar header)"))?;
    while rest.len() >= 60 {
        let (hdr, body) = rest.split_at(60);
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .context("bad ar member size")?;
        if body.len() < size {
            bail!("truncated .deb");
        }
        if name.starts_with(prefix) {
            return Ok((name, &body[..size]));
        }
        rest = &body[(size + size % 2).min(body.len())..];
    }
    bail!("no {prefix} member")
}

/// A tar reader over a member named `NAME.tar[.xz|.gz]`.
pub fn tar_reader<'a>(name: &str, data: &'a [u8]) -> Result<tar::Archive<Box<dyn Read + 'a>>> {
    Ok(tar::Archive::new(decoder(name, data)?))
}

/// The decompressed bytes of a member named `NAME.tar[.xz|.gz]`.
pub fn decoder<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>> {
    let ext = name.split_once(".tar").map(|(_, e)| e).unwrap_or("");
    Ok(match ext {
        "" => Box::new(data),
        ".xz" => Box::new(xz2::read::XzDecoder::new(data)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(data)),
        other => bail!("{name}: compression `{other}` is not supported (xz, gz or none)"),
    })
}
