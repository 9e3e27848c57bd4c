//! The QCOW2 writer: version 3, 16-bit refcounts, no backing file, optional compressed
//! clusters (qemu docs/interop/qcow2.txt: "Header", "Host cluster management", "Cluster
//! mapping", "Compressed Clusters Descriptor").
//!
//! Layout, front to back, all decided in unit order so two runs give the same bytes:
//!
//! ```text
//! cluster 0            header (written last)
//! clusters 1..         L1 table, reserved up front (written last; the L1 is small:
//!                      8 bytes per cluster_size²/8 bytes of virtual disk)
//! then, as units come  data clusters of one L2 range; then that range's L2 table;
//!                      a refcount block whenever the cursor has left its range
//! end                  the last refcount blocks, then the refcount table
//! ```
//!
//! Memory: the L1 table, one L2 table, a window of refcounts (see `refcount.rs`) and the
//! refcount table entries; no per-data-cluster state survives its L2 range.
//!
//! Data clusters that read as all zeros are left unallocated (no backing file, so they
//! read as zeros), as qemu-img convert does. Compressed clusters are packed back to back
//! at byte granularity (what qemu's `qcow2_alloc_bytes` does for a sequential writer); a
//! host cluster then holds pieces of several clusters and its refcount is the number of
//! pieces touching it. Plain clusters and metadata start on a cluster boundary.

use std::fs::File;

use crate::error::Error;

use super::appender::Appender;
use super::clusters::{ClusterOut, ClusterUnit};
use super::gather::push_unreadable;
use super::refcount::{end_layout, Refcounts};
use super::{Compression, ConvertReport};

/// L1/L2 bit 63: the cluster's refcount is exactly one ("COPIED").
const COPIED: u64 = 1 << 63;
/// L2 bit 62: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// Incompatible feature bit 3: compression_type is set.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// v3 header with the compression_type byte, padded to a multiple of 8.
const HEADER_LENGTH: u32 = 112;
/// qemu refuses L1 tables above 32 MiB and refcount tables above 8 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// Smallest and largest cluster sizes qemu opens.
pub(super) const MIN_CLUSTER: u64 = 512;
pub(super) const MAX_CLUSTER: u64 = 2 << 20;

/// Writer side: places clusters and metadata in the file, in order.
pub(super) struct Qcow2Writer<'a> {
    out: Appender<'a>,
    size: u64,
    cluster_size: u64,
    cluster_bits: u32,
    l2_entries: u64,
    l1: Vec<u64>,
    /// The L2 table being filled and its index in the L1 table.
    l2: Vec<u64>,
    l2_index: u64,
    refcounts: Refcounts,
    compression: Option<Compression>,
    report: ConvertReport,
}

impl<'a> Qcow2Writer<'a> {
    /// Prepares the layout of a new, empty `file` for a disk of `size` bytes.
    ///
    /// The header's size is rounded up to whole 512-byte sectors: qemu reads a qcow2 size
    /// in sectors (it drops a partial last sector) and reads a raw file of such a size as
    /// one padded with zeros, so the padded size is what qemu-img convert itself writes.
    pub fn new(
        file: File,
        path: &'a str,
        size: u64,
        cluster_size: u64,
        compression: Option<Compression>,
    ) -> Result<Qcow2Writer<'a>, Error> {
        let invalid = |what: String| Error::Output {
            path: path.to_string(),
            what,
        };
        if !cluster_size.is_power_of_two() || !(MIN_CLUSTER..=MAX_CLUSTER).contains(&cluster_size) {
            return Err(invalid(format!(
                "qcow2 cluster size {cluster_size} is not a power of two from 512 to 2 MiB"
            )));
        }
        let size = size.next_multiple_of(512);
        let l2_entries = cluster_size / 8;
        let l1_size = size.div_ceil(cluster_size * l2_entries);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(invalid(format!(
                "a {size}-byte disk needs an L1 table over 32 MiB with {cluster_size}-byte \
                 clusters (qemu's limit); use larger clusters"
            )));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cluster_size);
        let mut refcounts = Refcounts::new(cluster_size);
        for cluster in 0..1 + l1_clusters {
            refcounts
                .add(cluster)
                .map_err(|_| invalid("refcount of the header".into()))?;
        }
        Ok(Qcow2Writer {
            out: Appender::new(file, path, (1 + l1_clusters) * cluster_size),
            size,
            cluster_size,
            cluster_bits: cluster_size.trailing_zeros(),
            l2_entries,
            l1: vec![0; l1_size as usize],
            l2: vec![0; l2_entries as usize],
            l2_index: 0,
            refcounts,
            compression,
            report: ConvertReport {
                virtual_size: size,
                ..ConvertReport::default()
            },
        })
    }

    /// Writes the clusters of the unit at virtual `offset`; gives back the unit's buffer
    /// for reuse.
    pub fn write_unit(&mut self, offset: u64, unit: ClusterUnit) -> Result<Vec<u8>, Error> {
        let first = offset / self.cluster_size;
        let mut i = 0;
        while i < unit.clusters.len() {
            let virtual_cluster = first + i as u64;
            let table = virtual_cluster / self.l2_entries;
            if table != self.l2_index {
                self.finish_l2()?;
                self.l2_index = table;
            }
            match &unit.clusters[i] {
                ClusterOut::Zero => {
                    self.report.zero_bytes += self.virtual_len(virtual_cluster, 1);
                    i += 1;
                }
                ClusterOut::Plain(range) => {
                    // Neighbouring plain clusters of one L2 table go out in one write,
                    // straight from the unit's buffer.
                    let table_end = (table + 1) * self.l2_entries;
                    let mut end = range.end;
                    let mut n = 1;
                    while let Some(ClusterOut::Plain(next)) = unit.clusters.get(i + n) {
                        if next.start != end || virtual_cluster + n as u64 >= table_end {
                            break;
                        }
                        end = next.end;
                        n += 1;
                    }
                    let placed =
                        self.place_plain_run(virtual_cluster, &unit.bytes[range.start..end])?;
                    i += placed;
                }
                ClusterOut::Compressed(range) => {
                    self.report.compressed_clusters += 1;
                    let entry = self.place_compressed(&unit.bytes[range.clone()])?;
                    self.set_l2(virtual_cluster, entry);
                    self.report.data_bytes += self.virtual_len(virtual_cluster, 1);
                    i += 1;
                }
            }
        }
        for range in unit.unreadable {
            push_unreadable(&mut self.report.unreadable, range);
        }
        Ok(unit.bytes)
    }

    /// Virtual bytes of `n` clusters from `virtual_cluster` (the disk's last cluster may
    /// be short).
    fn virtual_len(&self, virtual_cluster: u64, n: u64) -> u64 {
        let start = virtual_cluster * self.cluster_size;
        (n * self.cluster_size).min(self.size - start)
    }

    fn set_l2(&mut self, virtual_cluster: u64, entry: u64) {
        self.l2[(virtual_cluster % self.l2_entries) as usize] = entry;
    }

    /// Stores as many of the whole clusters in `run` (virtual clusters from
    /// `virtual_cluster` on, all in the current L2 table) as fit before the next refcount
    /// block must be written, in one write; returns how many it stored (at least one).
    fn place_plain_run(&mut self, virtual_cluster: u64, run: &[u8]) -> Result<usize, Error> {
        let cs = self.cluster_size;
        self.out.align(cs)?;
        self.store_finished_refcount_blocks()?;
        let host = self.out.pos();
        let room = self.refcounts.first_block_end() - host / cs;
        let n = (run.len() as u64 / cs).min(room).max(1);
        self.out.append_direct(&run[..(n * cs) as usize])?;
        for k in 0..n {
            self.add_ref(host / cs + k)?;
            self.set_l2(virtual_cluster + k, (host + k * cs) | COPIED);
        }
        self.report.data_bytes += self.virtual_len(virtual_cluster, n);
        Ok(n as usize)
    }

    /// Stores a whole cluster of metadata on a cluster boundary; returns its offset with
    /// COPIED set.
    fn place_plain(&mut self, cluster: &[u8]) -> Result<u64, Error> {
        self.out.align(self.cluster_size)?;
        self.store_finished_refcount_blocks()?;
        let host = self.out.pos();
        self.out.append(cluster)?;
        self.add_ref(host / self.cluster_size)?;
        Ok(host | COPIED)
    }

    /// Stores compressed bytes right after the previous piece; returns the L2 entry
    /// (qcow2.txt "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8), host
    /// offset in bits 0..x, additional 512-byte sectors in bits x..62).
    fn place_compressed(&mut self, piece: &[u8]) -> Result<u64, Error> {
        let pos = self.out.pos();
        if !pos.is_multiple_of(self.cluster_size)
            && self.refcounts.get(pos / self.cluster_size) == u16::MAX
        {
            // The shared host cluster cannot take one more reference.
            self.out.align(self.cluster_size)?;
        }
        self.store_finished_refcount_blocks()?;
        let host = self.out.pos();
        let last = host + piece.len() as u64 - 1;
        self.out.append(piece)?;
        for cluster in host / self.cluster_size..=last / self.cluster_size {
            self.add_ref(cluster)?;
        }
        let offset_bits = 62 - (self.cluster_bits - 8);
        let sectors = (last >> 9) - (host >> 9);
        if host >= 1 << offset_bits.min(56) || sectors >= 1 << (self.cluster_bits - 8) {
            return Err(self.out.error(&format!(
                "compressed cluster at {host:#x} ({} bytes) does not fit a descriptor",
                piece.len()
            )));
        }
        Ok(COMPRESSED | (sectors << offset_bits) | host)
    }

    /// Stores the L2 table being filled (if it maps anything) and points the L1 at it
    /// (with COPIED set: every L2 table has refcount one).
    fn finish_l2(&mut self) -> Result<(), Error> {
        if self.l2.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let table: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
        let host = self.place_plain(&table)?;
        self.l1[self.l2_index as usize] = host;
        self.l2.fill(0);
        Ok(())
    }

    /// Writes every refcount block whose range the cursor has left (see `refcount.rs`).
    fn store_finished_refcount_blocks(&mut self) -> Result<(), Error> {
        while self
            .refcounts
            .first_block_done(self.out.pos() / self.cluster_size)
        {
            let block = self.refcounts.take_block();
            self.out.align(self.cluster_size)?;
            let host = self.out.pos();
            self.out.append(&block)?;
            self.refcounts.table.push(host);
            self.add_ref(host / self.cluster_size)?;
        }
        Ok(())
    }

    fn add_ref(&mut self, cluster: u64) -> Result<(), Error> {
        self.refcounts.add(cluster).map_err(|o| {
            self.out.error(&format!(
                "internal error: refcount of host cluster {:#x} cannot be raised",
                o.cluster * self.cluster_size
            ))
        })
    }

    /// Writes the last L2 table, the last refcount blocks, the refcount table, the L1
    /// table and the header; returns the report.
    pub fn finish(mut self) -> Result<ConvertReport, Error> {
        self.finish_l2()?;
        self.store_finished_refcount_blocks()?;
        self.out.align(self.cluster_size)?;
        let cs = self.cluster_size;
        let end = self.out.pos() / cs;
        let written = self.refcounts.table.len() as u64;
        let (blocks, table_clusters) =
            end_layout(end, written, self.refcounts.entries_per_block(), cs);
        if table_clusters * cs > MAX_REFCOUNT_TABLE_BYTES {
            return Err(self
                .out
                .error("the refcount table would pass qemu's 8 MiB limit; use larger clusters"));
        }
        for cluster in end..end + blocks + table_clusters {
            self.add_ref(cluster)?;
        }
        for i in 0..blocks {
            let block = self.refcounts.take_block();
            self.refcounts.table.push((end + i) * cs);
            self.out.append(&block)?;
        }
        let table_offset = (end + blocks) * cs;
        let mut table: Vec<u8> = self
            .refcounts
            .table
            .iter()
            .flat_map(|e| e.to_be_bytes())
            .collect();
        table.resize((table_clusters * cs) as usize, 0);
        self.out.append(&table)?;
        self.out.flush()?;
        self.report.output_size = self.out.pos();

        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        if !l1.is_empty() {
            self.out.write_at(&l1, cs)?;
        }
        let header = self.header(table_offset, table_clusters)?;
        self.out.write_at(&header, 0)?;
        Ok(self.report)
    }

    /// The v3 header (qcow2.txt "Header"), followed by the end-of-extensions marker.
    fn header(&self, table_offset: u64, table_clusters: u64) -> Result<Vec<u8>, Error> {
        let too_big = || self.out.error("header field overflow");
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
        h.extend_from_slice(&self.cluster_bits.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
        let l1_size = u32::try_from(self.l1.len()).map_err(|_| too_big())?;
        h.extend_from_slice(&l1_size.to_be_bytes());
        h.extend_from_slice(&self.cluster_size.to_be_bytes()); // l1_table_offset
        h.extend_from_slice(&table_offset.to_be_bytes());
        let table_clusters = u32::try_from(table_clusters).map_err(|_| too_big())?;
        h.extend_from_slice(&table_clusters.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
        let (incompatible, compression_type) = match self.compression {
            Some(Compression::Zstd) => (INCOMPAT_COMPRESSION_TYPE, 1u8),
            Some(Compression::Deflate) | None => (0, 0),
        };
        h.extend_from_slice(&incompatible.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        h.push(compression_type);
        h.resize(HEADER_LENGTH as usize, 0);
        // Header extension area: only the end marker (type 0, length 0).
        h.extend_from_slice(&[0u8; 8]);
        Ok(h)
    }
}
