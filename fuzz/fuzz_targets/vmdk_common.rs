//! What the VMDK extent fuzz targets share: open the input as one VMDK layer from a
//! `SliceSource` (no file system: extents a descriptor names cannot be opened) and drive
//! every read path. Not a target itself (no `[[bin]]` entry).
//!
//! An input may claim an exabyte-sized disk: reads here are capped, and the parser itself
//! must keep map and check bounded by what the file holds.

use std::sync::Arc;

use vdr_formats::{vmdk, OpenOptions, ParseMode, SliceSource, VirtualDisk};

/// Largest single read the target issues.
const MAX_READ: u64 = 64 * 1024;

/// `data[0]` chooses the mode, `data[1..]` is the file with `magic` written over its
/// first bytes.
pub fn open_and_read(data: &[u8], magic: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
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
    let mut image = rest.to_vec();
    let n = magic.len().min(image.len());
    image[..n].copy_from_slice(&magic[..n]);
    let source = Arc::new(SliceSource::new(image, "fuzz"));
    let Ok(disk) = vmdk::open(source, &options) else {
        return;
    };
    let _ = disk.info();
    let _ = disk.findings();
    let _ = disk.descriptor();
    let size = disk.size();
    let _ = disk.map(0, size);
    let _ = disk.check();
    let mut buf = vec![0u8; MAX_READ as usize];
    for offset in [
        0,
        size / 3,
        size / 2,
        size.saturating_sub(MAX_READ),
        size.saturating_sub(1),
    ] {
        let len = (size - offset.min(size)).min(MAX_READ) as usize;
        let _ = disk.read_at(&mut buf[..len], offset);
    }
    // A read crossing the end must fail, not panic.
    let _ = disk.read_at(&mut buf[..16], size.saturating_sub(8));
}
