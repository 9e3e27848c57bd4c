//! Directories and symlinks (xfs_da_format.h, "Directory v2/v3" and xfs_format.h
//! "Symlink").
//!
//! Directories come in four forms: shortform (entries inline in the inode), block (one
//! directory block `XD2B`/`XDB3` holding entries, a hash leaf and a tail), and leaf and
//! node form (data blocks `XD2D`/`XDD3` below the 32 GiB leaf offset, hash and free-space
//! blocks above it). Every form's entries are found by walking the data blocks, so the
//! hash index is never read. Data entries are `inumber(8) namelen(1) name [ftype(1)]
//! tag(2)` padded to 8 bytes; unused space is `0xffff length(2) ... tag(2)`.

use super::bmap::{self, Extent};
use super::bytes::{be16, be32, be64, slice, u8_at};
use super::inode::{FileKind, ForkFormat, Inode};
use super::{Error, Result, Xfs, MAX_SYMLINK_LEN};

/// Most entries returned for one directory.
pub const MAX_DIR_ENTRIES: usize = 200_000;
/// Most directory data read for one directory, in bytes.
pub const MAX_DIR_BYTES: u64 = 64 << 20;
/// XFS_DIR2_LEAF_OFFSET: directory data lives below 32 GiB of the directory's data fork.
const LEAF_OFFSET: u64 = 32 << 30;
/// Data block headers: v4 magic + 3 bestfree pairs; v5 `xfs_dir3_data_hdr` (a 48-byte
/// `xfs_dir3_blk_hdr`, bestfree and padding).
const V4_DATA_HDR: usize = 16;
const V5_DATA_HDR: usize = 64;
/// v5 remote symlink block header (`xfs_dsymlink_hdr`): magic, offset, bytes, crc, uuid,
/// owner, blkno, lsn.
const V5_SYMLINK_HDR: usize = 56;

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name's bytes (XFS names are not necessarily UTF-8).
    pub name: Vec<u8>,
    pub inode: u64,
    /// From the entry's ftype when the filesystem records it, else from the inode's mode
    /// (`Unknown` when that inode cannot be read).
    pub kind: FileKind,
}

impl DirEntry {
    /// The name as text, invalid UTF-8 replaced.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// The entry named `name` in `dir`, if any.
pub fn find(xfs: &Xfs, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
    Ok(read_dir(xfs, dir)?.into_iter().find(|e| e.name == name))
}

pub fn read_dir(xfs: &Xfs, dir: &Inode) -> Result<Vec<DirEntry>> {
    if dir.kind() != FileKind::Dir {
        return Err(Error::WrongKind {
            ino: dir.ino,
            want: "directory",
        });
    }
    let mut out = Vec::new();
    match dir.format {
        ForkFormat::Local => shortform(xfs, dir, &mut out)?,
        ForkFormat::Extents | ForkFormat::Btree => {
            let extents = bmap::extents(xfs, dir)?;
            data_blocks(xfs, dir, &extents, &mut out)?;
        }
        ForkFormat::Dev => {
            return Err(Error::corrupt(
                format!("directory inode {}", dir.ino),
                dir.offset,
                "device data fork",
            ))
        }
    }
    if !xfs.superblock().ftype {
        for entry in &mut out {
            entry.kind = xfs
                .inode(entry.inode)
                .map_or(FileKind::Unknown, |i| i.kind());
        }
    }
    Ok(out)
}

/// `xfs_dir2_sf_hdr` (count, i8count, parent of 4 or 8 bytes) and its entries
/// (namelen, offset(2), name, [ftype], inumber of 4 or 8 bytes).
fn shortform(xfs: &Xfs, dir: &Inode, out: &mut Vec<DirEntry>) -> Result<()> {
    let b = &dir.fork;
    let corrupt = |at: usize, why: String| {
        Error::corrupt(
            format!("shortform directory inode {}", dir.ino),
            dir.offset.saturating_add(at as u64),
            why,
        )
    };
    let count = u8_at(b, 0).ok_or_else(|| corrupt(0, "empty fork".into()))?;
    let i8count = u8_at(b, 1).ok_or_else(|| corrupt(1, "empty fork".into()))?;
    let ino_len = if i8count == 0 { 4 } else { 8 };
    let ftype = usize::from(xfs.superblock().ftype);
    let mut at = 2 + ino_len;
    for i in 0..count {
        let namelen = usize::from(
            u8_at(b, at)
                .ok_or_else(|| corrupt(at, format!("entry {i} of {count} past the fork's end")))?,
        );
        if namelen == 0 {
            return Err(corrupt(at, format!("entry {i} has an empty name")));
        }
        let name = slice(b, at + 3, namelen)
            .ok_or_else(|| corrupt(at, format!("entry {i}'s name past the fork's end")))?;
        let kind_at = at + 3 + namelen;
        let kind = if ftype == 1 {
            FileKind::from_ftype(u8_at(b, kind_at).unwrap_or_default())
        } else {
            FileKind::Unknown
        };
        let ino_at = kind_at + ftype;
        let inode = if ino_len == 4 {
            be32(b, ino_at).map(u64::from)
        } else {
            be64(b, ino_at)
        }
        .ok_or_else(|| corrupt(at, format!("entry {i}'s inode number past the fork's end")))?;
        out.push(DirEntry {
            name: name.to_vec(),
            inode,
            kind,
        });
        at = ino_at + ino_len;
    }
    Ok(())
}

/// Reads every directory block below the leaf offset that the map covers and collects its
/// entries.
fn data_blocks(xfs: &Xfs, dir: &Inode, extents: &[Extent], out: &mut Vec<DirEntry>) -> Result<()> {
    let sb = xfs.superblock();
    let dir_log = u32::from(sb.dir_block_log);
    let leaf_block = LEAF_OFFSET >> sb.block_log;
    let dbs = sb.dir_block_size();
    let mut total = 0u64;
    let mut buf = vec![0u8; dbs as usize];
    let mut last_done: Option<u64> = None;
    for e in extents {
        if e.unwritten || e.file_block >= leaf_block {
            continue;
        }
        let first = e.file_block >> dir_log;
        let last = (e.file_end().min(leaf_block) - 1) >> dir_log;
        for dblock in first..=last {
            // A directory block spanning two extents is read once.
            if last_done.is_some_and(|d| d >= dblock) {
                continue;
            }
            last_done = Some(dblock);
            total += u64::from(dbs);
            if total > MAX_DIR_BYTES {
                return Err(Error::TooLarge {
                    what: "directory data",
                    ino: dir.ino,
                    len: total,
                    cap: MAX_DIR_BYTES,
                });
            }
            let file_offset = (dblock << dir_log) << sb.block_log;
            bmap::read_mapped(xfs, dir, extents, file_offset, &mut buf)?;
            let at = physical(xfs, extents, dblock << dir_log).unwrap_or(dir.offset);
            data_block(xfs, dir, &buf, at, out)?;
        }
    }
    Ok(())
}

/// Byte offset on disk of file block `fb` (for error messages).
fn physical(xfs: &Xfs, extents: &[Extent], fb: u64) -> Option<u64> {
    let e = extents
        .iter()
        .find(|e| e.file_block <= fb && fb < e.file_block.saturating_add(e.len))?;
    xfs.superblock()
        .fsb_offset(e.fs_block + (fb - e.file_block))
}

/// The entries of one directory data block (`XD2B`/`XDB3` single-block directories, or
/// `XD2D`/`XDD3` data blocks of leaf and node directories) read from byte `offset`.
fn data_block(
    xfs: &Xfs,
    dir: &Inode,
    b: &[u8],
    offset: u64,
    out: &mut Vec<DirEntry>,
) -> Result<()> {
    let sb = xfs.superblock();
    let corrupt = |at: usize, why: String| {
        Error::corrupt(
            format!("directory block of inode {}", dir.ino),
            offset.saturating_add(at as u64),
            why,
        )
    };
    let magic = slice(b, 0, 4).unwrap_or_default();
    let (hdr, single) = match (magic, sb.version) {
        (b"XD2B", 4) => (V4_DATA_HDR, true),
        (b"XD2D", 4) => (V4_DATA_HDR, false),
        (b"XDB3", 5) => (V5_DATA_HDR, true),
        (b"XDD3", 5) => (V5_DATA_HDR, false),
        _ => {
            return Err(corrupt(
                0,
                format!(
                    "magic {magic:02x?} is not a v{} directory data block",
                    sb.version
                ),
            ))
        }
    };
    if sb.version == 5 {
        let owner = be64(b, 40).unwrap_or_default();
        if owner != dir.ino {
            return Err(corrupt(40, format!("owner {owner}, not this directory")));
        }
    }
    // A single-block directory ends in its hash leaf entries and a tail (count, stale).
    let end = if single {
        let tail = b.len().saturating_sub(8);
        let count = be32(b, tail).unwrap_or(u32::MAX) as usize;
        count
            .checked_mul(8)
            .and_then(|leaf| tail.checked_sub(leaf))
            .filter(|&end| end >= hdr)
            .ok_or_else(|| {
                corrupt(
                    tail,
                    format!("block tail counts {count} leaf entries, more than fit"),
                )
            })?
    } else {
        b.len()
    };
    let ftype = usize::from(sb.ftype);
    let mut at = hdr;
    while at < end {
        if be16(b, at) == Some(0xffff) {
            let len = usize::from(be16(b, at + 2).unwrap_or_default());
            if len < 8 || len % 8 != 0 || at + len > end {
                return Err(corrupt(at, format!("unused entry of {len} bytes")));
            }
            at += len;
            continue;
        }
        let inode = be64(b, at).ok_or_else(|| corrupt(at, "entry past the block's end".into()))?;
        let namelen = usize::from(u8_at(b, at + 8).unwrap_or_default());
        let len = (8 + 1 + namelen + ftype + 2 + 7) & !7;
        let name = slice(b, at + 9, namelen).filter(|_| namelen > 0 && at + len <= end);
        let name = name.ok_or_else(|| {
            corrupt(
                at,
                format!("entry with a {namelen}-byte name overruns the block"),
            )
        })?;
        let kind = if ftype == 1 {
            FileKind::from_ftype(u8_at(b, at + 9 + namelen).unwrap_or_default())
        } else {
            FileKind::Unknown
        };
        if name != b"." && name != b".." {
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(Error::TooLarge {
                    what: "directory entry count",
                    ino: dir.ino,
                    len: out.len() as u64 + 1,
                    cap: MAX_DIR_ENTRIES as u64,
                });
            }
            out.push(DirEntry {
                name: name.to_vec(),
                inode,
                kind,
            });
        }
        at += len;
    }
    Ok(())
}

/// A symlink's target: inline, or in remote blocks (each with an `XSLM` header on v5).
pub fn read_link(xfs: &Xfs, inode: &Inode) -> Result<Vec<u8>> {
    if inode.kind() != FileKind::Symlink {
        return Err(Error::WrongKind {
            ino: inode.ino,
            want: "symlink",
        });
    }
    if inode.size == 0 || inode.size > MAX_SYMLINK_LEN {
        return Err(Error::corrupt(
            format!("symlink inode {}", inode.ino),
            inode.offset,
            format!("target length {} (1 to {MAX_SYMLINK_LEN})", inode.size),
        ));
    }
    let len = inode.size as usize;
    if inode.format == ForkFormat::Local {
        return slice(&inode.fork, 0, len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                Error::corrupt(
                    format!("symlink inode {}", inode.ino),
                    inode.offset,
                    format!("{len}-byte target does not fit the data fork"),
                )
            });
    }
    let extents = bmap::extents(xfs, inode)?;
    let sb = xfs.superblock();
    if sb.version == 4 {
        let mut out = vec![0u8; len];
        bmap::read_mapped(xfs, inode, &extents, 0, &mut out)?;
        return Ok(out);
    }
    let bs = sb.block_size as usize;
    let mut out = Vec::with_capacity(len);
    let mut block = vec![0u8; bs];
    let mut fb = 0u64;
    while out.len() < len && fb < 8 {
        bmap::read_mapped(xfs, inode, &extents, fb << sb.block_log, &mut block)?;
        let at = physical(xfs, &extents, fb).unwrap_or(inode.offset);
        let corrupt =
            |why: String| Error::corrupt(format!("symlink block of inode {}", inode.ino), at, why);
        if block.get(..4) != Some(b"XSLM") {
            return Err(corrupt(format!(
                "magic {:02x?}, want \"XSLM\"",
                block.get(..4)
            )));
        }
        let owner = be64(&block, 32).unwrap_or_default();
        if owner != inode.ino {
            return Err(corrupt(format!("owner {owner}, not this symlink")));
        }
        let offset = be32(&block, 4).unwrap_or(u32::MAX) as usize;
        let bytes = be32(&block, 8).unwrap_or(u32::MAX) as usize;
        let payload = slice(&block, V5_SYMLINK_HDR, bytes)
            .filter(|_| offset == out.len() && bytes > 0 && offset + bytes <= len)
            .ok_or_else(|| corrupt(format!("{bytes} bytes at target offset {offset}")))?;
        out.extend_from_slice(payload);
        fb += 1;
    }
    if out.len() != len {
        return Err(Error::corrupt(
            format!("symlink inode {}", inode.ino),
            inode.offset,
            format!("target blocks hold {} of {len} bytes", out.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v5 superblock (4 KiB blocks, 512-byte inodes, one 1024-block AG, ftype) over an
    /// all-zero 4 MiB volume.
    fn xfs() -> Xfs {
        let mut sb = vec![0u8; 4 << 20];
        let mut put = |at: usize, bytes: &[u8]| sb[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, b"XFSB");
        put(4, &4096u32.to_be_bytes());
        put(8, &1024u64.to_be_bytes());
        put(56, &128u64.to_be_bytes());
        put(84, &1024u32.to_be_bytes());
        put(88, &1u32.to_be_bytes());
        put(100, &0xb4a5u16.to_be_bytes());
        put(102, &512u16.to_be_bytes());
        put(104, &512u16.to_be_bytes());
        put(106, &8u16.to_be_bytes());
        put(120, &[12, 9, 9, 3, 10]);
        put(216, &1u32.to_be_bytes());
        Xfs::open(move |offset: u64, buf: &mut [u8]| {
            let at = offset as usize;
            buf.copy_from_slice(&sb[at..at + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    fn dir_inode(fork: Vec<u8>) -> Inode {
        Inode {
            ino: 128,
            mode: 0o040_755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: fork.len() as u64,
            offset: 0,
            format: ForkFormat::Local,
            nextents: 0,
            fork,
        }
    }

    #[test]
    fn shortform_with_8_byte_inode_numbers_is_read() {
        // count 2, i8count 2, parent (8 bytes), then namelen, offset, name, ftype, inumber.
        let mut fork = vec![2, 2, 0, 0, 0, 0, 0, 0, 0, 128];
        fork.extend_from_slice(&[1, 0, 0x60, b'a', 1]);
        fork.extend_from_slice(&0x1_0000_0083u64.to_be_bytes());
        fork.extend_from_slice(&[2, 0, 0x70, b'b', b'c', 2]);
        fork.extend_from_slice(&0x2_0000_0084u64.to_be_bytes());

        let entries = read_dir(&xfs(), &dir_inode(fork)).unwrap();

        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, b"a");
        assert_eq!(entries[0].inode, 0x1_0000_0083);
        assert_eq!(entries[0].kind, FileKind::File);
        assert_eq!(entries[1].name, b"bc");
        assert_eq!(entries[1].inode, 0x2_0000_0084);
        assert_eq!(entries[1].kind, FileKind::Dir);
    }

    #[test]
    fn shortform_count_past_the_fork_is_an_error() {
        let fork = vec![9, 0, 0, 0, 0, 128, 1, 0, 0x60, b'a', 1, 0, 0, 0, 131];

        let err = read_dir(&xfs(), &dir_inode(fork)).unwrap_err();

        assert!(err.to_string().contains("entry 1 of 9"), "{err}");
    }
}
