//! Hosted sparse extents ("KDMV"; VMware "Virtual Disk Format 1.1", "Hosted Sparse Extent
//! Header"), including streamOptimized in its three layouts:
//! - VMware's: header gdOffset = GD_AT_END; the real header is in the footer (the sector
//!   after a footer marker, 1024 bytes before the end, followed by the end-of-stream
//!   marker), as qemu's `vmdk_open_vmdk4` reads it;
//! - qemu's: grain tables and directory up front, like monolithicSparse;
//! - the old stream converter's: gdOffset in the header points to a directory at the end.
//!
//! The grain directory and its redundant copy (rgdOffset) are read and reconciled here:
//! a primary entry that is zero or unusable where the redundant one is good is damage
//! (qemu reads only the primary and returns zeros: data loss). Strict mode refuses it
//! naming both offsets; salvage uses the redundant entries and records a finding.

use std::io::Cursor;
use std::sync::Arc;

use binrw::BinRead;

use crate::disk::{ParseMode, Severity};
use crate::error::Error as CrateError;
use crate::source::SourceRef;

use super::grains::{read_entries, Geometry, GrainTables, TableKind, TableRef};
use super::stream::{self, Marker};
use super::{Error, Log};

pub const MAGIC: [u8; 4] = *b"KDMV";
pub const FLAG_NL_DETECT: u32 = 1 << 0;
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
pub const GD_AT_END: u64 = u64::MAX;
pub const COMPRESSION_DEFLATE: u16 = 1;
/// qemu's limit on grain directory entries ("L1 size too big").
pub const MAX_GD_ENTRIES: u64 = 32 << 20;
/// qemu's limit on the grain size: 0x200000 sectors (1 GiB).
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// qemu's limit on entries per grain table.
pub const MAX_GTES_PER_GT: u32 = 512;

/// The header fields as stored (little-endian), from offset 0.
#[derive(BinRead, Debug, Clone, Default)]
#[br(little)]
pub struct RawHeader {
    pub magic: [u8; 4],
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub unclean_shutdown: u8,
    pub check_bytes: [u8; 4],
    pub compress_algorithm: u16,
}

impl RawHeader {
    pub fn parse(bytes: &[u8]) -> Option<RawHeader> {
        RawHeader::read(&mut Cursor::new(bytes)).ok()
    }
}

/// A validated header.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    /// Capacity in bytes.
    pub capacity: u64,
    pub geometry: Geometry,
    /// Embedded descriptor: byte offset and length (0 when none).
    pub descriptor_at: u64,
    pub descriptor_len: u64,
    pub gd_at: u64,
    /// Redundant directory, when the flag says there is one.
    pub rgd_at: Option<u64>,
    pub gd_entries: u64,
    pub overhead: u64,
    pub compressed: bool,
    pub markers: bool,
    /// The header was read from the footer (VMware stream layout).
    pub from_footer: bool,
    pub unclean_shutdown: bool,
}

/// An opened sparse extent: its tables, header, and the embedded descriptor bytes.
pub struct SparseExtent {
    pub tables: GrainTables,
    pub header: Header,
    pub descriptor: Option<Vec<u8>>,
}

/// What the first sector says when the extent is really a descriptor holder (capacity 0
/// and a descriptor: qemu opens that descriptor's extents instead).
pub fn descriptor_only(raw: &RawHeader) -> Option<(u64, u64)> {
    (raw.capacity == 0 && raw.descriptor_offset != 0).then(|| {
        (
            raw.descriptor_offset.saturating_mul(512),
            raw.descriptor_size.saturating_mul(512),
        )
    })
}

/// Reads the first sector as a raw header.
pub fn read_raw(source: &SourceRef) -> Result<RawHeader, CrateError> {
    let mut sector = [0u8; 512];
    let n = source
        .read_at(&mut sector, 0)
        .map_err(|e| CrateError::io(source.name(), 0, "sparse extent header", e))?;
    let raw = sector
        .get(..n)
        .and_then(RawHeader::parse)
        .filter(|r| r.magic == MAGIC)
        .ok_or_else(|| Error::Header {
            file: source.name().to_string(),
            offset: 0,
            what: format!("no sparse extent header (magic \"KDMV\") in the first {n} bytes"),
        })?;
    Ok(raw)
}

/// Opens a hosted sparse extent.
pub fn open(source: SourceRef, log: Arc<Log>) -> Result<SparseExtent, CrateError> {
    let file = source.name().to_string();
    let first = read_raw(&source)?;
    let mut scan_from = None;
    let raw = if first.gd_offset == GD_AT_END {
        match read_footer(&source) {
            Ok(footer) => footer,
            Err(what) => {
                let at = source.len().saturating_sub(1536);
                log.damage(
                    &file,
                    "stream footer",
                    at,
                    format!("{what}; the grain directory is lost"),
                )?;
                scan_from = Some(first.overhead.saturating_mul(512).max(512));
                first.clone()
            }
        }
    } else {
        first.clone()
    };
    let mut header = validate(&raw, &file, source.len(), &log)?;
    header.from_footer = first.gd_offset == GD_AT_END && scan_from.is_none();
    let descriptor = read_descriptor(&source, first.descriptor_offset, first.descriptor_size)?;
    let (directory, stream_index) = match scan_from {
        Some(start) => {
            if !header.compressed {
                return Err(Error::Header {
                    file,
                    offset: 56,
                    what: "gdOffset says GD_AT_END but the extent is not compressed".into(),
                }
                .into());
            }
            let why = "the footer is missing";
            (
                Vec::new(),
                Some(rebuild(&source, start, &header, &log, why)?),
            )
        }
        None => {
            let directory = directory(&source, &header, &log)?;
            let damaged = directory.len() as u64 != header.gd_entries
                || directory.iter().any(|t| matches!(t, TableRef::Damaged(_)));
            if damaged && header.compressed && header.markers && log.mode == ParseMode::Salvage {
                // A stream's grains carry their own LBA: a damaged directory is rebuilt
                // from the markers instead of losing the grains it mapped.
                let start = header.overhead.max(512);
                let why = "the grain directory is damaged";
                (
                    Vec::new(),
                    Some(rebuild(&source, start, &header, &log, why)?),
                )
            } else {
                (directory, None)
            }
        }
    };
    let redundant = match (header.rgd_at, &stream_index) {
        (Some(at), None) => redundant_tables(&source, at, &header)?,
        _ => Vec::new(),
    };
    let mut tables = GrainTables::new(
        source,
        TableKind::Hosted,
        header.geometry,
        directory,
        header.compressed,
        header.markers,
        stream_index,
        log,
    );
    tables.redundant = redundant;
    Ok(SparseExtent {
        tables,
        header,
        descriptor,
    })
}

/// Rebuilds a stream's grain index by scanning its markers from `start`, with a finding.
fn rebuild(
    source: &SourceRef,
    start: u64,
    header: &Header,
    log: &Log,
    why: &str,
) -> Result<stream::StreamIndex, CrateError> {
    let scan = stream::scan(source, start, header.geometry.grain_size, header.capacity)?;
    log.record(
        source.name(),
        scan.stopped_at,
        Severity::Error,
        "stream",
        format!(
            "{why}: grain directory rebuilt by scanning the markers from {start:#x}: {} grains found; \
             the scan stopped at {:#x} ({}); grains past the last one found are unreadable",
            scan.index.grains.len(),
            scan.stopped_at,
            scan.why
        ),
    );
    Ok(scan.index)
}

/// The header in the footer of a VMware stream: footer marker, header, end-of-stream
/// marker in the last three sectors.
fn read_footer(source: &SourceRef) -> Result<RawHeader, String> {
    let len = source.len();
    if len < 1536 + 512 {
        return Err(format!("the file ({len} bytes) is too short for a footer"));
    }
    let at = len - 1536;
    let mut bytes = vec![0u8; 1536];
    source
        .read_exact_at(&mut bytes, at)
        .map_err(|e| format!("cannot read the footer at {at:#x}: {e}"))?;
    let marker = |i: usize| -> Marker {
        let mut m = [0u8; 16];
        if let Some(src) = bytes.get(i..i + 16) {
            m.copy_from_slice(src);
        }
        Marker::parse(&m)
    };
    let footer_marker = marker(0);
    let eos = marker(1024);
    let header = bytes.get(512..1024).and_then(RawHeader::parse);
    match header {
        Some(h)
            if h.magic == MAGIC
                && footer_marker.size == 0
                && footer_marker.kind == stream::MARKER_FOOTER
                && eos
                    == Marker {
                        val: 0,
                        size: 0,
                        kind: stream::MARKER_EOS,
                    } =>
        {
            Ok(h)
        }
        _ => Err(format!(
            "no valid footer (footer marker, header, end-of-stream marker) at {at:#x}"
        )),
    }
}

/// Validates the raw header against the limits and the file length.
fn validate(raw: &RawHeader, file: &str, len: u64, log: &Log) -> Result<Header, CrateError> {
    let bad = |offset: u64, what: String| -> CrateError {
        Error::Header {
            file: file.to_string(),
            offset,
            what,
        }
        .into()
    };
    let compressed = match raw.compress_algorithm {
        0 => false,
        COMPRESSION_DEFLATE => true,
        other => {
            return Err(bad(
                77,
                format!("compression algorithm {other} is not known"),
            ))
        }
    };
    let gs = raw.grain_size;
    if gs == 0 || gs > MAX_GRAIN_SECTORS || !gs.is_power_of_two() {
        return Err(bad(
            20,
            format!("grain size of {gs} sectors is not a power of two up to {MAX_GRAIN_SECTORS}"),
        ));
    }
    let gtes = raw.num_gtes_per_gt;
    if gtes == 0 || gtes > MAX_GTES_PER_GT {
        return Err(bad(
            44,
            format!("{gtes} entries per grain table (1 to {MAX_GTES_PER_GT} expected)"),
        ));
    }
    let capacity = raw
        .capacity
        .checked_mul(512)
        .filter(|c| *c <= i64::MAX as u64)
        .ok_or_else(|| {
            bad(
                12,
                format!("capacity of {} sectors is beyond any disk", raw.capacity),
            )
        })?;
    let span = u64::from(gtes) * gs;
    let gd_entries = raw.capacity.div_ceil(span);
    if gd_entries > MAX_GD_ENTRIES {
        return Err(Error::TooLarge {
            file: file.to_string(),
            what: "grain directory entries (capacity / grain table span)",
            value: gd_entries,
            limit: MAX_GD_ENTRIES,
        }
        .into());
    }
    // Checked after the limits, so that a fuzzed header fails on what makes it unusable.
    if raw.version == 0 || raw.version > 3 {
        let what = format!("version {} is not 1, 2 or 3", raw.version);
        log.damage(file, "sparse extent header", 4, what)?;
    }
    if raw.flags & FLAG_NL_DETECT != 0 && raw.check_bytes != *b"\n \r\n" {
        let what = format!(
            "newline check bytes are {:02x?}, not 0a 20 0d 0a: the file was changed by a text-mode transfer",
            raw.check_bytes
        );
        log.damage(file, "sparse extent header", 73, what)?;
    }
    let overhead = raw.overhead.saturating_mul(512);
    if overhead > len {
        let what = format!(
            "overhead of {overhead:#x} bytes runs past the end of the file ({len:#x}): truncated"
        );
        log.damage(file, "sparse extent header", 64, what)?;
    }
    let sector_at = |v: u64, field_at: u64, name: &str| -> Result<u64, CrateError> {
        v.checked_mul(512)
            .ok_or_else(|| bad(field_at, format!("{name} {v:#x} overflows")))
    };
    let rgd_at = if raw.flags & FLAG_REDUNDANT_GD != 0 && raw.rgd_offset != 0 {
        Some(sector_at(raw.rgd_offset, 48, "rgdOffset")?)
    } else {
        None
    };
    let gd_at = if raw.gd_offset == GD_AT_END {
        0
    } else {
        sector_at(raw.gd_offset, 56, "gdOffset")?
    };
    Ok(Header {
        version: raw.version,
        flags: raw.flags,
        capacity,
        geometry: Geometry {
            grain_size: gs * 512,
            gtes_per_gt: u64::from(gtes),
            entry_bytes: 4,
            capacity,
        },
        descriptor_at: raw.descriptor_offset.saturating_mul(512),
        descriptor_len: raw.descriptor_size.saturating_mul(512),
        gd_at,
        rgd_at,
        gd_entries,
        overhead,
        compressed,
        markers: raw.flags & FLAG_MARKERS != 0,
        from_footer: false,
        unclean_shutdown: raw.unclean_shutdown != 0,
    })
}

/// Reads the embedded descriptor, bounded by the descriptor limit and the file.
fn read_descriptor(
    source: &SourceRef,
    offset: u64,
    size: u64,
) -> Result<Option<Vec<u8>>, CrateError> {
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    let at = offset.saturating_mul(512);
    let len = size
        .saturating_mul(512)
        .min(super::descriptor::MAX_DESCRIPTOR_BYTES)
        .min(source.len().saturating_sub(at));
    if len == 0 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    source
        .read_exact_at(&mut bytes, at)
        .map_err(|e| CrateError::io(source.name(), at, "embedded descriptor", e))?;
    Ok(Some(bytes))
}

/// Reads a grain directory of `entries` at `at`; entries cut by the end of the file are
/// missing from the result (the caller decides what that means).
fn read_directory(source: &SourceRef, at: u64, entries: u64) -> Result<Vec<u64>, CrateError> {
    let want = entries.saturating_mul(4);
    let have = source.len().saturating_sub(at).min(want);
    read_entries(source, at, have - have % 4, 4, "grain directory")
}

/// Where the redundant grain tables are: entries of the redundant directory that name a
/// whole table inside the file.
fn redundant_tables(
    source: &SourceRef,
    at: u64,
    h: &Header,
) -> Result<Vec<Option<u64>>, CrateError> {
    let len = source.len();
    let table_bytes = h.geometry.table_bytes();
    Ok(read_directory(source, at, h.gd_entries)?
        .into_iter()
        .map(|sector| {
            let at = sector.checked_mul(512)?;
            (sector != 0 && at.checked_add(table_bytes)? <= len).then_some(at)
        })
        .collect())
}

/// Reads the primary directory (and the redundant one) and decides, entry by entry, where
/// each grain table is.
fn directory(source: &SourceRef, h: &Header, log: &Log) -> Result<Vec<TableRef>, CrateError> {
    let file = source.name();
    let len = source.len();
    let primary = read_directory(source, h.gd_at, h.gd_entries)?;
    let redundant = match h.rgd_at {
        Some(at) => Some(read_directory(source, at, h.gd_entries)?),
        None => None,
    };
    let table_bytes = h.geometry.table_bytes();
    // An entry is usable when it names a whole grain table inside the file.
    let usable = |sector: u64| -> Result<u64, String> {
        let at = sector
            .checked_mul(512)
            .ok_or_else(|| format!("sector {sector:#x} overflows"))?;
        match at.checked_add(table_bytes) {
            Some(end) if end <= len && at >= 512 => Ok(at),
            _ => Err(format!(
                "points to a grain table at {at:#x} outside the file ({len:#x} bytes)"
            )),
        }
    };
    let mut out = Vec::with_capacity(
        usize::try_from(h.gd_entries)
            .unwrap_or(0)
            .min(primary.len().max(1) * 2),
    );
    let mut fallbacks = 0u64;
    let mut first_fallback = None;
    // Entries neither copy holds (both cut by the end of the file) stay out of the
    // directory: the lookup reports the grains they would map as unreadable.
    let present = primary.len().max(redundant.as_ref().map_or(0, Vec::len)) as u64;
    if present < h.gd_entries {
        let what = format!(
            "is cut by the end of the file: {present} of {} entries present",
            h.gd_entries
        );
        log.damage(file, "grain directory", h.gd_at, what)?;
    }
    for i in 0..present {
        let idx = usize::try_from(i).unwrap_or(usize::MAX);
        let p = primary.get(idx).copied();
        let r = redundant.as_ref().map(|r| r.get(idx).copied());
        let p_state = p.map(|s| {
            if s == 0 {
                Ok(None)
            } else {
                usable(s).map(Some)
            }
        });
        let r_state = r.flatten().map(|s| {
            if s == 0 {
                Ok(None)
            } else {
                usable(s).map(Some)
            }
        });
        let chosen = match (&p_state, &r_state) {
            (Some(Ok(Some(at))), _) => TableRef::At(*at),
            (Some(Ok(None)), None | Some(Ok(None)) | Some(Err(_))) => TableRef::Absent,
            (Some(Ok(None)) | Some(Err(_)) | None, Some(Ok(Some(at)))) => {
                fallbacks += 1;
                first_fallback.get_or_insert(i);
                TableRef::At(*at)
            }
            (Some(Err(what)), _) => {
                let reason = log.damage(
                    file,
                    "grain directory",
                    h.gd_at,
                    format!("entry {i} {what}"),
                )?;
                TableRef::Damaged(reason)
            }
            (None, _) => {
                let what = format!("entry {i} lies past the end of the file");
                TableRef::Damaged(log.damage(file, "grain directory", h.gd_at, what)?)
            }
        };
        out.push(chosen);
    }
    if fallbacks > 0 {
        let rgd_at = h.rgd_at.unwrap_or(0);
        let all_zero = primary.iter().all(|&e| e == 0);
        let what = if all_zero {
            "primary grain directory zeroed; using the redundant one".to_string()
        } else {
            format!(
                "{fallbacks} primary grain directory entries (first: entry {}) are zero or unusable where the redundant ones are good; using the redundant ones",
                first_fallback.unwrap_or(0)
            )
        };
        if log.mode == ParseMode::Strict {
            return Err(Error::RedundantMismatch {
                file: file.to_string(),
                primary: h.gd_at,
                redundant: rgd_at,
                what,
            }
            .into());
        }
        log.record(file, h.gd_at, Severity::Error, "grain directory", what);
    }
    Ok(out)
}
