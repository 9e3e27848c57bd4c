//! The plan: which block devices the guest will see and what filesystem each holds,
//! decided on the host so the guest needs no blkid (busybox-static has none).
//!
//! The partition table is read with [`vdr_formats::partition`]; each partition (or the
//! whole disk when there is no table) is identified by its superblock magic, with the UUID
//! and label where they sit in the superblock itself: ext2/3/4 (`s_magic` 0xEF53 at
//! 1024+56, ext4 by its incompat features), XFS ("XFSB"), btrfs ("_BHRfS_M" at 64 KiB +
//! 0x40), FAT (BPB "FAT12/16/32" type strings and 0x55AA), NTFS ("NTFS    " OEM id) and
//! Linux swap ("SWAPSPACE2" at 4096-10), as util-linux libblkid's probes do. PARTUUIDs
//! are the GPT unique GUID or the MBR `<disk signature>-<nn>`, the names Linux gives them.

use serde::Serialize;
use vdr_formats::partition::{read_partitions, Scheme};
use vdr_formats::VirtualDisk;

use super::Error;

/// The guest's name for the virtio disk (the only one the appliance has).
pub const DISK_DEVICE: &str = "vda";
/// At most this many partitions are planned (a damaged table may declare thousands).
const MAX_PLANNED: usize = 128;
/// Enough to see every superblock probed here (btrfs's ends below 64 KiB + 4 KiB).
const PROBE_BYTES: u64 = 0x11000;

/// One device the guest will look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanEntry {
    /// "vda1", or "vda" when the disk has no partition table.
    pub device: String,
    pub offset: u64,
    pub len: u64,
    /// "ext4", "xfs", "btrfs", "vfat", "ntfs", "swap", "ext2", "ext3"; None: not recognised.
    pub fs: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    /// The GPT partition name.
    pub partlabel: Option<String>,
}

/// What the guest is told to check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// "gpt", "gpt-backup", "mbr"; None when the disk has no table.
    pub scheme: Option<String>,
    pub entries: Vec<PlanEntry>,
    /// Damage met in the table, and partitions left out.
    pub findings: Vec<String>,
}

impl Plan {
    /// Reads the table and probes every partition.
    pub fn of_disk(disk: &dyn VirtualDisk) -> Result<Plan, Error> {
        let table = read_partitions(disk).map_err(Error::Disk)?;
        let Some(table) = table else {
            let mut entry = PlanEntry {
                device: DISK_DEVICE.to_string(),
                offset: 0,
                len: disk.size(),
                fs: None,
                uuid: None,
                label: None,
                partuuid: None,
                partlabel: None,
            };
            probe_into(disk, &mut entry);
            return Ok(Plan {
                scheme: None,
                entries: vec![entry],
                findings: Vec::new(),
            });
        };
        let mut findings = table.findings.clone();
        let partuuids = PartUuids::read(disk, table.scheme, table.sector_size);
        let mut entries = Vec::new();
        for partition in table.partitions.iter() {
            if entries.len() == MAX_PLANNED {
                findings.push(format!(
                    "{} partitions; only the first {MAX_PLANNED} are checked",
                    table.partitions.len()
                ));
                break;
            }
            let mut entry = PlanEntry {
                device: format!("{DISK_DEVICE}{}", partition.index),
                offset: partition.start,
                len: partition.len,
                fs: None,
                uuid: None,
                label: None,
                partuuid: partuuids.of(partition.index),
                partlabel: Some(partition.name.clone()).filter(|n| !n.is_empty()),
            };
            probe_into(disk, &mut entry);
            entries.push(entry);
        }
        Ok(Plan {
            scheme: Some(table.scheme.name().to_string()),
            entries,
            findings,
        })
    }

    /// The /plan file: `DEVICE FS UUID LABEL` per line, "-" for what is unknown, the
    /// label reduced to characters the guest's shell reads safely.
    pub fn to_guest_text(&self) -> String {
        let mut text = String::new();
        for entry in &self.entries {
            let field = |value: &Option<String>| match value {
                Some(v) if !v.is_empty() => shell_safe(v),
                _ => "-".to_string(),
            };
            text.push_str(&format!(
                "{} {} {} {}\n",
                entry.device,
                field(&entry.fs),
                field(&entry.uuid),
                field(&entry.label)
            ));
        }
        text
    }

    /// The filesystem types planned, each once.
    pub fn filesystems(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self
            .entries
            .iter()
            .filter_map(|e| e.fs.as_deref())
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

fn shell_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the start of the entry's range and fills in what its superblock says.
fn probe_into(disk: &dyn VirtualDisk, entry: &mut PlanEntry) {
    let len = entry.len.min(PROBE_BYTES);
    let Ok(len_usize) = usize::try_from(len) else {
        return;
    };
    let mut head = vec![0u8; len_usize];
    // an unreadable start leaves the entry unrecognised; the guest reports what it sees
    if disk.read_at(&mut head, entry.offset).is_err() {
        return;
    }
    if let Some(found) = probe(&head) {
        entry.fs = Some(found.fs.to_string());
        entry.uuid = found.uuid;
        entry.label = found.label;
    }
}

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

/// The PARTUUIDs of a table's partitions.
struct PartUuids {
    /// GPT: the entry array's unique GUIDs by 1-based index.
    gpt: Vec<Option<String>>,
    /// MBR: the disk signature.
    mbr_signature: Option<u32>,
}

/// Most GPT entries whose GUIDs are read (the partition reader's own limit).
const MAX_GPT_ENTRIES: u64 = 4096;

impl PartUuids {
    fn read(disk: &dyn VirtualDisk, scheme: Scheme, sector: u64) -> PartUuids {
        let mut uuids = PartUuids {
            gpt: Vec::new(),
            mbr_signature: None,
        };
        match scheme {
            Scheme::Mbr => {
                let mut mbr = [0u8; 512];
                if disk.read_at(&mut mbr, 0).is_ok() {
                    uuids.mbr_signature = le_u32(&mbr, 440).filter(|&s| s != 0);
                }
            }
            Scheme::GptPrimary | Scheme::GptBackup => {
                let header_lba = match scheme {
                    Scheme::GptPrimary => Some(1),
                    _ => (disk.size() / sector).checked_sub(1),
                };
                if let Some(lba) = header_lba {
                    uuids.gpt = read_gpt_guids(disk, lba, sector).unwrap_or_default();
                }
            }
        }
        uuids
    }

    fn of(&self, index: u32) -> Option<String> {
        if let Some(signature) = self.mbr_signature {
            return Some(format!("{signature:08x}-{index:02x}"));
        }
        let slot = usize::try_from(index).ok()?.checked_sub(1)?;
        self.gpt.get(slot).cloned().flatten()
    }
}

/// The unique partition GUIDs of the GPT whose header is at `lba` (UEFI 2.10 §5.3.2/3:
/// entries at the header's PartitionEntryLBA, the unique GUID at byte 16 of an entry).
fn read_gpt_guids(disk: &dyn VirtualDisk, lba: u64, sector: u64) -> Option<Vec<Option<String>>> {
    let mut header = [0u8; 92];
    disk.read_at(&mut header, lba.checked_mul(sector)?).ok()?;
    if header.get(..8)? != b"EFI PART" {
        return None;
    }
    let entries_lba = u64::from_le_bytes(header.get(72..80)?.try_into().ok()?);
    let count = u64::from(le_u32(&header, 80)?).min(MAX_GPT_ENTRIES);
    let entry_size = u64::from(le_u32(&header, 84)?);
    if !(128..=4096).contains(&entry_size) {
        return None;
    }
    let mut array = vec![0u8; usize::try_from(count.checked_mul(entry_size)?).ok()?];
    disk.read_at(&mut array, entries_lba.checked_mul(sector)?)
        .ok()?;
    let size = usize::try_from(entry_size).ok()?;
    Some(
        array
            .chunks_exact(size)
            .map(|entry| guid_at(entry, 16))
            .collect(),
    )
}

/// A GUID in the UEFI mixed-endian layout, lower case as Linux prints PARTUUIDs.
fn guid_at(raw: &[u8], at: usize) -> Option<String> {
    let g = bytes(raw, at, 16)?;
    if g.iter().all(|&b| b == 0) {
        return None;
    }
    let d1 = u32::from_le_bytes(g.get(0..4)?.try_into().ok()?);
    let d2 = u16::from_le_bytes(g.get(4..6)?.try_into().ok()?);
    let d3 = u16::from_le_bytes(g.get(6..8)?.try_into().ok()?);
    let tail: String = g.get(8..16)?.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{}-{}",
        tail.get(0..4)?,
        tail.get(4..16)?
    ))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
