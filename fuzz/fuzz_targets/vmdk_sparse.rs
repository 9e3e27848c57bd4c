//! Fuzz target for hosted sparse VMDK extents ("KDMV": monolithicSparse, a split extent,
//! streamOptimized in its three layouts): header, embedded descriptor, grain directory,
//! redundant directory, grain tables, markers and compressed grains.
//!
//! The first byte chooses the mode (even: salvage, odd: strict), so the fuzzer explores
//! both on the same image bytes; the rest is the file. The magic is forced to "KDMV" so
//! every input reaches the sparse parser. Then every read path runs: info, findings, the
//! whole map, check and bounded reads, as in the qcow2 target.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "vmdk_common.rs"]
mod vmdk_common;

fuzz_target!(|data: &[u8]| {
    vmdk_common::open_and_read(data, b"KDMV");
});
