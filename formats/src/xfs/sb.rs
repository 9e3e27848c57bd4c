//! The XFS superblock (`struct xfs_dsb`, xfs_format.h): geometry, features and the root
//! inode, checked so that every address computed from it later stays inside the
//! filesystem; and the decoding of inode and block numbers into byte offsets.

use super::bytes::{be16, be32, be64, slice, u8_at};
use super::{Error, Result};

/// Bytes of the superblock that are parsed (up to and including sb_meta_uuid).
pub const SB_BYTES: usize = 264;

/// sb_versionnum bits (XFS_SB_VERSION_*).
const VERSION_NUMBITS: u16 = 0x000f;
const VERSION_DIRV2BIT: u16 = 0x2000;
const VERSION_MOREBITSBIT: u16 = 0x8000;
/// sb_features2: directory entries carry the file type (XFS_SB_VERSION2_FTYPE).
const VERSION2_FTYPE: u32 = 0x0000_0200;
/// sb_features_incompat (v5): XFS_SB_FEAT_INCOMPAT_FTYPE and _NREXT64.
const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_NREXT64: u32 = 0x20;

/// The geometry and features vdr uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 4 (v4) or 5 (v5, metadata CRCs and self-describing headers).
    pub version: u8,
    pub block_size: u32,
    pub block_log: u8,
    /// Filesystem size in blocks.
    pub data_blocks: u64,
    pub ag_blocks: u32,
    pub ag_count: u32,
    pub ag_block_log: u8,
    pub inode_size: u16,
    pub inode_log: u8,
    pub inodes_per_block_log: u8,
    pub root_ino: u64,
    /// log2(directory block size / block size).
    pub dir_block_log: u8,
    /// Directory entries store the file type.
    pub ftype: bool,
    /// The filesystem may hold inodes with 64-bit extent counters.
    pub nrext64: bool,
    pub uuid: [u8; 16],
    pub label: Vec<u8>,
}

fn bad(field: &'static str, value: u64, why: &'static str) -> Error {
    Error::BadSuperblock { field, value, why }
}

/// ceil(log2(n)) for n ≥ 1.
fn log2_roundup(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Superblock {
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        let short = || bad("size", b.len() as u64, "superblock buffer too short");
        let magic: [u8; 4] = slice(b, 0, 4)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(short)?;
        if &magic != b"XFSB" {
            return Err(Error::NotXfs { found: magic });
        }
        let field32 = |at| be32(b, at).ok_or_else(short);
        let field64 = |at| be64(b, at).ok_or_else(short);
        let field16 = |at| be16(b, at).ok_or_else(short);
        let field8 = |at| u8_at(b, at).ok_or_else(short);

        let versionnum = field16(100)?;
        let version = (versionnum & VERSION_NUMBITS) as u8;
        if !(4..=5).contains(&version) {
            return Err(Error::Unsupported {
                what: format!("superblock version {version} (only 4 and 5 are read)"),
            });
        }
        if version == 4 && versionnum & VERSION_DIRV2BIT == 0 {
            return Err(Error::Unsupported {
                what: "a v4 filesystem with version 1 directories".into(),
            });
        }

        let block_size = field32(4)?;
        let block_log = field8(120)?;
        if !(9..=16).contains(&block_log) || block_size != 1 << block_log {
            return Err(bad(
                "sb_blocksize",
                u64::from(block_size),
                "not a power of two from 512 to 65536 matching sb_blocklog",
            ));
        }
        let sect_size = field16(102)?;
        if !sect_size.is_power_of_two() || !(512..=32768).contains(&sect_size) {
            return Err(bad(
                "sb_sectsize",
                u64::from(sect_size),
                "not a power of two from 512 to 32768",
            ));
        }
        let inode_size = field16(104)?;
        let inode_log = field8(122)?;
        let min_inode_log = if version == 5 { 9 } else { 8 };
        if !(min_inode_log..=11).contains(&inode_log)
            || u32::from(inode_size) != 1 << inode_log
            || u32::from(inode_size) > block_size
        {
            return Err(bad(
                "sb_inodesize",
                u64::from(inode_size),
                "not a power of two from 256 (512 on v5) to 2048 matching sb_inodelog and within a block",
            ));
        }
        let inopblog = field8(123)?;
        let inopblock = field16(106)?;
        if u32::from(inopblog) + u32::from(inode_log) != u32::from(block_log)
            || u32::from(inopblock) != 1 << inopblog
        {
            return Err(bad(
                "sb_inopblog",
                u64::from(inopblog),
                "does not match block and inode sizes",
            ));
        }
        let ag_blocks = field32(84)?;
        let ag_block_log = field8(124)?;
        if ag_blocks < 2 || u32::from(ag_block_log) != log2_roundup(ag_blocks) {
            return Err(bad(
                "sb_agblocks",
                u64::from(ag_blocks),
                "zero, or sb_agblklog is not its rounded-up log2",
            ));
        }
        let ag_count = field32(88)?;
        if ag_count == 0 {
            return Err(bad("sb_agcount", 0, "no allocation groups"));
        }
        let data_blocks = field64(8)?;
        let max_blocks = u64::from(ag_count) * u64::from(ag_blocks);
        if data_blocks == 0 || data_blocks > max_blocks {
            return Err(bad(
                "sb_dblocks",
                data_blocks,
                "zero or more than sb_agcount * sb_agblocks",
            ));
        }
        if data_blocks >> (64 - u32::from(block_log)) != 0 {
            return Err(bad("sb_dblocks", data_blocks, "size in bytes overflows"));
        }
        let dir_block_log = field8(192)?;
        if u32::from(block_log) + u32::from(dir_block_log) > 16 {
            return Err(bad(
                "sb_dirblklog",
                u64::from(dir_block_log),
                "directory blocks over 64 KiB",
            ));
        }
        let features2 = field32(200)?;
        let incompat = if version == 5 { field32(216)? } else { 0 };
        let ftype = if version == 5 {
            incompat & INCOMPAT_FTYPE != 0
        } else {
            versionnum & VERSION_MOREBITSBIT != 0 && features2 & VERSION2_FTYPE != 0
        };
        let uuid = slice(b, 32, 16)
            .and_then(|u| u.try_into().ok())
            .ok_or_else(short)?;
        let label = slice(b, 108, 12).ok_or_else(short)?;
        let label = label.iter().copied().take_while(|&c| c != 0).collect();
        let sb = Superblock {
            version,
            block_size,
            block_log,
            data_blocks,
            ag_blocks,
            ag_count,
            ag_block_log,
            inode_size,
            inode_log,
            inodes_per_block_log: inopblog,
            root_ino: field64(56)?,
            dir_block_log,
            ftype,
            nrext64: incompat & INCOMPAT_NREXT64 != 0,
            uuid,
            label,
        };
        sb.inode_offset(sb.root_ino)
            .map_err(|_| bad("sb_rootino", sb.root_ino, "outside the filesystem"))?;
        Ok(sb)
    }

    /// The UUID as 8-4-4-4-12 lowercase hex.
    pub fn uuid_string(&self) -> String {
        let hex: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        let part = |r: std::ops::Range<usize>| hex.get(r).unwrap_or_default().to_string();
        format!(
            "{}-{}-{}-{}-{}",
            part(0..8),
            part(8..12),
            part(12..16),
            part(16..20),
            part(20..32)
        )
    }

    /// Directory block size in bytes.
    pub fn dir_block_size(&self) -> u32 {
        self.block_size << self.dir_block_log
    }

    /// Byte offset of filesystem block `fsb` (XFS_FSB_TO_DADDR: AG number in the high bits,
    /// block within the AG in the low sb_agblklog bits), checked to lie inside the
    /// filesystem.
    pub fn fsb_offset(&self, fsb: u64) -> Option<u64> {
        let ag = fsb.checked_shr(u32::from(self.ag_block_log))?;
        let agbno = fsb & ((1u64 << self.ag_block_log) - 1);
        if ag >= u64::from(self.ag_count) || agbno >= u64::from(self.ag_blocks) {
            return None;
        }
        let block = ag * u64::from(self.ag_blocks) + agbno;
        (block < self.data_blocks).then(|| block << self.block_log)
    }

    /// True when `len` blocks from `fsb` stay inside one AG and the filesystem (an extent
    /// never crosses an AG boundary).
    pub fn fsb_range_ok(&self, fsb: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| fsb.checked_add(l)) else {
            return false;
        };
        let same_ag = fsb.checked_shr(u32::from(self.ag_block_log))
            == last.checked_shr(u32::from(self.ag_block_log));
        same_ag && self.fsb_offset(fsb).is_some() && self.fsb_offset(last).is_some()
    }

    /// Byte offset of inode `ino` (XFS_INO_TO_AGNO / _AGBNO / _OFFSET).
    pub fn inode_offset(&self, ino: u64) -> Result<u64> {
        let bad_ino = || {
            Error::corrupt(
                "inode number",
                0,
                format!("inode {ino} is outside the filesystem"),
            )
        };
        let per_block_log = u32::from(self.inodes_per_block_log);
        let in_block = ino & ((1u64 << per_block_log) - 1);
        let fsb = ino >> per_block_log;
        let block = self.fsb_offset(fsb).ok_or_else(bad_ino)?;
        Ok(block + (in_block << self.inode_log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_roundup_matches_agblklog() {
        assert_eq!(log2_roundup(4096), 12);
        assert_eq!(log2_roundup(4097), 13);
        assert_eq!(log2_roundup(1), 0);
    }
}
