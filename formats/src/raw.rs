//! RAW images: the virtual disk is the file. Holes in a sparse file are reported as `Zero`
//! extents (found with `SEEK_DATA`/`SEEK_HOLE`), so converting a sparse raw image stays
//! sparse.

use std::os::fd::AsRawFd;

use crate::disk::{check_range, clip_end, push_merged, DiskInfo, Extent, ExtentKind, VirtualDisk};
use crate::error::Error;
use crate::source::{SourceRef, SourceRun};

/// A raw disk image.
pub struct RawDisk {
    source: SourceRef,
}

impl RawDisk {
    /// Wraps `source` as a raw disk of the source's length.
    pub fn new(source: SourceRef) -> RawDisk {
        RawDisk { source }
    }

    fn data(&self, offset: u64, len: u64) -> Extent {
        Extent {
            offset,
            len,
            kind: ExtentKind::Data {
                source: self.source.clone(),
                at: offset,
            },
            depth: 0,
        }
    }
}

/// `lseek(fd, offset, whence)` for SEEK_DATA / SEEK_HOLE; None when the file system cannot
/// say (then everything is treated as data) or when there is no more data (ENXIO).
fn seek(fd: i32, offset: u64, whence: i32) -> Option<u64> {
    let off = i64::try_from(offset).ok()?;
    // SAFETY: lseek on a valid, open descriptor owned by the source; it only moves that
    // descriptor's position, which vdr never uses (all reads are positional preads).
    let r = unsafe { libc::lseek(fd, off, whence) };
    u64::try_from(r).ok()
}

impl VirtualDisk for RawDisk {
    fn size(&self) -> u64 {
        self.source.len()
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        let end = clip_end(offset, len, self.size());
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let Some(file) = self.source.as_file() else {
            let Some(runs) = self.source.layout(offset, end - offset) else {
                out.push(self.data(offset, end - offset));
                return Ok(out);
            };
            let mut pos = offset;
            for run in runs {
                let (len, kind) = match run {
                    SourceRun::Data(len) => (len, self.data(pos, len).kind),
                    SourceRun::Zero(len) => (len, ExtentKind::Zero),
                    SourceRun::Unreadable(len, reason) => (len, ExtentKind::Unreadable { reason }),
                };
                let len = len.min(end - pos);
                if len == 0 {
                    break;
                }
                push_merged(
                    &mut out,
                    Extent {
                        offset: pos,
                        len,
                        kind,
                        depth: 0,
                    },
                );
                pos += len;
            }
            if pos < end {
                out.push(self.data(pos, end - pos));
            }
            return Ok(out);
        };
        let fd = file.as_raw_fd();
        let mut pos = offset;
        while pos < end {
            let data_start = match seek(fd, pos, libc::SEEK_DATA) {
                Some(d) => d.min(end),
                None => end, // no data after pos (ENXIO) or the FS cannot tell
            };
            if data_start > pos {
                out.push(Extent {
                    offset: pos,
                    len: data_start - pos,
                    kind: ExtentKind::Zero,
                    depth: 0,
                });
                pos = data_start;
                if pos >= end {
                    break;
                }
            }
            let hole = seek(fd, pos, libc::SEEK_HOLE).unwrap_or(end).min(end);
            let hole = hole.max(pos + 1).min(end);
            out.push(self.data(pos, hole - pos));
            pos = hole;
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(self.source.name(), offset, buf.len() as u64, self.size())?;
        self.source
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(self.source.name(), offset, "raw data", e))
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            format: "raw".into(),
            file: self.source.name().into(),
            virtual_size: self.size(),
            file_size: self.source.len(),
            ..DiskInfo::default()
        }
    }

    fn source(&self) -> Option<SourceRef> {
        Some(self.source.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{FileSource, SliceSource};
    use std::sync::Arc;

    #[test]
    fn slice_backed_raw_is_one_data_extent() {
        let disk = RawDisk::new(Arc::new(SliceSource::new(vec![7u8; 4096], "s")));
        let map = disk.map(0, u64::MAX).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map[0].len, 4096);
        assert_eq!(map[0].kind.name(), "data");
    }

    #[test]
    fn sparse_file_holes_map_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.raw");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 65536], 1 << 20).unwrap();
        drop(f);
        let disk = RawDisk::new(Arc::new(FileSource::open(&p).unwrap()));
        let map = disk.map(0, 4 << 20).unwrap();
        let kinds: Vec<_> = map.iter().map(|e| (e.offset, e.kind.name())).collect();
        assert_eq!(kinds[0], (0, "zero"));
        assert!(map
            .iter()
            .any(|e| e.kind.name() == "data" && e.offset <= 1 << 20 && e.end() > 1 << 20));
        assert_eq!(map.last().unwrap().end(), 4 << 20);
    }

    #[test]
    fn read_past_end_is_an_error_naming_the_file() {
        let disk = RawDisk::new(Arc::new(SliceSource::new(vec![0u8; 16], "d.raw")));
        let mut buf = [0u8; 8];
        let err = disk.read_at(&mut buf, 12).unwrap_err();
        assert!(err.to_string().contains("d.raw"));
    }
}
