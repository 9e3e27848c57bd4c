//! Data-fork extent maps: the 128-bit packed bmbt records of an extent list, the bmap
//! B+tree (root `xfs_bmdr_block` in the inode, `BMAP`/`BMA3` blocks below it), and reads
//! through the resulting map with holes and unwritten extents as zeros.
//!
//! Record layout (xfs_format.h, "Bmap btree record and extent descriptor"): bit 127 is the
//! unwritten flag, bits 126..73 the file offset in blocks (54 bits), bits 72..21 the start
//! filesystem block (52 bits), bits 20..0 the length in blocks (21 bits).

use super::bytes::{be16, be64, slice};
use super::inode::{ForkFormat, Inode};
use super::{Error, Result, Xfs};

/// Most extents one file may have here (each costs 32 bytes of memory).
pub const MAX_EXTENTS: usize = 1 << 20;
/// Most B+tree blocks read for one file.
const MAX_BTREE_BLOCKS: usize = 1 << 17;
/// Deepest bmap B+tree accepted (XFS_BM_MAXLEVELS is at most 9 for any geometry).
const MAX_LEVELS: u16 = 9;
/// Header of a long-format btree block: v4 `BMAP` (magic, level, numrecs, left and right
/// siblings) and v5 `BMA3` (plus blkno, lsn, uuid, owner, crc and padding).
const V4_BLOCK_HDR: usize = 24;
const V5_BLOCK_HDR: usize = 72;

/// One mapping of file blocks to filesystem blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First file block mapped.
    pub file_block: u64,
    /// First filesystem block (AG number and AG block packed as in the superblock).
    pub fs_block: u64,
    pub len: u64,
    /// Allocated but never written: reads as zeros.
    pub unwritten: bool,
}

impl Extent {
    fn decode(rec: &[u8]) -> Option<Extent> {
        let l0 = be64(rec, 0)?;
        let l1 = be64(rec, 8)?;
        Some(Extent {
            unwritten: l0 >> 63 != 0,
            file_block: (l0 >> 9) & ((1 << 54) - 1),
            fs_block: ((l0 & 0x1ff) << 43) | (l1 >> 21),
            len: l1 & ((1 << 21) - 1),
        })
    }

    /// The file block after the last one mapped.
    pub fn file_end(&self) -> u64 {
        self.file_block.saturating_add(self.len)
    }
}

/// The data-fork extents of `inode`, sorted by file block and checked: inside the
/// filesystem, not overlapping. Inline and device forks have none.
pub fn extents(xfs: &Xfs, inode: &Inode) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    match inode.format {
        ForkFormat::Local | ForkFormat::Dev => return Ok(out),
        ForkFormat::Extents => {
            let n = usize::try_from(inode.nextents).unwrap_or(usize::MAX);
            push_records(&mut out, &inode.fork, 0, n, inode, inode.offset)?;
        }
        ForkFormat::Btree => walk_btree(xfs, inode, &mut out)?,
    }
    let sb = xfs.superblock();
    for e in &out {
        let file_ok = e
            .file_block
            .checked_add(e.len)
            .is_some_and(|end| end <= 1 << 54);
        if !file_ok || !sb.fsb_range_ok(e.fs_block, e.len) {
            return Err(Error::corrupt(
                format!("extent map of inode {}", inode.ino),
                inode.offset,
                format!(
                    "extent of {} blocks at filesystem block {} (file block {}) is empty, \
                     outside the filesystem or crosses an AG",
                    e.len, e.fs_block, e.file_block
                ),
            ));
        }
    }
    out.sort_by_key(|e| e.file_block);
    for pair in out.windows(2) {
        if let [a, b] = pair {
            if a.file_end() > b.file_block {
                return Err(Error::corrupt(
                    format!("extent map of inode {}", inode.ino),
                    inode.offset,
                    format!(
                        "extents at file blocks {} (+{}) and {} overlap",
                        a.file_block, a.len, b.file_block
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Appends `count` records found at `at` in `buf` (read from byte `offset`), checking each.
fn push_records(
    out: &mut Vec<Extent>,
    buf: &[u8],
    at: usize,
    count: usize,
    inode: &Inode,
    offset: u64,
) -> Result<()> {
    let sb = xfs_sb_check(inode, offset);
    if out.len().saturating_add(count) > MAX_EXTENTS {
        return Err(sb(format!("more than {MAX_EXTENTS} extents")));
    }
    for i in 0..count {
        let rec = i
            .checked_mul(16)
            .and_then(|o| o.checked_add(at))
            .and_then(|o| slice(buf, o, 16))
            .and_then(Extent::decode)
            .ok_or_else(|| {
                sb(format!(
                    "extent record {i} of {count} is past the structure's end"
                ))
            })?;
        out.push(rec);
    }
    Ok(())
}

fn xfs_sb_check(inode: &Inode, offset: u64) -> impl Fn(String) -> Error + '_ {
    move |why| Error::corrupt(format!("extent map of inode {}", inode.ino), offset, why)
}

/// Collects the leaf records of the inode's bmap B+tree, depth first.
fn walk_btree(xfs: &Xfs, inode: &Inode, out: &mut Vec<Extent>) -> Result<()> {
    let corrupt = xfs_sb_check(inode, inode.offset);
    let root = &inode.fork;
    let level = be16(root, 0).ok_or_else(|| corrupt("bmap root too short".into()))?;
    let numrecs = usize::from(be16(root, 2).ok_or_else(|| corrupt("bmap root too short".into()))?);
    if level == 0 || level > MAX_LEVELS {
        return Err(corrupt(format!("bmap root level {level}")));
    }
    // xfs_bmdr_maxrecs: keys then pointers, each array sized for the whole fork.
    let maxrecs = root.len().saturating_sub(4) / 16;
    if numrecs == 0 || numrecs > maxrecs {
        return Err(corrupt(format!(
            "bmap root holds {numrecs} of at most {maxrecs} pointers"
        )));
    }
    let mut stack = Vec::new();
    for i in (0..numrecs).rev() {
        let ptr = be64(root, 4 + maxrecs * 8 + i * 8)
            .ok_or_else(|| corrupt("bmap root pointer past the fork".into()))?;
        stack.push((ptr, level - 1));
    }
    let sb = xfs.superblock();
    let bs = sb.block_size as usize;
    let hdr = if sb.version == 5 {
        V5_BLOCK_HDR
    } else {
        V4_BLOCK_HDR
    };
    let magic: &[u8] = if sb.version == 5 { b"BMA3" } else { b"BMAP" };
    let mut block = vec![0u8; bs];
    let mut visited = 0usize;
    while let Some((fsb, want_level)) = stack.pop() {
        visited += 1;
        if visited > MAX_BTREE_BLOCKS {
            return Err(corrupt(format!(
                "bmap B+tree has more than {MAX_BTREE_BLOCKS} blocks"
            )));
        }
        let offset = sb.fsb_offset(fsb).ok_or_else(|| {
            corrupt(format!(
                "bmap B+tree pointer to block {fsb} outside the filesystem"
            ))
        })?;
        xfs.read_bytes("bmap B+tree block", offset, &mut block)?;
        let corrupt = |why: String| {
            Error::corrupt(
                format!("bmap B+tree block of inode {}", inode.ino),
                offset,
                why,
            )
        };
        if block.get(..4) != Some(magic) {
            return Err(corrupt(format!("magic {:02x?}", block.get(..4))));
        }
        if sb.version == 5 {
            let owner = be64(&block, 56).unwrap_or_default();
            if owner != inode.ino {
                return Err(corrupt(format!("owner {owner}, not this inode")));
            }
        }
        let level = be16(&block, 4).unwrap_or(u16::MAX);
        let numrecs = usize::from(be16(&block, 6).unwrap_or_default());
        if level != want_level {
            return Err(corrupt(format!(
                "level {level} where {want_level} was expected"
            )));
        }
        if level == 0 {
            let maxrecs = (bs - hdr) / 16;
            if numrecs > maxrecs {
                return Err(corrupt(format!("{numrecs} records, at most {maxrecs} fit")));
            }
            push_records(out, &block, hdr, numrecs, inode, offset)?;
        } else {
            let maxrecs = (bs - hdr) / 16;
            if numrecs == 0 || numrecs > maxrecs {
                return Err(corrupt(format!("{numrecs} pointers, 1 to {maxrecs} fit")));
            }
            for i in (0..numrecs).rev() {
                let ptr = be64(&block, hdr + maxrecs * 8 + i * 8)
                    .ok_or_else(|| corrupt("pointer past the block".into()))?;
                stack.push((ptr, level - 1));
            }
        }
    }
    Ok(())
}

/// Fills `buf` with the file bytes at `offset` through `extents`: holes and unwritten
/// extents as zeros. Does not clamp to the file size (directories are read past it).
pub fn read_mapped(
    xfs: &Xfs,
    inode: &Inode,
    extents: &[Extent],
    offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    let sb = xfs.superblock();
    let log = u32::from(sb.block_log);
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset.checked_add(done as u64).ok_or_else(|| {
            Error::corrupt(
                format!("inode {}", inode.ino),
                inode.offset,
                "read offset overflows",
            )
        })?;
        let file_block = pos >> log;
        let within = pos & (u64::from(sb.block_size) - 1);
        let rest = buf.len() - done;
        // The first extent ending after this block.
        let idx = extents.partition_point(|e| e.file_end() <= file_block);
        let next = extents.get(idx);
        let (run, source) = match next {
            Some(e) if e.file_block <= file_block => {
                let end = e
                    .file_end()
                    .checked_shl(log)
                    .filter(|v| v >> log == e.file_end());
                let run = end.map_or(u64::MAX, |end| end - pos);
                let source = (!e.unwritten).then(|| (e, file_block - e.file_block));
                (run, source)
            }
            Some(e) => {
                let start = e
                    .file_block
                    .checked_shl(log)
                    .filter(|v| v >> log == e.file_block);
                (start.map_or(u64::MAX, |s| s - pos), None)
            }
            None => (u64::MAX, None),
        };
        let n = usize::try_from(run).map_or(rest, |r| r.min(rest));
        let Some(part) = buf.get_mut(done..done + n) else {
            break;
        };
        match source {
            Some((e, delta)) => {
                let fsb = e.fs_block + delta;
                let at = sb.fsb_offset(fsb).map(|b| b + within).ok_or_else(|| {
                    Error::corrupt(
                        format!("inode {}", inode.ino),
                        inode.offset,
                        "block outside the filesystem",
                    )
                })?;
                xfs.read_bytes("file data", at, part)?;
            }
            None => part.fill(0),
        }
        done += n;
    }
    Ok(())
}
