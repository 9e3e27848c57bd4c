//! The file systems of an image that vdr can search for a kernel: each partition of the
//! disk's table (the whole disk when it has none) opened with ext4-view, and for the
//! others a note of what they are, for the "looked at" list of a failed search.
//!
//! ext4-view reads ext2, ext3 and ext4 (it needs the `filetype` feature, which mke2fs has
//! set by default since 1.x). XFS and Btrfs are recognised by their superblock magic
//! (XFS `XFSB` at byte 0, xfs_format.h; Btrfs `_BHRfS_M` at 64 KiB + 64, btrfs ctree.h)
//! only to say so: no crate in this workspace reads them, so a /boot on XFS (RHEL and
//! its rebuilds) is reported, not searched.

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

const XFS_MAGIC: &[u8; 4] = b"XFSB";
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const BTRFS_MAGIC_OFFSET: u64 = 0x1_0040;

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
                    Some(Foreign::Xfs) => {
                        "XFS (vdr has no XFS reader, so a /boot on it cannot be searched)"
                            .to_string()
                    }
                    Some(Foreign::Btrfs) => {
                        "Btrfs (vdr has no Btrfs reader, so a /boot on it cannot be searched)"
                            .to_string()
                    }
                    None => format!("not ext2/3/4 ({err})"),
                };
                out.looked_at.push(format!("{volume}: {what}"));
            }
        }
    }
    Ok(out)
}

enum Foreign {
    Xfs,
    Btrfs,
}

/// Recognises the file systems vdr cannot read, by magic; read errors mean "unknown".
fn sniff(disk: &dyn VirtualDisk, volume: Volume) -> Option<Foreign> {
    let read = |offset: u64, buf: &mut [u8]| -> bool {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return false;
        };
        end <= volume.len
            && volume
                .start
                .checked_add(offset)
                .is_some_and(|at| disk.read_at(buf, at).is_ok())
    };
    let mut xfs = [0u8; 4];
    if read(0, &mut xfs) && &xfs == XFS_MAGIC {
        return Some(Foreign::Xfs);
    }
    let mut btrfs = [0u8; 8];
    if read(BTRFS_MAGIC_OFFSET, &mut btrfs) && &btrfs == BTRFS_MAGIC {
        return Some(Foreign::Btrfs);
    }
    None
}
