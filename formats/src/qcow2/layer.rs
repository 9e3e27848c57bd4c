//! Opening a QCOW2 image: header and extensions, backing file name, external data file,
//! snapshot table and selection, the L1 table in use and the refcount table, and the map
//! of metadata areas. Everything read from the file is bounded by the file's length and
//! the spec's limits before it is allocated.

use std::path::Path;
use std::sync::Mutex;

use crate::disk::{DiskInfo, Finding, ParentRef, ParseMode, Severity};
use crate::open::OpenOptions;
use crate::source::{Source, SourceRef};

use super::extensions::{self, extension_name};
use super::header::{incompatible, Header, RawHeader, MAX_L1_BYTES, OFFSET_MASK, RAW_HEADER_LEN};
use super::lookup::{be_words, L2Cache};
use super::metadata::Metadata;
use super::snapshot::{self, Snapshot};
use super::{Error, FindingLog, L1Table, Qcow2Disk};

/// Open-time state shared by the steps below.
struct Opening<'a> {
    source: &'a dyn Source,
    file: String,
    mode: ParseMode,
    findings: Vec<Finding>,
}

impl Opening<'_> {
    /// Strict: the error. Salvage: a finding, and go on.
    fn tolerate(&mut self, err: Error, offset: u64, structure: &str) -> Result<(), Error> {
        if self.mode == ParseMode::Strict {
            return Err(err);
        }
        let what = match err {
            Error::Structure { what, .. } => what,
            other => other.to_string(),
        };
        self.findings.push(Finding {
            file: self.file.clone(),
            offset,
            severity: Severity::Error,
            structure: structure.to_string(),
            what,
        });
        Ok(())
    }

    /// Reads up to `count` big-endian u64 entries of a table at `offset`. Entries past
    /// the end of the file are an error (strict) or left out with a finding (salvage).
    fn read_table(
        &mut self,
        offset: u64,
        count: u64,
        structure: &'static str,
    ) -> Result<Vec<u64>, Error> {
        let len = self.source.len();
        let available = len.saturating_sub(offset) / 8;
        let readable = count.min(available);
        if readable < count {
            let err = Error::Structure {
                file: self.file.clone(),
                structure: structure.into(),
                offset,
                what: format!(
                    "{count} entries run past end of file ({:#x}); {readable} are readable",
                    len
                ),
            };
            self.tolerate(err, offset, structure)?;
        }
        let mut bytes = vec![0u8; usize::try_from(readable * 8).unwrap_or(0)];
        self.source
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| Error::Structure {
                file: self.file.clone(),
                structure: structure.into(),
                offset,
                what: e.to_string(),
            })?;
        Ok(be_words(&bytes))
    }
}

impl Qcow2Disk {
    /// Opens a QCOW2 layer read from `source`.
    pub fn open(source: SourceRef, options: &OpenOptions) -> Result<Qcow2Disk, crate::Error> {
        let file = source.name().to_string();
        let file_len = source.len();
        let (header, cluster) = read_header(source.as_ref())?;
        let mut opening = Opening {
            source: source.as_ref(),
            file: file.clone(),
            mode: options.mode,
            findings: Vec::new(),
        };
        let (ext, damage) = extensions::parse(&cluster, &header, &file);
        if let Some(err) = damage {
            opening.tolerate(err, u64::from(header.header_length), "header extension")?;
        }
        let unknown = extensions::unknown_incompatible(&header, &ext);
        if !unknown.is_empty() {
            return Err(Error::UnknownFeatures {
                file,
                names: unknown,
            }
            .into());
        }
        let backing = header.backing_name.map(|(offset, size)| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(size as usize);
            let name = cluster.get(start..end).unwrap_or_default();
            ParentRef {
                name: String::from_utf8_lossy(name).into_owned(),
                format: ext.backing_format.clone(),
            }
        });
        let data = open_data_file(&source, &header, &ext, options)?;
        for (bit, what) in [
            (
                incompatible::DIRTY,
                "dirty bit set: refcounts may be stale (reading does not depend on them)",
            ),
            (
                incompatible::CORRUPT,
                "corrupt bit set: qemu found the metadata inconsistent",
            ),
        ] {
            if header.incompatible & bit != 0 {
                opening.findings.push(Finding {
                    file: file.clone(),
                    offset: 72,
                    severity: Severity::Warning,
                    structure: "qcow2 header".into(),
                    what: what.into(),
                });
            }
        }

        // qcow2.txt: the L1 table, refcount table and snapshot table "Must be aligned to a
        // cluster boundary". Salvage reads a misaligned L1 table where it says it is, and
        // goes on without a misaligned refcount or snapshot table.
        let mut misaligned = |offset: u64, structure: &'static str| -> Result<bool, Error> {
            if offset.is_multiple_of(header.cluster_size) {
                return Ok(false);
            }
            let err = Error::Structure {
                file: file.clone(),
                structure: structure.into(),
                offset,
                what: format!(
                    "offset is not aligned to the cluster size {:#x}",
                    header.cluster_size
                ),
            };
            opening.tolerate(err, offset, structure)?;
            Ok(true)
        };
        misaligned(header.l1_table_offset, "L1 table")?;
        let mut reftable_ok = !misaligned(header.refcount_table_offset, "refcount table")?;
        let snapshots_ok =
            header.nb_snapshots == 0 || !misaligned(header.snapshots_offset, "snapshot table")?;
        if header.refcount_table_clusters == 0 {
            // Every image has at least one refcount table cluster (qemu refuses 0).
            let err = Error::Structure {
                file: file.clone(),
                structure: "refcount table".into(),
                offset: header.refcount_table_offset,
                what: "refcount_table_clusters is 0".into(),
            };
            opening.tolerate(err, header.refcount_table_offset, "refcount table")?;
            reftable_ok = false;
        }
        let (snapshots, snapshots_bytes) = if header.nb_snapshots > 0 && snapshots_ok {
            match snapshot::read_table(
                source.as_ref(),
                header.snapshots_offset,
                header.nb_snapshots,
            ) {
                Ok(t) => t,
                Err(e) => {
                    opening.tolerate(e, header.snapshots_offset, "snapshot table")?;
                    (Vec::new(), 0)
                }
            }
        } else {
            (Vec::new(), 0)
        };

        let (selected, virtual_size, l1_structure, l1_offset, l1_size) = match &options.snapshot {
            None => (
                None,
                header.virtual_size,
                "L1 table",
                header.l1_table_offset,
                header.l1_size,
            ),
            Some(wanted) => {
                let Some((i, s)) = snapshot::select(&snapshots, wanted) else {
                    return Err(Error::UnknownSnapshot {
                        file,
                        wanted: wanted.clone(),
                        available: snapshots
                            .iter()
                            .map(|s| format!("{} '{}'", s.id, s.name))
                            .collect(),
                    }
                    .into());
                };
                check_snapshot_l1(&header, s, &file)?;
                (
                    Some(i),
                    s.disk_size.unwrap_or(header.virtual_size),
                    "snapshot L1 table",
                    s.l1_table_offset,
                    s.l1_size,
                )
            }
        };
        let l1_entries = opening.read_table(l1_offset, u64::from(l1_size), l1_structure)?;
        let reftable_entries = if reftable_ok {
            opening.read_table(
                header.refcount_table_offset,
                header.refcount_table_bytes() / 8,
                "refcount table",
            )?
        } else {
            Vec::new()
        };

        // Snapshot L1 tables that do not fit in the file are damage; they are left out of
        // the metadata map so a garbage size cannot shadow the whole file.
        let mut fitting_snapshots = Vec::with_capacity(snapshots.len());
        for s in &snapshots {
            let bytes = u64::from(s.l1_size) * 8;
            if bytes <= MAX_L1_BYTES
                && s.l1_table_offset
                    .checked_add(bytes)
                    .is_some_and(|e| e <= file_len)
            {
                fitting_snapshots.push((s.l1_table_offset, bytes));
                continue;
            }
            let err = Error::Structure {
                file: file.clone(),
                structure: "snapshot table".into(),
                offset: s.entry_offset,
                what: format!(
                    "snapshot {} L1 table at {:#x} ({} entries) does not fit in the file",
                    s.id, s.l1_table_offset, s.l1_size
                ),
            };
            opening.tolerate(err, s.entry_offset, "snapshot table")?;
        }
        let metadata = metadata_map(&MetadataSources {
            header: &header,
            snapshot_l1s: &fitting_snapshots,
            snapshots_bytes,
            crypto_header: ext.crypto_header,
            refcount_table: &reftable_entries,
            l1: &l1_entries,
            file_len,
        });

        let mut log = FindingLog::default();
        for finding in opening.findings {
            log.seen.insert((finding.offset, finding.what.clone()));
            log.list.push(finding);
        }
        let cluster_size = header.cluster_size;
        Ok(Qcow2Disk {
            data,
            file,
            ext,
            backing,
            snapshots,
            snapshots_bytes,
            selected,
            virtual_size,
            l1: L1Table {
                structure: l1_structure,
                offset: l1_offset,
                size: l1_size,
                entries: l1_entries,
            },
            refcount_table: reftable_entries,
            metadata,
            mode: options.mode,
            l2_cache: Mutex::new(L2Cache::new(cluster_size)),
            decompressed: Default::default(),
            findings: Mutex::new(log),
            header,
            source,
        })
    }

    /// Facts for `vdr info`.
    pub(super) fn describe(&self) -> DiskInfo {
        use serde_json::json;
        let h = &self.header;
        let mut details = std::collections::BTreeMap::new();
        details.insert("refcount_bits".into(), json!(h.refcount_bits()));
        details.insert("l1_size".into(), json!(h.l1_size));
        details.insert("l1_table_offset".into(), json!(h.l1_table_offset));
        details.insert(
            "refcount_table_offset".into(),
            json!(h.refcount_table_offset),
        );
        details.insert(
            "refcount_table_clusters".into(),
            json!(h.refcount_table_clusters),
        );
        details.insert("header_length".into(), json!(h.header_length));
        details.insert(
            "header_extensions".into(),
            json!(self
                .ext
                .found
                .iter()
                .map(|(kind, len)| json!({"type": format!("{kind:#010x}"), "name": extension_name(*kind), "length": len}))
                .collect::<Vec<_>>()),
        );
        if let Some(b) = &self.ext.bitmaps {
            details.insert("bitmaps".into(), json!(b.nb_bitmaps));
            details.insert("bitmap_directory_offset".into(), json!(b.directory_offset));
        }
        if let Some((offset, len)) = self.ext.crypto_header {
            details.insert(
                "encryption_header".into(),
                json!({"offset": offset, "length": len}),
            );
        }
        let icounts: Vec<_> = self
            .snapshots
            .iter()
            .filter_map(|s| s.icount.map(|c| json!({"id": s.id, "icount": c})))
            .collect();
        if !icounts.is_empty() {
            details.insert("snapshot_icount".into(), json!(icounts));
        }
        if let Some(s) = self.selected_snapshot() {
            details.insert(
                "reading_snapshot".into(),
                json!({"id": s.id, "name": s.name}),
            );
        }
        DiskInfo {
            format: "qcow2".into(),
            file: self.file.clone(),
            virtual_size: self.virtual_size,
            file_size: self.source.len(),
            cluster_size: Some(h.cluster_size),
            format_version: Some(h.version.to_string()),
            features: self.feature_names(),
            backing: self.backing.clone(),
            data_file: self.ext.data_file.clone(),
            encryption: h.encryption.map(|e| e.name().to_string()),
            snapshots: self
                .snapshots
                .iter()
                .map(|s| s.info(h.virtual_size))
                .collect(),
            details,
        }
    }
}

/// Reads and validates the header; returns it with the header cluster (or as much of it
/// as the file holds), where extensions and the backing file name live.
fn read_header(source: &dyn Source) -> Result<(Header, Vec<u8>), crate::Error> {
    let file = source.name().to_string();
    let file_len = source.len();
    let mut head = [0u8; RAW_HEADER_LEN];
    let n = source
        .read_at(&mut head, 0)
        .map_err(|e| crate::Error::io(&file, 0, "qcow2 header", e))?;
    let raw = RawHeader::parse(head.get(..n).unwrap_or_default());
    if n < 72 {
        if raw.magic != super::header::MAGIC {
            return Err(Error::BadMagic {
                file,
                found: raw.magic,
            }
            .into());
        }
        return Err(Error::Header {
            file,
            field: "header",
            offset: 0,
            what: format!("file of {file_len} bytes is too short for a qcow2 header"),
        }
        .into());
    }
    let header = Header::validate(&raw, &file, file_len)?;
    let cluster_len = header.cluster_size.min(file_len);
    let mut cluster = vec![0u8; usize::try_from(cluster_len).unwrap_or(0)];
    source
        .read_exact_at(&mut cluster, 0)
        .map_err(|e| crate::Error::io(&file, 0, "qcow2 header cluster", e))?;
    Ok((header, cluster))
}

/// What the metadata map is built from.
struct MetadataSources<'a> {
    header: &'a Header,
    /// (offset, bytes) of every snapshot's L1 table that fits in the file.
    snapshot_l1s: &'a [(u64, u64)],
    snapshots_bytes: u64,
    crypto_header: Option<(u64, u64)>,
    refcount_table: &'a [u64],
    /// The L1 table in use: its L2 tables are metadata too.
    l1: &'a [u64],
    file_len: u64,
}

/// Where the image's metadata lives (see [`Metadata`]).
fn metadata_map(from: &MetadataSources<'_>) -> Metadata {
    let h = from.header;
    let cs = h.cluster_size;
    let mut metadata = Metadata::new(cs);
    metadata.add(0, cs, "header");
    metadata.add(h.l1_table_offset, u64::from(h.l1_size) * 8, "L1 table");
    metadata.add(
        h.refcount_table_offset,
        h.refcount_table_bytes(),
        "refcount table",
    );
    metadata.add(h.snapshots_offset, from.snapshots_bytes, "snapshot table");
    for (offset, bytes) in from.snapshot_l1s {
        metadata.add(*offset, *bytes, "snapshot L1 table");
    }
    if let Some((offset, len)) = from.crypto_header {
        metadata.add(offset, len, "encryption header");
    }
    for entry in from.refcount_table {
        let block = entry & OFFSET_MASK;
        if block != 0 && block.is_multiple_of(cs) && block < from.file_len {
            metadata.add(block, cs, "refcount block");
        }
    }
    for entry in from.l1 {
        let table = entry & OFFSET_MASK;
        if table != 0 {
            metadata.add_l2_table(table);
        }
    }
    metadata.finish();
    metadata
}

/// Checks a snapshot's L1 table position before it is used.
fn check_snapshot_l1(header: &Header, s: &Snapshot, file: &str) -> Result<(), Error> {
    if !s.l1_table_offset.is_multiple_of(header.cluster_size) {
        return Err(Error::Structure {
            file: file.to_string(),
            structure: "snapshot table".into(),
            offset: s.entry_offset,
            what: format!(
                "snapshot '{}' L1 table offset {:#x} is not cluster aligned",
                s.id, s.l1_table_offset
            ),
        });
    }
    if u64::from(s.l1_size) * 8 > super::header::MAX_L1_BYTES {
        return Err(Error::TooLarge {
            file: file.to_string(),
            what: "snapshot L1 table entries",
            value: u64::from(s.l1_size),
            limit: super::header::MAX_L1_BYTES / 8,
        });
    }
    Ok(())
}

/// Opens the external data file (read-only), resolved relative to the image's directory.
/// Without one, guest data is in the image itself.
fn open_data_file(
    source: &SourceRef,
    header: &Header,
    ext: &extensions::Extensions,
    options: &OpenOptions,
) -> Result<SourceRef, Error> {
    if !header.has_data_file() {
        return Ok(source.clone());
    }
    let file = source.name().to_string();
    let Some(name) = &ext.data_file else {
        return Err(Error::Header {
            file,
            field: "incompatible_features",
            offset: 72,
            what: "external data file bit is set but the image names no data file".into(),
        });
    };
    let relative = Path::new(name);
    let path = match (relative.is_absolute(), source.path().and_then(Path::parent)) {
        (false, Some(dir)) => dir.join(relative),
        _ => relative.to_path_buf(),
    };
    options.open_named(&path).map_err(|e| Error::DataFile {
        file,
        name: name.clone(),
        path: path.display().to_string(),
        source: e,
    })
}
