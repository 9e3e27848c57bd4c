//! Fuzz target for the QCOW2 parser: opens the input as an image in strict or salvage
//! mode (the first byte chooses, so the fuzzer explores both on the same image bytes) and
//! drives every read path: info, findings, the whole map, check, and bounded reads.
//!
//! An input may claim an exabyte-sized disk: reads here are capped, and the parser itself
//! must keep map and check bounded by what the file holds.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdr_formats::qcow2::Qcow2Disk;
use vdr_formats::{OpenOptions, ParseMode, SliceSource, VirtualDisk};

/// Largest single read the target issues.
const MAX_READ: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, image)) = data.split_first() else {
        return;
    };
    let mode = if selector & 1 == 0 {
        ParseMode::Salvage
    } else {
        ParseMode::Strict
    };
    let options = OpenOptions {
        mode,
        ..OpenOptions::default()
    };
    let source = Arc::new(SliceSource::new(image.to_vec(), "fuzz"));
    let Ok(disk) = Qcow2Disk::open(source, &options) else {
        return;
    };
    let _ = disk.info();
    let _ = disk.findings();
    let size = disk.size();
    let _ = disk.map(0, size);
    let _ = disk.check();
    let mut buf = vec![0u8; MAX_READ as usize];
    for offset in [
        0,
        size / 2,
        size.saturating_sub(MAX_READ),
        size.saturating_sub(1),
    ] {
        let len = (size - offset.min(size)).min(MAX_READ) as usize;
        let _ = disk.read_at(&mut buf[..len], offset);
    }
    // A read crossing the end must fail, not panic.
    let _ = disk.read_at(&mut buf[..16], size.saturating_sub(8));
});
