//! The file systems of an image that vdr can search for a kernel: each partition of the
//! disk's table (the whole disk when it has none) opened with ext4-view or vdr-formats'
//! XFS reader, and for the others a note of what they are, for the "looked at" list of a
//! failed search.
//!
//! ext4-view reads ext2, ext3 and ext4 (it needs the `filetype` feature, which mke2fs has
//! set by default since 1.x); [`vdr_formats::xfs`] reads XFS v4 and v5, the file system
//! RHEL and its rebuilds put /boot on. Other volumes are recognised by magic number (Btrfs,
//! LVM, LUKS, swap, FAT) only to say what they are: no crate in this workspace reads them,
//! so a /boot on Btrfs or a root inside LVM is reported, not searched. [`Fs`] gives the
//! kernel search one interface over both readers.

use std::fmt;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error};
use vdr_formats::partition::read_partitions;
use vdr_formats::xfs::{self, FileKind, Xfs};
use vdr_formats::VirtualDisk;

use super::reader::PartitionReader;
use super::Error;
use crate::superblock::{probe, PROBE_BYTES};

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

/// A searchable file system found on the disk.
pub struct FsVolume {
    pub volume: Volume,
    pub fs: Fs,
}

/// The searchable file systems, and a line per volume saying what it is.
pub struct Volumes {
    pub searched: Vec<FsVolume>,
    /// "partition 1: ext2/3/4", "partition 2: XFS", "partition 3: Btrfs (...not searched)".
    pub looked_at: Vec<String>,
    /// Partition-table damage and choices (from [`vdr_formats::partition`]).
    pub findings: Vec<String>,
}

/// A file system vdr can read.
pub enum Fs {
    Ext4(Ext4),
    Xfs(Xfs),
}

/// A failed read in either reader.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    #[error(transparent)]
    Xfs(#[from] xfs::Error),
}

impl FsError {
    /// The path does not exist or passes through a non-directory.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            FsError::Ext4(Ext4Error::NotFound | Ext4Error::NotADirectory)
                | FsError::Xfs(xfs::Error::NotFound { .. } | xfs::Error::NotADirectory { .. })
        )
    }
}

/// A directory entry with a UTF-8 name (others are skipped: kernel and config names are
/// ASCII).
pub struct FsEntry {
    pub name: String,
    pub is_file: bool,
}

impl Fs {
    /// Up to `max` entries of directory `path`, without "." and "..".
    pub fn read_dir(&self, path: &str, max: usize) -> Result<Vec<FsEntry>, FsError> {
        match self {
            Fs::Ext4(fs) => {
                let mut out = Vec::new();
                for entry in fs.read_dir(path)?.take(max) {
                    let entry = entry?;
                    let Ok(name) = entry.file_name().as_str().map(str::to_string) else {
                        continue;
                    };
                    if name == "." || name == ".." {
                        continue;
                    }
                    let is_file = entry.file_type().is_ok_and(|t| t.is_regular_file());
                    out.push(FsEntry { name, is_file });
                }
                Ok(out)
            }
            Fs::Xfs(fs) => {
                let dir = fs.lookup(path)?;
                let entries = fs.read_dir(&dir)?;
                Ok(entries
                    .into_iter()
                    .take(max)
                    .filter_map(|e| {
                        let is_file = e.kind == FileKind::File;
                        String::from_utf8(e.name)
                            .ok()
                            .map(|name| FsEntry { name, is_file })
                    })
                    .collect())
            }
        }
    }

    /// The size of the regular file at `path` (symlinks followed), `None` when it is not
    /// one.
    pub fn file_len(&self, path: &str) -> Result<Option<u64>, FsError> {
        Ok(match self {
            Fs::Ext4(fs) => {
                let meta = fs.metadata(path)?;
                meta.file_type().is_regular_file().then(|| meta.len())
            }
            Fs::Xfs(fs) => {
                let inode = fs.lookup(path)?;
                (inode.kind() == FileKind::File).then_some(inode.size)
            }
        })
    }

    /// The content of the file at `path`; the caller has checked its size.
    pub fn read(&self, path: &str, cap: u64) -> Result<Vec<u8>, FsError> {
        match self {
            Fs::Ext4(fs) => Ok(fs.read(path)?),
            Fs::Xfs(fs) => {
                let inode = fs.lookup(path)?;
                Ok(fs.read_file(&inode, cap)?)
            }
        }
    }

    /// The target of the symlink at `path`, if it is one with a UTF-8 target.
    pub fn read_link(&self, path: &str) -> Option<String> {
        match self {
            Fs::Ext4(fs) => fs.read_link(path).ok()?.to_str().ok().map(str::to_string),
            Fs::Xfs(fs) => {
                let inode = fs.lookup_nofollow(path).ok()?;
                String::from_utf8(fs.read_link(&inode).ok()?).ok()
            }
        }
    }

    /// True when `path` exists (a final symlink is not followed).
    pub fn exists(&self, path: &str) -> bool {
        match self {
            Fs::Ext4(fs) => fs.symlink_metadata(path).is_ok(),
            Fs::Xfs(fs) => fs.lookup_nofollow(path).is_ok(),
        }
    }

    pub fn uuid(&self) -> String {
        match self {
            Fs::Ext4(fs) => fs.uuid().to_string(),
            Fs::Xfs(fs) => fs.uuid(),
        }
    }
}

/// Opens every ext2/3/4 and XFS file system of `disk`.
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
        searched: Vec::new(),
        looked_at: Vec::new(),
        findings,
    };
    for volume in volumes {
        let reader = PartitionReader::new(Arc::clone(disk), volume.start, volume.len);
        let ext4_err = match Ext4::load(Box::new(reader)) {
            Ok(fs) => {
                out.looked_at.push(format!("{volume}: ext2/3/4"));
                out.searched.push(FsVolume {
                    volume,
                    fs: Fs::Ext4(fs),
                });
                continue;
            }
            Err(err) => err,
        };
        let what = match probed_fs(disk.as_ref(), volume).as_deref() {
            Some("ext2" | "ext3" | "ext4") => {
                format!("ext2/3/4 that ext4-view cannot open ({ext4_err})")
            }
            Some("xfs") => match Xfs::open(PartitionReader::new(
                Arc::clone(disk),
                volume.start,
                volume.len,
            )) {
                Ok(fs) => {
                    out.looked_at.push(format!("{volume}: XFS"));
                    out.searched.push(FsVolume {
                        volume,
                        fs: Fs::Xfs(fs),
                    });
                    continue;
                }
                Err(err) => format!("XFS that vdr cannot open ({err})"),
            },
            Some(other) => not_searched(other),
            None => "no file system vdr recognises".to_string(),
        };
        out.looked_at.push(format!("{volume}: {what}"));
    }
    Ok(out)
}

/// What a volume holds, by [`crate::superblock::probe`]; read errors mean "unknown".
fn probed_fs(disk: &dyn VirtualDisk, volume: Volume) -> Option<String> {
    let len = usize::try_from(volume.len.min(PROBE_BYTES)).ok()?;
    let mut head = vec![0u8; len];
    disk.read_at(&mut head, volume.start).ok()?;
    probe(&head).map(|found| found.fs.to_string())
}

/// Why a volume of a file system vdr does not read is not searched.
fn not_searched(fs: &str) -> String {
    match fs {
        "btrfs" => "Btrfs (vdr has no Btrfs reader; a /boot on it cannot be searched)".into(),
        "LVM2_member" => {
            "LVM physical volume (vdr does not open LVM; its volumes are not searched)".into()
        }
        "crypto_LUKS" => "LUKS-encrypted (not searched)".into(),
        "swap" => "swap".into(),
        "vfat" => "FAT (not searched)".into(),
        "ntfs" => "NTFS (not searched)".into(),
        other => format!("{other} (not searched)"),
    }
}
