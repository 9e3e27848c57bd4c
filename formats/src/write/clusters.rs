//! The worker side of the qcow2 and VMDK sparse writers: one unit of the disk turned into
//! clusters (qcow2 clusters, VMDK grains) ready to place: all-zero (left unallocated),
//! plain, or compressed (see `compress.rs`).
//!
//! Clusters that the extent map already says read as zeros are neither read nor checked,
//! and a unit without data allocates nothing. Buffers of plain data travel to the writer
//! and come back through a recycling channel, so a conversion reuses a few warm buffers
//! instead of faulting in fresh pages for every unit (the profile of the first version
//! spent about a third of its time in page faults and zeroing of new buffers).

use std::ops::Range;

use crossbeam_channel::{Receiver, Sender};

use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::Error;

use super::compress::ClusterCompressor;
use super::gather::{is_zero, map_unit, read_extent_salvaging, sort_unreadable};
use super::{UnreadablePolicy, UnreadableRange};

/// Work unit of the cluster writers: whole clusters, about 2 MiB.
pub(super) fn unit_len(cluster_size: u64) -> u64 {
    (2u64 << 20).max(cluster_size)
}

/// How one cluster of a unit is stored; ranges index [`ClusterUnit::bytes`].
pub(super) enum ClusterOut {
    Zero,
    Plain(Range<usize>),
    Compressed(Range<usize>),
}

/// What a worker prepared for one unit.
pub(super) struct ClusterUnit {
    pub bytes: Vec<u8>,
    pub clusters: Vec<ClusterOut>,
    pub unreadable: Vec<UnreadableRange>,
}

/// Buffers handed back by the writer for reuse.
pub(super) type Recycler = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

/// One worker's state.
pub(super) struct ClusterWorker {
    cluster_size: u64,
    policy: UnreadablePolicy,
    compressor: Option<ClusterCompressor>,
    /// Input buffer of a compressing worker (its output goes into a recycled buffer).
    input: Vec<u8>,
    recycled: Receiver<Vec<u8>>,
}

impl ClusterWorker {
    pub fn new(
        cluster_size: u64,
        policy: UnreadablePolicy,
        compressor: Option<ClusterCompressor>,
        recycled: Receiver<Vec<u8>>,
    ) -> ClusterWorker {
        ClusterWorker {
            cluster_size,
            policy,
            compressor,
            input: Vec::new(),
            recycled,
        }
    }

    /// Reads the unit `[offset, offset+len)`, finds its zero clusters and compresses the
    /// others if asked.
    pub fn prepare(
        &mut self,
        disk: &dyn VirtualDisk,
        offset: u64,
        len: u64,
    ) -> Result<ClusterUnit, Error> {
        let mut unreadable = Vec::new();
        let extents = map_unit(disk, offset, len, self.policy, &mut unreadable)?;
        let cs = self.cluster_size;
        let count = usize::try_from(len.div_ceil(cs)).map_err(|_| too_big(disk, offset, len))?;
        // Clusters holding any byte that has to be read.
        let mut has_data = vec![false; count];
        for extent in &extents {
            if is_stored(&extent.kind) {
                let first = (extent.offset - offset) / cs;
                let last = (extent.end() - 1 - offset) / cs;
                has_data[first as usize..=last as usize].fill(true);
            }
        }
        if !has_data.contains(&true) {
            return Ok(ClusterUnit {
                bytes: Vec::new(),
                clusters: (0..count).map(|_| ClusterOut::Zero).collect(),
                unreadable,
            });
        }

        // The last cluster of a disk whose size is not a cluster multiple is padded with
        // zeros, as qemu pads it before compressing.
        let padded = count * cs as usize;
        let mut buf = match self.compressor {
            Some(_) => std::mem::take(&mut self.input),
            None => self.recycled.try_recv().unwrap_or_default(),
        };
        buf.resize(padded, 0);
        buf[len as usize..].fill(0);
        for extent in &extents {
            let start = (extent.offset - offset) as usize;
            let end = start + extent.len as usize;
            // Zero kinds are filled too: a reused buffer holds an earlier unit's bytes.
            read_extent_salvaging(
                disk,
                extent,
                &mut buf[start..end],
                self.policy,
                &mut unreadable,
            )?;
        }
        sort_unreadable(&mut unreadable);

        let cs = cs as usize;
        let mut clusters = Vec::with_capacity(count);
        let bytes = match self.compressor.as_mut() {
            None => {
                for (i, cluster) in buf.chunks_exact(cs).enumerate() {
                    clusters.push(if !has_data[i] || is_zero(cluster) {
                        ClusterOut::Zero
                    } else {
                        ClusterOut::Plain(i * cs..(i + 1) * cs)
                    });
                }
                buf
            }
            Some(compressor) => {
                let mut out = self.recycled.try_recv().unwrap_or_default();
                out.clear();
                for (i, cluster) in buf.chunks_exact(cs).enumerate() {
                    let start = out.len();
                    clusters.push(if !has_data[i] || is_zero(cluster) {
                        ClusterOut::Zero
                    } else if let Some(n) = compressor.compress(cluster, &mut out) {
                        ClusterOut::Compressed(start..start + n)
                    } else {
                        out.extend_from_slice(cluster);
                        ClusterOut::Plain(start..start + cs)
                    });
                }
                self.input = buf;
                out
            }
        };
        Ok(ClusterUnit {
            bytes,
            clusters,
            unreadable,
        })
    }
}

/// Extents whose bytes must be read (everything else reads as zeros here).
fn is_stored(kind: &ExtentKind) -> bool {
    matches!(
        kind,
        ExtentKind::Data { .. } | ExtentKind::Compressed { .. }
    )
}

fn too_big(disk: &dyn VirtualDisk, offset: u64, len: u64) -> Error {
    Error::OutOfRange {
        file: disk.info().file,
        offset,
        len,
        size: disk.size(),
    }
}
