//! Where the image's own metadata lives (header cluster, L1 tables, refcount table and
//! blocks, snapshot table, L2 tables), so that an L1/L2 entry pointing into it is caught
//! as damage instead of being read as guest data. This mirrors the areas qemu's
//! `qcow2_check_metadata_overlap` protects.

/// Host ranges of metadata, sorted by start.
#[derive(Debug, Default)]
pub struct Metadata {
    /// Header, L1 tables, refcount table and blocks, snapshot table, encryption header.
    fixed: Vec<(u64, u64, &'static str)>,
    /// Active L2 tables (one cluster each), sorted.
    l2_tables: Vec<u64>,
    cluster_size: u64,
}

impl Metadata {
    pub fn new(cluster_size: u64) -> Metadata {
        Metadata {
            fixed: Vec::new(),
            l2_tables: Vec::new(),
            cluster_size,
        }
    }

    /// Records `[offset, offset+len)` (rounded out to whole clusters) as metadata `what`.
    pub fn add(&mut self, offset: u64, len: u64, what: &'static str) {
        if len == 0 {
            return;
        }
        let cs = self.cluster_size;
        let start = offset - offset % cs;
        let end = offset
            .saturating_add(len)
            .checked_next_multiple_of(cs)
            .unwrap_or(u64::MAX);
        self.fixed.push((start, end, what));
    }

    /// Records an active L2 table at `offset`.
    pub fn add_l2_table(&mut self, offset: u64) {
        self.l2_tables.push(offset);
    }

    /// Sorts the ranges and merges overlapping ones (keeping the first name), so that at
    /// most one range can start before any given end; call once after the last `add`.
    pub fn finish(&mut self) {
        self.fixed.sort_unstable();
        let mut merged: Vec<(u64, u64, &'static str)> = Vec::with_capacity(self.fixed.len());
        for range in self.fixed.drain(..) {
            match merged.last_mut() {
                Some(last) if range.0 < last.1 => last.1 = last.1.max(range.1),
                _ => merged.push(range),
            }
        }
        self.fixed = merged;
        self.l2_tables.sort_unstable();
        self.l2_tables.dedup();
    }

    /// The metadata `[offset, offset+len)` overlaps, if any. L2 tables count only when
    /// `with_l2` (an L2 table may not point at itself, but a data cluster may not be one).
    pub fn overlap(&self, offset: u64, len: u64, with_l2: bool) -> Option<&'static str> {
        let end = offset.saturating_add(len);
        // Ranges are disjoint and sorted: only the last one starting before `end` can
        // reach past `offset`.
        let before = self.fixed.partition_point(|(s, _, _)| *s < end);
        let hit = before
            .checked_sub(1)
            .and_then(|i| self.fixed.get(i))
            .filter(|(_, e, _)| *e > offset)
            .map(|(_, _, what)| *what);
        if hit.is_some() || !with_l2 {
            return hit;
        }
        let cs = self.cluster_size;
        let first = offset.saturating_sub(cs - 1);
        let i = self.l2_tables.partition_point(|s| *s < first);
        match self.l2_tables.get(i) {
            Some(s) if *s < end => Some("active L2 table"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_finds_ranges_rounded_to_clusters() {
        let mut m = Metadata::new(0x1000);
        m.add(0, 0x68, "header");
        m.add(0x3000, 8, "L1 table");
        m.add_l2_table(0x5000);
        m.finish();
        assert_eq!(m.overlap(0, 0x1000, true), Some("header"));
        assert_eq!(m.overlap(0x1000, 0x1000, true), None);
        assert_eq!(m.overlap(0x3800, 0x10, true), Some("L1 table"));
        assert_eq!(m.overlap(0x5000, 0x1000, true), Some("active L2 table"));
        assert_eq!(m.overlap(0x5000, 0x1000, false), None);
        assert_eq!(m.overlap(0x6000, 0x1000, true), None);
    }
}
