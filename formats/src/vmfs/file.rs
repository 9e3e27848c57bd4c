//! File data: resolving a file offset through the FD's address type (resident, direct,
//! single- or double-indirect pointer blocks) to a piece of the LV, a hole, a
//! to-be-zeroed block, or an unreadable range; and [`VmfsFile`], a file inside the
//! volume as a [`Source`].
//!
//! Follows dissect.vmfs `_offset_to_block_address`/`_resolve_offset` and vmfs-tools
//! `vmfs_inode_get_block` (research/vmfs.md §9). Holes and TBZ blocks read as zeros; a
//! block whose address is damaged is reported, never read as data.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::address::Addr;
use super::fd::{
    FileDescriptor, ZLA_DOUBLE_INDIRECT, ZLA_FILE_BLOCK, ZLA_POINTER_BLOCK, ZLA_POINTER_BLOCK2,
    ZLA_RESIDENT, ZLA_SUB_BLOCK,
};
use super::volume::Volume;
use super::Error;
use crate::disk::Severity;
use crate::source::{Source, SourceRun};

/// How deep resource lookups may nest (a file mapped through a system file mapped
/// through another); more means a damaged, self-referencing map.
const MAX_DEPTH: u32 = 4;

/// What a range of a file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// Stored at this LV offset.
    Data(u64),
    /// A hole (thin, unallocated) or a to-be-zeroed block: reads as zeros.
    Zero { tbz: bool },
    /// Cannot be read: why.
    Unreadable(String),
}

/// `len` bytes of a file, starting at the offset asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub len: u64,
    pub kind: PieceKind,
}

impl Volume {
    pub(super) fn pointers_per_block(&self) -> u64 {
        if self.fs.is_vmfs6() {
            if self.fs.md_block < 0x1_0000 {
                8192
            } else {
                self.fs.md_block / 8
            }
        } else {
            1024
        }
    }

    /// Decodes a block-array or pointer-block entry as this volume's version writes them
    /// (VMFS3/5 entries are 32 bits; anything wider there is damage).
    pub(super) fn decode(&self, raw: u64) -> Addr {
        if self.fs.is_vmfs6() {
            return Addr::decode64(raw);
        }
        match u32::try_from(raw) {
            Ok(a) => Addr::decode32(a, self.fs.dense_sub_blocks()),
            Err(_) => Addr::Other { kind: 0, raw },
        }
    }

    /// Reads the pointer block at `addr` (cached).
    pub(super) fn pointer_block(&self, addr: u64, depth: u32) -> Result<Arc<Vec<u8>>, String> {
        if let Some(pb) = self
            .pb_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&addr).cloned())
        {
            return Ok(pb);
        }
        let decoded = self.decode(addr);
        let (res, cluster, resource) = match decoded {
            Addr::PointerBlock { cluster, resource } => (self.res.pbc.get(), cluster, resource),
            Addr::PointerBlock2 { cluster, resource } => (self.res.pb2.get(), cluster, resource),
            Addr::SubBlock { cluster, resource } if self.fs.is_vmfs6() => {
                (self.res.sbc.get(), cluster, resource)
            }
            other => return Err(format!("{other} where a pointer block address belongs")),
        };
        let res = res.ok_or_else(|| format!("{decoded}: its system file could not be opened"))?;
        let at = res
            .resource_offset(cluster, resource)
            .ok_or_else(|| format!("{decoded} lies outside {}", res.name))?;
        let size = (self.pointers_per_block() * if self.fs.is_vmfs6() { 8 } else { 4 })
            .min(res.header.resource_size) as usize;
        let mut buf = vec![0u8; size];
        self.read_fd_data(&res.fd, &mut buf, at, depth + 1)
            .map_err(|e| format!("reading pointer block {decoded}: {e}"))?;
        let pb = Arc::new(buf);
        if let Ok(mut c) = self.pb_cache.lock() {
            if c.len() >= PB_CACHE_ENTRIES_MAX {
                c.clear();
            }
            c.insert(addr, pb.clone());
        }
        Ok(pb)
    }

    pub(super) fn pointer(&self, pb: &[u8], index: u64) -> u64 {
        let i = index as usize;
        if self.fs.is_vmfs6() {
            super::bytes::u64_at(pb, i * 8)
        } else {
            u64::from(super::bytes::u32_at(pb, i * 4))
        }
    }

    /// The raw block address of block `n` of `fd`, or why it cannot be had.
    fn block_address(&self, fd: &FileDescriptor, n: u64, depth: u32) -> Result<u64, String> {
        let direct = |i: u64| {
            fd.blocks
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "block {n} needs entry {i} of the FD's {}-entry block array",
                        fd.blocks.len()
                    )
                })
        };
        let ppb = self.pointers_per_block();
        match fd.zla {
            ZLA_FILE_BLOCK | ZLA_SUB_BLOCK => direct(n),
            ZLA_POINTER_BLOCK | ZLA_POINTER_BLOCK2 => {
                let pb = direct(n / ppb)?;
                if pb == 0 {
                    return Ok(0);
                }
                let buf = self.pointer_block(pb, depth)?;
                Ok(self.pointer(&buf, n % ppb))
            }
            ZLA_DOUBLE_INDIRECT => {
                let top = direct(n / (ppb * ppb))?;
                if top == 0 {
                    return Ok(0);
                }
                let buf = self.pointer_block(top, depth)?;
                let mid = self.pointer(&buf, (n / ppb) % ppb);
                if mid == 0 {
                    return Ok(0);
                }
                let buf = self.pointer_block(mid, depth)?;
                Ok(self.pointer(&buf, n % ppb))
            }
            other => Err(format!("zero-level address type {other:#x}")),
        }
    }

    /// How many blocks from block `n` (a hole) on are holes, at least 1: runs of null
    /// block-array entries and null pointer-block entries are skipped without reading
    /// block by block; at most [`HOLE_RUN_PBS`] pointer blocks are read per call.
    fn hole_run(&self, fd: &FileDescriptor, n: u64, depth: u32) -> u64 {
        let ppb = self.pointers_per_block();
        let span = 1u64 << fd.block_shift;
        let limit = fd.length.div_ceil(span);
        let entry = |i: u64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| fd.blocks.get(i))
                .copied()
        };
        // The first index at or after `from` (below `end`) whose pointer in `pb` is set.
        let scan = |pb: &[u8], from: u64, end: u64| {
            (from..end)
                .find(|j| self.pointer(pb, *j) != 0)
                .unwrap_or(end)
        };
        let mut b = n;
        let mut reads = 0;
        while b < limit && reads < HOLE_RUN_PBS {
            match fd.zla {
                ZLA_FILE_BLOCK | ZLA_SUB_BLOCK => match entry(b) {
                    Some(0) => b += 1,
                    _ => break,
                },
                ZLA_POINTER_BLOCK | ZLA_POINTER_BLOCK2 => {
                    let Some(top) = entry(b / ppb) else { break };
                    let first = b / ppb * ppb;
                    if top == 0 {
                        b = first + ppb;
                        continue;
                    }
                    reads += 1;
                    let Ok(pb) = self.pointer_block(top, depth) else {
                        break;
                    };
                    let j = scan(&pb, b - first, ppb);
                    b = first + j;
                    if j < ppb {
                        break;
                    }
                }
                ZLA_DOUBLE_INDIRECT => {
                    let Some(top) = entry(b / (ppb * ppb)) else {
                        break;
                    };
                    let first = b / (ppb * ppb) * (ppb * ppb);
                    if top == 0 {
                        b = first + ppb * ppb;
                        continue;
                    }
                    reads += 1;
                    let Ok(pb) = self.pointer_block(top, depth) else {
                        break;
                    };
                    let mid_index = (b - first) / ppb;
                    let mid = self.pointer(&pb, mid_index);
                    let mid_first = first + mid_index * ppb;
                    if mid == 0 {
                        let k = scan(&pb, mid_index + 1, ppb);
                        b = first + k * ppb;
                        continue;
                    }
                    reads += 1;
                    let Ok(inner) = self.pointer_block(mid, depth) else {
                        break;
                    };
                    let j = scan(&inner, b - mid_first, ppb);
                    b = mid_first + j;
                    if j < ppb {
                        break;
                    }
                }
                _ => break,
            }
        }
        (b.min(limit.max(n + 1)) - n).max(1)
    }

    /// What byte `offset` of `fd` is, and for how many bytes that holds.
    pub fn locate(&self, fd: &FileDescriptor, offset: u64, depth: u32) -> Result<Piece, Error> {
        if offset >= fd.length {
            return Ok(Piece {
                len: 0,
                kind: PieceKind::Zero { tbz: false },
            });
        }
        let left = fd.length - offset;
        if depth > MAX_DEPTH {
            return Ok(Piece {
                len: left,
                kind: PieceKind::Unreadable(
                    "system-file maps nest too deep (a damaged, self-referencing map)".into(),
                ),
            });
        }
        if fd.zla == ZLA_RESIDENT {
            let room = fd.resident.len() as u64;
            return Ok(if offset < room {
                Piece {
                    len: left.min(room - offset),
                    kind: PieceKind::Data(fd.lv_offset + fd.resident_at + offset),
                }
            } else {
                Piece {
                    len: left,
                    kind: PieceKind::Unreadable(format!(
                        "the FD claims {} bytes of resident data; its data area holds {room}",
                        fd.length
                    )),
                }
            });
        }
        let span = 1u64 << fd.block_shift;
        let n = offset >> fd.block_shift;
        let within = offset & (span - 1);
        let len = left.min(span - within);
        let unreadable = |why: String| Piece {
            len,
            kind: PieceKind::Unreadable(why),
        };
        let raw = match self.block_address(fd, n, depth) {
            Ok(r) => r,
            Err(why) => {
                self.finding(
                    Severity::Error,
                    "pointer block",
                    fd.lv_offset,
                    format!("FD {:#x}, file block {n}: {why}", fd.address),
                );
                return Ok(unreadable(why));
            }
        };
        let addr = self.decode(raw);
        let (natural, lv_base) = match addr {
            Addr::Null => {
                // One piece for the whole run of holes, so a thin file's map costs its
                // allocated blocks, not its size (a damaged FD may claim petabytes).
                let blocks = self.hole_run(fd, n, depth);
                let run = blocks.saturating_mul(span).saturating_sub(within).max(len);
                return Ok(Piece {
                    len: left.min(run),
                    kind: PieceKind::Zero { tbz: false },
                });
            }
            Addr::FileBlock { tbz: true, .. }
            | Addr::SmallFileBlock { tbz: true, .. }
            | Addr::LargeFileBlock { tbz: true, .. } => {
                return Ok(Piece {
                    len,
                    kind: PieceKind::Zero { tbz: true },
                })
            }
            Addr::FileBlock { block, .. } => {
                (self.fs.block_size, block.checked_mul(self.fs.block_size))
            }
            Addr::SmallFileBlock {
                cluster, resource, ..
            } => {
                let per_cluster = self
                    .res
                    .fbb
                    .get()
                    .map(|r| r.header.resources_per_cluster)
                    .unwrap_or_else(|| (0x2000u64).min(0x2000_0000 / self.fs.block_size));
                let block = cluster
                    .checked_mul(per_cluster)
                    .and_then(|b| b.checked_add(resource));
                (
                    self.fs.block_size,
                    block.and_then(|b| b.checked_mul(self.fs.block_size)),
                )
            }
            Addr::LargeFileBlock { block, .. } => match self.fs.lfb_size() {
                Some(size) => (size, block.checked_mul(size)),
                None => return Ok(unreadable("large file block size overflows".into())),
            },
            Addr::SubBlock { cluster, resource } => {
                let Some(sbc) = self.res.sbc.get() else {
                    return Ok(unreadable(".sbc.sf could not be opened".into()));
                };
                let Some(in_file) = sbc.resource_offset(cluster, resource) else {
                    return Ok(unreadable(format!("{addr} lies outside .sbc.sf")));
                };
                let size = sbc.header.resource_size;
                if within >= size {
                    return Ok(unreadable(format!(
                        "offset {within:#x} into a {size:#x}-byte sub-block"
                    )));
                }
                let inner = self.locate(&sbc.fd, in_file + within, depth + 1)?;
                return Ok(match inner.kind {
                    PieceKind::Data(lv) => Piece {
                        len: len.min(inner.len).min(size - within),
                        kind: PieceKind::Data(lv),
                    },
                    other => Piece {
                        len: len.min(inner.len.max(1)).min(size - within),
                        kind: other,
                    },
                });
            }
            other => {
                let why = format!("{other} in a data block slot");
                self.finding(
                    Severity::Error,
                    "block address",
                    fd.lv_offset,
                    format!("FD {:#x}, file block {n}: {why}", fd.address),
                );
                return Ok(unreadable(why));
            }
        };
        if within >= natural {
            return Ok(unreadable(format!(
                "{addr} holds {natural:#x} bytes but the FD's blocks span {span:#x}"
            )));
        }
        let len = len.min(natural - within);
        match lv_base.and_then(|b| b.checked_add(within)) {
            Some(lv) if lv.checked_add(len).is_some_and(|end| end <= self.lv.len()) => {
                // A spanned volume opened without one of its devices: the block is on
                // the missing extent (lvm.rs names which).
                match self.lv.locate(lv) {
                    Some((None, left)) => {
                        let why =
                            format!("on the missing extent: {}", self.lv.missing_description(lv));
                        self.finding(
                            Severity::Error,
                            "LVM volume",
                            fd.lv_offset,
                            format!("FD {:#x} has blocks {why}", fd.address),
                        );
                        Ok(Piece {
                            len: len.min(left),
                            kind: PieceKind::Unreadable(why),
                        })
                    }
                    Some((Some(_), left)) => Ok(Piece {
                        len: len.min(left),
                        kind: PieceKind::Data(lv),
                    }),
                    None => Ok(Piece {
                        len,
                        kind: PieceKind::Data(lv),
                    }),
                }
            }
            _ => {
                let why = format!("{addr} lies outside the {}-byte volume", self.lv.len());
                self.finding(
                    Severity::Error,
                    "block address",
                    fd.lv_offset,
                    format!("FD {:#x}, file block {n}: {why}", fd.address),
                );
                Ok(unreadable(why))
            }
        }
    }

    /// Reads `buf.len()` bytes of `fd` at `offset` (short at end of file).
    pub(super) fn read_fd_data(
        &self,
        fd: &FileDescriptor,
        buf: &mut [u8],
        offset: u64,
        depth: u32,
    ) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let piece = self.locate(fd, at, depth).map_err(io::Error::other)?;
            if piece.len == 0 {
                break;
            }
            let n = (buf.len() - done).min(usize::try_from(piece.len).unwrap_or(usize::MAX));
            let out = &mut buf[done..done + n];
            match piece.kind {
                PieceKind::Data(lv) => self.lv.read_exact_at(out, lv)?,
                PieceKind::Zero { .. } => out.fill(0),
                PieceKind::Unreadable(why) => {
                    return Err(io::Error::other(format!(
                        "{}: FD {:#x}: bytes {at:#x}..{:#x} are unreadable: {why}",
                        self.name,
                        fd.address,
                        at + n as u64
                    )))
                }
            }
            done += n;
        }
        Ok(done)
    }
}

const PB_CACHE_ENTRIES_MAX: usize = 64;
/// Pointer blocks one hole-run lookup reads at most (the next lookup goes on).
const HOLE_RUN_PBS: u32 = 16;

/// A regular file inside a VMFS volume, readable as a [`Source`]: VMDKs and their
/// snapshot chains open in place, without copying them out.
pub struct VmfsFile {
    volume: Arc<Volume>,
    fd: FileDescriptor,
    /// "DATASTORE::/path", for messages.
    name: String,
    /// The path inside the volume, so relative names (extents, parents) resolve there.
    path: PathBuf,
}

impl VmfsFile {
    pub fn new(volume: Arc<Volume>, fd: FileDescriptor, path: &str) -> VmfsFile {
        VmfsFile {
            name: format!("{}::{path}", volume.name()),
            volume,
            fd,
            path: PathBuf::from(path),
        }
    }

    pub fn fd(&self) -> &FileDescriptor {
        &self.fd
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The pieces of `len` bytes from `offset`: data, zeros and unreadable ranges.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<Piece>, Error> {
        let end = offset.saturating_add(len).min(self.fd.length);
        let mut out: Vec<Piece> = Vec::new();
        let mut at = offset;
        while at < end {
            let mut p = self.volume.locate(&self.fd, at, 0)?;
            if p.len == 0 {
                break;
            }
            p.len = p.len.min(end - at);
            at += p.len;
            if let Some(last) = out.last_mut() {
                let joined = match (&last.kind, &p.kind) {
                    (PieceKind::Data(a), PieceKind::Data(b)) => a + last.len == *b,
                    (PieceKind::Zero { tbz: a }, PieceKind::Zero { tbz: b }) => a == b,
                    (PieceKind::Unreadable(a), PieceKind::Unreadable(b)) => a == b,
                    _ => false,
                };
                if joined {
                    last.len += p.len;
                    continue;
                }
            }
            out.push(p);
        }
        Ok(out)
    }
}

impl Source for VmfsFile {
    fn len(&self) -> u64 {
        self.fd.length
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.volume.read_fd_data(&self.fd, buf, offset, 0)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    /// Passes the hint on to the volume for the stored pieces of the range.
    fn will_need(&self, at: u64, len: u64) {
        for piece in self.map(at, len).unwrap_or_default() {
            if let PieceKind::Data(lv) = piece.kind {
                self.volume.lv.will_need(lv, piece.len);
            }
        }
    }

    fn layout(&self, offset: u64, len: u64) -> Option<Vec<SourceRun>> {
        let pieces = self.map(offset, len).ok()?;
        Some(
            pieces
                .into_iter()
                .map(|p| match p.kind {
                    PieceKind::Data(_) => SourceRun::Data(p.len),
                    PieceKind::Zero { .. } => SourceRun::Zero(p.len),
                    PieceKind::Unreadable(why) => SourceRun::Unreadable(p.len, why),
                })
                .collect(),
        )
    }
}
