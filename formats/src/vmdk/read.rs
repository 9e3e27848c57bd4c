//! `map` and `read_at`: the disk's extents, and inside sparse extents the grains from the
//! shared lookup. Reads coalesce runs of data that are contiguous in one file into one
//! positional read; compressed grains are inflated through a small per-extent cache.

use std::sync::Arc;

use crate::disk::{check_range, clip_end, push_merged, Extent, ExtentKind, VirtualDisk};
use crate::error::Error as CrateError;
use crate::raw::RawDisk;
use crate::source::SourceRef;

use super::grains::{Grain, GrainTables};
use super::{ExtentData, VmdkDisk};

/// One classified piece of the disk.
enum Piece<'a> {
    Zero,
    Unallocated,
    Data {
        source: &'a SourceRef,
        host: u64,
    },
    /// `within`: offset of the piece inside the inflated grain.
    Compressed {
        tables: &'a GrainTables,
        index: u64,
        host: u64,
        within: u64,
    },
    Unreadable(String),
}

/// A run of data waiting to be read: `len` bytes at `host` of `source` into `buf[start..]`.
struct PendingRead<'a> {
    source: &'a SourceRef,
    start: usize,
    host: u64,
    len: usize,
}

impl VmdkDisk {
    /// Classifies `[offset, end)`, calling `f(disk_offset, len, piece)` for consecutive
    /// pieces (at most one grain each in sparse extents).
    fn walk<'a>(
        &'a self,
        offset: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Piece<'a>) -> Result<(), CrateError>,
    ) -> Result<(), CrateError> {
        let first = self.extents.partition_point(|e| e.end() <= offset);
        let mut pos = offset;
        for extent in self.extents.get(first..).unwrap_or_default() {
            if pos >= end {
                break;
            }
            let stop = extent.end().min(end);
            let rel = pos - extent.start;
            match &extent.data {
                ExtentData::Zero => f(pos, stop - pos, Piece::Zero)?,
                ExtentData::Unreadable(reason) => {
                    f(pos, stop - pos, Piece::Unreadable(reason.clone()))?
                }
                ExtentData::Flat { source, at } => f(
                    pos,
                    stop - pos,
                    Piece::Data {
                        source,
                        host: at + rel,
                    },
                )?,
                ExtentData::Sparse(s) => {
                    let t = &s.tables;
                    let gs = t.geometry.grain_size;
                    let mut p = pos;
                    while p < stop {
                        let rel = p - extent.start;
                        let index = rel / gs;
                        let within = rel % gs;
                        let (grain, run) = t.grain_run(index)?;
                        let piece_end = index
                            .saturating_add(run)
                            .saturating_mul(gs)
                            .saturating_add(extent.start)
                            .min(stop);
                        let len = piece_end - p;
                        let piece = match grain {
                            Grain::Cut {
                                host,
                                present,
                                reason,
                            } => {
                                // The bytes still in the file, then the missing tail.
                                let split =
                                    (extent.start + index * gs + present).clamp(p, piece_end);
                                if p < split {
                                    let host = host + within;
                                    f(
                                        p,
                                        split - p,
                                        Piece::Data {
                                            source: &t.source,
                                            host,
                                        },
                                    )?;
                                }
                                if split < piece_end {
                                    f(split, piece_end - split, Piece::Unreadable(reason))?;
                                }
                                p = piece_end;
                                continue;
                            }
                            Grain::Zero => Piece::Zero,
                            Grain::Unallocated => Piece::Unallocated,
                            Grain::Data { host } => Piece::Data {
                                source: &t.source,
                                host: host + within,
                            },
                            Grain::Compressed { host } => Piece::Compressed {
                                tables: t,
                                index,
                                host,
                                within,
                            },
                            Grain::Unreadable(reason) => Piece::Unreadable(reason),
                        };
                        f(p, len, piece)?;
                        p = piece_end;
                    }
                }
            }
            pos = stop;
        }
        Ok(())
    }

    pub(super) fn map_range(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CrateError> {
        let end = clip_end(offset, len, self.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        self.walk(offset, end, &mut |at, len, piece| {
            let kind = match piece {
                Piece::Zero => ExtentKind::Zero,
                Piece::Unallocated => ExtentKind::Unallocated,
                Piece::Unreadable(reason) => ExtentKind::Unreadable { reason },
                Piece::Compressed { tables, host, .. } => ExtentKind::Compressed {
                    source: tables.source.clone(),
                    at: host,
                },
                Piece::Data { source, host } => {
                    if is_flat(self, at) {
                        // Flat extents: holes in the file read as zeros and are mapped so
                        // (as qemu does through BDRV_BLOCK_RECURSE), so converts stay sparse.
                        for e in RawDisk::new(source.clone()).map(host, len)? {
                            let shifted = Extent {
                                offset: at + (e.offset - host),
                                ..e
                            };
                            push_merged(&mut out, shifted);
                        }
                        return Ok(());
                    }
                    ExtentKind::Data {
                        source: source.clone(),
                        at: host,
                    }
                }
            };
            push_merged(
                &mut out,
                Extent {
                    offset: at,
                    len,
                    kind,
                    depth: 0,
                },
            );
            Ok(())
        })?;
        Ok(out)
    }

    pub(super) fn read_range(&self, buf: &mut [u8], offset: u64) -> Result<(), CrateError> {
        check_range(&self.file, offset, buf.len() as u64, self.size)?;
        let end = offset + buf.len() as u64;
        let mut pending: Option<PendingRead<'_>> = None;
        self.walk(offset, end, &mut |at, len, piece| {
            let start = usize::try_from(at - offset).unwrap_or(usize::MAX);
            let piece_len = usize::try_from(len).unwrap_or(usize::MAX);
            if let Piece::Data { source, host } = piece {
                if let Some(p) = pending.as_mut() {
                    if Arc::ptr_eq(p.source, source)
                        && p.start + p.len == start
                        && p.host + p.len as u64 == host
                    {
                        p.len += piece_len;
                        return Ok(());
                    }
                }
                if let Some(p) = pending.take() {
                    read_data(buf, p)?;
                }
                pending = Some(PendingRead { source, start, host, len: piece_len });
                return Ok(());
            }
            if let Some(p) = pending.take() {
                read_data(buf, p)?;
            }
            let piece_buf = buf
                .get_mut(start..start.saturating_add(piece_len))
                .ok_or_else(|| CrateError::OutOfRange {
                    file: self.file.clone(),
                    offset: at,
                    len,
                    size: self.size,
                })?;
            match piece {
                Piece::Zero | Piece::Unallocated => piece_buf.fill(0),
                Piece::Unreadable(reason) => {
                    return Err(CrateError::Unreadable {
                        file: self.file.clone(),
                        offset: at,
                        len,
                        reason,
                    })
                }
                Piece::Compressed { tables, index, host, within } => {
                    let unreadable = |reason: String| CrateError::Unreadable {
                        file: tables.file.clone(),
                        offset: at,
                        len,
                        reason,
                    };
                    let grain = match tables.inflate(host, index)? {
                        Ok(g) => g,
                        Err(what) => {
                            let reason = tables.log.damage(&tables.file, "compressed grain", host, what)?;
                            return Err(unreadable(reason));
                        }
                    };
                    let from = usize::try_from(within).unwrap_or(usize::MAX);
                    let src = grain.get(from..from.saturating_add(piece_len)).ok_or_else(|| {
                        unreadable(format!(
                            "compressed grain at {host:#x} inflates to {} bytes, too short for this range",
                            grain.len()
                        ))
                    })?;
                    piece_buf.copy_from_slice(src);
                }
                Piece::Data { .. } => {}
            }
            Ok(())
        })?;
        if let Some(p) = pending {
            read_data(buf, p)?;
        }
        Ok(())
    }
}

/// True when disk offset `at` lies in a flat extent.
fn is_flat(disk: &VmdkDisk, at: u64) -> bool {
    let i = disk.extents.partition_point(|e| e.end() <= at);
    disk.extents
        .get(i)
        .is_some_and(|e| matches!(e.data, ExtentData::Flat { .. }))
}

fn read_data(buf: &mut [u8], p: PendingRead<'_>) -> Result<(), CrateError> {
    let size = buf.len() as u64;
    let piece = buf
        .get_mut(p.start..p.start.saturating_add(p.len))
        .ok_or_else(|| CrateError::OutOfRange {
            file: p.source.name().to_string(),
            offset: p.start as u64,
            len: p.len as u64,
            size,
        })?;
    p.source
        .read_exact_at(piece, p.host)
        .map_err(|e| CrateError::io(p.source.name(), p.host, "grain data", e))
}
