//! Reading one work unit of the input, shared by both writers: the unit's extent map
//! (checked to cover the unit without gaps), the unreadable policy, and the bytes of an
//! extent.
//!
//! `Data` extents are read straight from their source; `Compressed` ones go through
//! `disk.read_at`, which decompresses (and, for a chain, reads the right layer); `Zero` and
//! `Unallocated` read as zeros at the top of a chain, so they are never read at all.

use crate::disk::{Extent, ExtentKind, VirtualDisk};
use crate::error::Error;

use super::{UnreadablePolicy, UnreadableRange};

/// The extents of `[offset, offset+len)`, clipped to it, after the unreadable policy:
/// with `Fail` an unreadable extent is an error naming the range; with `Zeros` it stays
/// in the map and is listed in `unreadable`.
pub(super) fn map_unit(
    disk: &dyn VirtualDisk,
    offset: u64,
    len: u64,
    policy: UnreadablePolicy,
    unreadable: &mut Vec<UnreadableRange>,
) -> Result<Vec<Extent>, Error> {
    let end = offset + len;
    let mut extents = Vec::new();
    let mut pos = offset;
    for extent in disk.map(offset, len)? {
        let Some(extent) = extent.clip(offset, end) else {
            continue;
        };
        if extent.offset != pos {
            return Err(bad_map(disk, pos, "leaves a gap or overlaps"));
        }
        pos = extent.end();
        if let ExtentKind::Unreadable { reason } = &extent.kind {
            match policy {
                UnreadablePolicy::Fail => {
                    return Err(Error::Unreadable {
                        file: disk.info().file,
                        offset: extent.offset,
                        len: extent.len,
                        reason: reason.clone(),
                    })
                }
                UnreadablePolicy::Zeros => push_unreadable(
                    unreadable,
                    UnreadableRange {
                        offset: extent.offset,
                        len: extent.len,
                        reason: reason.clone(),
                    },
                ),
            }
        }
        extents.push(extent);
    }
    if pos != end {
        return Err(bad_map(disk, pos, "ends early"));
    }
    Ok(extents)
}

fn bad_map(disk: &dyn VirtualDisk, at: u64, what: &str) -> Error {
    Error::Unreadable {
        file: disk.info().file,
        offset: at,
        len: 0,
        reason: format!("the extent map {what} at this offset"),
    }
}

/// Fills `buf` (the extent's length) with the extent's content. `Zero`, `Unallocated` and
/// (under the `Zeros` policy, the only way one gets here) `Unreadable` become zeros.
pub(super) fn read_extent(
    disk: &dyn VirtualDisk,
    extent: &Extent,
    buf: &mut [u8],
) -> Result<(), Error> {
    match &extent.kind {
        ExtentKind::Data { source, at } => source
            .read_exact_at(buf, *at)
            .map_err(|e| Error::io(source.name(), *at, "data", e)),
        ExtentKind::Compressed { .. } => disk.read_at(buf, extent.offset),
        ExtentKind::Zero | ExtentKind::Unallocated | ExtentKind::Unreadable { .. } => {
            buf.fill(0);
            Ok(())
        }
    }
}

/// Appends `range` to `list`, extending the last entry when the two touch and share the
/// reason (units cut one unreadable extent into several pieces).
pub(super) fn push_unreadable(list: &mut Vec<UnreadableRange>, range: UnreadableRange) {
    if let Some(last) = list.last_mut() {
        if last.offset + last.len == range.offset && last.reason == range.reason {
            last.len += range.len;
            return;
        }
    }
    list.push(range);
}

/// True when every byte of `buf` is zero. Works on 256-byte blocks so the inner loop has
/// no early exit and vectorizes.
pub(super) fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(256);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_a_single_late_byte() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf));
        buf[4098] = 1;
        assert!(!is_zero(&buf));
        buf[4098] = 0;
        buf[300] = 0x80;
        assert!(!is_zero(&buf));
    }

    #[test]
    fn touching_unreadable_pieces_with_one_reason_merge() {
        let mut list = Vec::new();
        let piece = |offset, reason: &str| UnreadableRange {
            offset,
            len: 10,
            reason: reason.into(),
        };
        push_unreadable(&mut list, piece(0, "a"));
        push_unreadable(&mut list, piece(10, "a"));
        push_unreadable(&mut list, piece(20, "b"));
        push_unreadable(&mut list, piece(40, "b"));
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].len, 20);
    }
}
