//! The FUSE handlers over a [`Tree`]: lookup, getattr, readdir, readlink, open, read and
//! statfs. Everything is read-only: opening for write, and every handler that would
//! change something, answers EROFS.
//!
//! Reads go straight to `VirtualDisk::read_at` on the calling FUSE worker thread
//! (`VirtualDisk` is `Send + Sync`; the formats keep their own table caches). Disk files
//! are opened with FOPEN_DIRECT_IO so a `dd bs=1M` arrives as 1 MiB requests instead of
//! the kernel's 128 KiB readahead pieces.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use vdr_formats::{ExtentKind, VirtualDisk};

use crate::tree::{Content, Kind, Node, Tree};

/// How long the kernel may keep attributes and names: the tree never changes.
const TTL: Duration = Duration::from_secs(3600);
/// Largest read served at once (the kernel asks for at most max_pages × 4 KiB).
const MAX_READ: u32 = 16 << 20;
/// The readahead asked of the kernel (it may grant less).
const READAHEAD: u32 = 4 << 20;

thread_local! {
    /// The read buffer of one FUSE worker thread (at most [`MAX_READ`] bytes).
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a read of an unreadable range returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FillUnreadable {
    /// EIO (a short read up to the damage when the request starts before it).
    #[default]
    Error,
    /// Zeros in place of the unreadable bytes.
    Zeros,
}

/// A read-only FUSE file system over a fixed tree.
pub struct ReadOnlyFs {
    tree: Tree,
    fill: FillUnreadable,
    uid: u32,
    gid: u32,
}

impl ReadOnlyFs {
    /// Serves `tree`; files and directories belong to `uid`:`gid`.
    pub fn new(tree: Tree, fill: FillUnreadable, uid: u32, gid: u32) -> ReadOnlyFs {
        ReadOnlyFs {
            tree,
            fill,
            uid,
            gid,
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, perm, nlink) = match &node.kind {
            Kind::Dir(children) => (FileType::Directory, 0, 0o555, 2 + children.len() as u32),
            Kind::File(content) => (FileType::RegularFile, content.size(), 0o444, 1),
            Kind::Symlink(target) => (FileType::Symlink, target.len() as u64, 0o777, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 1 << 20,
        }
    }

    /// Replies with the bytes of `content` in `[offset, offset + size)`, short at the end
    /// of the file or before an unreadable range (EIO when the request starts in one,
    /// unless unreadable ranges are filled with zeros).
    fn read_content(&self, content: &Content, offset: u64, size: u32, reply: ReplyData) {
        if let Content::Bytes(bytes) = content {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            return reply.data(&bytes[start..end]);
        }
        let (disk, start, len) = match guarded(|| content.disk_range()) {
            Ok(Some(range)) => range,
            Ok(None) => return reply.data(&[]),
            Err(e) => {
                eprintln!("vdr mount: {e}");
                return reply.error(Errno::EIO);
            }
        };
        if offset >= len {
            return reply.data(&[]);
        }
        let want = u64::from(size.min(MAX_READ)).min(len - offset) as usize;
        let at = start + offset;
        // One buffer per worker thread, reused: a fresh 1 MiB buffer per request costs
        // page faults (or a memset) that showed up as ~15% of sequential throughput.
        READ_BUFFER.with_borrow_mut(|buf| {
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let buf = &mut buf[..want];
            let served = guarded(|| match disk.read_at(buf, at) {
                Ok(()) => Ok(want),
                Err(first) => self.read_around_damage(disk.as_ref(), buf, at, first),
            });
            match served {
                Ok(n) => reply.data(&buf[..n]),
                Err(errno) => reply.error(errno),
            }
        });
    }

    /// After a failed read at `at`: reads the extents one by one, zero-filling
    /// unreadable ones (`--fill-unreadable zeros`) or stopping before the first.
    /// Returns how many bytes of `buf` hold content.
    fn read_around_damage(
        &self,
        disk: &dyn VirtualDisk,
        buf: &mut [u8],
        at: u64,
        first: vdr_formats::Error,
    ) -> Result<usize, Errno> {
        let extents = disk.map(at, buf.len() as u64).map_err(|e| {
            eprintln!("vdr mount: {first}; mapping it: {e}");
            Errno::EIO
        })?;
        for extent in extents {
            let from = (extent.offset - at) as usize;
            let to = (extent.end() - at) as usize;
            let Some(piece) = buf.get_mut(from..to) else {
                break;
            };
            let failed = match &extent.kind {
                ExtentKind::Unreadable { reason } => Some(reason.clone()),
                _ => disk
                    .read_at(piece, extent.offset)
                    .err()
                    .map(|e| e.to_string()),
            };
            if let Some(reason) = failed {
                if self.fill == FillUnreadable::Zeros {
                    piece.fill(0);
                    continue;
                }
                eprintln!(
                    "vdr mount: bytes {:#x}..{:#x} unreadable: {reason}",
                    extent.offset,
                    extent.end()
                );
                if from == 0 {
                    return Err(Errno::EIO);
                }
                return Ok(from);
            }
        }
        Ok(buf.len())
    }
}

/// Runs `f`, turning a panic into EIO: a bug met on strange input must fail one read,
/// not leave the reader waiting forever for a reply a dead worker will never send.
fn guarded<T, E: From<Panicked>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        eprintln!("vdr mount: a read panicked; answered EIO");
        Err(E::from(Panicked))
    })
}

/// A read that panicked (see [`guarded`]).
struct Panicked;

impl From<Panicked> for Errno {
    fn from(_: Panicked) -> Errno {
        Errno::EIO
    }
}

impl From<Panicked> for String {
    fn from(_: Panicked) -> String {
        "the read panicked".into()
    }
}

impl Filesystem for ReadOnlyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(READAHEAD) {
            let _ = config.set_max_readahead(nearest);
        }
        // Lets a direct-I/O file be mmapped (Linux 6.6+); older kernels refuse mmap.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = name
            .to_str()
            .and_then(|n| self.tree.child(parent.into(), n))
            .and_then(|ino| Some((ino, self.tree.get(ino)?)));
        match found {
            Some((ino, node)) => reply.entry(&TTL, &self.attr(ino, node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.get(ino.into()) {
            Some(node) => reply.attr(&TTL, &self.attr(ino.into(), node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.get(ino.into()).map(|n| &n.kind) {
            Some(Kind::Symlink(target)) => reply.data(target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.tree.get(ino.into()).map(|n| &n.kind) {
            Some(Kind::File(Content::Bytes(_))) => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(Kind::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Some(Kind::Dir(_)) => reply.error(Errno::EISDIR),
            Some(Kind::Symlink(_)) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.get(ino.into()).map(|n| &n.kind) {
            Some(Kind::File(content)) => self.read_content(content, offset, size, reply),
            Some(Kind::Dir(_)) => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.tree.get(ino.into()) else {
            return reply.error(Errno::ENOENT);
        };
        let Kind::Dir(children) = &node.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [
            (u64::from(ino), FileType::Directory, "."),
            (node.parent, FileType::Directory, ".."),
        ];
        let entries = dots
            .into_iter()
            .chain(children.iter().map(|(name, &child)| {
                let kind = match self.tree.get(child).map(|n| &n.kind) {
                    Some(Kind::Dir(_)) => FileType::Directory,
                    Some(Kind::Symlink(_)) => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                (child, kind, name.as_str())
            }));
        for (i, (child, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }
}
