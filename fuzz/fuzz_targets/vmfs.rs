//! Fuzz target for the VMFS reader: partition discovery, the LVM header and PE table,
//! the FS descriptor, resource files, FDs, directories (VMFS5 arrays, VMFS6 hashed
//! blocks) and file data through every address type; with bit 1 of the selector set,
//! recovery's search for deleted and orphaned files (every FD slot, directory remnants,
//! the live tree's block claims) and reads of what it finds.
//!
//! A VMFS volume is tens of MiB with its metadata scattered over it, so the input is a
//! sparse image: byte 0 chooses the mode (even: salvage, odd: strict), then records of
//! `u32 offset, u16 length, bytes` (little-endian) are laid onto 256 MiB of zeros (small
//! enough that the signature scan of an input without an LVM header stays fast).
//! Seeds are the non-zero runs of real and synthetic volumes (fuzz/make-seeds.sh vmfs).

#![no_main]

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdr_formats::source::{Source, SourceRef};
use vdr_formats::{vmfs, ParseMode};

const IMAGE_SIZE: u64 = 256 << 20;
/// Most bytes of any one file the target reads.
const MAX_FILE_READ: u64 = 256 << 10;

/// Zeros with the input's records laid over them.
struct SparseImage {
    runs: BTreeMap<u64, Vec<u8>>,
}

impl Source for SparseImage {
    fn len(&self) -> u64 {
        IMAGE_SIZE
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= IMAGE_SIZE {
            return Ok(0);
        }
        let n = buf.len().min((IMAGE_SIZE - offset) as usize);
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = offset + n as u64;
        for (&at, bytes) in self.runs.range(..end) {
            let run_end = at + bytes.len() as u64;
            if run_end <= offset {
                continue;
            }
            let from = offset.max(at);
            let to = end.min(run_end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
        }
        Ok(n)
    }

    fn name(&self) -> &str {
        "fuzz"
    }
}

fn parse(mut data: &[u8]) -> SparseImage {
    let mut runs = BTreeMap::new();
    while data.len() >= 6 {
        let at = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        let len = usize::from(u16::from_le_bytes([data[4], data[5]])).min(data.len() - 6);
        runs.insert(at, data[6..6 + len].to_vec());
        data = &data[6 + len..];
    }
    SparseImage { runs }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mode = if selector & 1 == 0 {
        ParseMode::Salvage
    } else {
        ParseMode::Strict
    };
    let image: SourceRef = Arc::new(parse(rest));
    let Ok(volume) = vmfs::open(&[image], mode) else {
        return;
    };
    let _ = volume.block_counts();
    let _ = volume.heartbeats();
    let Ok(entries) = volume.walk("/") else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    for e in entries.iter().take(200) {
        if e.fd.is_dir() {
            continue;
        }
        let Ok(file) = volume.open_file(&e.path) else {
            continue;
        };
        let _ = file.map(0, file.len());
        let mut at = 0;
        while at < file.len().min(MAX_FILE_READ) {
            match file.read_at(&mut buf, at) {
                Ok(0) | Err(_) => at += buf.len() as u64,
                Ok(n) => at += n as u64,
            }
        }
    }
    if selector & 2 != 0 {
        if let Ok(report) = vdr_recover::find_lost(&volume, &mut |_, _| {}) {
            for f in report.files.iter().take(50) {
                let file = f.open(&volume);
                let _ = file.layout(0, file.len());
                let _ = file.read_at(&mut buf, 0);
                let _ = file.read_at(&mut buf, file.len().saturating_sub(4096));
            }
        }
    }
    let _ = volume.findings();
});
