//! MBR and GPT partition tables over any [`VirtualDisk`]: the partitions `vdr mount` shows
//! as `pN.raw`.
//!
//! Hand-written rather than `gpt`/`mbrman`: those crates refuse a table whose primary GPT
//! is damaged, while recovery must read the backup GPT (at the disk's last LBA) and say so.
//! What is checked: the GPT header CRC32 and the entry-array CRC32 (UEFI 2.10 §5.3.2); a
//! header or array that fails is not used, the backup is tried, and the choice is recorded
//! in [`PartitionTable::findings`]. Sector size 512, or 4096 when the GPT header is at
//! LBA 1 of 4 KiB sectors. MBR primaries and the logical partitions of an extended
//! partition (EBR chain) are read when no GPT is found.
//!
//! What it is not for: writing tables, or searching for file systems without a table.

use crate::disk::VirtualDisk;
use crate::error::Error;

/// GPT header signature "EFI PART".
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// MBR partition type of a GPT protective entry.
const MBR_PROTECTIVE: u8 = 0xEE;
/// Most entries a GPT may declare here (128 is usual; the limit bounds allocation).
const MAX_GPT_ENTRIES: u32 = 4096;
/// Largest GPT entry size accepted (128 is usual; it must be 128 × 2^n).
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Most EBRs followed in an extended partition (a loop ends here).
const MAX_LOGICAL: u32 = 128;

/// Which table the partitions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    /// GPT read from the primary header (LBA 1).
    GptPrimary,
    /// GPT read from the backup header (the last LBA): the primary is damaged.
    GptBackup,
}

impl Scheme {
    /// "mbr", "gpt" or "gpt-backup".
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Mbr => "mbr",
            Scheme::GptPrimary => "gpt",
            Scheme::GptBackup => "gpt-backup",
        }
    }
}

/// One partition, in bytes of the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based: the GPT entry index + 1, or the MBR slot (1–4; logical ones from 5).
    pub index: u32,
    pub start: u64,
    pub len: u64,
    /// GPT type GUID ("0FC63DAF-8483-4772-8E79-3D69D8477DE4") or MBR type ("0x83").
    pub type_id: String,
    /// What the type means, when known ("Linux filesystem").
    pub description: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// The PARTUUID Linux gives it: the GPT entry's unique GUID in lower case, or
    /// `<MBR disk signature>-<index>` in hex; None when the GUID or signature is zero.
    pub uuid: Option<String>,
}

/// The partitions found and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
    /// Damage met and choices made ("primary GPT header CRC mismatch; using the backup").
    pub findings: Vec<String>,
}

/// True when `sector0` is the boot sector of an NTFS or FAT file system (a plausible BPB),
/// not an MBR.
fn is_file_system_boot_sector(sector0: &[u8]) -> bool {
    if sector0.get(3..11) == Some(b"NTFS    ") {
        return true;
    }
    let bpb = || -> Option<bool> {
        let bytes_per_sector = u16::from_le_bytes([*sector0.get(11)?, *sector0.get(12)?]);
        let sectors_per_cluster = *sector0.get(13)?;
        let fat_type = sector0.get(0x52..0x57) == Some(b"FAT32")
            || matches!(sector0.get(0x36..0x3b), Some(b"FAT12" | b"FAT16"));
        Some(
            fat_type
                && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
                && sectors_per_cluster.is_power_of_two()
                && matches!(sector0.first(), Some(0xEB | 0xE9)),
        )
    };
    bpb().unwrap_or(false)
}

/// Reads the partition table of `disk`. `Ok(None)` when there is none (no MBR signature
/// and no GPT, or sector 0 is the boot sector of a file system on the whole disk);
/// damaged structures are findings, only failing reads are errors.
pub fn read_partitions(disk: &dyn VirtualDisk) -> Result<Option<PartitionTable>, Error> {
    let mut findings = Vec::new();
    let mbr = read_bytes(disk, 0, 512)?;
    let mbr = mbr.filter(|m| m[510] == 0x55 && m[511] == 0xAA);
    let mbr_entries = mbr.as_deref().map(mbr_entries).unwrap_or_default();
    let protective = mbr_entries.iter().any(|e| e.kind == MBR_PROTECTIVE);

    for sector in [512u64, 4096] {
        if let Some(table) = read_gpt(disk, sector, &mut findings)? {
            return Ok(Some(table));
        }
    }
    if protective {
        findings.push("protective MBR but neither GPT header is valid".into());
    }
    let Some(sector0) = mbr.as_deref() else {
        return Ok(None);
    };
    // a file system on the whole disk: its boot sector ends in 0x55AA too, and what would
    // be the partition entries is boot code (libblkid's dos probe makes the same check
    // before it reads a table)
    if !protective && is_file_system_boot_sector(sector0) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (slot, entry) in mbr_entries.iter().enumerate() {
        if entry.kind == 0 || entry.kind == MBR_PROTECTIVE || entry.sectors == 0 {
            continue;
        }
        let index = slot as u32 + 1;
        if is_extended(entry.kind) {
            read_logical(disk, u64::from(entry.start), &mut partitions, &mut findings)?;
        }
        push_clipped(
            disk.size(),
            Partition {
                index,
                start: u64::from(entry.start) * 512,
                len: u64::from(entry.sectors) * 512,
                type_id: format!("{:#04x}", entry.kind),
                description: mbr_type_name(entry.kind).into(),
                name: String::new(),
                uuid: None,
            },
            &mut partitions,
            &mut findings,
        );
    }
    partitions.sort_by_key(|p| p.index);
    let signature = u32_le(sector0, 440);
    if signature != 0 {
        for partition in &mut partitions {
            partition.uuid = Some(format!("{signature:08x}-{:02x}", partition.index));
        }
    }
    Ok(Some(PartitionTable {
        scheme: Scheme::Mbr,
        sector_size: 512,
        partitions,
        findings,
    }))
}

/// `len` bytes at `offset`, or `None` when the disk is shorter.
fn read_bytes(disk: &dyn VirtualDisk, offset: u64, len: u64) -> Result<Option<Vec<u8>>, Error> {
    match offset.checked_add(len) {
        Some(end) if end <= disk.size() => {
            let mut buf = vec![0u8; len as usize];
            disk.read_at(&mut buf, offset)?;
            Ok(Some(buf))
        }
        _ => Ok(None),
    }
}

struct MbrEntry {
    kind: u8,
    start: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            MbrEntry {
                kind: e[4],
                start: u32_le(e, 8),
                sectors: u32_le(e, 12),
            }
        })
        .collect()
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// Follows the EBR chain of the extended partition at sector `base`: each EBR's first
/// entry is a logical partition (relative to that EBR), its second the next EBR (relative
/// to `base`).
fn read_logical(
    disk: &dyn VirtualDisk,
    base: u64,
    out: &mut Vec<Partition>,
    findings: &mut Vec<String>,
) -> Result<(), Error> {
    let mut ebr = base;
    for n in 0..MAX_LOGICAL {
        let Some(sector) = read_bytes(disk, ebr * 512, 512)? else {
            findings.push(format!("EBR at sector {ebr} lies past the end of the disk"));
            return Ok(());
        };
        if sector[510] != 0x55 || sector[511] != 0xAA {
            findings.push(format!("EBR at sector {ebr} has no 0x55AA signature"));
            return Ok(());
        }
        let entries = mbr_entries(&sector);
        let logical = &entries[0];
        if logical.kind != 0 && logical.sectors != 0 {
            push_clipped(
                disk.size(),
                Partition {
                    index: 5 + n,
                    start: (ebr + u64::from(logical.start)) * 512,
                    len: u64::from(logical.sectors) * 512,
                    type_id: format!("{:#04x}", logical.kind),
                    description: mbr_type_name(logical.kind).into(),
                    name: String::new(),
                    uuid: None,
                },
                out,
                findings,
            );
        }
        let next = &entries[1];
        if next.kind == 0 || next.start == 0 {
            return Ok(());
        }
        ebr = base + u64::from(next.start);
    }
    findings.push(format!(
        "more than {MAX_LOGICAL} logical partitions (an EBR loop?); stopped"
    ));
    Ok(())
}

/// Keeps `p` if it starts inside the disk, cut at the disk's end.
fn push_clipped(size: u64, mut p: Partition, out: &mut Vec<Partition>, findings: &mut Vec<String>) {
    if p.start >= size {
        findings.push(format!(
            "partition {} starts at {:#x}, past the end of the disk ({size:#x}); left out",
            p.index, p.start
        ));
        return;
    }
    if p.start.saturating_add(p.len) > size {
        findings.push(format!(
            "partition {} ends past the end of the disk; cut to {:#x} bytes",
            p.index,
            size - p.start
        ));
        p.len = size - p.start;
    }
    out.push(p);
}

/// A GPT header that passed its checks.
struct GptHeader {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// The GPT with `sector`-byte sectors: the primary when its header and entries check,
/// else the backup at the last LBA.
fn read_gpt(
    disk: &dyn VirtualDisk,
    sector: u64,
    findings: &mut Vec<String>,
) -> Result<Option<PartitionTable>, Error> {
    let last_lba = (disk.size() / sector).saturating_sub(1);
    if last_lba < 2 {
        return Ok(None);
    }
    let mut seen_any = false;
    for (lba, scheme) in [(1, Scheme::GptPrimary), (last_lba, Scheme::GptBackup)] {
        let what = if scheme == Scheme::GptPrimary {
            "primary"
        } else {
            "backup"
        };
        let Some(raw) = read_bytes(disk, lba * sector, sector)? else {
            continue;
        };
        if &raw[..8] != GPT_SIGNATURE {
            if seen_any {
                findings.push(format!("{what} GPT header (LBA {lba}) has no signature"));
            }
            continue;
        }
        seen_any = true;
        let header = match parse_gpt_header(&raw, lba) {
            Ok(h) => h,
            Err(why) => {
                findings.push(format!("{what} GPT header (LBA {lba}): {why}"));
                continue;
            }
        };
        let array_len = u64::from(header.count) * u64::from(header.entry_size);
        let Some(array) = read_bytes(disk, header.entries_lba.saturating_mul(sector), array_len)?
        else {
            findings.push(format!(
                "{what} GPT entry array (LBA {}) lies past the end of the disk",
                header.entries_lba
            ));
            continue;
        };
        if crc32fast::hash(&array) != header.entries_crc {
            findings.push(format!(
                "{what} GPT entry array (LBA {}) CRC32 mismatch",
                header.entries_lba
            ));
            continue;
        }
        if scheme == Scheme::GptBackup {
            findings.push("primary GPT damaged; partitions read from the backup GPT".into());
        }
        let mut partitions = Vec::new();
        for (i, entry) in array.chunks_exact(header.entry_size as usize).enumerate() {
            if entry[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let first = u64_le(entry, 32);
            let last = u64_le(entry, 40);
            if last < first {
                findings.push(format!(
                    "GPT entry {i}: last LBA {last} before first {first}"
                ));
                continue;
            }
            let type_id = guid_string(&entry[..16]);
            push_clipped(
                disk.size(),
                Partition {
                    index: i as u32 + 1,
                    start: first.saturating_mul(sector),
                    len: (last - first + 1).saturating_mul(sector),
                    description: gpt_type_name(&type_id).into(),
                    type_id,
                    name: utf16_name(&entry[56..128]),
                    uuid: Some(&entry[16..32])
                        .filter(|guid| guid.iter().any(|&b| b != 0))
                        .map(|guid| guid_string(guid).to_lowercase()),
                },
                &mut partitions,
                findings,
            );
        }
        return Ok(Some(PartitionTable {
            scheme,
            sector_size: sector,
            partitions,
            findings: std::mem::take(findings),
        }));
    }
    Ok(None)
}

/// Checks a GPT header sector found at `lba`: size, CRC32, own LBA, entry geometry.
fn parse_gpt_header(raw: &[u8], lba: u64) -> Result<GptHeader, String> {
    let header_size = u32_le(raw, 12) as usize;
    if !(92..=raw.len()).contains(&header_size) {
        return Err(format!("header size {header_size} out of range"));
    }
    let mut copy = raw[..header_size].to_vec();
    copy[16..20].fill(0);
    let stored = u32_le(raw, 16);
    let computed = crc32fast::hash(&copy);
    if stored != computed {
        return Err(format!(
            "header CRC32 mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let my_lba = u64_le(raw, 24);
    if my_lba != lba {
        return Err(format!("header says it is at LBA {my_lba}"));
    }
    let count = u32_le(raw, 80);
    let entry_size = u32_le(raw, 84);
    if count == 0 || count > MAX_GPT_ENTRIES {
        return Err(format!("entry count {count} out of range"));
    }
    if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_power_of_two() {
        return Err(format!("entry size {entry_size} invalid"));
    }
    Ok(GptHeader {
        entries_lba: u64_le(raw, 72),
        count,
        entry_size,
        entries_crc: u32_le(raw, 88),
    })
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A GUID in its usual text form: the first three fields are little-endian on disk.
fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32_le(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// The UTF-16LE partition name, up to its first NUL.
fn utf16_name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "AA31E02A-400F-11DB-9590-000C2911D1B8" => "VMware VMFS",
        "9D275380-40AD-11DB-BF97-000C2911D1B8" => "VMware vmkcore",
        "9198EFFC-31C0-11DB-8F78-000C2911D1B8" => "VMware reserved",
        _ => "unknown",
    }
}

fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        0x01 | 0x04 | 0x06 | 0x0E => "FAT",
        0x05 | 0x0F | 0x85 => "extended",
        0x07 => "NTFS/exFAT",
        0x0B | 0x0C => "FAT32",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xEF => "EFI System",
        0xFB => "VMware VMFS",
        0xFC => "VMware vmkcore",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
