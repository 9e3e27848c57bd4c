//! `map` and `read_at` on top of the shared cluster lookup. Reads coalesce runs of data
//! clusters that are contiguous in the host file into one positional read, and inflate
//! compressed clusters through a small cache.

use std::sync::Arc;

use crate::disk::{check_range, clip_end, push_merged, Extent, ExtentKind, ParseMode};
use crate::error::Error as CrateError;

use super::compressed::{decompress, with_stream_buffer};
use super::lookup::Mapping;
use super::{Error, Qcow2Disk};

/// A run of data waiting to be read: `len` bytes at `host` into `buf[start..]`.
struct PendingRead {
    start: usize,
    host: u64,
    len: usize,
}

impl Qcow2Disk {
    pub(super) fn map_range(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CrateError> {
        self.refuse_encrypted()?;
        let end = clip_end(offset, len, self.virtual_size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        self.walk(offset, end, &mut |at, len, mapping| {
            let kind = match mapping {
                Mapping::Zero => ExtentKind::Zero,
                Mapping::Unallocated => ExtentKind::Unallocated,
                Mapping::Data { host } => ExtentKind::Data {
                    source: self.data.clone(),
                    at: host,
                },
                Mapping::Compressed { host, .. } => ExtentKind::Compressed {
                    source: self.source.clone(),
                    at: host,
                },
                Mapping::Unreadable(reason) => ExtentKind::Unreadable { reason },
            };
            push_merged(
                &mut out,
                Extent {
                    offset: at,
                    len,
                    kind,
                    depth: 0,
                },
            );
            Ok(())
        })?;
        Ok(out)
    }

    pub(super) fn read_range(&self, buf: &mut [u8], offset: u64) -> Result<(), CrateError> {
        check_range(&self.file, offset, buf.len() as u64, self.virtual_size)?;
        self.refuse_encrypted()?;
        let end = offset + buf.len() as u64;
        let mut pending: Option<PendingRead> = None;
        self.walk(offset, end, &mut |at, len, mapping| {
            // `at` and `len` lie inside [offset, end), so they index `buf`.
            let start = usize::try_from(at - offset).unwrap_or(usize::MAX);
            let piece_len = usize::try_from(len).unwrap_or(usize::MAX);
            if let Mapping::Data { host } = mapping {
                if let Some(p) = pending.as_mut() {
                    if p.start + p.len == start && p.host + p.len as u64 == host {
                        p.len += piece_len;
                        return Ok(());
                    }
                }
                if let Some(p) = pending.take() {
                    self.read_data(buf, p)?;
                }
                pending = Some(PendingRead {
                    start,
                    host,
                    len: piece_len,
                });
                return Ok(());
            }
            if let Some(p) = pending.take() {
                self.read_data(buf, p)?;
            }
            let piece = buf
                .get_mut(start..start.saturating_add(piece_len))
                .ok_or_else(|| CrateError::OutOfRange {
                    file: self.file.clone(),
                    offset: at,
                    len,
                    size: self.virtual_size,
                })?;
            match mapping {
                Mapping::Zero | Mapping::Unallocated => piece.fill(0),
                Mapping::Compressed { host, len: stored }
                    if piece.len() as u64 == self.header.cluster_size =>
                {
                    // A whole cluster: inflate straight into the caller's buffer.
                    self.inflate_into(host, stored, at, piece)?;
                }
                Mapping::Compressed { host, len: stored } => {
                    let cluster = self.inflate(host, stored, at)?;
                    let within = usize::try_from(at % self.header.cluster_size).unwrap_or(0);
                    let src = cluster.get(within..within + piece.len()).ok_or_else(|| {
                        CrateError::Unreadable {
                            file: self.file.clone(),
                            offset: at,
                            len,
                            reason: "compressed cluster shorter than the range".into(),
                        }
                    })?;
                    piece.copy_from_slice(src);
                }
                Mapping::Unreadable(reason) => {
                    return Err(CrateError::Unreadable {
                        file: self.file.clone(),
                        offset: at,
                        len,
                        reason,
                    })
                }
                Mapping::Data { .. } => {}
            }
            Ok(())
        })?;
        if let Some(p) = pending {
            self.read_data(buf, p)?;
        }
        Ok(())
    }

    /// Reads one coalesced run of data clusters.
    fn read_data(&self, buf: &mut [u8], p: PendingRead) -> Result<(), CrateError> {
        let piece = buf
            .get_mut(p.start..p.start.saturating_add(p.len))
            .ok_or_else(|| CrateError::OutOfRange {
                file: self.file.clone(),
                offset: p.start as u64,
                len: p.len as u64,
                size: self.virtual_size,
            })?;
        self.data
            .read_exact_at(piece, p.host)
            .map_err(|e| CrateError::io(self.data.name(), p.host, "data cluster", e))
    }

    /// The inflated cluster whose stream starts at `host` (`stored` bytes as the
    /// descriptor says), through the cache. `guest` is only for messages.
    fn inflate(&self, host: u64, stored: u64, guest: u64) -> Result<Arc<[u8]>, CrateError> {
        if let Some(c) = self.decompressed.get(host) {
            return Ok(c);
        }
        let mut cluster = vec![0u8; usize::try_from(self.header.cluster_size).unwrap_or(0)];
        self.inflate_into(host, stored, guest, &mut cluster)?;
        let cluster: Arc<[u8]> = cluster.into();
        self.decompressed.put(host, cluster.clone());
        Ok(cluster)
    }

    /// Inflates the cluster whose stream starts at `host` into `out` (one cluster long).
    fn inflate_into(
        &self,
        host: u64,
        stored: u64,
        guest: u64,
        out: &mut [u8],
    ) -> Result<(), CrateError> {
        // The stored size is sector-rounded and may run past the end of the file: read
        // what exists (qcow2.txt: "decompression stops when it has produced a cluster").
        let available = self.source.len().saturating_sub(host).min(stored);
        let mut failure = None;
        with_stream_buffer(
            usize::try_from(available).unwrap_or(0),
            |input| {
                self.source
                    .read_exact_at(input, host)
                    .map_err(|e| CrateError::io(&self.file, host, "compressed cluster", e))
            },
            |input| {
                if let Err(what) = decompress(self.header.compression, input, out) {
                    failure = Some(what);
                }
                Ok(())
            },
        )?;
        let Some(what) = failure else {
            return Ok(());
        };
        if self.mode == ParseMode::Salvage {
            let reason = self.damage(
                "compressed cluster",
                host,
                format!("(guest offset {guest:#x}) cannot be inflated: {what}"),
            )?;
            return Err(CrateError::Unreadable {
                file: self.file.clone(),
                offset: guest,
                len: self.header.cluster_size - guest % self.header.cluster_size,
                reason,
            });
        }
        Err(Error::Decompress {
            file: self.file.clone(),
            offset: host,
            guest,
            what,
        }
        .into())
    }
}
