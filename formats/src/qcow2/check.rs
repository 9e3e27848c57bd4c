//! The refcount check (qcow2.txt "Host cluster management"), following qemu's
//! `qcow2_check_refcounts` in block/qcow2-refcount.c so that the numbers agree with
//! `qemu-img check`: count every reference to every host cluster (header, L1 tables of the
//! active state and of every snapshot, the L2 tables they reach and the data and
//! compressed clusters those map, snapshot table, refcount table and blocks, encryption
//! header, bitmap directory and tables), then compare with the stored refcounts. A stored
//! refcount lower than the references is a corruption; a higher one is a leak. Then, like
//! qemu, check the "copied" flag (bit 63) of active L1/L2 entries against refcount == 1.

use std::collections::BTreeMap;

use crate::disk::{CheckReport, Finding, Severity};
use crate::error::Error as CrateError;

use super::header::{autoclear, MAX_L1_BYTES, OFFSET_MASK};
use super::lookup::{be_words, decode_l2_entry, L2Entry, COPIED};
use super::{Error, Qcow2Disk};

/// Most host clusters a check counts (2 bytes each in memory).
const MAX_CLUSTERS: u64 = 1 << 24;
/// Most distinct clusters past the end of the file that references may name.
const MAX_BEYOND: usize = 1 << 20;
/// Findings kept per list.
const MAX_REPORTED: usize = 10_000;
/// Largest bitmap directory read (qemu: QCOW2_MAX_BITMAP_DIRECTORY_SIZE is 64 MiB).
const MAX_BITMAP_DIRECTORY: u64 = 64 << 20;
/// Largest bitmap table read (1 Mi entries: far more than any disk vdr can read needs).
const MAX_BITMAP_TABLE: u64 = 8 << 20;

/// The computed reference counts, and what the walk found wrong.
struct Counter<'a> {
    disk: &'a Qcow2Disk,
    cluster_bits: u32,
    counts: Vec<u16>,
    beyond: BTreeMap<u64, u16>,
    refcount_max: u64,
    errors: Vec<Finding>,
    error_count: u64,
    allocated: u64,
}

impl Counter<'_> {
    fn error(&mut self, offset: u64, structure: &str, what: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(Finding {
                file: self.disk.file.clone(),
                offset,
                severity: Severity::Error,
                structure: structure.to_string(),
                what,
            });
        }
    }

    /// Adds one reference to every cluster that `[offset, offset+size)` touches.
    fn inc(&mut self, offset: u64, size: u64) -> Result<(), CrateError> {
        if size == 0 {
            return Ok(());
        }
        // qemu (qcow2_inc_refcounts_imrt) refuses to count a region that ends a cluster or
        // more past the end of the file, and reports it as a corruption instead.
        let limit = self
            .disk
            .source
            .len()
            .saturating_add(1 << self.cluster_bits);
        if offset.saturating_add(size) >= limit {
            let what = format!(
                "reference to {size:#x} bytes at {offset:#x} exceeds the end of the file by a cluster or more"
            );
            self.error(offset, "refcount", what);
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = offset.saturating_add(size - 1) >> self.cluster_bits;
        for k in first..=last {
            let slot = match usize::try_from(k).ok().and_then(|i| self.counts.get_mut(i)) {
                Some(slot) => slot,
                None => {
                    if self.beyond.len() >= MAX_BEYOND && !self.beyond.contains_key(&k) {
                        return Err(Error::TooLarge {
                            file: self.disk.file.clone(),
                            what: "clusters referenced past the end of the file",
                            value: self.beyond.len() as u64 + 1,
                            limit: MAX_BEYOND as u64,
                        }
                        .into());
                    }
                    self.beyond.entry(k).or_insert(0)
                }
            };
            if u64::from(*slot) >= self.refcount_max.min(u64::from(u16::MAX)) {
                let what = format!("refcount overflow for cluster {k}");
                self.error(k << self.cluster_bits, "refcount", what);
                continue;
            }
            *slot += 1;
        }
        Ok(())
    }

    fn count(&self, k: u64) -> u64 {
        match usize::try_from(k).ok().and_then(|i| self.counts.get(i)) {
            Some(c) => u64::from(*c),
            None => self.beyond.get(&k).map_or(0, |c| u64::from(*c)),
        }
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros, as
    /// qemu's block layer returns them.
    fn read_padded(&self, offset: u64, len: u64) -> Result<Vec<u8>, CrateError> {
        let source = &self.disk.source;
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let have = source.len().saturating_sub(offset).min(len);
        let part = bytes
            .get_mut(..usize::try_from(have).unwrap_or(0))
            .unwrap_or_default();
        source
            .read_exact_at(part, offset)
            .map_err(|e| CrateError::io(&self.disk.file, offset, "metadata", e))?;
        Ok(bytes)
    }

    /// Counts an L1 table, its L2 tables and the clusters they map (`check_refcounts_l1`).
    fn l1(&mut self, offset: u64, entries: u32, active: bool) -> Result<(), CrateError> {
        let bytes = u64::from(entries) * 8;
        if bytes > MAX_L1_BYTES {
            let what = format!("{entries} entries exceed the limit of {}", MAX_L1_BYTES / 8);
            self.error(offset, "L1 table", what);
            return Ok(());
        }
        self.inc(offset, bytes)?;
        let h = &self.disk.header;
        let cs = h.cluster_size;
        let table = be_words(&self.read_padded(offset, bytes)?);
        for (index, entry) in table.iter().enumerate() {
            let l2 = entry & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            self.inc(l2, cs)?;
            if !l2.is_multiple_of(cs) {
                let what = format!("entry {index}: L2 table offset {l2:#x} is not cluster aligned");
                self.error(offset, "L1 table", what);
                continue;
            }
            self.l2(l2, active)?;
        }
        Ok(())
    }

    /// Counts the clusters one L2 table maps (`check_refcounts_l2`).
    fn l2(&mut self, offset: u64, active: bool) -> Result<(), CrateError> {
        let h = &self.disk.header;
        let cs = h.cluster_size;
        let extended = h.extended_l2();
        let data_file = h.has_data_file();
        let words = be_words(&self.read_padded(offset, cs)?);
        let step = if extended { 2 } else { 1 };
        for (index, pair) in words.chunks(step).enumerate() {
            let entry = pair.first().copied().unwrap_or(0);
            let bitmap = pair.get(1).copied().unwrap_or(0);
            match decode_l2_entry(h, entry, bitmap) {
                L2Entry::Unallocated { .. } => {}
                L2Entry::Invalid { host, what } => {
                    self.error(offset, "L2 table", format!("entry {index}: {what}"));
                    if host != 0 {
                        // qemu counts an allocated cluster with a bad bitmap as allocated.
                        self.allocated += u64::from(active);
                        if !data_file {
                            self.inc(host, cs)?;
                        }
                    }
                }
                L2Entry::Compressed {
                    host,
                    len,
                    copied,
                    bitmap,
                } => {
                    if copied {
                        let what =
                            format!("entry {index}: copied flag set on a compressed cluster");
                        self.error(offset, "L2 table", what);
                    }
                    if extended && bitmap != 0 {
                        let what =
                            format!("entry {index}: compressed cluster has a subcluster bitmap");
                        self.error(offset, "L2 table", what);
                    }
                    if data_file {
                        let what = format!("entry {index}: compressed cluster in an image with an external data file");
                        self.error(offset, "L2 table", what);
                        continue;
                    }
                    self.inc(host, len)?;
                    if active {
                        self.allocated += 1;
                    }
                }
                L2Entry::Standard { host, .. } => {
                    if active {
                        self.allocated += 1;
                    }
                    if host % cs != 0 {
                        let what = format!(
                            "entry {index}: data cluster offset {host:#x} is not cluster aligned"
                        );
                        self.error(offset, "L2 table", what);
                    }
                    if !data_file {
                        self.inc(host, cs)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts the bitmap directory, bitmap tables and bitmap data clusters.
    fn bitmaps(&mut self) -> Result<(), CrateError> {
        let disk = self.disk;
        let Some(ext) = &disk.ext.bitmaps else {
            return Ok(());
        };
        // qemu ignores the extension when the autoclear bit says it is stale.
        if disk.header.autoclear & autoclear::BITMAPS == 0 {
            return Ok(());
        }
        let cs = disk.header.cluster_size;
        let size = ext.directory_size;
        if size > MAX_BITMAP_DIRECTORY
            || ext
                .directory_offset
                .checked_add(size)
                .is_none_or(|e| e > disk.source.len())
        {
            let what = format!("bitmap directory of {size} bytes does not fit in the file");
            self.error(ext.directory_offset, "bitmap directory", what);
            return Ok(());
        }
        self.inc(ext.directory_offset, size)?;
        let dir = self.read_padded(ext.directory_offset, size)?;
        let mut at = 0usize;
        for _ in 0..ext.nb_bitmaps {
            let field = |from: usize, len: usize| -> Option<u64> {
                let b = dir.get(at.checked_add(from)?..at.checked_add(from + len)?)?;
                Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
            };
            let (Some(table), Some(entries), Some(name_size), Some(extra)) =
                (field(0, 8), field(8, 4), field(18, 2), field(20, 4))
            else {
                let what = "bitmap directory entry runs past the directory".to_string();
                self.error(ext.directory_offset, "bitmap directory", what);
                break;
            };
            let table_bytes = entries * 8;
            let fits = table
                .checked_add(table_bytes)
                .is_some_and(|e| e <= disk.source.len());
            if table_bytes > MAX_BITMAP_TABLE || !fits {
                let what = format!(
                    "bitmap table at {table:#x} of {entries} entries does not fit in the file"
                );
                self.error(ext.directory_offset, "bitmap directory", what);
            } else {
                self.inc(table, table_bytes)?;
                for entry in be_words(&self.read_padded(table, table_bytes)?) {
                    let data = entry & OFFSET_MASK;
                    if data != 0 {
                        self.inc(data, cs)?;
                    }
                }
            }
            let entry_len = (24 + extra + name_size).next_multiple_of(8);
            at = at.saturating_add(usize::try_from(entry_len).unwrap_or(usize::MAX));
        }
        Ok(())
    }
}

/// Reads stored refcounts block by block, keeping the last block.
struct StoredRefcounts<'a> {
    disk: &'a Qcow2Disk,
    cached: Option<(u64, Option<Vec<u8>>)>,
}

impl StoredRefcounts<'_> {
    /// Stored refcount of cluster `k`; None when its refcount block cannot be read.
    fn get(&mut self, k: u64) -> Option<u64> {
        let h = &self.disk.header;
        let bits = u64::from(h.refcount_bits());
        let per_block = h.cluster_size * 8 / bits;
        let block_index = k / per_block;
        if self.cached.as_ref().map(|(i, _)| *i) != Some(block_index) {
            let block = self.load(block_index);
            self.cached = Some((block_index, block));
        }
        let block = self.cached.as_ref()?.1.as_ref()?;
        let j = k % per_block;
        if block.is_empty() {
            return Some(0);
        }
        let bit = j * bits;
        let byte = usize::try_from(bit / 8).ok()?;
        if bits < 8 {
            let b = *block.get(byte)?;
            Some(u64::from(b >> (bit % 8)) & ((1 << bits) - 1))
        } else {
            let width = usize::try_from(bits / 8).ok()?;
            let raw = block.get(byte..byte + width)?;
            Some(raw.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        }
    }

    /// The refcount block for `index`: empty when unallocated (all refcounts 0), None
    /// when the table entry is damaged or the block cannot be read.
    fn load(&self, index: u64) -> Option<Vec<u8>> {
        let disk = self.disk;
        let cs = disk.header.cluster_size;
        let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| disk.refcount_table.get(i))
        else {
            return Some(Vec::new());
        };
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            return Some(Vec::new());
        }
        if !offset.is_multiple_of(cs)
            || offset.checked_add(cs).is_none_or(|e| e > disk.source.len())
        {
            return None;
        }
        let mut block = vec![0u8; usize::try_from(cs).ok()?];
        disk.source.read_exact_at(&mut block, offset).ok()?;
        Some(block)
    }
}

/// Runs the refcount check on `disk`.
pub fn check(disk: &Qcow2Disk) -> Result<CheckReport, CrateError> {
    let h = &disk.header;
    let cs = h.cluster_size;
    let file_len = disk.source.len();
    let nb_clusters = file_len.div_ceil(cs);
    if nb_clusters > MAX_CLUSTERS {
        return Err(Error::TooLarge {
            file: disk.file.clone(),
            what: "host clusters to check",
            value: nb_clusters,
            limit: MAX_CLUSTERS,
        }
        .into());
    }
    let mut c = Counter {
        disk,
        cluster_bits: h.cluster_bits,
        counts: vec![0u16; usize::try_from(nb_clusters).unwrap_or(0)],
        beyond: BTreeMap::new(),
        refcount_max: if h.refcount_order >= 6 {
            u64::MAX
        } else {
            (1u64 << h.refcount_bits()) - 1
        },
        errors: Vec::new(),
        error_count: 0,
        allocated: 0,
    };
    // calculate_refcounts(): header, active L1, snapshots' L1s, snapshot table, refcount
    // table, encryption header, bitmaps, then the refcount blocks.
    c.inc(0, cs)?;
    c.l1(h.l1_table_offset, h.l1_size, true)?;
    for s in &disk.snapshots {
        c.l1(s.l1_table_offset, s.l1_size, false)?;
    }
    c.inc(h.snapshots_offset, disk.snapshots_bytes)?;
    c.inc(h.refcount_table_offset, h.refcount_table_bytes())?;
    if let Some((offset, len)) = disk.ext.crypto_header {
        c.inc(offset, len)?;
    }
    c.bitmaps()?;
    for (index, entry) in disk.refcount_table.iter().enumerate() {
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            continue;
        }
        if !offset.is_multiple_of(cs) {
            let what =
                format!("entry {index}: refcount block offset {offset:#x} is not cluster aligned");
            c.error(h.refcount_table_offset, "refcount table", what);
            continue;
        }
        if offset >> h.cluster_bits >= nb_clusters {
            let what = format!("entry {index}: refcount block at {offset:#x} is outside the image (file ends at {file_len:#x})");
            c.error(h.refcount_table_offset, "refcount table", what);
            continue;
        }
        c.inc(offset, cs)?;
        let refs = c.count(offset >> h.cluster_bits);
        if refs != 1 {
            let what =
                format!("entry {index}: refcount block at {offset:#x} is referenced {refs} times");
            c.error(h.refcount_table_offset, "refcount table", what);
        }
    }

    // compare_refcounts()
    let mut stored = StoredRefcounts { disk, cached: None };
    let mut leaks = Vec::new();
    let mut leaked = 0u64;
    let mut highest: Option<u64> = None;
    let beyond: Vec<u64> = c.beyond.keys().copied().collect();
    for k in (0..nb_clusters).chain(beyond) {
        let refs = c.count(k);
        let Some(stored_refs) = stored.get(k) else {
            if refs > 0 {
                let what = format!("cluster {k}: refcount block unreadable, reference={refs}");
                c.error(k * cs, "refcount", what);
                highest = Some(k);
            }
            continue;
        };
        if stored_refs > 0 || refs > 0 {
            highest = Some(k);
        }
        if stored_refs < refs {
            let what = format!("cluster {k}: refcount={stored_refs} reference={refs}");
            c.error(k * cs, "refcount", what);
        } else if stored_refs > refs {
            leaked += 1;
            if leaks.len() < MAX_REPORTED {
                leaks.push(Finding {
                    file: disk.file.clone(),
                    offset: k * cs,
                    severity: Severity::Warning,
                    structure: "refcount".into(),
                    what: format!("leaked cluster {k}: refcount={stored_refs} reference={refs}"),
                });
            }
        }
    }

    check_copied_flags(disk, &mut c, &mut stored)?;

    if c.error_count > c.errors.len() as u64 {
        let more = c.error_count - c.errors.len() as u64;
        c.errors.push(Finding {
            file: disk.file.clone(),
            offset: 0,
            severity: Severity::Error,
            structure: "check".into(),
            what: format!("{more} more errors were not listed"),
        });
    }
    Ok(CheckReport {
        file: disk.file.clone(),
        format: "qcow2".into(),
        supported: true,
        errors: c.errors,
        leaks,
        leaked_clusters: leaked,
        allocated_clusters: c.allocated,
        total_clusters: h
            .virtual_size
            .div_ceil(512)
            .saturating_mul(512)
            .div_ceil(cs),
        image_end_offset: Some(highest.map_or(cs, |k| k.saturating_add(1).saturating_mul(cs))),
    })
}

/// qemu's `check_oflag_copied`: bit 63 of active L1 and L2 entries must be set exactly when
/// the cluster's refcount is 1 (with an external data file, data clusters count as 1).
fn check_copied_flags(
    disk: &Qcow2Disk,
    c: &mut Counter<'_>,
    stored: &mut StoredRefcounts<'_>,
) -> Result<(), CrateError> {
    let h = &disk.header;
    let cs = h.cluster_size;
    let l1 = be_words(&c.read_padded(h.l1_table_offset, u64::from(h.l1_size) * 8)?);
    for (i, l1_entry) in l1.iter().enumerate() {
        let l2 = l1_entry & OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        if let Some(refcount) = stored.get(l2 >> h.cluster_bits) {
            if (refcount == 1) != (l1_entry & COPIED != 0) {
                let what = format!(
                    "entry {i}: copied flag does not match the L2 table's refcount {refcount}"
                );
                c.error(h.l1_table_offset, "L1 table", what);
            }
        }
        if !l2.is_multiple_of(cs) {
            continue;
        }
        let words = be_words(&c.read_padded(l2, cs)?);
        let step = if h.extended_l2() { 2 } else { 1 };
        for (j, pair) in words.chunks(step).enumerate() {
            let entry = pair.first().copied().unwrap_or(0);
            let bitmap = pair.get(1).copied().unwrap_or(0);
            let L2Entry::Standard { host, copied, .. } = decode_l2_entry(h, entry, bitmap) else {
                continue;
            };
            let refcount = if h.has_data_file() {
                Some(1)
            } else {
                stored.get(host >> h.cluster_bits)
            };
            if let Some(refcount) = refcount {
                if (refcount == 1) != copied {
                    let what = format!("entry {j}: copied flag does not match the data cluster's refcount {refcount}");
                    c.error(l2, "L2 table", what);
                }
            }
        }
    }
    Ok(())
}
