//! On-disk inodes (`struct xfs_dinode`, xfs_format.h): the core fields vdr uses and a copy
//! of the data fork (inline data, an extent list or the root of a bmap B+tree).

use super::bytes::{be16, be32, be64, slice, u8_at};
use super::sb::Superblock;
use super::{Error, Result};

/// Where the data fork starts: after the v1/v2 core (100 bytes) or the v3 core (176).
const V2_CORE: usize = 100;
const V3_CORE: usize = 176;
/// di_flags2 bit: di_big_nextents holds a 64-bit data-fork extent count.
const DIFLAG2_NREXT64: u64 = 1 << 4;

/// How an inode's data fork is stored (di_format, `enum xfs_dinode_fmt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkFormat {
    /// Device numbers or nothing (devices, FIFOs, sockets).
    Dev,
    /// Inline in the inode: shortform directories, short symlinks.
    Local,
    /// A list of extent records in the inode.
    Extents,
    /// The root of a bmap B+tree in the inode.
    Btree,
}

/// The file type, from the mode's S_IFMT bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl FileKind {
    pub fn from_mode(mode: u16) -> FileKind {
        match mode & 0o170_000 {
            0o100_000 => FileKind::File,
            0o040_000 => FileKind::Dir,
            0o120_000 => FileKind::Symlink,
            0o020_000 => FileKind::CharDevice,
            0o060_000 => FileKind::BlockDevice,
            0o010_000 => FileKind::Fifo,
            0o140_000 => FileKind::Socket,
            _ => FileKind::Unknown,
        }
    }

    /// From a directory entry's ftype byte (XFS_DIR3_FT_*).
    pub fn from_ftype(ftype: u8) -> FileKind {
        match ftype {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::CharDevice,
            4 => FileKind::BlockDevice,
            5 => FileKind::Fifo,
            6 => FileKind::Socket,
            7 => FileKind::Symlink,
            _ => FileKind::Unknown,
        }
    }
}

/// An inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Where the inode lies, in bytes from the filesystem's start (for error messages).
    pub offset: u64,
    pub(crate) format: ForkFormat,
    /// Data-fork extent count (records in the inode for `Extents`).
    pub(crate) nextents: u64,
    /// The data fork's bytes as stored in the inode.
    pub(crate) fork: Vec<u8>,
}

impl Inode {
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode)
    }

    /// How the data fork is stored (which reader paths a file takes).
    pub fn fork_format(&self) -> ForkFormat {
        self.format
    }

    /// Parses the inode `ino` read from byte `offset`.
    pub fn parse(sb: &Superblock, ino: u64, offset: u64, b: &[u8]) -> Result<Inode> {
        let corrupt = |why: String| Error::corrupt(format!("inode {ino}"), offset, why);
        let short = || corrupt("inode buffer too short".into());
        let magic = be16(b, 0).ok_or_else(short)?;
        if magic != 0x494e {
            return Err(corrupt(format!("magic {magic:#06x}, want 0x494e (\"IN\")")));
        }
        let mode = be16(b, 2).ok_or_else(short)?;
        let version = u8_at(b, 4).ok_or_else(short)?;
        let core = match (version, sb.version) {
            (1 | 2, _) => V2_CORE,
            (3, 5) => V3_CORE,
            _ => {
                return Err(corrupt(format!(
                    "inode version {version} on a v{} filesystem",
                    sb.version
                )))
            }
        };
        if core == V3_CORE {
            let stored = be64(b, 152).ok_or_else(short)?;
            if stored != ino {
                return Err(corrupt(format!("di_ino says {stored}")));
            }
        }
        let format = match u8_at(b, 5).ok_or_else(short)? {
            0 => ForkFormat::Dev,
            1 => ForkFormat::Local,
            2 => ForkFormat::Extents,
            3 => ForkFormat::Btree,
            other => return Err(corrupt(format!("data fork format {other}"))),
        };
        let nlink = if version == 1 {
            u32::from(be16(b, 6).ok_or_else(short)?)
        } else {
            be32(b, 16).ok_or_else(short)?
        };
        let size = be64(b, 56).ok_or_else(short)?;
        if size > i64::MAX as u64 {
            return Err(corrupt(format!("negative di_size {size:#x}")));
        }
        let flags2 = if core == V3_CORE {
            be64(b, 120).ok_or_else(short)?
        } else {
            0
        };
        let nextents = if flags2 & DIFLAG2_NREXT64 != 0 {
            be64(b, 24).ok_or_else(short)?
        } else {
            u64::from(be32(b, 76).ok_or_else(short)?)
        };
        let literal = b.len().checked_sub(core).ok_or_else(short)?;
        let forkoff = usize::from(u8_at(b, 82).ok_or_else(short)?) * 8;
        let fork_len = if forkoff == 0 { literal } else { forkoff };
        if fork_len > literal {
            return Err(corrupt(format!(
                "di_forkoff {forkoff} bytes is past the inode's {literal}-byte literal area"
            )));
        }
        let fork = slice(b, core, fork_len).ok_or_else(short)?.to_vec();
        let inode = Inode {
            ino,
            mode,
            uid: be32(b, 8).ok_or_else(short)?,
            gid: be32(b, 12).ok_or_else(short)?,
            nlink,
            size,
            offset,
            format,
            nextents,
            fork,
        };
        let kind = inode.kind();
        let fits = match format {
            ForkFormat::Local => matches!(kind, FileKind::Dir | FileKind::Symlink | FileKind::File),
            ForkFormat::Extents | ForkFormat::Btree => {
                matches!(kind, FileKind::Dir | FileKind::Symlink | FileKind::File)
            }
            ForkFormat::Dev => !matches!(kind, FileKind::Dir | FileKind::Symlink | FileKind::File),
        };
        if !fits {
            return Err(corrupt(format!(
                "data fork format {format:?} for a {kind:?} (mode {mode:#o})"
            )));
        }
        if format == ForkFormat::Extents {
            let fits = inode
                .nextents
                .checked_mul(16)
                .is_some_and(|n| n <= inode.fork.len() as u64);
            if !fits {
                return Err(corrupt(format!(
                    "{} extent records do not fit the {}-byte data fork",
                    inode.nextents,
                    inode.fork.len()
                )));
            }
        }
        Ok(inode)
    }
}
