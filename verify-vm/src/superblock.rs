//! What file system a volume holds, from its first bytes: the superblock magic and, where
//! they sit in the superblock itself, the UUID and label — as util-linux libblkid's probes
//! read them, and with its names (`ext4`, `xfs`, `btrfs`, `vfat`, `ntfs`, `swap`,
//! `LVM2_member`, `crypto_LUKS`). ext2/3/4: `s_magic` 0xEF53 at 1024+56, ext4 by its
//! incompat/ro-compat features, ext3 by has_journal; XFS "XFSB"; btrfs "_BHRfS_M" at
//! 64 KiB + 0x40; FAT: the BPB type strings and 0x55AA; NTFS the "NTFS    " OEM id; swap
//! "SWAPSPACE2" at 4096-10; an LVM2 physical volume's "LABELONE"/"LVM2 001" label in
//! sector 1; LUKS "LUKS\xba\xbe".
//!
//! One probe for the appliance's plan (which devices the guest checks, and how fstab names
//! them) and the guest-kernel search (which volumes can hold a /boot). Pure: tested against
//! blkid on images the real mkfs tools made, and on garbage.

/// Enough to see every superblock probed here (btrfs's ends below 64 KiB + 4 KiB).
pub const PROBE_BYTES: u64 = 0x11000;

/// What a superblock says.
#[derive(Debug, PartialEq, Eq)]
pub struct Probed {
    pub fs: &'static str,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

/// Identifies the filesystem whose first bytes are `head`.
pub fn probe(head: &[u8]) -> Option<Probed> {
    probe_xfs(head)
        .or_else(|| probe_btrfs(head))
        .or_else(|| probe_ext(head))
        .or_else(|| probe_ntfs(head))
        .or_else(|| probe_fat(head))
        .or_else(|| probe_swap(head))
        .or_else(|| probe_lvm(head))
        .or_else(|| probe_luks(head))
}

fn bytes(head: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    head.get(at..at.checked_add(len)?)
}

fn le_u16(head: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes(head, at, 2)?.try_into().ok()?))
}

fn le_u32(head: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes(head, at, 4)?.try_into().ok()?))
}

/// A UUID stored as 16 big-endian bytes; None when all zero.
fn uuid_at(head: &[u8], at: usize) -> Option<String> {
    let raw = bytes(head, at, 16)?;
    if raw.iter().all(|&b| b == 0) {
        return None;
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8)?,
        hex.get(8..12)?,
        hex.get(12..16)?,
        hex.get(16..20)?,
        hex.get(20..32)?
    ))
}

/// A NUL- or space-padded label; None when empty.
fn label_at(head: &[u8], at: usize, len: usize) -> Option<String> {
    let raw = bytes(head, at, len)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(raw.get(..end)?)
        .trim_end()
        .to_string();
    (!text.is_empty()).then_some(text)
}

fn probe_ext(head: &[u8]) -> Option<Probed> {
    const SB: usize = 1024;
    if le_u16(head, SB + 56)? != 0xEF53 {
        return None;
    }
    let compat = le_u32(head, SB + 92)?;
    let incompat = le_u32(head, SB + 96)?;
    let ro_compat = le_u32(head, SB + 100)?;
    // ext4-only features: extents, 64bit, flex_bg, huge_file, dir_nlink, extra_isize
    let fs = if incompat & (0x40 | 0x80 | 0x200) != 0 || ro_compat & (0x8 | 0x20 | 0x40) != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(Probed {
        fs,
        uuid: uuid_at(head, SB + 104),
        label: label_at(head, SB + 120, 16),
    })
}

fn probe_xfs(head: &[u8]) -> Option<Probed> {
    (bytes(head, 0, 4)? == b"XFSB").then(|| Probed {
        fs: "xfs",
        uuid: uuid_at(head, 32),
        label: label_at(head, 108, 12),
    })
}

fn probe_btrfs(head: &[u8]) -> Option<Probed> {
    const SB: usize = 0x10000;
    (bytes(head, SB + 0x40, 8)? == b"_BHRfS_M").then(|| Probed {
        fs: "btrfs",
        uuid: uuid_at(head, SB + 0x20),
        label: label_at(head, SB + 0x12B, 256),
    })
}

fn probe_ntfs(head: &[u8]) -> Option<Probed> {
    if bytes(head, 3, 8)? != b"NTFS    " {
        return None;
    }
    // blkid shows the 64-bit volume serial as 16 upper-case hex digits
    let serial = u64::from_le_bytes(bytes(head, 0x48, 8)?.try_into().ok()?);
    Some(Probed {
        fs: "ntfs",
        uuid: (serial != 0).then(|| format!("{serial:016X}")),
        label: None,
    })
}

fn probe_fat(head: &[u8]) -> Option<Probed> {
    if bytes(head, 510, 2)? != [0x55, 0xAA] {
        return None;
    }
    // FAT32 keeps its extended BPB at 64, FAT12/16 at 36 (Microsoft FAT spec §3.2/3.3)
    let (id_at, label_at_offset) = if bytes(head, 82, 5)? == b"FAT32" {
        (67, 71)
    } else if matches!(bytes(head, 54, 5)?, b"FAT12" | b"FAT16") {
        (39, 43)
    } else {
        return None;
    };
    let id = le_u32(head, id_at)?;
    let label = label_at(head, label_at_offset, 11).filter(|l| l != "NO NAME");
    Some(Probed {
        fs: "vfat",
        uuid: (id != 0).then(|| format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
        label,
    })
}

fn probe_swap(head: &[u8]) -> Option<Probed> {
    (bytes(head, 4096 - 10, 10)? == b"SWAPSPACE2").then(|| Probed {
        fs: "swap",
        uuid: uuid_at(head, 1024 + 12),
        label: label_at(head, 1024 + 28, 16),
    })
}

fn probe_lvm(head: &[u8]) -> Option<Probed> {
    // the label header may sit in any of the first four sectors; pvcreate uses the second
    (0..4).find_map(|sector| {
        let at = sector * 512;
        let label = bytes(head, at, 8)? == b"LABELONE" && bytes(head, at + 24, 8)? == b"LVM2 001";
        label.then_some(Probed {
            fs: "LVM2_member",
            uuid: None,
            label: None,
        })
    })
}

fn probe_luks(head: &[u8]) -> Option<Probed> {
    (bytes(head, 0, 6)? == b"LUKS\xba\xbe").then(|| Probed {
        fs: "crypto_LUKS",
        // the UUID is text in the header (40 bytes at 168, LUKS1 and LUKS2 alike)
        uuid: label_at(head, 168, 40),
        label: None,
    })
}

#[cfg(test)]
#[path = "superblock_tests.rs"]
mod tests;
