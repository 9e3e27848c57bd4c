//! Finding VMFS partitions on a device: through the GPT (type GUID
//! AA31E02A-400F-11DB-9590-000C2911D1B8; the backup GPT when the primary is damaged),
//! an MBR entry of type 0xFB, an LVM header at 1 MiB of a bare partition image, or, when
//! the partition table is gone, by scanning for the LVM device-header signature and
//! then the FS-descriptor signature (research/vmfs-recovery.md §4: partitions start at
//! sector 63, 128, 2048 or anywhere after a repartitioning mistake).

use super::bytes::{u32_at, u64_at};
use super::fs::{FS_DESCRIPTOR_OFFSET, FS_MAGIC, FS_MAGIC_LOCAL};
use super::lvm::{has_device_header, DEVICE_HEADER_OFFSET, LVM_MAGIC};
use super::volume::Located;
use crate::source::Source;

const SECTOR: u64 = 512;
/// The VMFS partition type GUID as stored on disk (mixed-endian).
const VMFS_GUID: [u8; 16] = [
    0x2A, 0xE0, 0x31, 0xAA, 0x0F, 0x40, 0xDB, 0x11, 0x95, 0x90, 0x00, 0x0C, 0x29, 0x11, 0xD1, 0xB8,
];
/// How far the signature scan reads when no partition table names the volume: VMFS
/// partitions start within the first MiBs of a device; 4 GiB leaves room for odd layouts
/// without reading a whole multi-terabyte LUN.
pub const SCAN_LIMIT: u64 = 4 << 30;

/// A place where a VMFS partition starts, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub partition_offset: u64,
    pub located: Located,
    /// True when only the FS descriptor was found (the LVM header is missing): then the
    /// LV starts at `partition_offset` itself.
    pub lv_only: bool,
}

fn read(src: &dyn Source, at: u64, len: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; len];
    src.read_exact_at(&mut b, at).ok()?;
    Some(b)
}

fn gpt_partitions(src: &dyn Source, header_lba: u64) -> Option<Vec<(u32, u64)>> {
    let h = read(src, header_lba * SECTOR, 92)?;
    if &h[0..8] != b"EFI PART" {
        return None;
    }
    let entries_lba = u64_at(&h, 0x48);
    let count = u32_at(&h, 0x50).min(1024);
    let size = u32_at(&h, 0x54);
    if !(128..=4096).contains(&size) {
        return None;
    }
    let table = read(
        src,
        entries_lba.checked_mul(SECTOR)?,
        (count * size) as usize,
    )?;
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(size as usize).enumerate() {
        if e[0..16] == VMFS_GUID {
            out.push((i as u32 + 1, u64_at(e, 0x20).checked_mul(SECTOR)?));
        }
    }
    Some(out)
}

/// Partitions named by the partition table (GPT, else MBR).
fn table_candidates(src: &dyn Source) -> Vec<Candidate> {
    let Some(mbr) = read(src, 0, 512) else {
        return Vec::new();
    };
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut protective = false;
    for i in 0..4 {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        match e[4] {
            0xEE => protective = true,
            0xFB => out.push(Candidate {
                partition_offset: u64::from(u32_at(e, 8)) * SECTOR,
                located: Located::Mbr(i as u32 + 1),
                lv_only: false,
            }),
            _ => {}
        }
    }
    if protective {
        let last_lba = (src.len() / SECTOR).saturating_sub(1);
        let gpt = gpt_partitions(src, 1).or_else(|| gpt_partitions(src, last_lba));
        for (n, at) in gpt.unwrap_or_default() {
            out.push(Candidate {
                partition_offset: at,
                located: Located::Gpt(n),
                lv_only: false,
            });
        }
    }
    out
}

/// Scans the first [`SCAN_LIMIT`] bytes for LVM device headers, then (if none) for FS
/// descriptors, at every 512-byte boundary.
fn scan(src: &dyn Source) -> Vec<Candidate> {
    const CHUNK: usize = 1 << 20;
    let limit = src.len().min(SCAN_LIMIT);
    let mut lvm = Vec::new();
    let mut fs = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < limit {
        let n = ((limit - at) as usize).min(CHUNK);
        if src.read_exact_at(&mut buf[..n], at).is_err() {
            at += n as u64;
            continue;
        }
        for off in (0..n.saturating_sub(8)).step_by(SECTOR as usize) {
            let magic = u32_at(&buf, off);
            let pos = at + off as u64;
            if magic == LVM_MAGIC && matches!(u32_at(&buf, off + 4), 3..=6) {
                if let Some(p) = pos.checked_sub(DEVICE_HEADER_OFFSET) {
                    lvm.push(Candidate {
                        partition_offset: p,
                        located: Located::ScanLvm,
                        lv_only: false,
                    });
                }
            } else if magic == FS_MAGIC || magic == FS_MAGIC_LOCAL {
                if let Some(p) = pos.checked_sub(FS_DESCRIPTOR_OFFSET) {
                    fs.push(Candidate {
                        partition_offset: p,
                        located: Located::ScanFs,
                        lv_only: true,
                    });
                }
            }
        }
        at += n as u64;
    }
    if lvm.is_empty() {
        fs
    } else {
        lvm
    }
}

/// Where VMFS partitions start on `src`, best evidence first.
pub fn find_partitions(src: &dyn Source) -> Vec<Candidate> {
    let from_table: Vec<Candidate> = table_candidates(src)
        .into_iter()
        .filter(|c| has_device_header(src, c.partition_offset))
        .collect();
    if !from_table.is_empty() {
        return from_table;
    }
    if has_device_header(src, 0) {
        return vec![Candidate {
            partition_offset: 0,
            located: Located::Bare,
            lv_only: false,
        }];
    }
    scan(src)
}

/// Cheap check used by format detection: a partition table entry that points at an
/// LVM header.
pub(crate) fn find_partitions_quick(src: &dyn Source) -> bool {
    table_candidates(src)
        .iter()
        .any(|c| has_device_header(src, c.partition_offset))
}
