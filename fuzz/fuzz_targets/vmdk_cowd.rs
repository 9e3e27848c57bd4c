//! Fuzz target for ESXi vmfsSparse ("COWD") extents opened without a descriptor: the
//! header, the grain directory and the 4096-entry grain tables.
//!
//! The first byte chooses the mode (even: salvage, odd: strict); the rest is the file,
//! its magic forced to "COWD" so every input reaches the COWD parser. Then info,
//! findings, the whole map, check and bounded reads.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "vmdk_common.rs"]
mod vmdk_common;

fuzz_target!(|data: &[u8]| {
    vmdk_common::open_and_read(data, b"COWD");
});
