//! Reading one work unit of the input, shared by both writers: the unit's extent map
//! (checked to cover the unit without gaps), the unreadable policy, and the bytes of an
//! extent.
//!
//! `Data` extents are read straight from their source; `Compressed` ones go through
//! `disk.read_at`, which decompresses (and, for a chain, reads the right layer); `Zero` and
//! `Unallocated` read as zeros at the top of a chain, so they are never read at all.
//!
//! Under the `Zeros` policy a read that fails (a bad sector of the evidence, a data
//! cluster past the end of a truncated image, a compressed cluster that does not inflate)
//! is treated like an unreadable extent: the extent is read again in
//! [`SALVAGE_GRAIN`] pieces, and only the pieces that still fail become zeros and are
//! listed, with the first error as the reason. Under `Fail` the error stops the
//! conversion, as any unreadable range does.

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

/// Granularity of salvage reads: a file system block first, then, inside a block that
/// fails, 512-byte sectors (coarse then fine, as ddrescue does, so a large damaged area
/// costs few failing reads and a small one loses less than a sector of good bytes).
pub(super) const SALVAGE_GRAIN: u64 = 4096;
const SALVAGE_SECTOR: u64 = 512;

/// [`read_extent`], salvaging what can be read when it fails and the policy is `Zeros`.
pub(super) fn read_extent_salvaging(
    disk: &dyn VirtualDisk,
    extent: &Extent,
    buf: &mut [u8],
    policy: UnreadablePolicy,
    unreadable: &mut Vec<UnreadableRange>,
) -> Result<(), Error> {
    match read_extent(disk, extent, buf) {
        Err(e) if policy == UnreadablePolicy::Zeros && is_read_error(&e) => {
            let mut salvage = Salvage {
                disk,
                extent,
                failing: None,
                unreadable,
            };
            salvage.pieces(extent.offset, extent.end(), buf, SALVAGE_GRAIN)?;
            salvage.close();
            Ok(())
        }
        other => other,
    }
}

/// Errors of the input side; output errors (disk full) are never salvaged.
pub(super) fn is_read_error(e: &Error) -> bool {
    !matches!(e, Error::Write { .. } | Error::Output { .. })
}

/// Re-reads a failed extent piece by piece; neighbouring failures become one range that
/// carries the first error.
struct Salvage<'a> {
    disk: &'a dyn VirtualDisk,
    extent: &'a Extent,
    failing: Option<UnreadableRange>,
    unreadable: &'a mut Vec<UnreadableRange>,
}

impl Salvage<'_> {
    /// Reads `[start, end)` of the extent into `buf` (its bytes) in `grain` pieces
    /// aligned to the virtual disk.
    fn pieces(&mut self, start: u64, end: u64, buf: &mut [u8], grain: u64) -> Result<(), Error> {
        let mut pos = start;
        while pos < end {
            let piece_end = ((pos / grain + 1) * grain).min(end);
            let piece = &mut buf[(pos - start) as usize..(piece_end - start) as usize];
            let result = match self.extent.clip(pos, piece_end) {
                Some(part) => read_extent(self.disk, &part, piece),
                None => Ok(()),
            };
            match result {
                Ok(()) => self.close(),
                Err(e) if !is_read_error(&e) => return Err(e),
                Err(_) if grain > SALVAGE_SECTOR => {
                    self.pieces(pos, piece_end, piece, SALVAGE_SECTOR)?
                }
                Err(e) => {
                    piece.fill(0);
                    match &mut self.failing {
                        Some(range) => range.len += piece_end - pos,
                        None => {
                            self.failing = Some(UnreadableRange {
                                offset: pos,
                                len: piece_end - pos,
                                reason: format!("read error: {e}"),
                            })
                        }
                    }
                }
            }
            pos = piece_end;
        }
        Ok(())
    }

    /// Lists the failing range in progress, if any.
    fn close(&mut self) {
        if let Some(range) = self.failing.take() {
            push_unreadable(self.unreadable, range);
        }
    }
}

/// Puts a unit's unreadable ranges in offset order (salvaged pieces are found after the
/// map's unreadable extents) and merges neighbours.
pub(super) fn sort_unreadable(list: &mut Vec<UnreadableRange>) {
    if list.windows(2).all(|w| w[0].offset <= w[1].offset) {
        return;
    }
    list.sort_by_key(|r| r.offset);
    let mut merged = Vec::with_capacity(list.len());
    for range in list.drain(..) {
        push_unreadable(&mut merged, range);
    }
    *list = merged;
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
    fn unit_ranges_found_out_of_order_are_sorted_and_merged() {
        let range = |offset, reason: &str| UnreadableRange {
            offset,
            len: 10,
            reason: reason.into(),
        };
        let mut list = vec![range(30, "map"), range(0, "read"), range(10, "read")];
        sort_unreadable(&mut list);
        let got: Vec<_> = list.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(got, vec![(0, 20), (30, 10)]);
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
