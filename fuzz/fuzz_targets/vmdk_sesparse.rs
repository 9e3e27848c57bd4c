//! Fuzz target for ESXi seSparse extents opened without a descriptor: the constant and
//! volatile headers, the region offsets and sizes, the grain directory and the typed grain
//! table entries.
//!
//! The first byte chooses the mode (even: salvage, odd: strict); the rest is the file,
//! its magic forced to 0xcafebabe (little-endian u64) so every input reaches the seSparse
//! parser. Then info, findings, the whole map, check and bounded reads.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "vmdk_common.rs"]
mod vmdk_common;

fuzz_target!(|data: &[u8]| {
    vmdk_common::open_and_read(data, &0xcafe_babe_u64.to_le_bytes());
});
