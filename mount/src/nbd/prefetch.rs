//! Read-ahead for a client that copies the disk: after each read, the kernel is asked
//! (`posix_fadvise(WILLNEED)`) to start loading the host ranges behind the next few MiB
//! of data, so the disk works while the request round trips go on.
//!
//! Why: a copying NBD client reads one data run per round trip, and the kernel's own
//! read-ahead (128 KiB by default) keeps one small request in flight; qemu-img reading
//! the file itself keeps several requests of up to 2 MiB in flight. Without this, a cold
//! cache copy through `vdr serve` was bound by disk latency (bench/serve.sh).

use vdr_formats::{ExtentKind, VirtualDisk};

/// How far past the last read the data is requested.
const AHEAD: u64 = 32 << 20;
/// Hints are given when the window has moved this far, not on every small read.
const STEP: u64 = 4 << 20;

/// Where the read-ahead of one connection stands.
#[derive(Debug, Default)]
pub(crate) struct Prefetch {
    /// The virtual offset up to which hints were given.
    hinted_until: u64,
}

impl Prefetch {
    /// Called after a read that ended at `end`: hints the data of the next [`AHEAD`]
    /// bytes not hinted yet. Hints are advice: every failure is ignored.
    pub(crate) fn after_read(&mut self, disk: &dyn VirtualDisk, end: u64) {
        if end + STEP <= self.hinted_until {
            return;
        }
        let start = end.max(self.hinted_until);
        let stop = end.saturating_add(AHEAD).min(disk.size());
        if start >= stop {
            return;
        }
        self.hinted_until = stop;
        let Ok(extents) = disk.map(start, stop - start) else {
            return;
        };
        for extent in extents {
            if let ExtentKind::Data { source, at } = &extent.kind {
                source.will_need(*at, extent.len);
            }
        }
    }
}
