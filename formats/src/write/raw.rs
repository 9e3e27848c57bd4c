//! The sparse raw writer. The output is `set_len` to the virtual size first, so every range
//! never written stays a hole that reads as zeros: `Zero`, `Unallocated` and (under the
//! `Zeros` policy) `Unreadable` extents cost nothing.
//!
//! Long `Data` runs whose source is a plain file are handed to `copy_file_range` (see
//! `copy.rs`); everything else (compressed input, in-memory sources, short runs) is read by
//! the workers, which also drop all-zero 4 KiB blocks so they stay holes, as qemu-img
//! convert does. The writer only issues the copies and `pwrite`s, in unit order.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::Error;
use crate::source::SourceRef;

use super::copy::{copy_range, CopyStop};
use super::gather::{is_zero, map_unit, push_unreadable, read_extent};
use super::{ConvertReport, UnreadablePolicy, UnreadableRange};

/// Data runs at least this long go through copy_file_range when the source is a file;
/// shorter ones cost less as a read the worker does anyway.
const COPY_MIN: u64 = 64 * 1024;

/// Zero detection granularity of read data: the file system block size on ext4/xfs.
const ZERO_BLOCK: usize = 4096;

/// Work unit of the raw writer: large, since copies carry no buffer.
pub(super) const UNIT_LEN: u64 = 4 << 20;

/// A data run to copy from a file source into the output.
pub(super) struct CopyRun {
    source: SourceRef,
    at: u64,
    out: u64,
    len: u64,
}

/// What a worker prepared for one unit.
#[derive(Default)]
pub(super) struct RawUnit {
    copies: Vec<CopyRun>,
    /// Bytes read by the worker; `writes` says where each piece goes.
    bytes: Vec<u8>,
    writes: Vec<(u64, Range<usize>)>,
    zero_bytes: u64,
    unreadable: Vec<UnreadableRange>,
}

/// Worker side: maps the unit and reads what cannot be copied.
pub(super) fn prepare(
    disk: &dyn VirtualDisk,
    offset: u64,
    len: u64,
    policy: UnreadablePolicy,
) -> Result<RawUnit, Error> {
    let mut unit = RawUnit::default();
    let extents = map_unit(disk, offset, len, policy, &mut unit.unreadable)?;
    for extent in &extents {
        match &extent.kind {
            ExtentKind::Zero | ExtentKind::Unallocated | ExtentKind::Unreadable { .. } => {
                unit.zero_bytes += extent.len;
            }
            ExtentKind::Data { source, at }
                if extent.len >= COPY_MIN && source.as_file().is_some() =>
            {
                unit.copies.push(CopyRun {
                    source: source.clone(),
                    at: *at,
                    out: extent.offset,
                    len: extent.len,
                });
            }
            ExtentKind::Data { .. } | ExtentKind::Compressed { .. } => {
                let start = unit.bytes.len();
                let piece_len = usize::try_from(extent.len).map_err(|_| Error::OutOfRange {
                    file: disk.info().file,
                    offset: extent.offset,
                    len: extent.len,
                    size: disk.size(),
                })?;
                unit.bytes.resize(start + piece_len, 0);
                read_extent(disk, extent, &mut unit.bytes[start..])?;
                unit.zero_bytes +=
                    keep_nonzero(&unit.bytes, start, extent.offset, &mut unit.writes);
            }
        }
    }
    Ok(unit)
}

/// Records the non-zero 4 KiB blocks of `bytes[start..]` (which belongs at `out` in the
/// output) as writes, merging neighbours; returns how many bytes were left as holes.
fn keep_nonzero(
    bytes: &[u8],
    start: usize,
    out: u64,
    writes: &mut Vec<(u64, Range<usize>)>,
) -> u64 {
    let mut skipped = 0;
    let mut block_start = start;
    while block_start < bytes.len() {
        let block_end = (block_start + ZERO_BLOCK).min(bytes.len());
        let block = block_start..block_end;
        if is_zero(&bytes[block.clone()]) {
            skipped += block.len() as u64;
        } else {
            let at = out + (block.start - start) as u64;
            match writes.last_mut() {
                Some((last_at, last))
                    if last.end == block.start && *last_at + last.len() as u64 == at =>
                {
                    last.end = block.end
                }
                _ => writes.push((at, block)),
            }
        }
        block_start = block_end;
    }
    skipped
}

/// Writer side: owns the output file.
pub(super) struct RawWriter<'a> {
    file: File,
    path: &'a str,
    offload: bool,
    bounce: Vec<u8>,
    report: ConvertReport,
}

impl<'a> RawWriter<'a> {
    /// Sizes the new, empty output to the virtual size (all holes).
    pub fn new(file: File, path: &'a str, virtual_size: u64) -> Result<RawWriter<'a>, Error> {
        file.set_len(virtual_size)
            .map_err(|e| write_error(path, e))?;
        Ok(RawWriter {
            file,
            path,
            offload: true,
            bounce: Vec::new(),
            report: ConvertReport {
                virtual_size,
                ..ConvertReport::default()
            },
        })
    }

    /// Writes one unit.
    pub fn write_unit(&mut self, unit: RawUnit) -> Result<(), Error> {
        for run in &unit.copies {
            self.copy(run)?;
            self.report.data_bytes += run.len;
        }
        for (at, range) in &unit.writes {
            self.file
                .write_all_at(&unit.bytes[range.clone()], *at)
                .map_err(|e| write_error(self.path, e))?;
            self.report.data_bytes += range.len() as u64;
        }
        self.report.zero_bytes += unit.zero_bytes;
        for range in unit.unreadable {
            push_unreadable(&mut self.report.unreadable, range);
        }
        Ok(())
    }

    fn copy(&mut self, run: &CopyRun) -> Result<(), Error> {
        let mut done = 0;
        if self.offload {
            if let Some(src) = run.source.as_file() {
                match copy_range(src, run.at, &self.file, run.out, run.len) {
                    Ok(()) => return Ok(()),
                    Err(CopyStop::Unsupported { done: d }) => {
                        self.offload = false;
                        done = d;
                    }
                    // copy_file_range cannot say which side failed: the rest is retried
                    // the slow way, whose error then names the input or the output.
                    Err(CopyStop::Failed { done: d, .. }) => done = d,
                }
            }
        }
        self.copy_by_reading(run, done)
    }

    /// pread + pwrite through a bounce buffer, from `done` bytes into the run.
    fn copy_by_reading(&mut self, run: &CopyRun, mut done: u64) -> Result<(), Error> {
        const BOUNCE: u64 = 1 << 20;
        while done < run.len {
            let n = (run.len - done).min(BOUNCE) as usize;
            self.bounce.resize(n, 0);
            let at = run.at + done;
            run.source
                .read_exact_at(&mut self.bounce, at)
                .map_err(|e| Error::io(run.source.name(), at, "data", e))?;
            self.file
                .write_all_at(&self.bounce, run.out + done)
                .map_err(|e| write_error(self.path, e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// The report so far (all of it once every unit is written).
    pub fn finish(self) -> ConvertReport {
        let mut report = self.report;
        report.output_size = report.virtual_size;
        report
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

    #[test]
    fn zero_blocks_become_holes_and_neighbours_merge() {
        let mut bytes = vec![0u8; 5 * ZERO_BLOCK];
        bytes[ZERO_BLOCK] = 1;
        bytes[2 * ZERO_BLOCK + 5] = 1;
        bytes[4 * ZERO_BLOCK + 1] = 1;
        let mut writes = Vec::new();
        let skipped = keep_nonzero(&bytes, 0, 1 << 20, &mut writes);
        assert_eq!(skipped, 2 * ZERO_BLOCK as u64);
        assert_eq!(
            writes,
            vec![
                ((1 << 20) + ZERO_BLOCK as u64, ZERO_BLOCK..3 * ZERO_BLOCK),
                (
                    (1 << 20) + 4 * ZERO_BLOCK as u64,
                    4 * ZERO_BLOCK..5 * ZERO_BLOCK
                ),
            ]
        );
    }
}
