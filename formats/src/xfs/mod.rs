//! A small read-only XFS reader: enough to find and read files (a kernel and an initrd in a
//! RHEL-style XFS /boot) without mounting anything.
//!
//! What it reads, following "XFS Algorithms & Data Structures" (kernel.org, the on-disk
//! format chapters) and xfsprogs' `xfs_format.h` / `xfs_da_format.h`: v4 and v5 (CRC)
//! superblocks, inodes by number (v1/v2/v3 dinodes), data forks in local, extent-list and
//! B+tree (bmbt) form, directories in shortform, block, leaf and node form (data blocks are
//! walked; the hash index is not needed), local and remote symlinks, and files through their
//! extent map (holes and unwritten extents read as zeros).
//!
//! What it is not: a checker or a writer. Checksums are not verified (a damaged but readable
//! filesystem is still read); every number taken from the disk is bounds-checked instead,
//! and walks are bounded, so damage gives an [`Error`] naming the structure and byte offset,
//! never a panic, a hang or an unbounded allocation. Realtime files, attribute forks,
//! quotas and the log are ignored.

mod bmap;
mod bytes;
mod dir;
mod inode;
mod sb;

use std::collections::VecDeque;
use std::io;

pub use bmap::Extent;
pub use dir::DirEntry;
pub use inode::{FileKind, ForkFormat, Inode};
pub use sb::Superblock;

/// Most symlinks followed while resolving one path (Linux's MAXSYMLINKS).
pub const MAX_SYMLINK_FOLLOWS: u32 = 40;
/// Longest symlink target XFS stores (XFS_SYMLINK_MAXLEN).
pub const MAX_SYMLINK_LEN: u64 = 1024;

/// Errors of reading an XFS filesystem. Offsets are bytes from the filesystem's start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("XFS: reading {len} bytes at byte {offset} ({structure}): {source}")]
    Io {
        structure: String,
        offset: u64,
        len: usize,
        source: io::Error,
    },
    #[error("XFS: not an XFS filesystem (superblock magic {found:02x?}, want \"XFSB\")")]
    NotXfs { found: [u8; 4] },
    #[error("XFS: superblock field {field} = {value} is invalid: {why}")]
    BadSuperblock {
        field: &'static str,
        value: u64,
        why: &'static str,
    },
    #[error("XFS: {what} is not supported")]
    Unsupported { what: String },
    #[error("XFS: damaged {structure} at byte {offset}: {why}")]
    Corrupt {
        structure: String,
        offset: u64,
        why: String,
    },
    #[error("XFS: {path}: no such file or directory")]
    NotFound { path: String },
    #[error("XFS: {path}: not a directory")]
    NotADirectory { path: String },
    #[error("XFS: inode {ino} is not a {want}")]
    WrongKind { ino: u64, want: &'static str },
    #[error("XFS: {path}: more than {MAX_SYMLINK_FOLLOWS} symlinks followed")]
    TooManySymlinks { path: String },
    #[error("XFS: {what} of inode {ino} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        what: &'static str,
        ino: u64,
        len: u64,
        cap: u64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn corrupt(structure: impl Into<String>, offset: u64, why: impl Into<String>) -> Error {
        Error::Corrupt {
            structure: structure.into(),
            offset,
            why: why.into(),
        }
    }
}

/// Positional reads of the filesystem's bytes (offset 0 is the superblock). A read must
/// fill `buf` or fail; reads past the volume's end must fail, not return zeros.
pub trait XfsRead: Send + Sync {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<F> XfsRead for F
where
    F: Fn(u64, &mut [u8]) -> io::Result<()> + Send + Sync,
{
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self(offset, buf)
    }
}

/// An open XFS filesystem.
pub struct Xfs {
    reader: Box<dyn XfsRead>,
    sb: Superblock,
}

impl std::fmt::Debug for Xfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xfs").field("sb", &self.sb).finish()
    }
}

impl Xfs {
    /// Reads and checks the primary superblock.
    pub fn open(reader: impl XfsRead + 'static) -> Result<Xfs> {
        let reader: Box<dyn XfsRead> = Box::new(reader);
        let mut buf = [0u8; sb::SB_BYTES];
        read(reader.as_ref(), "superblock", 0, &mut buf)?;
        let sb = Superblock::parse(&buf)?;
        Ok(Xfs { reader, sb })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The filesystem UUID in its usual text form (what `root=UUID=` names).
    pub fn uuid(&self) -> String {
        self.sb.uuid_string()
    }

    /// The root directory's inode.
    pub fn root(&self) -> Result<Inode> {
        self.inode(self.sb.root_ino)
    }

    /// Reads inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Inode> {
        let offset = self.sb.inode_offset(ino)?;
        let mut buf = vec![0u8; usize::from(self.sb.inode_size)];
        read(self.reader.as_ref(), "inode", offset, &mut buf)?;
        Inode::parse(&self.sb, ino, offset, &buf)
    }

    /// The inode at `path` (absolute; relative paths start at the root too), following
    /// symlinks in every component, the last included.
    pub fn lookup(&self, path: impl AsRef<[u8]>) -> Result<Inode> {
        self.resolve(path.as_ref(), true)
    }

    /// Like [`Xfs::lookup`], but a symlink as the last component is returned itself.
    pub fn lookup_nofollow(&self, path: impl AsRef<[u8]>) -> Result<Inode> {
        self.resolve(path.as_ref(), false)
    }

    /// The entries of directory `dir`, without "." and "..", in on-disk order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        dir::read_dir(self, dir)
    }

    /// The whole content of regular file `inode`, refused when it is over `max` bytes.
    pub fn read_file(&self, inode: &Inode, max: u64) -> Result<Vec<u8>> {
        if inode.kind() != FileKind::File {
            return Err(Error::WrongKind {
                ino: inode.ino,
                want: "regular file",
            });
        }
        if inode.size > max {
            return Err(Error::TooLarge {
                what: "file",
                ino: inode.ino,
                len: inode.size,
                cap: max,
            });
        }
        let len = usize::try_from(inode.size).map_err(|_| Error::TooLarge {
            what: "file",
            ino: inode.ino,
            len: inode.size,
            cap: max,
        })?;
        let mut out = vec![0u8; len];
        let extents = bmap::extents(self, inode)?;
        bmap::read_mapped(self, inode, &extents, 0, &mut out)?;
        Ok(out)
    }

    /// Reads file bytes at `offset`; returns how many (fewer at the end of the file).
    pub fn read_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let available = inode.size.saturating_sub(offset);
        let n = usize::try_from(available).map_or(buf.len(), |a| a.min(buf.len()));
        let Some(part) = buf.get_mut(..n) else {
            return Ok(0);
        };
        if n == 0 {
            return Ok(0);
        }
        let extents = bmap::extents(self, inode)?;
        bmap::read_mapped(self, inode, &extents, offset, part)?;
        Ok(n)
    }

    /// The file's extent map (empty for inline data).
    pub fn extents(&self, inode: &Inode) -> Result<Vec<Extent>> {
        bmap::extents(self, inode)
    }

    /// A symlink's target.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        dir::read_link(self, inode)
    }

    /// Reads `buf.len()` bytes at filesystem byte `offset`.
    fn read_bytes(&self, structure: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        read(self.reader.as_ref(), structure, offset, buf)
    }

    fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Inode> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        let mut parts: VecDeque<Vec<u8>> = components(path).collect();
        // Inodes of the directories walked: ".." pops one (XFS shortform directories do
        // not store "..", so it is not looked up on disk).
        let mut stack = vec![self.root()?];
        let mut follows = 0u32;
        while let Some(part) = parts.pop_front() {
            match part.as_slice() {
                b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = stack
                .last()
                .ok_or_else(|| Error::NotFound { path: shown() })?;
            if dir.kind() != FileKind::Dir {
                return Err(Error::NotADirectory { path: shown() });
            }
            let entry =
                dir::find(self, dir, &part)?.ok_or_else(|| Error::NotFound { path: shown() })?;
            let inode = self.inode(entry.inode)?;
            let last = parts.is_empty();
            if inode.kind() == FileKind::Symlink && (follow_last || !last) {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return Err(Error::TooManySymlinks { path: shown() });
                }
                let target = self.read_link(&inode)?;
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    parts.push_front(part);
                }
                continue;
            }
            if !last && inode.kind() != FileKind::Dir {
                return Err(Error::NotADirectory { path: shown() });
            }
            stack.push(inode);
        }
        stack.pop().ok_or_else(|| Error::NotFound { path: shown() })
    }
}

/// The non-empty `/`-separated parts of `path`.
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
}

fn read(reader: &dyn XfsRead, structure: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
    reader
        .read_exact_at(offset, buf)
        .map_err(|source| Error::Io {
            structure: structure.to_string(),
            offset,
            len: buf.len(),
            source,
        })
}
