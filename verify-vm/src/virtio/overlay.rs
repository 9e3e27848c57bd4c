//! A copy-on-write overlay over a [`VirtualDisk`]: guest writes land in memory, 4 KiB
//! block by block, and reads merge those blocks with the disk underneath. The disk is never
//! written (a `VirtualDisk` cannot be), and the overlay's memory is capped so a guest that
//! writes without end gets write errors instead of exhausting the host.

use std::collections::BTreeMap;
use std::sync::Arc;

use vdr_formats::VirtualDisk;

/// The overlay's granularity: a write to part of a block copies the block from the disk
/// first (read-modify-write).
pub const OVERLAY_BLOCK_SIZE: u64 = 4096;

/// Why an overlay read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: request {offset:#x}+{len:#x} lies outside the disk of {size:#x} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    #[error(
        "overlay: writing {offset:#x}+{len:#x} needs {needed:#x} more bytes of overlay memory; \
         {used:#x} of the {cap:#x} allowed are in use"
    )]
    CapExceeded {
        offset: u64,
        len: u64,
        needed: u64,
        used: u64,
        cap: u64,
    },

    #[error("overlay: reading the disk at {offset:#x}+{len:#x}: {source}")]
    Disk {
        offset: u64,
        len: u64,
        source: vdr_formats::Error,
    },
}

/// Copy-on-write blocks over a read-only disk.
pub struct Overlay {
    disk: Arc<dyn VirtualDisk>,
    /// Written blocks by block index (`offset / OVERLAY_BLOCK_SIZE`); each holds
    /// `OVERLAY_BLOCK_SIZE` bytes, of which a last partial block uses only the part inside
    /// the disk.
    blocks: BTreeMap<u64, Box<[u8]>>,
    cap_bytes: u64,
}

impl Overlay {
    /// An empty overlay over `disk` that holds at most `cap_bytes` of written blocks.
    pub fn new(disk: Arc<dyn VirtualDisk>, cap_bytes: u64) -> Overlay {
        Overlay {
            disk,
            blocks: BTreeMap::new(),
            cap_bytes,
        }
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.disk.size()
    }

    /// Memory held by written blocks.
    pub fn used_bytes(&self) -> u64 {
        (self.blocks.len() as u64).saturating_mul(OVERLAY_BLOCK_SIZE)
    }

    /// The disk underneath.
    pub fn disk(&self) -> &Arc<dyn VirtualDisk> {
        &self.disk
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64, OverlayError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(end),
            _ => Err(OverlayError::OutOfRange { offset, len, size }),
        }
    }

    /// Fills `buf` from `offset`: written blocks from the overlay, the rest from the disk in
    /// as few disk reads as the written blocks allow.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), OverlayError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut rest = buf;
        let mut pos = offset;
        while !rest.is_empty() {
            let index = pos / OVERLAY_BLOCK_SIZE;
            let in_block = (pos % OVERLAY_BLOCK_SIZE) as usize;
            let n = match self.blocks.get(&index) {
                Some(block) => {
                    let src = block.get(in_block..).unwrap_or_default();
                    let n = src.len().min(rest.len());
                    copy_prefix(rest, src, n);
                    n
                }
                None => {
                    // Unwritten run: up to the next written block or the end of `buf`.
                    let run = self
                        .blocks
                        .range(index..)
                        .next()
                        .map_or(u64::MAX, |(&next, _)| {
                            next.saturating_mul(OVERLAY_BLOCK_SIZE) - pos
                        });
                    let n = usize::try_from(run).map_or(rest.len(), |run| run.min(rest.len()));
                    let dst = rest.get_mut(..n).unwrap_or_default();
                    self.disk
                        .read_at(dst, pos)
                        .map_err(|source| OverlayError::Disk {
                            offset: pos,
                            len: n as u64,
                            source,
                        })?;
                    n
                }
            };
            rest = rest.get_mut(n..).unwrap_or_default();
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes `data` at `offset` into the overlay. Either the whole write lands or none of
    /// it: new blocks are prepared (and their memory checked against the cap) first.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), OverlayError> {
        let len = data.len() as u64;
        let end = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / OVERLAY_BLOCK_SIZE;
        let last = (end - 1) / OVERLAY_BLOCK_SIZE;
        let missing = (first..=last)
            .filter(|i| !self.blocks.contains_key(i))
            .count() as u64;
        let needed = missing.saturating_mul(OVERLAY_BLOCK_SIZE);
        let used = self.used_bytes();
        if used.saturating_add(needed) > self.cap_bytes {
            return Err(OverlayError::CapExceeded {
                offset,
                len,
                needed,
                used,
                cap: self.cap_bytes,
            });
        }
        let mut fresh = Vec::new();
        for index in (first..=last).filter(|i| !self.blocks.contains_key(i)) {
            fresh.push((index, self.initial_block(index, offset, end)?));
        }
        self.blocks.extend(fresh);
        for index in first..=last {
            let block_start = index * OVERLAY_BLOCK_SIZE;
            let from = offset.max(block_start);
            let to = end.min(block_start.saturating_add(OVERLAY_BLOCK_SIZE));
            let src = data.get((from - offset) as usize..(to - offset) as usize);
            let dst = self.blocks.get_mut(&index).and_then(|b| {
                b.get_mut((from - block_start) as usize..(to - block_start) as usize)
            });
            if let (Some(src), Some(dst)) = (src, dst) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// The content block `index` starts from before a write of `[offset, end)`: zeros when
    /// the write covers every disk byte of the block, else the disk's bytes.
    fn initial_block(&self, index: u64, offset: u64, end: u64) -> Result<Box<[u8]>, OverlayError> {
        let mut block = vec![0u8; OVERLAY_BLOCK_SIZE as usize].into_boxed_slice();
        let block_start = index * OVERLAY_BLOCK_SIZE;
        let disk_end = self
            .size()
            .min(block_start.saturating_add(OVERLAY_BLOCK_SIZE));
        let covered = offset <= block_start && end >= disk_end;
        if !covered {
            let n = disk_end - block_start;
            if let Some(dst) = block.get_mut(..n as usize) {
                self.disk
                    .read_at(dst, block_start)
                    .map_err(|source| OverlayError::Disk {
                        offset: block_start,
                        len: n,
                        source,
                    })?;
            }
        }
        Ok(block)
    }
}

/// Copies the first `n` bytes of `src` to `dst` (both hold at least `n`).
fn copy_prefix(dst: &mut [u8], src: &[u8], n: usize) {
    if let (Some(dst), Some(src)) = (dst.get_mut(..n), src.get(..n)) {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::MemDisk;

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn unwritten_overlay_reads_the_disk() {
        let bytes = patterned(3 * 4096 + 512);
        let overlay = Overlay::new(Arc::new(MemDisk::new(bytes.clone())), 1 << 20);
        let mut buf = vec![0u8; bytes.len()];
        overlay.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, bytes);
    }

    #[test]
    fn partial_write_merges_with_disk_bytes_and_leaves_the_disk_alone() {
        let bytes = patterned(3 * 4096);
        let disk = Arc::new(MemDisk::new(bytes.clone()));
        let mut overlay = Overlay::new(disk.clone(), 1 << 20);
        overlay.write_at(&[0xaa; 100], 4000).unwrap();
        let mut buf = vec![0u8; bytes.len()];
        overlay.read_at(&mut buf, 0).unwrap();
        let mut expected = bytes.clone();
        expected[4000..4100].fill(0xaa);
        assert_eq!(buf, expected);
        assert_eq!(overlay.used_bytes(), 2 * 4096);
        assert_eq!(disk.bytes(), &bytes[..]);
    }

    #[test]
    fn write_in_the_last_partial_block_keeps_the_disk_tail() {
        let bytes = patterned(4096 + 1024);
        let mut overlay = Overlay::new(Arc::new(MemDisk::new(bytes.clone())), 1 << 20);
        overlay.write_at(&[1; 512], 4096).unwrap();
        let mut buf = vec![0u8; 1024];
        overlay.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf[..512], &[1; 512]);
        assert_eq!(&buf[512..], &bytes[4096 + 512..]);
    }

    #[test]
    fn write_past_the_end_is_out_of_range() {
        let mut overlay = Overlay::new(Arc::new(MemDisk::new(vec![0; 4096])), 1 << 20);
        let err = overlay.write_at(&[0; 512], 4096 - 256).unwrap_err();
        assert!(matches!(err, OverlayError::OutOfRange { .. }));
        let err = overlay.write_at(&[0; 1], u64::MAX).unwrap_err();
        assert!(matches!(err, OverlayError::OutOfRange { .. }));
    }

    #[test]
    fn write_beyond_the_cap_fails_and_changes_nothing() {
        let bytes = patterned(4 * 4096);
        let mut overlay = Overlay::new(Arc::new(MemDisk::new(bytes.clone())), 2 * 4096);
        overlay.write_at(&[9; 4096], 0).unwrap();
        let err = overlay.write_at(&[8; 8192], 4096).unwrap_err();
        assert!(matches!(err, OverlayError::CapExceeded { .. }), "{err}");
        let mut buf = vec![0u8; 8192];
        overlay.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, &bytes[4096..3 * 4096]);
        // Rewriting a block already held needs no new memory.
        overlay.write_at(&[7; 10], 5).unwrap();
    }

    #[test]
    fn partial_write_over_an_unreadable_block_fails() {
        let disk = MemDisk::new(vec![0; 4 * 4096]).with_unreadable(4096, 4096);
        let mut overlay = Overlay::new(Arc::new(disk), 1 << 20);
        let err = overlay.write_at(&[1; 512], 4096 + 512).unwrap_err();
        assert!(matches!(err, OverlayError::Disk { .. }), "{err}");
        // A write covering the whole block does not need the disk's bytes.
        overlay.write_at(&[2; 4096], 4096).unwrap();
        let mut buf = vec![0u8; 4096];
        overlay.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, vec![2; 4096]);
    }

    #[test]
    fn read_of_an_unreadable_range_is_an_error() {
        let disk = MemDisk::new(vec![0; 4 * 4096]).with_unreadable(8192, 512);
        let overlay = Overlay::new(Arc::new(disk), 1 << 20);
        let mut buf = vec![0u8; 4 * 4096];
        assert!(overlay.read_at(&mut buf, 0).is_err());
    }

    proptest::proptest! {
        /// Any sequence of writes reads back like the same writes applied to a copy of
        /// the disk, and the disk itself never changes.
        #[test]
        fn writes_read_back_like_a_plain_copy(
            writes in proptest::collection::vec(
                (0u64..5 * 4096, 0usize..9000, proptest::prelude::any::<u8>()),
                1..12,
            ),
        ) {
            let bytes = patterned(5 * 4096 - 300);
            let disk = Arc::new(MemDisk::new(bytes.clone()));
            let mut overlay = Overlay::new(disk.clone(), 1 << 20);
            let mut model = bytes.clone();
            for (offset, len, seed) in writes {
                let data: Vec<u8> = (0..len).map(|i| seed ^ (i as u8)).collect();
                let fits = offset as usize + data.len() <= model.len();
                let result = overlay.write_at(&data, offset);
                proptest::prop_assert_eq!(result.is_ok(), fits);
                if fits {
                    model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                }
            }
            let mut buf = vec![0u8; model.len()];
            overlay.read_at(&mut buf, 0).unwrap();
            proptest::prop_assert_eq!(&buf, &model);
            let mut odd = vec![0u8; 5000];
            overlay.read_at(&mut odd, 1234).unwrap();
            proptest::prop_assert_eq!(&odd[..], &model[1234..6234]);
            proptest::prop_assert_eq!(disk.bytes(), &bytes[..]);
        }
    }
}
