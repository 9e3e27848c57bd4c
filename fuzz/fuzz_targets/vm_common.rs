//! What the verify-vm fuzz targets share: a heap meter (a counting global allocator, so a
//! run can assert that hostile input kept memory bounded), an in-memory disk with a damaged
//! range, and an interrupt line. Not a target itself (no `[[bin]]` entry).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vdr_formats::disk::{DiskInfo, Extent, ExtentKind};
use vdr_formats::{Error, VirtualDisk};
use vdr_verify_vm::devices::IrqLine;

/// Counts live heap bytes and their peak, so a run can assert bounded memory.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed).saturating_add(n);
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the
// counters are only bookkeeping and never change what is returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// An in-memory disk whose read_at fails on one range, as a damaged qcow2 cluster does in
/// salvage mode. Reads outside the disk are recorded: the device must never issue one.
pub struct FuzzDisk {
    pub bytes: Vec<u8>,
    pub unreadable: Option<(u64, u64)>,
    pub out_of_range: AtomicBool,
}

impl VirtualDisk for FuzzDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        Ok(vec![Extent {
            offset,
            len,
            kind: ExtentKind::Zero,
            depth: 0,
        }])
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let len = buf.len() as u64;
        let range = offset
            .checked_add(len)
            .filter(|&end| end <= self.size())
            .and_then(|end| self.bytes.get(offset as usize..end as usize));
        let Some(src) = range else {
            self.out_of_range.store(true, Ordering::Relaxed);
            return Err(Error::OutOfRange {
                file: "fuzzdisk".into(),
                offset,
                len,
                size: self.size(),
            });
        };
        if let Some((bad, bad_len)) = self.unreadable {
            if offset < bad + bad_len && bad < offset + len {
                return Err(Error::Unreadable {
                    file: "fuzzdisk".into(),
                    offset: bad,
                    len: bad_len,
                    reason: "fuzz damage".into(),
                });
            }
        }
        buf.copy_from_slice(src);
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            format: "raw".into(),
            file: "fuzzdisk".into(),
            virtual_size: self.size(),
            ..DiskInfo::default()
        }
    }
}

/// An interrupt line that always delivers (the KVM backend's irqfd in a healthy VM).
pub struct Line;

impl IrqLine for Line {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` and panics when the heap's peak during the run exceeds its size at the start
/// by more than `limit` bytes. libFuzzer runs one input at a time on one thread, so the
/// counters only see this run.
pub fn bounded_heap(limit: usize, f: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(grown <= limit, "one run grew the heap by {grown} bytes");
}
