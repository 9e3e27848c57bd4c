//! Refcounts of the qcow2 output, kept for a sliding window of host clusters only
//! (qcow2.txt, "Host cluster management": 16-bit entries, refcount_order 4).
//!
//! The writer fills the file front to back, and every reference it adds is to the cluster
//! holding its write cursor or to a later one. So once the cursor has left the range a
//! refcount block covers, that block's counts are final: the writer stores the block right
//! there, in the stream, and forgets it. Memory is one or two blocks of counts plus one
//! table entry (8 bytes) per refcount block written, whatever the disk size.
//!
//! The refcount table itself (contiguous, which is why it is not streamed) goes at the end
//! with the last blocks; [`end_layout`] finds how many clusters both need, counting the
//! clusters they occupy themselves.

/// Counts for the clusters from `window_start` on; everything before is already written.
pub(super) struct Refcounts {
    entries_per_block: u64,
    window_start: u64,
    window: Vec<u16>,
    /// Host offsets of the refcount blocks written so far, in table order.
    pub table: Vec<u64>,
}

/// A reference count would pass 65535 (refcount_order 4).
#[derive(Debug)]
pub(super) struct Overflow {
    pub cluster: u64,
}

impl Refcounts {
    /// Counts for clusters of `cluster_size` bytes, 16 bits each.
    pub fn new(cluster_size: u64) -> Refcounts {
        Refcounts {
            entries_per_block: cluster_size / 2,
            window_start: 0,
            window: Vec::new(),
            table: Vec::new(),
        }
    }

    /// Host clusters one refcount block covers.
    pub fn entries_per_block(&self) -> u64 {
        self.entries_per_block
    }

    /// The count of `cluster` (0 for clusters before the window, which are final).
    pub fn get(&self, cluster: u64) -> u16 {
        cluster
            .checked_sub(self.window_start)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.window.get(i).copied())
            .unwrap_or(0)
    }

    /// Adds one reference to `cluster`, which must not lie before the window.
    pub fn add(&mut self, cluster: u64) -> Result<(), Overflow> {
        let index = cluster
            .checked_sub(self.window_start)
            .and_then(|i| usize::try_from(i).ok())
            .ok_or(Overflow { cluster })?;
        if index >= self.window.len() {
            self.window.resize(index + 1, 0);
        }
        let count = &mut self.window[index];
        *count = count.checked_add(1).ok_or(Overflow { cluster })?;
        Ok(())
    }

    /// True when the first block of the window is final because the write cursor sits in
    /// `cursor_cluster`, past its range.
    pub fn first_block_done(&self, cursor_cluster: u64) -> bool {
        cursor_cluster >= self.window_start + self.entries_per_block
    }

    /// The first cluster past the range of the window's first block.
    pub fn first_block_end(&self) -> u64 {
        self.window_start + self.entries_per_block
    }

    /// Takes the first block of the window as an on-disk refcount block (big-endian,
    /// `cluster_size` bytes) and moves the window on. The caller stores it and records
    /// where in `table`.
    pub fn take_block(&mut self) -> Vec<u8> {
        let n = usize::try_from(self.entries_per_block).unwrap_or(usize::MAX);
        let take = n.min(self.window.len());
        let mut block = Vec::with_capacity(n * 2);
        for count in self.window.drain(..take) {
            block.extend_from_slice(&count.to_be_bytes());
        }
        block.resize(n * 2, 0);
        self.window_start += self.entries_per_block;
        block
    }
}

/// Where the last refcount blocks and the table go when the file's used clusters end at
/// `end_cluster` (cursor aligned) and `blocks_written` blocks are already stored: returns
/// (blocks still to write, table clusters). Both are placed from `end_cluster` on, blocks
/// first, and must cover themselves.
pub(super) fn end_layout(
    end_cluster: u64,
    blocks_written: u64,
    entries_per_block: u64,
    cluster_size: u64,
) -> (u64, u64) {
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let clusters = end_cluster + blocks + table;
        let total_blocks = clusters.div_ceil(entries_per_block).max(blocks_written + 1);
        let new_blocks = total_blocks - blocks_written;
        let new_table = (total_blocks * 8).div_ceil(cluster_size);
        if (new_blocks, new_table) == (blocks, table) {
            return (blocks, table);
        }
        (blocks, table) = (new_blocks, new_table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_done_once_the_cursor_leaves_its_range() {
        let mut r = Refcounts::new(512); // 256 entries per block
        r.add(0).unwrap();
        r.add(255).unwrap();
        r.add(255).unwrap();
        assert!(!r.first_block_done(255));
        assert!(r.first_block_done(256));
        let block = r.take_block();
        assert_eq!(block.len(), 512);
        assert_eq!(&block[0..2], &[0, 1]);
        assert_eq!(&block[510..512], &[0, 2]);
        assert!(r.add(10).is_err(), "clusters behind the window are final");
    }

    #[test]
    fn counts_stop_at_16_bits() {
        let mut r = Refcounts::new(512);
        for _ in 0..u16::MAX {
            r.add(3).unwrap();
        }
        assert_eq!(r.get(3), u16::MAX);
        assert!(r.add(3).is_err());
    }

    #[test]
    fn end_layout_covers_its_own_clusters() {
        // 256 entries per block; 255 clusters used, none written: the block and the table
        // push the total to 257, so two blocks are needed.
        assert_eq!(end_layout(255, 0, 256, 512), (2, 1));
        assert_eq!(end_layout(10, 0, 256, 512), (1, 1));
        // 64 blocks already stored: the table needs two 512-byte clusters.
        let (blocks, table) = end_layout(64 * 256, 64, 256, 512);
        assert_eq!((blocks, table), (1, 2));
    }
}
