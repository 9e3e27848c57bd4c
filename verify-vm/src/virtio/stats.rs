//! What the virtio-blk device did during a run, readable by the host while and after the
//! guest runs: request counts, bytes, refused writes, and the disk ranges that failed (so a
//! report can say "the guest hit the damaged cluster at 0x...").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// At most this many distinct failed ranges are kept; later ones are only counted.
pub const MAX_FAILED_RANGES: usize = 64;

/// One request range the device could not serve from the disk or the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedRange {
    /// Byte offset in the virtual disk.
    pub offset: u64,
    pub len: u64,
    /// "read" or "write".
    pub op: &'static str,
    pub reason: String,
}

/// Live counters shared between the device and the host (`Arc<BlkStats>`).
#[derive(Debug, Default)]
pub struct BlkStats {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    writes_refused: AtomicU64,
    flushes: AtomicU64,
    io_errors: AtomicU64,
    unsupported: AtomicU64,
    malformed: AtomicU64,
    failed: Mutex<Vec<FailedRange>>,
    failed_not_kept: AtomicU64,
}

/// A copy of [`BlkStats`] at one moment, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlkStatsSnapshot {
    /// Read requests served successfully, and their bytes.
    pub reads: u64,
    pub bytes_read: u64,
    /// Write requests that landed in the overlay, and their bytes.
    pub writes: u64,
    pub bytes_written: u64,
    /// Write requests refused because the device is read-only.
    pub writes_refused: u64,
    pub flushes: u64,
    /// Requests answered VIRTIO_BLK_S_IOERR (disk unreadable, out of range, overlay full,
    /// malformed, refused writes).
    pub io_errors: u64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported: u64,
    /// Descriptor chains that broke the virtio rules (bad layout, memory outside the guest).
    pub malformed: u64,
    /// Distinct failed ranges, first [`MAX_FAILED_RANGES`].
    pub failed_ranges: Vec<FailedRange>,
    /// Failed ranges beyond the kept ones.
    pub failed_ranges_not_kept: u64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl BlkStats {
    pub(crate) fn read_ok(&self, bytes: u64) {
        bump(&self.reads, 1);
        bump(&self.bytes_read, bytes);
    }

    pub(crate) fn write_ok(&self, bytes: u64) {
        bump(&self.writes, 1);
        bump(&self.bytes_written, bytes);
    }

    pub(crate) fn write_refused(&self) {
        bump(&self.writes_refused, 1);
    }

    pub(crate) fn flush(&self) {
        bump(&self.flushes, 1);
    }

    pub(crate) fn io_error(&self) {
        bump(&self.io_errors, 1);
    }

    pub(crate) fn unsupported(&self) {
        bump(&self.unsupported, 1);
    }

    pub(crate) fn malformed(&self) {
        bump(&self.malformed, 1);
    }

    /// Records a failed range; a guest retrying the same read does not fill the list.
    pub(crate) fn failed_range(&self, range: FailedRange) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.contains(&range) {
            return;
        }
        if failed.len() < MAX_FAILED_RANGES {
            failed.push(range);
        } else {
            bump(&self.failed_not_kept, 1);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> BlkStatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlkStatsSnapshot {
            reads: load(&self.reads),
            bytes_read: load(&self.bytes_read),
            writes: load(&self.writes),
            bytes_written: load(&self.bytes_written),
            writes_refused: load(&self.writes_refused),
            flushes: load(&self.flushes),
            io_errors: load(&self.io_errors),
            unsupported: load(&self.unsupported),
            malformed: load(&self.malformed),
            failed_ranges: self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            failed_ranges_not_kept: load(&self.failed_not_kept),
        }
    }
}
