//! Fuzz target for the MBR/GPT parser: reads the input as a raw disk's partition table.
//! Every count, size and LBA comes from the input: the parser must stay bounded (entry
//! count and size limits, EBR loop limit) and never read or index out of range.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdr_formats::partition::read_partitions;
use vdr_formats::raw::RawDisk;
use vdr_formats::SliceSource;

fuzz_target!(|data: &[u8]| {
    let disk = RawDisk::new(Arc::new(SliceSource::new(data.to_vec(), "fuzz")));
    if let Ok(Some(table)) = read_partitions(&disk) {
        for p in &table.partitions {
            assert!(p.start < data.len() as u64 && p.start + p.len <= data.len() as u64);
        }
    }
});
