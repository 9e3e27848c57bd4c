//! Walking a whole disk's extent map in bounded windows, so mapping a multi-terabyte
//! sparse image never asks a format for one huge list at once.

use anyhow::Result;
use vdr_formats::{Extent, VirtualDisk};

/// How much of the disk one `map` call covers.
pub const WINDOW: u64 = 1 << 30;

/// Calls `visit` with every extent of `disk` in `[start, end)`, in order, clipped to that
/// range. Extents are not merged across windows; callers that print merge themselves.
pub fn for_each_extent(
    disk: &dyn VirtualDisk,
    start: u64,
    end: u64,
    mut visit: impl FnMut(Extent) -> Result<()>,
) -> Result<()> {
    let end = end.min(disk.size());
    let mut window = start;
    while window < end {
        let window_end = window.saturating_add(WINDOW).min(end);
        for extent in disk.map(window, window_end - window)? {
            if let Some(piece) = extent.clip(window, window_end) {
                visit(piece)?;
            }
        }
        window = window_end;
    }
    Ok(())
}
