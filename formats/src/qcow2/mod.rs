//! QCOW2 (qemu's copy-on-write format, versions 2 and 3), read-only.
//!
//! Follows qemu's `docs/interop/qcow2.txt`; behaviour where the spec is silent follows
//! qemu's `block/qcow2*.c`. The parts:
//! - [`header`]: raw header fields, validated into a typed header;
//! - [`extensions`]: header extensions (backing format, feature names, data file, ...);
//! - [`snapshot`]: the internal snapshot table;
//! - [`metadata`]: where metadata lives, to catch entries pointing into it;
//! - [`lookup`]: the shared cluster classification (L1 → L2 → Zero/Data/Compressed/...);
//! - [`compressed`]: deflate and zstd clusters;
//! - [`layer`]: opening an image into a [`Qcow2Disk`];
//! - [`read`]: `map` and `read_at` on top of the lookup;
//! - [`check`]: the refcount check (`qemu-img check`).
//!
//! Encrypted images open (so `info` can describe them) but their data is never returned:
//! vdr does not decrypt.
//!
//! Where vdr differs from qemu on purpose:
//! - an external data file name is resolved relative to the image's directory (qemu opens
//!   it relative to its working directory);
//! - reading a snapshot gives a disk of the snapshot's own size (its extra data's
//!   disk_size, what `qemu-img snapshot -a` restores); `qemu-img convert -l` keeps the
//!   active size and pads with zeros;
//! - in a version 2 image, L2 entry bit 0 is reserved, not a zero flag;
//! - damaged metadata is never read as data: strict mode refuses it, salvage mode reports
//!   the range as unreadable (qemu reads what the entries say, or zeros past the end).

pub mod check;
pub mod compressed;
pub mod extensions;
pub mod header;
pub mod layer;
pub mod lookup;
pub mod metadata;
pub mod read;
pub mod snapshot;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Mutex;

use crate::disk::{
    CheckReport, DiskInfo, Extent, Finding, ParentRef, ParseMode, Severity, VirtualDisk,
};
use crate::source::SourceRef;

use compressed::DecompressedCache;
use extensions::Extensions;
use header::Header;
use lookup::L2Cache;
use metadata::Metadata;
use snapshot::Snapshot;

/// Errors of the QCOW2 parser. Each names the file and, where there is one, the offset and
/// the structure concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: not a qcow2 image (magic {found:02x?}, expected \"QFI\\xfb\")")]
    BadMagic { file: String, found: [u8; 4] },

    #[error("{file}: qcow2 header field {field} at {offset:#x}: {what}")]
    Header {
        file: String,
        field: &'static str,
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

    #[error("{file}: unsupported incompatible qcow2 features: {}", names.join(", "))]
    UnknownFeatures { file: String, names: Vec<String> },

    #[error("{file}: the image is encrypted ({method}); vdr does not decrypt, so its data cannot be read")]
    Encrypted { file: String, method: String },

    #[error("{file}: no snapshot with ID or name '{wanted}' (available: {})",
        if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownSnapshot {
        file: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("{file}: compressed cluster at {offset:#x} (guest offset {guest:#x}) cannot be inflated: {what}")]
    Decompress {
        file: String,
        offset: u64,
        guest: u64,
        what: String,
    },

    #[error("{file}: external data file '{name}' ({path}) cannot be opened: {source}")]
    DataFile {
        file: String,
        name: String,
        path: String,
        source: std::io::Error,
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

/// Findings recorded while opening and reading (salvage mode), without duplicates.
#[derive(Default)]
struct FindingLog {
    list: Vec<Finding>,
    seen: HashSet<(u64, String)>,
    dropped: u64,
}

/// The L1 table in use (the active one, or a snapshot's).
struct L1Table {
    /// Which table: "L1 table" or "snapshot 'x' L1 table".
    structure: &'static str,
    offset: u64,
    /// Entries the header declares.
    size: u32,
    /// Entries read; fewer than `size` when the table runs past the end of the file
    /// (salvage mode).
    entries: Vec<u64>,
}

/// A QCOW2 image layer.
pub struct Qcow2Disk {
    source: SourceRef,
    /// Where guest data clusters are: `source`, or the external data file.
    data: SourceRef,
    file: String,
    header: Header,
    ext: Extensions,
    backing: Option<ParentRef>,
    snapshots: Vec<Snapshot>,
    /// Bytes of the snapshot table.
    snapshots_bytes: u64,
    /// The snapshot being read, if not the active state.
    selected: Option<usize>,
    virtual_size: u64,
    l1: L1Table,
    /// The refcount table as read (may be shorter than declared in salvage mode).
    refcount_table: Vec<u64>,
    metadata: Metadata,
    mode: ParseMode,
    l2_cache: Mutex<L2Cache>,
    decompressed: DecompressedCache,
    findings: Mutex<FindingLog>,
}

impl Qcow2Disk {
    /// Strict mode: an error naming `structure`, `offset` and `what`. Salvage mode: the
    /// same recorded as a finding, and the reason to give for the unreadable range.
    fn damage(&self, structure: &str, offset: u64, what: String) -> Result<String, Error> {
        if self.mode == ParseMode::Strict {
            return Err(Error::Structure {
                file: self.file.clone(),
                structure: structure.to_string(),
                offset,
                what,
            });
        }
        let reason = format!("{structure} at {offset:#x} {what}");
        self.record(Finding {
            file: self.file.clone(),
            offset,
            severity: Severity::Error,
            structure: structure.to_string(),
            what: format!("{what}; the range it maps is unreadable"),
        });
        Ok(reason)
    }

    /// Records a finding once.
    fn record(&self, finding: Finding) {
        let mut log = self
            .findings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !log.seen.insert((finding.offset, finding.what.clone())) {
            return;
        }
        if log.list.len() >= MAX_FINDINGS {
            log.dropped += 1;
            return;
        }
        log.list.push(finding);
    }

    /// The error for reading data from an encrypted image.
    fn refuse_encrypted(&self) -> Result<(), crate::Error> {
        match self.header.encryption {
            Some(method) => Err(Error::Encrypted {
                file: self.file.clone(),
                method: method.name().into(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Feature names in effect, in qcow2's vocabulary.
    fn feature_names(&self) -> Vec<String> {
        use header::{autoclear, compatible, incompatible, CompressionType};
        let h = &self.header;
        let mut out = Vec::new();
        let flags = [
            (h.incompatible & incompatible::DIRTY, "dirty"),
            (h.incompatible & incompatible::CORRUPT, "corrupt"),
            (
                h.incompatible & incompatible::DATA_FILE,
                "external_data_file",
            ),
            (h.incompatible & incompatible::EXTENDED_L2, "extended_l2"),
            (h.compatible & compatible::LAZY_REFCOUNTS, "lazy_refcounts"),
            (h.autoclear & autoclear::BITMAPS, "bitmaps"),
            (h.autoclear & autoclear::DATA_FILE_RAW, "data_file_raw"),
        ];
        for (bit, name) in flags {
            if bit != 0 {
                out.push(name.to_string());
            }
        }
        if h.compression == CompressionType::Zstd {
            out.push("compression_type=zstd".into());
        }
        // Unknown compatible and autoclear bits are harmless for reading; name them (from
        // the feature name table when it has them) so they are not silently hidden.
        let known_compatible = compatible::LAZY_REFCOUNTS;
        let known_autoclear = autoclear::BITMAPS | autoclear::DATA_FILE_RAW;
        for (kind, bits, label) in [
            (1u8, h.compatible & !known_compatible, "compatible"),
            (2u8, h.autoclear & !known_autoclear, "autoclear"),
        ] {
            for bit in (0..64u8).filter(|b| bits & (1u64 << b) != 0) {
                let name = self
                    .ext
                    .feature_names
                    .iter()
                    .find(|f| f.kind == kind && f.bit == bit && !f.name.is_empty())
                    .map_or_else(|| format!("bit {bit}"), |f| f.name.clone());
                out.push(format!("{label}:{name}"));
            }
        }
        out
    }

    /// The snapshot being read, when one was selected.
    pub fn selected_snapshot(&self) -> Option<&Snapshot> {
        self.selected.and_then(|i| self.snapshots.get(i))
    }
}

impl VirtualDisk for Qcow2Disk {
    fn size(&self) -> u64 {
        self.virtual_size
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, crate::Error> {
        self.map_range(offset, len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), crate::Error> {
        self.read_range(buf, offset)
    }

    fn parent(&self) -> Option<ParentRef> {
        self.backing.clone()
    }

    fn info(&self) -> DiskInfo {
        self.describe()
    }

    fn findings(&self) -> Vec<Finding> {
        let log = self
            .findings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = log.list.clone();
        if log.dropped > 0 {
            out.push(Finding {
                file: self.file.clone(),
                offset: 0,
                severity: Severity::Warning,
                structure: "findings".into(),
                what: format!("{} more findings were not kept", log.dropped),
            });
        }
        out
    }

    fn check(&self) -> Result<CheckReport, crate::Error> {
        check::check(self)
    }

    fn source(&self) -> Option<SourceRef> {
        Some(self.source.clone())
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        [&self.source, &self.data]
            .into_iter()
            .filter_map(|s| s.path().map(std::path::Path::to_path_buf))
            .collect()
    }
}
