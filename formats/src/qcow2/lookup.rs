//! Cluster lookup (qcow2.txt "Cluster mapping" and "Extended L2 Entries"): the one place
//! that turns a guest offset into a classified [`Mapping`]. `map`, `read_at` and the
//! salvage logic all walk guest ranges through `Qcow2Disk::walk`; `check` decodes L2
//! entries with the same [`decode_l2_entry`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::error::Error as CrateError;

use super::header::{Header, OFFSET_MASK};
use super::Qcow2Disk;

/// L2 entry bit 63: refcount is exactly one ("copied").
pub const COPIED: u64 = 1 << 63;
/// L2 entry bit 62: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Standard cluster descriptor bit 0: reads as zeros (version 3 without extended L2).
pub const ZERO: u64 = 1;

/// What one guest range holds, as the image describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    Zero,
    /// Stored uncompressed; `host` is the offset of the range's first byte in the data
    /// source (the image itself, or the external data file).
    Data {
        host: u64,
    },
    /// The range lies in a compressed cluster whose stream starts at `host`, `len` bytes
    /// long as the descriptor says (it may run past the real stream and past EOF).
    Compressed {
        host: u64,
        len: u64,
    },
    /// Not allocated in this layer.
    Unallocated,
    /// Damaged metadata: the range cannot be read (salvage mode only).
    Unreadable(String),
}

/// A decoded L2 entry, before its offsets are checked against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L2Entry {
    /// No host cluster; subclusters whose bit is set in `zero` read as zeros.
    Unallocated { zero: u32 },
    /// A host cluster at `host`; subclusters with their bit in `alloc` hold data there,
    /// those with their bit in `zero` read as zeros, the rest are unallocated. Without
    /// extended L2 there is one "subcluster", bit 0.
    Standard {
        host: u64,
        alloc: u32,
        zero: u32,
        copied: bool,
    },
    Compressed {
        host: u64,
        len: u64,
        copied: bool,
        bitmap: u64,
    },
    /// An entry no valid image contains; `host` is the cluster it names (0 for none),
    /// which qemu's check still counts as referenced.
    Invalid { host: u64, what: String },
}

/// Decodes an L2 entry (and, with extended L2, its subcluster bitmap), following qemu's
/// `qcow2_get_cluster_type`/`qcow2_get_subcluster_type`.
pub fn decode_l2_entry(header: &Header, entry: u64, bitmap: u64) -> L2Entry {
    let copied = entry & COPIED != 0;
    if entry & COMPRESSED != 0 {
        // Compressed descriptor: x = 62 - (cluster_bits - 8) bits of offset, then the
        // number of additional 512-byte sectors.
        let size_bits = header.cluster_bits - 8;
        let x = 62 - size_bits;
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << size_bits) - 1)) + 1;
        let len = sectors * 512 - (host & 511);
        return L2Entry::Compressed {
            host,
            len,
            copied,
            bitmap,
        };
    }
    let host = entry & OFFSET_MASK;
    // With an external data file, host offset 0 is valid; bit 63 marks it allocated.
    let unallocated = host == 0 && !(header.has_data_file() && copied);
    if !header.extended_l2() {
        let zero = u32::from(header.version >= 3 && entry & ZERO != 0);
        if unallocated {
            return L2Entry::Unallocated { zero };
        }
        return L2Entry::Standard {
            host,
            alloc: 1 - zero,
            zero,
            copied,
        };
    }
    let alloc = bitmap as u32;
    let zero = (bitmap >> 32) as u32;
    if unallocated {
        if alloc != 0 {
            return L2Entry::Invalid {
                host,
                what: format!(
                    "unallocated cluster has allocated subclusters (bitmap {bitmap:#018x})"
                ),
            };
        }
        return L2Entry::Unallocated { zero };
    }
    if alloc & zero != 0 {
        return L2Entry::Invalid {
            host,
            what: format!("subclusters both allocated and zero (bitmap {bitmap:#018x})"),
        };
    }
    L2Entry::Standard {
        host,
        alloc,
        zero,
        copied,
    }
}

/// A bounded cache of L2 tables, keyed by host offset. Least recently loaded goes first.
pub struct L2Cache {
    tables: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
    capacity: usize,
}

/// Bytes of L2 tables kept in memory at most (at least two tables are kept).
const L2_CACHE_BYTES: u64 = 4 << 20;

impl L2Cache {
    pub fn new(cluster_size: u64) -> L2Cache {
        let capacity = usize::try_from((L2_CACHE_BYTES / cluster_size).max(2)).unwrap_or(2);
        L2Cache {
            tables: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, offset: u64) -> Option<Arc<[u64]>> {
        self.tables.get(&offset).cloned()
    }

    fn insert(&mut self, offset: u64, table: Arc<[u64]>) {
        if self.tables.insert(offset, table).is_none() {
            self.order.push_back(offset);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.tables.remove(&old);
            }
        }
    }
}

/// What is wrong with a data cluster an L2 entry names.
struct DataProblem {
    what: String,
    /// For a cluster cut short by the end of the file: how many of its bytes are there.
    present: Option<u64>,
}

/// A guest cluster and the L2 table entry that maps it.
#[derive(Clone, Copy)]
struct GuestCluster<'a> {
    table: &'a [u64],
    /// Why entries past the end of `table` are unreadable.
    cut: Option<&'a str>,
    /// Host offset of the L2 table (for messages).
    l2_offset: u64,
    /// Entry index in the table.
    index: u64,
    /// Guest offset of the cluster's first byte.
    start: u64,
}

/// Where an L1 entry leads.
enum L2Ref {
    Unallocated,
    Damaged(String),
    /// An L2 table; `cut` says why entries past the end of `entries` are unreadable
    /// (a table cut short by the end of the file, salvage mode).
    Table {
        offset: u64,
        entries: Arc<[u64]>,
        cut: Option<String>,
    },
}

impl Qcow2Disk {
    /// Classifies `[offset, end)` of the guest, calling `f(guest_offset, len, mapping)` for
    /// consecutive pieces (at most one subcluster each; callers merge). In strict mode
    /// damaged metadata is an error; in salvage mode it is recorded as a finding and the
    /// affected range is `Unreadable`.
    pub(super) fn walk(
        &self,
        offset: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Mapping) -> Result<(), CrateError>,
    ) -> Result<(), CrateError> {
        let h = &self.header;
        let cs = h.cluster_size;
        let span_bits = h.cluster_bits + h.l2_bits();
        let mut pos = offset;
        while pos < end {
            let l1_index = pos >> span_bits;
            let span_end = l1_index
                .checked_add(1)
                .and_then(|i| i.checked_shl(span_bits))
                .map_or(end, |e| e.min(end));
            let (l2_offset, table, cut) = match self.l2_for(l1_index)? {
                L2Ref::Unallocated => {
                    f(pos, span_end - pos, Mapping::Unallocated)?;
                    pos = span_end;
                    continue;
                }
                L2Ref::Damaged(reason) => {
                    f(pos, span_end - pos, Mapping::Unreadable(reason))?;
                    pos = span_end;
                    continue;
                }
                L2Ref::Table {
                    offset,
                    entries,
                    cut,
                } => (offset, entries, cut),
            };
            let l2_mask = (1u64 << h.l2_bits()) - 1;
            while pos < span_end {
                let index = (pos >> h.cluster_bits) & l2_mask;
                let cluster_start = pos & !(cs - 1);
                let cluster_end = cluster_start.saturating_add(cs).min(span_end);
                let cluster = GuestCluster {
                    table: &table,
                    cut: cut.as_deref(),
                    l2_offset,
                    index,
                    start: cluster_start,
                };
                self.classify_cluster(&cluster, pos, cluster_end, f)?;
                pos = cluster_end;
            }
        }
        Ok(())
    }

    /// Classifies `[pos, end)`, which lies inside `cluster`.
    fn classify_cluster(
        &self,
        cluster: &GuestCluster<'_>,
        pos: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Mapping) -> Result<(), CrateError>,
    ) -> Result<(), CrateError> {
        let GuestCluster {
            table,
            cut,
            l2_offset,
            index,
            start: cluster_start,
        } = *cluster;
        let h = &self.header;
        let cs = h.cluster_size;
        let words = h.l2_entry_bytes() / 8;
        let slot = usize::try_from(index * words).unwrap_or(usize::MAX);
        if slot.saturating_add(words as usize) > table.len() {
            let reason = cut
                .unwrap_or("L2 table is shorter than a cluster")
                .to_string();
            return f(pos, end - pos, Mapping::Unreadable(reason));
        }
        let entry = table.get(slot).copied().unwrap_or(0);
        let bitmap = if words == 2 {
            table.get(slot.saturating_add(1)).copied().unwrap_or(0)
        } else {
            0
        };
        let (alloc, zero, host) = match decode_l2_entry(h, entry, bitmap) {
            L2Entry::Unallocated { zero: 0 } => return f(pos, end - pos, Mapping::Unallocated),
            L2Entry::Unallocated { zero } => (0, zero, 0),
            L2Entry::Invalid { what, .. } => {
                let reason =
                    self.damage("L2 table", l2_offset, format!("entry {index}: {what}"))?;
                return f(pos, end - pos, Mapping::Unreadable(reason));
            }
            L2Entry::Compressed { host, len, .. } => {
                let mapping = match self.check_compressed(host) {
                    Ok(()) => Mapping::Compressed { host, len },
                    Err(what) => Mapping::Unreadable(self.damage(
                        "L2 table",
                        l2_offset,
                        format!("entry {index} {what}"),
                    )?),
                };
                return f(pos, end - pos, mapping);
            }
            L2Entry::Standard {
                host, alloc, zero, ..
            } => (alloc, zero, host),
        };
        let sc_size = cs / h.subclusters();
        // Guest bytes from `readable_end` on are unreadable (a data cluster cut short by
        // the end of the file, in salvage mode), for the `tail_reason`.
        let mut readable_end = end;
        let mut tail_reason = None;
        if alloc != 0 {
            // Only the allocated subclusters need to exist: qemu writes a partly allocated
            // cluster at the end of the file only up to its last allocated subcluster.
            let used = u64::from(32 - alloc.leading_zeros()) * sc_size;
            let needed = used.min(self.virtual_size.saturating_sub(cluster_start));
            if let Err(problem) = self.check_data_cluster(host, needed, cluster_start) {
                let what = format!("entry {index} {}", problem.what);
                let reason = self.damage("L2 table", l2_offset, what)?;
                let Some(present) = problem.present else {
                    return f(pos, end - pos, Mapping::Unreadable(reason));
                };
                // Salvage of a truncated cluster: the bytes still in the file are its
                // true content; only the missing tail is unreadable.
                readable_end = cluster_start.saturating_add(present);
                tail_reason = Some(reason);
            }
        }
        let mut p = pos;
        while p < end {
            let sc = (p - cluster_start) / sc_size;
            let sc_end = (cluster_start + (sc + 1) * sc_size).min(end);
            let bit = 1u32 << sc;
            if zero & bit != 0 {
                f(p, sc_end - p, Mapping::Zero)?;
            } else if alloc & bit == 0 {
                f(p, sc_end - p, Mapping::Unallocated)?;
            } else {
                let data_end = sc_end.min(readable_end).max(p);
                if p < data_end {
                    let host = host + (p - cluster_start);
                    f(p, data_end - p, Mapping::Data { host })?;
                }
                if let (true, Some(reason)) = (data_end < sc_end, &tail_reason) {
                    f(
                        data_end,
                        sc_end - data_end,
                        Mapping::Unreadable(reason.clone()),
                    )?;
                }
            }
            p = sc_end;
        }
        Ok(())
    }

    /// Checks that a data cluster at `host` (of which `needed` bytes matter) for the guest
    /// cluster at `guest` is aligned, clear of metadata, inside its file, and, in an
    /// external data file, at the guest offset (qcow2.txt, incompatible bit 2: "The offset
    /// field in the Standard Cluster Descriptor must match the guest offset").
    fn check_data_cluster(&self, host: u64, needed: u64, guest: u64) -> Result<(), DataProblem> {
        let cs = self.header.cluster_size;
        let whole = |what: String| DataProblem {
            what,
            present: None,
        };
        if self.header.has_data_file() && host != guest {
            return Err(whole(format!(
                "points to data file offset {host:#x}, not the guest offset {guest:#x}"
            )));
        }
        if !host.is_multiple_of(cs) {
            return Err(whole(format!(
                "points to a misaligned data cluster at {host:#x}"
            )));
        }
        if !self.header.has_data_file() {
            if let Some(what) = self.metadata.overlap(host, cs, true) {
                return Err(whole(format!(
                    "points to a data cluster at {host:#x} that overlaps the {what}"
                )));
            }
        }
        let data_len = self.data.len();
        if host.checked_add(needed).is_none_or(|e| e > data_len) {
            return Err(DataProblem {
                what: format!("points past end of file ({host:#x} + {needed:#x} > {data_len:#x})"),
                present: Some(data_len.saturating_sub(host)),
            });
        }
        Ok(())
    }

    /// Checks a compressed cluster's stream position; says what is wrong otherwise.
    fn check_compressed(&self, host: u64) -> Result<(), String> {
        if self.header.has_data_file() {
            return Err("is compressed, which images with an external data file cannot be".into());
        }
        let file_len = self.source.len();
        if host >= file_len {
            return Err(format!(
                "points past end of file (compressed data at {host:#x}, file ends at {file_len:#x})"
            ));
        }
        // Only where the stream starts is certain: the sector count may be generous
        // (qcow2.txt: "the compressed data does not necessarily occupy all of the bytes in
        // the final sector"), so its end may touch the next cluster, metadata or not.
        if let Some(what) = self.metadata.overlap(host, 1, true) {
            return Err(format!(
                "points to compressed data at {host:#x} that overlaps the {what}"
            ));
        }
        Ok(())
    }

    /// The L2 table an L1 entry names, loaded through the cache.
    fn l2_for(&self, l1_index: u64) -> Result<L2Ref, CrateError> {
        let l1 = &self.l1;
        if l1_index >= u64::from(l1.size) {
            // qemu reads guest clusters beyond a (snapshot's) L1 table as unallocated.
            return Ok(L2Ref::Unallocated);
        }
        let Some(&raw) = usize::try_from(l1_index)
            .ok()
            .and_then(|i| l1.entries.get(i))
        else {
            // Salvage of a truncated L1 table: the finding was recorded at open.
            return Ok(L2Ref::Damaged(format!(
                "{} at {:#x} entry {l1_index} lies past end of file",
                l1.structure, l1.offset
            )));
        };
        let l2_offset = raw & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(L2Ref::Unallocated);
        }
        let cs = self.header.cluster_size;
        let file_len = self.source.len();
        let problem = if !l2_offset.is_multiple_of(cs) {
            Some(format!(
                "entry {l1_index} points to a misaligned L2 table at {l2_offset:#x}"
            ))
        } else {
            self.metadata
                .overlap(l2_offset, cs, false)
                .map(|what| format!("entry {l1_index} points to an L2 table at {l2_offset:#x} that overlaps the {what}"))
        };
        if let Some(what) = problem {
            return Ok(L2Ref::Damaged(self.damage(
                l1.structure,
                l1.offset,
                what,
            )?));
        }
        if l2_offset.checked_add(cs).is_none_or(|e| e > file_len) {
            let what = format!(
                "entry {l1_index} points past end of file (L2 table at {l2_offset:#x}, file ends at {file_len:#x})"
            );
            let reason = self.damage(l1.structure, l1.offset, what)?;
            // Salvage: the part of the table still in the file maps its clusters; the
            // rest is unreadable. Not cached: this happens once per truncated file.
            let present = file_len.saturating_sub(l2_offset).min(cs);
            let entries = self.read_l2_bytes(l2_offset, present)?;
            return Ok(L2Ref::Table {
                offset: l2_offset,
                entries,
                cut: Some(reason),
            });
        }
        if let Some(entries) = self.lock_l2_cache().get(l2_offset) {
            return Ok(L2Ref::Table {
                offset: l2_offset,
                entries,
                cut: None,
            });
        }
        let entries = self.read_l2_bytes(l2_offset, cs)?;
        self.lock_l2_cache().insert(l2_offset, entries.clone());
        Ok(L2Ref::Table {
            offset: l2_offset,
            entries,
            cut: None,
        })
    }

    /// Reads `len` bytes (at most a cluster) of the L2 table at `offset` as big-endian
    /// 64-bit words.
    fn read_l2_bytes(&self, offset: u64, len: u64) -> Result<Arc<[u64]>, CrateError> {
        let mut bytes = vec![0u8; usize::try_from(len.min(self.header.cluster_size)).unwrap_or(0)];
        self.source
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| CrateError::io(&self.file, offset, "L2 table", e))?;
        Ok(be_words(&bytes).into())
    }

    fn lock_l2_cache(&self) -> std::sync::MutexGuard<'_, L2Cache> {
        // A panic while holding the lock cannot leave the cache inconsistent (inserts are
        // atomic from the reader's view), so a poisoned lock is still usable.
        self.l2_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Decodes big-endian 64-bit words.
pub fn be_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_be_bytes(a)
        })
        .collect()
}
