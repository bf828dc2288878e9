//! The disk step's pure parts: partition layout, the GPT, the EFI system
//! partition's FAT filesystem. Everything here writes into memory or a
//! given file; identities (GUIDs, volume id) come from the caller's key.
//!
//! ```text
//! LBA 0          protective MBR (+ GRUB boot.img code for BIOS)
//! LBA 1..33      primary GPT
//! 1 MiB .. 2 MiB     BIOS boot partition (GRUB core.img)
//! 2 MiB .. 34 MiB    EFI system partition (FAT16, /EFI/BOOT/BOOTX64.EFI)
//! 34 MiB .. end-1MiB root (ext4)
//! last 33 sectors    backup GPT
//! ```

use std::io::{Seek, Write};

use anyhow::{Context, Result};

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// GPT partition type GUIDs (text form).
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// Byte ranges of the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub bios: (u64, u64),
    pub esp: (u64, u64),
    pub root: (u64, u64),
}

impl Layout {
    /// The fixed layout for a disk of `size` bytes (whole MiB, >= 256 MiB).
    pub fn new(size: u64) -> Layout {
        Layout {
            size,
            bios: (MIB, 2 * MIB),
            esp: (2 * MIB, 34 * MIB),
            root: (34 * MIB, size - MIB),
        }
    }
}

/// The GUID `text` in GPT's on-disk byte order (first three fields little-endian).
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let h: String = text.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(&h).expect("GUID constants are valid");
    let mut b = [0u8; 16];
    b.copy_from_slice(&raw);
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// Identities of the disk: derived by the caller from a step key.
#[derive(Debug, Clone)]
pub struct Guids {
    pub disk: [u8; 16],
    pub bios: [u8; 16],
    pub esp: [u8; 16],
    pub root: [u8; 16],
}

/// Write the protective MBR and both GPT copies into `disk` (already `size` long).
pub fn write_gpt<W: std::io::Read + Write + Seek>(
    disk: &mut W,
    layout: &Layout,
    guids: &Guids,
) -> Result<()> {
    let mut gpt = gptman::GPT::new_from(disk, SECTOR, guids.disk).context("creating the GPT")?;
    let parts = [
        (TYPE_BIOS_BOOT, guids.bios, layout.bios, "bios", 0u64),
        (TYPE_ESP, guids.esp, layout.esp, "esp", 0),
        (TYPE_ROOT_X86_64, guids.root, layout.root, "root", 0),
    ];
    for (i, (ty, id, (start, end), name, attrs)) in parts.into_iter().enumerate() {
        gpt[(i + 1) as u32] = gptman::GPTPartitionEntry {
            partition_type_guid: guid_bytes(ty),
            unique_partition_guid: id,
            starting_lba: start / SECTOR,
            ending_lba: end / SECTOR - 1,
            attribute_bits: attrs,
            partition_name: name.into(),
        };
    }
    gpt.write_into(disk).context("writing the GPT")?;
    gptman::GPT::write_protective_mbr_into(disk, SECTOR).context("writing the protective MBR")?;
    Ok(())
}

/// A FAT16 EFI system partition of `bytes` holding `files` (path, data).
pub fn esp_image(bytes: u64, volume_id: u32, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    super::fat::fat_image(
        bytes,
        *b"EFI        ",
        volume_id,
        fatfs::FatType::Fat16,
        files,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn guid_byte_order() {
        // The EFI system partition type as it appears on disk.
        assert_eq!(
            hex::encode(guid_bytes(TYPE_ESP)),
            "28732ac11ff8d211ba4b00a0c93ec93b"
        );
    }

    #[test]
    fn gpt_is_made_in_memory_and_read_back() {
        let size = 256 << 20;
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        let l = Layout::new(size);
        let g = Guids {
            disk: [1; 16],
            bios: [2; 16],
            esp: [3; 16],
            root: [4; 16],
        };
        write_gpt(&mut disk, &l, &g).unwrap();
        let bytes = disk.get_ref().clone();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(&bytes[512..520], b"EFI PART");
        disk.set_position(0);
        let back = gptman::GPT::find_from(&mut disk).unwrap();
        assert_eq!(back[3].starting_lba, 34 * 2048);
        assert_eq!(back[2].partition_type_guid, guid_bytes(TYPE_ESP));
        // Same inputs, same bytes.
        let mut again = Cursor::new(vec![0u8; size as usize]);
        write_gpt(&mut again, &l, &g).unwrap();
        assert!(again.get_ref() == &bytes);
    }

    #[test]
    fn esp_holds_files_and_is_stable() {
        let a = esp_image(32 << 20, 0x1234_5678, &[("EFI/BOOT/BOOTX64.EFI", b"MZ..")]).unwrap();
        let b = esp_image(32 << 20, 0x1234_5678, &[("EFI/BOOT/BOOTX64.EFI", b"MZ..")]).unwrap();
        assert!(a == b);
        let fs = fatfs::FileSystem::new(Cursor::new(a), fatfs::FsOptions::new()).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap(),
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "MZ..");
        assert_eq!(fs.volume_id(), 0x1234_5678);
    }
}
