//! The sparse raw writer. The output is `set_len` to the virtual size first, so every range
//! never written stays a hole that reads as zeros: `Zero`, `Unallocated` and (under the
//! `Zeros` policy) `Unreadable` extents cost nothing.
//!
//! Long `Data` runs whose source is a plain file are handed to `copy_file_range` (see
//! `copy.rs`); everything else (compressed input, in-memory sources, short runs) is read
//! and written with `pwrite`, leaving all-zero 4 KiB blocks as holes, as qemu-img convert
//! does.
//!
//! Unlike the qcow2 writer, the workers write their units themselves: in a raw image every
//! byte's place is its virtual offset, so the order of writes cannot change the result,
//! and copies on both cores measured faster than one writer thread issuing them all
//! (see the `write` module doc). The in-order consumer only adds up the report and calls
//! `progress`, so progress still never runs ahead of a unit that is not written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::disk::{Extent, ExtentKind, VirtualDisk};
use crate::error::Error;
use crate::source::SourceRef;

use super::copy::{copy_range, CopyStop};
use super::gather::{
    is_read_error, is_zero, map_unit, push_unreadable, read_extent_salvaging, sort_unreadable,
};
use super::{ConvertReport, UnreadablePolicy, UnreadableRange};

/// Data runs at least this long go through copy_file_range when the source is a file;
/// shorter ones cost less as a read and a write.
const COPY_MIN: u64 = 64 * 1024;

/// Zero detection granularity of read data: the file system block size on ext4/xfs.
const ZERO_BLOCK: usize = 4096;

/// Work unit of the raw writer. Read pieces are at most this long, so it also bounds
/// each worker's buffer.
pub(super) const UNIT_LEN: u64 = 4 << 20;

/// The output, shared by the workers (positional writes need no lock).
pub(super) struct RawTarget<'a> {
    file: File,
    path: &'a str,
    /// Cleared for good the first time the kernel refuses to offload a copy.
    offload: AtomicBool,
}

/// What one unit did, for the report.
pub(super) struct UnitDone {
    data_bytes: u64,
    zero_bytes: u64,
    unreadable: Vec<UnreadableRange>,
}

impl<'a> RawTarget<'a> {
    /// Sizes the new, empty output to the virtual size (all holes).
    pub fn new(file: File, path: &'a str, virtual_size: u64) -> Result<RawTarget<'a>, Error> {
        file.set_len(virtual_size)
            .map_err(|e| write_error(path, e))?;
        Ok(RawTarget {
            file,
            path,
            offload: AtomicBool::new(true),
        })
    }

    /// Worker side: maps the unit at `offset` and writes it. `buf` is the worker's own
    /// read buffer, reused from unit to unit.
    pub fn write_unit(
        &self,
        disk: &dyn VirtualDisk,
        offset: u64,
        len: u64,
        policy: UnreadablePolicy,
        buf: &mut Vec<u8>,
    ) -> Result<UnitDone, Error> {
        let mut done = UnitDone {
            data_bytes: 0,
            zero_bytes: 0,
            unreadable: Vec::new(),
        };
        for extent in map_unit(disk, offset, len, policy, &mut done.unreadable)? {
            match &extent.kind {
                ExtentKind::Zero | ExtentKind::Unallocated | ExtentKind::Unreadable { .. } => {
                    done.zero_bytes += extent.len;
                }
                ExtentKind::Data { source, at }
                    if extent.len >= COPY_MIN && source.as_file().is_some() =>
                {
                    match self.copy(source, *at, extent.offset, extent.len, buf) {
                        Ok(()) => done.data_bytes += extent.len,
                        // A read error under the Zeros policy: salvage through the read
                        // path, which rewrites the whole extent.
                        Err(e) if policy == UnreadablePolicy::Zeros && is_read_error(&e) => {
                            self.read_and_write(disk, &extent, policy, buf, &mut done)?
                        }
                        Err(e) => return Err(e),
                    }
                }
                ExtentKind::Data { .. } | ExtentKind::Compressed { .. } => {
                    self.read_and_write(disk, &extent, policy, buf, &mut done)?
                }
            }
        }
        sort_unreadable(&mut done.unreadable);
        Ok(done)
    }

    /// Reads `extent` into `buf` and writes its non-zero blocks. A unit is at most
    /// [`UNIT_LEN`] bytes, so the extent fits in memory.
    fn read_and_write(
        &self,
        disk: &dyn VirtualDisk,
        extent: &Extent,
        policy: UnreadablePolicy,
        buf: &mut Vec<u8>,
        done: &mut UnitDone,
    ) -> Result<(), Error> {
        buf.resize(extent.len as usize, 0);
        read_extent_salvaging(disk, extent, buf, policy, &mut done.unreadable)?;
        let written = self.write_nonzero(buf, extent.offset)?;
        done.data_bytes += written;
        done.zero_bytes += extent.len - written;
        Ok(())
    }

    /// Writes the non-zero 4 KiB blocks of `bytes` (which belong at `out`), merging
    /// neighbours into one write; returns the bytes written.
    fn write_nonzero(&self, bytes: &[u8], out: u64) -> Result<u64, Error> {
        let mut written = 0;
        let mut run_start: Option<usize> = None;
        let mut block_start = 0;
        while block_start <= bytes.len() {
            let block_end = (block_start + ZERO_BLOCK).min(bytes.len());
            let zero = block_start == bytes.len() || is_zero(&bytes[block_start..block_end]);
            match (zero, run_start) {
                (false, None) => run_start = Some(block_start),
                (true, Some(start)) => {
                    self.file
                        .write_all_at(&bytes[start..block_start], out + start as u64)
                        .map_err(|e| write_error(self.path, e))?;
                    written += (block_start - start) as u64;
                    run_start = None;
                }
                _ => {}
            }
            if block_start == bytes.len() {
                break;
            }
            block_start = block_end;
        }
        Ok(written)
    }

    /// Copies `len` bytes at `at` of `source` (a file) to `out`, offloaded when the kernel
    /// can, else (or for the rest after a refusal or an error) by reading and writing.
    fn copy(
        &self,
        source: &SourceRef,
        at: u64,
        out: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut done = 0;
        if let (true, Some(src)) = (self.offload.load(Ordering::Relaxed), source.as_file()) {
            match copy_range(src, at, &self.file, out, len) {
                Ok(()) => return Ok(()),
                Err(CopyStop::Unsupported { done: d }) => {
                    self.offload.store(false, Ordering::Relaxed);
                    done = d;
                }
                // copy_file_range cannot say which side failed: the rest is retried the
                // slow way, whose error then names the input or the output.
                Err(CopyStop::Failed { done: d }) => done = d,
            }
        }
        const BOUNCE: u64 = 1 << 20;
        while done < len {
            let n = (len - done).min(BOUNCE) as usize;
            buf.resize(n, 0);
            source
                .read_exact_at(buf, at + done)
                .map_err(|e| Error::io(source.name(), at + done, "data", e))?;
            self.file
                .write_all_at(buf, out + done)
                .map_err(|e| write_error(self.path, e))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Consumer side: the report, added up in unit order.
pub(super) fn account(report: &mut ConvertReport, unit: UnitDone) {
    report.data_bytes += unit.data_bytes;
    report.zero_bytes += unit.zero_bytes;
    for range in unit.unreadable {
        push_unreadable(&mut report.unreadable, range);
    }
}

pub(super) fn write_error(path: &str, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::raw::RawDisk;
    use crate::source::SliceSource;

    #[test]
    fn zero_blocks_become_holes_and_the_rest_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.raw");
        let file = File::create(&path).unwrap();
        let mut bytes = vec![0u8; 5 * ZERO_BLOCK + 100];
        bytes[ZERO_BLOCK] = 1;
        bytes[2 * ZERO_BLOCK + 5] = 2;
        bytes[4 * ZERO_BLOCK + 1] = 3;
        bytes[5 * ZERO_BLOCK + 99] = 4;
        let disk = RawDisk::new(Arc::new(SliceSource::new(bytes.clone(), "m")));
        let target = RawTarget::new(file, "out.raw", bytes.len() as u64).unwrap();
        let mut buf = Vec::new();
        let done = target
            .write_unit(
                &disk,
                0,
                bytes.len() as u64,
                UnreadablePolicy::Fail,
                &mut buf,
            )
            .unwrap();
        assert_eq!(done.zero_bytes, 2 * ZERO_BLOCK as u64);
        assert_eq!(done.data_bytes, bytes.len() as u64 - 2 * ZERO_BLOCK as u64);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
