//! The disk model every format and every command shares: `VirtualDisk`, its classified
//! extent map, parse modes and findings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::Error;
use crate::source::SourceRef;

/// How a parser treats inconsistent input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    /// Refuse anything inconsistent with a precise error.
    #[default]
    Strict,
    /// Go on where possible; record a [`Finding`] for every inconsistency and every choice.
    Salvage,
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A fact worth reporting (a choice made, a feature seen).
    Info,
    /// Inconsistent but harmless for the content.
    Warning,
    /// Content is affected: some range is unreadable or was reconstructed.
    Error,
}

/// One inconsistency met, or one choice made, while reading damaged input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// File the finding is about.
    pub file: String,
    /// Byte offset in that file of the structure concerned.
    pub offset: u64,
    pub severity: Severity,
    /// The structure, in the format's own vocabulary ("L2 table", "refcount block").
    pub structure: String,
    /// What was found and what was done about it.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: {}: {} at {:#x}: {}",
            self.severity, self.file, self.structure, self.offset, self.what
        )
    }
}

/// What a range of a virtual disk holds.
#[derive(Clone)]
pub enum ExtentKind {
    /// Stored uncompressed at `at` in `source`.
    Data { source: SourceRef, at: u64 },
    /// Stored compressed in `source` at `at` (host offset of the compressed stream).
    Compressed { source: SourceRef, at: u64 },
    /// Reads as zeros because the format says so (zero cluster, hole, zero grain).
    Zero,
    /// Not allocated in this layer: reads the parent, or zeros when there is none.
    Unallocated,
    /// Cannot be read correctly; never returned as data.
    Unreadable { reason: String },
}

impl fmt::Debug for ExtentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtentKind::Data { source, at } => write!(f, "Data({}@{:#x})", source.name(), at),
            ExtentKind::Compressed { source, at } => {
                write!(f, "Compressed({}@{:#x})", source.name(), at)
            }
            ExtentKind::Zero => f.write_str("Zero"),
            ExtentKind::Unallocated => f.write_str("Unallocated"),
            ExtentKind::Unreadable { reason } => write!(f, "Unreadable({reason})"),
        }
    }
}

impl ExtentKind {
    /// Short name used in `map` output.
    pub fn name(&self) -> &'static str {
        match self {
            ExtentKind::Data { .. } => "data",
            ExtentKind::Compressed { .. } => "compressed",
            ExtentKind::Zero => "zero",
            ExtentKind::Unallocated => "unallocated",
            ExtentKind::Unreadable { .. } => "unreadable",
        }
    }

    /// True when the range reads as zeros without touching any file.
    pub fn reads_as_zero(&self) -> bool {
        matches!(self, ExtentKind::Zero | ExtentKind::Unallocated)
    }
}

/// A contiguous range of the virtual disk with one classification.
#[derive(Clone, Debug)]
pub struct Extent {
    /// Offset in the virtual disk.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    pub kind: ExtentKind,
    /// Which layer of a chain the range comes from: 0 is the leaf.
    pub depth: u32,
}

impl Extent {
    /// Offset one past the end of the extent.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether `next` continues this extent (same kind, same layer, contiguous storage), so
    /// the two can be reported as one.
    pub fn can_merge(&self, next: &Extent) -> bool {
        if self.end() != next.offset || self.depth != next.depth {
            return false;
        }
        match (&self.kind, &next.kind) {
            (ExtentKind::Data { source: a, at: x }, ExtentKind::Data { source: b, at: y }) => {
                Arc::ptr_eq(a, b) && x.checked_add(self.len) == Some(*y)
            }
            (
                ExtentKind::Compressed { source: a, .. },
                ExtentKind::Compressed { source: b, .. },
            ) => Arc::ptr_eq(a, b),
            (ExtentKind::Zero, ExtentKind::Zero) => true,
            (ExtentKind::Unallocated, ExtentKind::Unallocated) => true,
            (ExtentKind::Unreadable { reason: a }, ExtentKind::Unreadable { reason: b }) => a == b,
            _ => false,
        }
    }

    /// Clips the extent to `[start, end)`, adjusting the storage offset; None if disjoint.
    pub fn clip(&self, start: u64, end: u64) -> Option<Extent> {
        let s = self.offset.max(start);
        let e = self.end().min(end);
        if s >= e {
            return None;
        }
        let skip = s - self.offset;
        let kind = match &self.kind {
            ExtentKind::Data { source, at } => ExtentKind::Data {
                source: source.clone(),
                at: at + skip,
            },
            other => other.clone(),
        };
        Some(Extent {
            offset: s,
            len: e - s,
            kind,
            depth: self.depth,
        })
    }
}

/// Appends `extent` to `out`, merging it into the last one when they continue each other.
pub fn push_merged(out: &mut Vec<Extent>, extent: Extent) {
    if let Some(last) = out.last_mut() {
        if last.can_merge(&extent) {
            last.len += extent.len;
            return;
        }
    }
    out.push(extent);
}

/// A reference from a child image to its parent, as the child records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    /// The name as stored (qcow2 backing file name, VMDK parentFileNameHint).
    pub name: String,
    /// The parent's format when the child records it (qcow2 backing format extension).
    pub format: Option<String>,
}

/// An internal snapshot (qcow2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    /// Seconds since the epoch when the snapshot was taken.
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    /// Virtual disk size at the time of the snapshot.
    pub disk_size: u64,
}

/// What `vdr info` reports about one layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskInfo {
    /// Format name ("raw", "qcow2", ...).
    pub format: String,
    /// File the layer was read from.
    pub file: String,
    pub virtual_size: u64,
    /// Length of the file the layer was read from.
    pub file_size: u64,
    pub cluster_size: Option<u64>,
    /// The format's own version ("2", "3").
    pub format_version: Option<String>,
    /// Features in effect, in the format's vocabulary ("extended_l2", "dirty", ...).
    pub features: Vec<String>,
    pub backing: Option<ParentRef>,
    /// External data file name (qcow2).
    pub data_file: Option<String>,
    /// Encryption method when the image is encrypted.
    pub encryption: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    /// Format-specific facts (header extensions, refcount width, ...), shown as they are.
    pub details: BTreeMap<String, serde_json::Value>,
}

/// Result of a consistency check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub file: String,
    pub format: String,
    /// False when the format has nothing to check; `errors` is then empty.
    pub supported: bool,
    /// Corruptions: wrong refcounts, overlaps, out-of-range entries.
    pub errors: Vec<Finding>,
    /// Clusters allocated but referenced by nothing.
    pub leaks: Vec<Finding>,
    pub leaked_clusters: u64,
    pub allocated_clusters: u64,
    pub total_clusters: u64,
    /// First byte past the last allocated cluster.
    pub image_end_offset: Option<u64>,
}

impl CheckReport {
    /// True when the check found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.leaks.is_empty()
    }
}

/// A virtual disk: one image layer or a whole chain.
pub trait VirtualDisk: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Classified extents covering `[offset, offset+len)` (clipped to the size), in order,
    /// without gaps.
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error>;

    /// Fills `buf` with the content at `offset`. Unallocated ranges read as zeros here (a
    /// [`crate::Chain`] reads the parent instead); unreadable ranges are an error, never data.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error>;

    /// The parent this layer names, if any.
    fn parent(&self) -> Option<ParentRef> {
        None
    }

    /// Facts for `vdr info`.
    fn info(&self) -> DiskInfo;

    /// Findings recorded while opening (salvage mode).
    fn findings(&self) -> Vec<Finding> {
        Vec::new()
    }

    /// Consistency check of the format's metadata.
    fn check(&self) -> Result<CheckReport, Error> {
        let info = self.info();
        Ok(CheckReport {
            file: info.file,
            format: info.format,
            supported: false,
            ..CheckReport::default()
        })
    }

    /// The source the layer reads its metadata from.
    fn source(&self) -> Option<SourceRef> {
        None
    }

    /// Every file this layer reads: its own, and external data or extent files. Writers
    /// refuse an output that is any of them.
    fn files(&self) -> Vec<PathBuf> {
        self.source()
            .and_then(|s| s.path().map(Path::to_path_buf))
            .into_iter()
            .collect()
    }
}

/// Checks that `[offset, offset+len)` lies inside a disk of `size` bytes.
pub fn check_range(file: &str, offset: u64, len: u64, size: u64) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            file: file.to_string(),
            offset,
            len,
            size,
        }),
    }
}

/// Clips a map request to the disk size: returns the end offset.
pub fn clip_end(offset: u64, len: u64, size: u64) -> u64 {
    offset.saturating_add(len).min(size)
}
