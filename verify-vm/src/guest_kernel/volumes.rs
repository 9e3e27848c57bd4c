//! The file systems of an image that vdr can search for a kernel: each partition of the
//! disk's table (the whole disk when it has none) opened with ext4-view, and for the
//! others a note of what they are, for the "looked at" list of a failed search.
//!
//! ext4-view reads ext2, ext3 and ext4 (it needs the `filetype` feature, which mke2fs has
//! set by default since 1.x). Other volumes are recognised by magic number (XFS, Btrfs,
//! LVM, LUKS, swap, FAT) only to say what they are: no crate in this workspace reads them,
//! so a /boot on XFS (RHEL and its rebuilds) or a root inside LVM is reported, not
//! searched.

use std::fmt;
use std::sync::Arc;

use ext4_view::Ext4;
use vdr_formats::partition::read_partitions;
use vdr_formats::VirtualDisk;

use super::reader::PartitionReader;
use super::Error;

/// Where a file system lies on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The partition number (1-based, as Linux numbers vdaN), or `None` for the whole disk.
    pub partition: Option<u32>,
    pub start: u64,
    pub len: u64,
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partition {
            Some(n) => write!(f, "partition {n}"),
            None => f.write_str("the whole disk"),
        }
    }
}

/// An ext2/3/4 file system found on the disk.
pub struct Ext4Volume {
    pub volume: Volume,
    pub fs: Ext4,
}

/// The searchable file systems, and a line per volume saying what it is.
pub struct Volumes {
    pub ext4: Vec<Ext4Volume>,
    /// "partition 1: ext2/3/4", "partition 2: XFS (no XFS reader in vdr: not searched)".
    pub looked_at: Vec<String>,
    /// Partition-table damage and choices (from [`vdr_formats::partition`]).
    pub findings: Vec<String>,
}

/// Opens every ext2/3/4 file system of `disk`.
pub fn open_volumes(disk: &Arc<dyn VirtualDisk>) -> Result<Volumes, Error> {
    let table = read_partitions(disk.as_ref()).map_err(Error::PartitionTable)?;
    let (volumes, findings) = match table {
        Some(table) => {
            let volumes = table
                .partitions
                .iter()
                .map(|p| Volume {
                    partition: Some(p.index),
                    start: p.start,
                    len: p.len,
                })
                .collect();
            let mut findings = table.findings;
            if table.partitions.is_empty() {
                findings.push(format!(
                    "the {} table lists no partitions",
                    table.scheme.name()
                ));
            }
            (volumes, findings)
        }
        None => (
            vec![Volume {
                partition: None,
                start: 0,
                len: disk.size(),
            }],
            Vec::new(),
        ),
    };
    let mut out = Volumes {
        ext4: Vec::new(),
        looked_at: Vec::new(),
        findings,
    };
    for volume in volumes {
        let reader = PartitionReader::new(Arc::clone(disk), volume.start, volume.len);
        match Ext4::load(Box::new(reader)) {
            Ok(fs) => {
                out.looked_at.push(format!("{volume}: ext2/3/4"));
                out.ext4.push(Ext4Volume { volume, fs });
            }
            Err(err) => {
                let what = match sniff(disk.as_ref(), volume) {
                    Some(Kind::Ext) => format!("ext2/3/4 that ext4-view cannot open ({err})"),
                    Some(other) => other.description().to_string(),
                    None => "no file system vdr recognises".to_string(),
                };
                out.looked_at.push(format!("{volume}: {what}"));
            }
        }
    }
    Ok(out)
}

/// What a volume holds, by magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ext,
    Xfs,
    Btrfs,
    Lvm,
    Luks,
    Swap,
    Fat,
}

impl Kind {
    fn description(self) -> &'static str {
        match self {
            Kind::Ext => "ext2/3/4",
            Kind::Xfs => "XFS (vdr has no XFS reader; a /boot on it cannot be searched)",
            Kind::Btrfs => "Btrfs (vdr has no Btrfs reader; a /boot on it cannot be searched)",
            Kind::Lvm => {
                "LVM physical volume (vdr does not open LVM; its volumes are not searched)"
            }
            Kind::Luks => "LUKS-encrypted (not searched)",
            Kind::Swap => "swap",
            Kind::Fat => "FAT (not searched)",
        }
    }
}

/// Magic numbers, at their offsets in the volume: ext2/3/4 s_magic 0xEF53 (superblock at
/// 1024, field at 0x38), XFS sb_magicnum, Btrfs at 64 KiB + 0x40, the LVM2 label in sector
/// 1, LUKS, Linux swap's signature at the end of the first 4 KiB page, FAT's BPB file
/// system type (FAT12/16 at 0x36, FAT32 at 0x52).
const MAGICS: &[(u64, &[u8], Kind)] = &[
    (1024 + 0x38, &[0x53, 0xEF], Kind::Ext),
    (0, b"XFSB", Kind::Xfs),
    (0x1_0040, b"_BHRfS_M", Kind::Btrfs),
    (512, b"LABELONE", Kind::Lvm),
    (0, b"LUKS\xba\xbe", Kind::Luks),
    (4096 - 10, b"SWAPSPACE2", Kind::Swap),
    (0x36, b"FAT", Kind::Fat),
    (0x52, b"FAT32", Kind::Fat),
];

/// Recognises a volume by magic; read errors mean "unknown".
fn sniff(disk: &dyn VirtualDisk, volume: Volume) -> Option<Kind> {
    MAGICS.iter().find_map(|&(offset, magic, kind)| {
        let mut buf = [0u8; 16];
        let buf = buf.get_mut(..magic.len())?;
        let end = offset.checked_add(magic.len() as u64)?;
        let at = volume.start.checked_add(offset)?;
        (end <= volume.len && disk.read_at(buf, at).is_ok() && buf == magic).then_some(kind)
    })
}
