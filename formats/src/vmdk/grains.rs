//! The grain lookup every sparse extent shares (hosted "KDMV" sparse, streamOptimized,
//! vmfsSparse "COWD", seSparse): grain directory → grain table → one classified [`Grain`].
//! `map`, `read_at` and `check` all go through [`GrainTables::grain`]; nothing re-derives
//! a grain table entry elsewhere. Grain tables are read on demand into a bounded cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error as CrateError;
use crate::source::SourceRef;

use super::stream::{InflatedCache, StreamIndex};
use super::Log;

/// Bytes of grain tables cached per extent (at least two tables).
const GT_CACHE_BYTES: u64 = 4 << 20;

/// How grain table entries are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// KDMV sparse extent: 32-bit sector offsets; 0 unallocated, 1 zeroed grain.
    Hosted,
    /// vmfsSparse (COWD): 32-bit sector offsets; 0 unallocated.
    Cowd,
    /// seSparse: 64-bit entries with a type in the top nibble (qemu `get_cluster_offset`);
    /// grain tables and grains are numbered from their areas' starts (bytes).
    SeSparse { tables_at: u64, grains_at: u64 },
}

/// What one grain directory entry leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableRef {
    /// No grain table: every grain it would map is unallocated.
    Absent,
    /// A grain table at this byte offset.
    At(u64),
    /// Damaged entry (salvage mode): the grains it maps are unreadable.
    Damaged(String),
}

/// What one grain holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grain {
    Unallocated,
    Zero,
    /// Stored uncompressed at this byte offset of the extent file.
    Data {
        host: u64,
    },
    /// Stored compressed behind a grain marker (or bare) at this byte offset.
    Compressed {
        host: u64,
    },
    /// Stored at `host`, but the file ends `present` bytes into the grain (salvage): those
    /// bytes are its true content, the rest is unreadable for `reason`.
    Cut {
        host: u64,
        present: u64,
        reason: String,
    },
    Unreadable(String),
}

/// Geometry of a sparse extent.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Grain size in bytes (a power of two, at least 512).
    pub grain_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u64,
    /// Bytes per grain table entry (4, or 8 for seSparse).
    pub entry_bytes: u64,
    /// Capacity of the extent in bytes, as its header says.
    pub capacity: u64,
}

impl Geometry {
    /// Bytes of one grain table.
    pub fn table_bytes(&self) -> u64 {
        self.gtes_per_gt * self.entry_bytes
    }

    /// Bytes of the disk one grain table maps.
    pub fn table_span(&self) -> u64 {
        self.gtes_per_gt * self.grain_size
    }
}

/// A sparse extent's tables and the state needed to read through them.
pub struct GrainTables {
    pub source: SourceRef,
    pub file: String,
    pub kind: TableKind,
    pub geometry: Geometry,
    /// Grain directory in use (after reconciling with the redundant one).
    pub directory: Vec<TableRef>,
    /// Grains are deflate-compressed (streamOptimized).
    pub compressed: bool,
    /// Compressed grains are preceded by a grain marker.
    pub markers: bool,
    /// For a stream whose grain directory is missing: the grains found by scanning.
    pub stream: Option<StreamIndex>,
    /// Byte offsets of the redundant grain tables, by directory index (hosted sparse
    /// extents with a redundant directory; empty otherwise).
    pub redundant: Vec<Option<u64>>,
    pub log: Arc<Log>,
    cache: Mutex<TableCache>,
    pub inflated: InflatedCache,
}

struct TableCache {
    tables: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl GrainTables {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: SourceRef,
        kind: TableKind,
        geometry: Geometry,
        directory: Vec<TableRef>,
        compressed: bool,
        markers: bool,
        stream: Option<StreamIndex>,
        log: Arc<Log>,
    ) -> GrainTables {
        let capacity =
            usize::try_from((GT_CACHE_BYTES / geometry.table_bytes().max(1)).max(2)).unwrap_or(2);
        GrainTables {
            file: source.name().to_string(),
            source,
            kind,
            geometry,
            directory,
            compressed,
            markers,
            stream,
            redundant: Vec::new(),
            log,
            cache: Mutex::new(TableCache {
                tables: HashMap::new(),
                order: VecDeque::new(),
                capacity,
            }),
            inflated: InflatedCache::default(),
        }
    }

    /// Number of grains the extent's capacity holds.
    pub fn grain_count(&self) -> u64 {
        self.geometry.capacity.div_ceil(self.geometry.grain_size)
    }

    /// The grain at `index` and how many grains from it on (at least 1) read the same
    /// way without another lookup: the rest of an absent or damaged grain table, the hole
    /// up to a stream's next grain, everything past a directory cut short. Walking a
    /// huge claimed capacity therefore costs one step per table, not one per grain, and
    /// a damaged directory is reported once, not once per grain.
    pub fn grain_run(&self, index: u64) -> Result<(Grain, u64), CrateError> {
        if let Some(stream) = &self.stream {
            return Ok(stream.grain_run(index));
        }
        let g = &self.geometry;
        let table_index = index / g.gtes_per_gt;
        let entry_index = index % g.gtes_per_gt;
        let rest_of_table = g.gtes_per_gt - entry_index;
        let slot = usize::try_from(table_index)
            .ok()
            .and_then(|i| self.directory.get(i));
        let table_at = match slot {
            None => {
                let what = format!(
                    "has no entry {table_index} (cut by the end of the file); the directory holds {}",
                    self.directory.len()
                );
                let reason = self.log.damage(&self.file, "grain directory", 0, what)?;
                return Ok((Grain::Unreadable(reason), u64::MAX));
            }
            Some(TableRef::Absent) => return Ok((Grain::Unallocated, rest_of_table)),
            Some(TableRef::Damaged(reason)) => {
                return Ok((Grain::Unreadable(reason.clone()), rest_of_table))
            }
            Some(TableRef::At(at)) => *at,
        };
        let table = self.table(table_index, table_at)?;
        let Some(entry) = usize::try_from(entry_index)
            .ok()
            .and_then(|i| table.get(i))
            .copied()
        else {
            let what = format!("entry {entry_index} lies past the end of the file");
            return Ok((
                Grain::Unreadable(self.log.damage(&self.file, "grain table", table_at, what)?),
                1,
            ));
        };
        let grain = match self.decode(entry) {
            Ok(grain) => grain,
            Err(what) => {
                let what = format!("entry {entry_index}: {what}");
                let reason = self.log.damage(&self.file, "grain table", table_at, what)?;
                return Ok((Grain::Unreadable(reason), 1));
            }
        };
        Ok((self.check_grain(grain, index, table_at, entry_index)?, 1))
    }

    /// Decodes one grain table entry into a grain (offsets not yet checked).
    pub fn decode(&self, entry: u64) -> Result<Grain, String> {
        match self.kind {
            TableKind::Hosted | TableKind::Cowd => match entry {
                0 => Ok(Grain::Unallocated),
                // VMware spec 1.1: a GTE of 1 marks a zeroed grain (hardware version 7+);
                // sector 1 is inside the header area, so it is never a real grain.
                1 if self.kind == TableKind::Hosted => Ok(Grain::Zero),
                sector => {
                    let host = sector
                        .checked_mul(512)
                        .ok_or_else(|| format!("sector {sector:#x} overflows"))?;
                    Ok(if self.compressed {
                        Grain::Compressed { host }
                    } else {
                        Grain::Data { host }
                    })
                }
            },
            TableKind::SeSparse { grains_at, .. } => match entry >> 60 {
                0 if entry == 0 => Ok(Grain::Unallocated),
                0 => Err(format!("unallocated entry {entry:#018x} has stray bits")),
                // 1: SCSI-unmapped, 2: zeroed; both read as zeros.
                1 | 2 => Ok(Grain::Zero),
                3 => {
                    let number = ((entry & 0x0fff_0000_0000_0000) >> 48)
                        | ((entry & 0x0000_ffff_ffff_ffff) << 12);
                    let host = number
                        .checked_mul(self.geometry.grain_size)
                        .and_then(|b| b.checked_add(grains_at))
                        .ok_or_else(|| format!("grain number {number:#x} overflows"))?;
                    Ok(Grain::Data { host })
                }
                t => Err(format!("unknown entry type {t:#x} ({entry:#018x})")),
            },
        }
    }

    /// Checks that a grain's storage is inside the file.
    fn check_grain(
        &self,
        grain: Grain,
        index: u64,
        table_at: u64,
        entry_index: u64,
    ) -> Result<Grain, CrateError> {
        let len = self.source.len();
        let g = &self.geometry;
        let problem = match grain {
            Grain::Data { host } => {
                let start = index.saturating_mul(g.grain_size);
                let needed = g.grain_size.min(g.capacity.saturating_sub(start));
                host.checked_add(needed).is_none_or(|e| e > len).then(|| {
                    format!("points past end of file ({host:#x} + {needed:#x} > {len:#x})")
                })
            }
            Grain::Compressed { host } => self.compressed_problem(host, len)?,
            _ => None,
        };
        match (problem, grain) {
            (None, grain) => Ok(grain),
            (Some(what), grain) => {
                let what = format!("entry {entry_index} (grain {index}) {what}");
                let reason = self.log.damage(&self.file, "grain table", table_at, what)?;
                Ok(match grain {
                    Grain::Data { host } if host < len => Grain::Cut {
                        host,
                        present: len - host,
                        reason,
                    },
                    _ => Grain::Unreadable(reason),
                })
            }
        }
    }

    /// What is wrong with the compressed grain at `host`, if anything: its marker (and
    /// the compressed bytes the marker announces) must lie inside the file.
    fn compressed_problem(&self, host: u64, len: u64) -> Result<Option<String>, CrateError> {
        let marker_end = host.checked_add(super::stream::GRAIN_MARKER_LEN);
        if marker_end.is_none_or(|e| e > len) {
            return Ok(Some(format!(
                "points to a compressed grain past end of file ({host:#x} >= {len:#x})"
            )));
        }
        if !self.markers {
            return Ok(None);
        }
        let mut size = [0u8; 4];
        self.source
            .read_exact_at(&mut size, host + 8)
            .map_err(|e| CrateError::io(&self.file, host, "grain marker", e))?;
        let end = host + super::stream::GRAIN_MARKER_LEN + u64::from(u32::from_le_bytes(size));
        Ok((end > len).then(|| {
            format!("points to a compressed grain at {host:#x} cut by the end of the file ({end:#x} > {len:#x})")
        }))
    }

    /// The grain table number `index` at byte offset `at`, from the cache or the file. A
    /// table cut by the end of the file keeps the entries that are there (salvage) or is an
    /// error (strict). A zeroed table whose redundant copy holds entries is damage: strict
    /// refuses it, salvage reads the copy.
    pub fn table(&self, index: u64, at: u64) -> Result<Arc<[u64]>, CrateError> {
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = cache.tables.get(&at) {
                return Ok(t.clone());
            }
        }
        let mut entries = self.read_table(at)?;
        let copy_at = usize::try_from(index)
            .ok()
            .and_then(|i| self.redundant.get(i).copied().flatten());
        if let (true, Some(copy_at)) = (entries.iter().all(|&e| e == 0), copy_at) {
            let copy = self.read_table(copy_at)?;
            if copy.iter().any(|&e| e != 0) {
                let what = format!(
                    "is zeroed while its redundant copy at {copy_at:#x} maps grains; using the copy"
                );
                self.log.damage(&self.file, "grain table", at, what)?;
                entries = copy;
            }
        }
        let table: Arc<[u64]> = entries.into();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.tables.insert(at, table.clone()).is_none() {
            cache.order.push_back(at);
        }
        while cache.order.len() > cache.capacity {
            if let Some(old) = cache.order.pop_front() {
                cache.tables.remove(&old);
            }
        }
        Ok(table)
    }

    /// Reads a grain table without caching it.
    pub fn read_table(&self, at: u64) -> Result<Vec<u64>, CrateError> {
        let bytes = self.geometry.table_bytes();
        let have = self.source.len().saturating_sub(at).min(bytes);
        if have < bytes {
            self.log.damage(
                &self.file,
                "grain table",
                at,
                format!("is cut by the end of the file ({have} of {bytes} bytes present)"),
            )?;
        }
        read_entries(
            &self.source,
            at,
            have,
            self.geometry.entry_bytes,
            "grain table",
        )
    }
}

/// Reads `len` bytes of little-endian entries (4 or 8 bytes wide) at `at`.
pub fn read_entries(
    source: &SourceRef,
    at: u64,
    len: u64,
    width: u64,
    structure: &'static str,
) -> Result<Vec<u64>, CrateError> {
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    source
        .read_exact_at(&mut bytes, at)
        .map_err(|e| CrateError::io(source.name(), at, structure, e))?;
    let width = usize::try_from(width).unwrap_or(4);
    Ok(bytes
        .chunks_exact(width)
        .map(|c| {
            let mut word = [0u8; 8];
            if let Some(dst) = word.get_mut(..c.len()) {
                dst.copy_from_slice(c);
            }
            u64::from_le_bytes(word)
        })
        .collect())
}
