//! `Source`: positional, read-only byte access to evidence.
//!
//! Every format parser reads through this trait, so a disk inside a VMFS volume, a mapped
//! file and an in-memory image are all opened the same way without temporary copies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the files an image names live (VMDK extents, backing files, qcow2 data files):
/// the host file system by default, or a VMFS volume when the image was opened inside
/// one (`DATASTORE::/vm/disk.vmdk`).
pub trait FileSystem: Send + Sync {
    /// Opens `path` read-only.
    fn open(&self, path: &Path) -> io::Result<SourceRef>;

    /// A stable name for `path` (a canonical path), used to detect chain cycles.
    fn identity(&self, path: &Path) -> String;
}

/// The host file system.
pub struct HostFileSystem;

impl FileSystem for HostFileSystem {
    fn open(&self, path: &Path) -> io::Result<SourceRef> {
        Ok(Arc::new(FileSource::open(path)?))
    }

    fn identity(&self, path: &Path) -> String {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    }
}

/// A shared [`FileSystem`], printable in option structs.
#[derive(Clone)]
pub struct FileSystemRef(pub Arc<dyn FileSystem>);

impl std::fmt::Debug for FileSystemRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileSystem")
    }
}

/// `posix_fadvise(WILLNEED)` on `[at, at+len)` of `file`: the kernel starts reading now.
/// A hint is only a hint: errors are ignored.
pub fn advise_will_need(file: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments and the descriptor, which is
    // open and owned by the borrowed `File`; it changes no memory of this process.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
    }
}

/// One run of [`Source::layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRun {
    /// Stored bytes.
    Data(u64),
    /// Reads as zeros without being stored (a hole, a to-be-zeroed block).
    Zero(u64),
    /// Cannot be read, and why.
    Unreadable(u64, String),
}

/// Read-only positional byte access. Implementations must be safe to share across threads.
pub trait Source: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Reads up to `buf.len()` bytes at `offset`; returns fewer only at end of source.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// A human name for error messages (usually the path).
    fn name(&self) -> &str;

    /// True when the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying plain file, when there is one: lets writers use `copy_file_range`.
    fn as_file(&self) -> Option<&File> {
        None
    }

    /// Asks the kernel to start reading `[at, at+len)` now, so a sequential copy keeps the
    /// disk busy while it writes or sends. A hint: sources without a file ignore it.
    fn will_need(&self, at: u64, len: u64) {
        if let Some(file) = self.as_file() {
            advise_will_need(file, at, len);
        }
    }

    /// The path the source was opened from, when it is a file: used to resolve names that
    /// the image records relative to itself (backing files, external data files).
    fn path(&self) -> Option<&Path> {
        None
    }

    /// How `len` bytes from `offset` are stored, when the source knows more than "all
    /// data" (a thin or damaged file inside a VMFS volume): consecutive runs covering the
    /// range. None means plain data throughout (or, for a host file, ask the kernel).
    fn layout(&self, _offset: u64, _len: u64) -> Option<Vec<SourceRun>> {
        None
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
            match self.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: {} bytes wanted at {:#x}, end of source at {:#x}",
                            self.name(),
                            buf.len(),
                            offset,
                            self.len()
                        ),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Shared handle to a source.
pub type SourceRef = Arc<dyn Source>;

/// A plain file read with `pread`. Opened read-only, always.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    name: String,
    len: u64,
}

impl FileSource {
    /// Opens `path` read-only. Block devices report their size through seeking to the end.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let len = file_len(&file)?;
        Ok(FileSource {
            file,
            path: path.to_path_buf(),
            name: path.display().to_string(),
            len,
        })
    }
}

fn file_len(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report 0 in metadata; their size is where a seek to the end lands.
    let mut handle = file;
    let len = handle.seek(io::SeekFrom::End(0))?;
    handle.seek(io::SeekFrom::Start(0))?;
    Ok(len)
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let avail = usize::try_from(self.len - offset).unwrap_or(usize::MAX);
        let want = buf.len().min(avail);
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// A file mapped read-only into memory (memmap2).
pub struct MmapSource {
    map: memmap2::Mmap,
    path: PathBuf,
    name: String,
}

impl MmapSource {
    /// Maps `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> io::Result<MmapSource> {
        let path = path.as_ref();
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only (PROT_READ, MAP_PRIVATE semantics of
        // `Mmap::map`). Evidence files are not expected to change while vdr reads them; if
        // another process truncates the file, accesses past the new end raise SIGBUS, which
        // is the documented risk of reading through a mapping and why `FileSource` is the
        // default.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MmapSource {
            map,
            path: path.to_path_buf(),
            name: path.display().to_string(),
        })
    }
}

impl Source for MmapSource {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        read_from_slice(&self.map, buf, offset)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Bytes held in memory (tests, fuzzing, small embedded images).
pub struct SliceSource {
    bytes: Arc<[u8]>,
    name: String,
}

impl SliceSource {
    /// Wraps `bytes`, naming the source `name` in messages.
    pub fn new(bytes: impl Into<Arc<[u8]>>, name: impl Into<String>) -> SliceSource {
        SliceSource {
            bytes: bytes.into(),
            name: name.into(),
        }
    }
}

impl Source for SliceSource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        read_from_slice(&self.bytes, buf, offset)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

fn read_from_slice(bytes: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let Ok(start) = usize::try_from(offset) else {
        return Ok(0);
    };
    if start >= bytes.len() {
        return Ok(0);
    }
    let n = buf.len().min(bytes.len() - start);
    buf[..n].copy_from_slice(&bytes[start..start + n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_source_reads_short_at_end() {
        let src = SliceSource::new(vec![1u8, 2, 3, 4], "t");
        let mut buf = [0u8; 8];
        assert_eq!(src.read_at(&mut buf, 2).unwrap(), 2);
        assert_eq!(&buf[..2], &[3, 4]);
        assert_eq!(src.read_at(&mut buf, 9).unwrap(), 0);
    }

    #[test]
    fn read_exact_past_end_names_the_source() {
        let src = SliceSource::new(vec![0u8; 4], "img.qcow2");
        let mut buf = [0u8; 8];
        let err = src.read_exact_at(&mut buf, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("img.qcow2"));
    }

    #[test]
    fn file_source_reads_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let src = FileSource::open(&p).unwrap();
        assert_eq!(src.len(), 11);
        let mut buf = [0u8; 5];
        src.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        let m = MmapSource::open(&p).unwrap();
        m.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
