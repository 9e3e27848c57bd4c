//! VMDK (VMware virtual disks), read-only: every subformat behind one [`VmdkDisk`].
//!
//! Follows VMware's "Virtual Disk Format 1.1" and, where it is silent (COWD, seSparse,
//! stream layouts seen in the wild), qemu's `block/vmdk.c`. The parts:
//! - [`descriptor`]: the text descriptor (a file of its own, or embedded in a sparse extent);
//! - [`sparse`]: hosted sparse extents ("KDMV"), streamOptimized in all three layouts, the
//!   redundant grain directory;
//! - [`stream`]: markers, compressed grains, rebuilding a lost directory by scanning;
//! - [`cowd`]: ESXi vmfsSparse ("COWD") deltas; [`sesparse`]: ESXi seSparse deltas;
//! - [`grains`]: the one grain lookup all sparse kinds share;
//! - [`open`]: descriptor → extents → disk; [`read`]: `map` and `read_at`; [`check`].
//!
//! Where vdr differs from qemu on purpose:
//! - a zeroed or damaged primary grain directory is never read as "all unallocated": strict
//!   mode refuses it, salvage uses the redundant directory (qemu returns zeros);
//! - a stream whose footer is missing is read up to the cut in salvage mode;
//! - ZERO, NOACCESS and raw device mapping extents are part of the disk (qemu skips every
//!   extent line that is not RW, and 7.2 aborts on a descriptor of ZERO extents only);
//! - extents may not escape the descriptor's directory unless the options allow it;
//! - the child's parentCID is checked against the parent's CID (by [`crate::Chain`]).

pub mod check;
pub mod cowd;
pub mod descriptor;
pub mod grains;
pub mod open;
pub mod read;
pub mod sesparse;
pub mod sparse;
pub mod stream;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use crate::disk::{
    CheckReport, DiskInfo, Extent, Finding, ParentRef, ParseMode, Severity, VirtualDisk,
};
use crate::error::Error as CrateError;
use crate::source::SourceRef;

use descriptor::{Descriptor, ExtentLine};
use grains::GrainTables;

pub use open::open;

/// Errors of the VMDK reader. Each names the file and, where there is one, the offset and
/// the structure concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: descriptor line {line}: {what}")]
    Descriptor {
        file: String,
        line: usize,
        what: String,
    },

    #[error("{file}: sparse extent header at {offset:#x}: {what}")]
    Header {
        file: String,
        offset: u64,
        what: String,
    },

    #[error("{file}: {structure} at {offset:#x}: {what}")]
    Structure {
        file: String,
        structure: String,
        offset: u64,
        what: String,
    },

    #[error(
        "{file}: extent '{name}' (descriptor line {line}) cannot be opened at {path}: {source}"
    )]
    MissingExtent {
        file: String,
        name: String,
        line: usize,
        path: String,
        source: std::io::Error,
    },

    #[error("{file}: extent '{name}' (descriptor line {line}) lies outside the descriptor's directory; vdr opens it only when allowed (OpenOptions::allow_escaping_extents)")]
    EscapingExtent {
        file: String,
        name: String,
        line: usize,
    },

    #[error("{file}: {what}")]
    LoneExtent { file: String, what: String },

    #[error("{file}: primary grain directory at {primary:#x} disagrees with the redundant one at {redundant:#x}: {what} (salvage mode reads through the redundant one)")]
    RedundantMismatch {
        file: String,
        primary: u64,
        redundant: u64,
        what: String,
    },

    #[error("{file}: {what} of {value} exceeds the limit of {limit}")]
    TooLarge {
        file: String,
        what: &'static str,
        value: u64,
        limit: u64,
    },
}

/// Findings kept at most; later ones are counted, not stored.
const MAX_FINDINGS: usize = 10_000;

/// The parse mode and the findings of one disk, shared by its extents.
pub struct Log {
    pub mode: ParseMode,
    findings: Mutex<FindingLog>,
}

#[derive(Default)]
struct FindingLog {
    list: Vec<Finding>,
    seen: HashSet<(String, u64, String)>,
    dropped: u64,
}

impl Log {
    pub fn new(mode: ParseMode) -> Log {
        Log {
            mode,
            findings: Mutex::new(FindingLog::default()),
        }
    }

    /// Strict mode: an error naming `structure`, `offset` and `what`. Salvage mode: the
    /// same recorded as a finding, and the reason to give for the unreadable range.
    pub fn damage(
        &self,
        file: &str,
        structure: &str,
        offset: u64,
        what: String,
    ) -> Result<String, CrateError> {
        if self.mode == ParseMode::Strict {
            return Err(Error::Structure {
                file: file.to_string(),
                structure: structure.to_string(),
                offset,
                what,
            }
            .into());
        }
        let reason = format!("{structure} at {offset:#x} {what}");
        self.record(file, offset, Severity::Error, structure, what);
        Ok(reason)
    }

    /// Records a finding once.
    pub fn record(
        &self,
        file: &str,
        offset: u64,
        severity: Severity,
        structure: &str,
        what: String,
    ) {
        let mut log = self.findings.lock().unwrap_or_else(PoisonError::into_inner);
        if log.seen.contains(&(file.to_string(), offset, what.clone())) {
            return;
        }
        if log.list.len() >= MAX_FINDINGS {
            log.dropped += 1;
            return;
        }
        log.seen.insert((file.to_string(), offset, what.clone()));
        log.list.push(Finding {
            file: file.to_string(),
            offset,
            severity,
            structure: structure.to_string(),
            what,
        });
    }

    fn list(&self, file: &str) -> Vec<Finding> {
        let log = self.findings.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = log.list.clone();
        if log.dropped > 0 {
            out.push(Finding {
                file: file.to_string(),
                offset: 0,
                severity: Severity::Warning,
                structure: "findings".into(),
                what: format!("{} more findings were not kept", log.dropped),
            });
        }
        out
    }
}

/// What a range of the disk is stored in.
pub enum ExtentData {
    /// Raw bytes at `at` in `source` (FLAT, VMFS).
    Flat { source: SourceRef, at: u64 },
    /// Reads as zeros (ZERO extents).
    Zero,
    /// A sparse extent of any kind.
    Sparse(Box<SparseData>),
    /// Cannot be read (NOACCESS, raw device mappings, flat files cut short).
    Unreadable(String),
}

/// A sparse extent and what `info`/`check` say about it.
pub struct SparseData {
    pub tables: GrainTables,
    /// "hosted sparse v1", "COWD", "seSparse".
    pub kind: String,
    /// The KDMV header, for hosted sparse extents.
    pub header: Option<sparse::Header>,
    /// Metadata regions (offset, length, name) in the extent file, for the overlap check.
    pub metadata: Vec<(u64, u64, &'static str)>,
}

/// One extent of the disk.
pub struct DiskExtent {
    /// Offset of the extent in the virtual disk.
    pub start: u64,
    pub len: u64,
    /// The descriptor's line for it (None for an extent opened without a descriptor).
    pub line: Option<ExtentLine>,
    pub data: ExtentData,
}

impl DiskExtent {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A VMDK disk: its descriptor and extents.
pub struct VmdkDisk {
    source: SourceRef,
    file: String,
    descriptor: Option<Descriptor>,
    create_type: String,
    extents: Vec<DiskExtent>,
    size: u64,
    parent: Option<ParentRef>,
    log: std::sync::Arc<Log>,
}

impl VmdkDisk {
    /// The disk's descriptor, when it has one.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// The extents, in disk order.
    pub fn extents(&self) -> &[DiskExtent] {
        &self.extents
    }

    fn describe(&self) -> DiskInfo {
        use serde_json::{json, Value};
        let mut info = DiskInfo {
            format: "vmdk".into(),
            file: self.file.clone(),
            virtual_size: self.size,
            file_size: self.source.len(),
            backing: self.parent.clone(),
            ..DiskInfo::default()
        };
        let mut features = Vec::new();
        let d = &mut info.details;
        d.insert("create_type".into(), json!(self.create_type));
        if let Some(desc) = &self.descriptor {
            info.format_version = desc.version.clone();
            if let Some(cid) = desc.cid {
                d.insert("cid".into(), json!(format!("{cid:08x}")));
            }
            if let Some(cid) = desc.parent_cid {
                d.insert("parent_cid".into(), json!(format!("{cid:08x}")));
            }
            if let Some(h) = &desc.parent_file_name_hint {
                d.insert("parent_file_name_hint".into(), json!(h));
            }
            for (k, v) in &desc.ddb {
                d.insert(k.clone(), json!(v));
            }
            if let Some(v) = desc.ddb.get("ddb.adapterType") {
                d.insert("adapter_type".into(), json!(v));
            }
            if let Some(v) = desc.ddb.get("ddb.virtualHWVersion") {
                d.insert("hw_version".into(), json!(v));
            }
            if !desc.other.is_empty() {
                d.insert("other_keys".into(), json!(desc.other));
            }
        }
        let mut list = Vec::new();
        for e in &self.extents {
            let mut entry = serde_json::Map::new();
            if let Some(l) = &e.line {
                entry.insert("type".into(), json!(l.kind.name()));
                entry.insert("access".into(), json!(l.access.name()));
                entry.insert("sectors".into(), json!(l.sectors));
                entry.insert(
                    "file".into(),
                    l.file.as_ref().map_or(Value::Null, |f| json!(f)),
                );
                entry.insert("offset".into(), json!(l.offset));
            } else {
                entry.insert("sectors".into(), json!(e.len / 512));
            }
            entry.insert("start".into(), json!(e.start));
            match &e.data {
                ExtentData::Sparse(s) => {
                    entry.insert("layout".into(), json!(s.kind));
                    entry.insert("grain_size".into(), json!(s.tables.geometry.grain_size));
                    info.cluster_size
                        .get_or_insert(s.tables.geometry.grain_size);
                    if s.tables.compressed {
                        features.push("stream_optimized".to_string());
                        d.insert("compression".into(), json!("deflate"));
                    }
                    if s.tables.stream.is_some() {
                        features.push("grain_directory_rebuilt_by_scan".to_string());
                    }
                    if let Some(h) = &s.header {
                        entry.insert("version".into(), json!(h.version));
                        entry.insert("flags".into(), json!(format!("{:#x}", h.flags)));
                        if h.rgd_at.is_some() {
                            features.push("redundant_gd".into());
                        }
                        if h.flags & sparse::FLAG_ZERO_GRAIN != 0 {
                            features.push("zeroed_grain_gte".into());
                        }
                        if h.markers {
                            features.push("markers".into());
                        }
                        if h.from_footer {
                            features.push("footer".into());
                        }
                        if h.unclean_shutdown {
                            features.push("unclean_shutdown".into());
                        }
                        info.format_version
                            .get_or_insert_with(|| h.version.to_string());
                    }
                }
                ExtentData::Unreadable(why) => {
                    entry.insert("unreadable".into(), json!(why));
                }
                ExtentData::Flat { .. } | ExtentData::Zero => {}
            }
            list.push(Value::Object(entry));
        }
        d.insert("extents".into(), Value::Array(list));
        features.sort();
        features.dedup();
        info.features = features;
        info
    }
}

impl VirtualDisk for VmdkDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CrateError> {
        self.map_range(offset, len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), CrateError> {
        self.read_range(buf, offset)
    }

    fn parent(&self) -> Option<ParentRef> {
        self.parent.clone()
    }

    fn info(&self) -> DiskInfo {
        self.describe()
    }

    fn findings(&self) -> Vec<Finding> {
        self.log.list(&self.file)
    }

    fn check(&self) -> Result<CheckReport, CrateError> {
        check::check(self)
    }

    fn source(&self) -> Option<SourceRef> {
        Some(self.source.clone())
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let extent_sources = self.extents.iter().filter_map(|e| match &e.data {
            ExtentData::Flat { source, .. } => Some(source),
            ExtentData::Sparse(sparse) => Some(&sparse.tables.source),
            ExtentData::Zero | ExtentData::Unreadable(_) => None,
        });
        std::iter::once(&self.source)
            .chain(extent_sources)
            .filter_map(|s| s.path().map(std::path::Path::to_path_buf))
            .collect()
    }
}
