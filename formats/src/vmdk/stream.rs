//! streamOptimized pieces (VMware "Virtual Disk Format 1.1", "Stream-Optimized Compressed
//! Sparse Extents"): markers, compressed grains and, for a stream whose grain directory is
//! lost (no footer: a cut-off download or copy), an index built by scanning the markers
//! from the start.
//!
//! A marker is `val: u64, size: u32` then, for a grain (`size != 0`), `size` bytes of
//! zlib-wrapped deflate data for the grain at sector `val`; for metadata (`size == 0`), a
//! `type: u32` (0 end of stream, 1 grain table, 2 grain directory, 3 footer) and `val`
//! sectors of metadata after the marker's sector. Every marker starts on a sector.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error as CrateError;
use crate::source::SourceRef;

use super::grains::{Grain, GrainTables};

/// Bytes of a grain marker before the compressed data.
pub const GRAIN_MARKER_LEN: u64 = 12;
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
/// Inflated grains kept per extent.
const INFLATED_SLOTS: usize = 4;
/// Most grains a scan indexes (16 Mi grains: 1 TiB of 64 KiB grains).
const MAX_SCANNED_GRAINS: usize = 16 << 20;

/// One marker as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub val: u64,
    pub size: u32,
    pub kind: u32,
}

impl Marker {
    pub fn parse(bytes: &[u8; 16]) -> Marker {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *bytes;
        Marker {
            val: u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            size: u32::from_le_bytes([i, j, k, l]),
            kind: u32::from_le_bytes([m, n, o, p]),
        }
    }
}

/// Grains found by scanning a stream whose grain directory is missing.
pub struct StreamIndex {
    /// (grain index, marker offset), sorted by grain index.
    pub grains: Vec<(u64, u64)>,
    /// Grains below this index that were not found are holes (unallocated): the stream
    /// was read in full up to here. At or above it, a missing grain is unreadable.
    pub horizon: u64,
    /// Why grains at and above the horizon are unreadable.
    pub cut: String,
}

impl StreamIndex {
    /// The grain at `index` and how many grains from it read the same way (see
    /// `GrainTables::grain_run`): a hole runs up to the next grain found or the horizon.
    pub fn grain_run(&self, index: u64) -> (Grain, u64) {
        match self.grains.binary_search_by_key(&index, |&(g, _)| g) {
            Ok(i) => match self.grains.get(i) {
                Some(&(_, host)) => (Grain::Compressed { host }, 1),
                None => (Grain::Unreadable(self.cut.clone()), 1),
            },
            Err(i) => {
                let next = self.grains.get(i).map_or(u64::MAX, |&(g, _)| g);
                if index < self.horizon {
                    (Grain::Unallocated, next.min(self.horizon) - index)
                } else {
                    (Grain::Unreadable(self.cut.clone()), next - index)
                }
            }
        }
    }
}

/// What a scan of a stream found.
pub struct Scan {
    pub index: StreamIndex,
    /// Byte offset where the scan stopped, and why.
    pub stopped_at: u64,
    pub why: String,
}

/// Scans the markers of a stream from `start` (a byte offset, sector aligned). VMware
/// writes grains in increasing LBA order, so a grain absent below the last complete one
/// is a hole; everything from the first grain that was cut off (or past the last one
/// found when the stream simply ends) is unreadable.
pub fn scan(
    source: &SourceRef,
    start: u64,
    grain_size: u64,
    capacity: u64,
) -> Result<Scan, CrateError> {
    let len = source.len();
    let mut grains: Vec<(u64, u64)> = Vec::new();
    let mut pos = start;
    let grain_sectors = grain_size / 512;
    let (stopped_at, why) = loop {
        if pos.saturating_add(512) > len {
            break (
                pos,
                format!("the file ends at {len:#x} before an end-of-stream marker"),
            );
        }
        let mut head = [0u8; 16];
        source
            .read_exact_at(&mut head, pos)
            .map_err(|e| CrateError::io(source.name(), pos, "stream marker", e))?;
        let marker = Marker::parse(&head);
        if marker.size != 0 {
            let end = pos
                .checked_add(GRAIN_MARKER_LEN + u64::from(marker.size))
                .map(|e| e.div_ceil(512) * 512);
            let Some(end) = end.filter(|&e| e <= len) else {
                break (
                    pos,
                    format!("the grain at {pos:#x} is cut by the end of the file"),
                );
            };
            if !marker.val.is_multiple_of(grain_sectors)
                || marker.val.saturating_mul(512) >= capacity
            {
                break (
                    pos,
                    format!("bad grain marker at {pos:#x} (sector {:#x})", marker.val),
                );
            }
            if grains.len() >= MAX_SCANNED_GRAINS {
                break (pos, format!("more than {MAX_SCANNED_GRAINS} grains"));
            }
            grains.push((marker.val / grain_sectors, pos));
            pos = end;
            continue;
        }
        match marker.kind {
            MARKER_EOS => break (pos, "end-of-stream marker".to_string()),
            MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                let skip = marker.val.checked_add(1).and_then(|s| s.checked_mul(512));
                match skip.and_then(|s| pos.checked_add(s)) {
                    Some(next) => pos = next,
                    None => break (pos, format!("bad metadata marker at {pos:#x}")),
                }
            }
            other => break (pos, format!("unknown marker type {other} at {pos:#x}")),
        }
    };
    grains.sort_unstable();
    grains.dedup_by_key(|g| g.0);
    let complete = why == "end-of-stream marker";
    let horizon = if complete {
        u64::MAX
    } else {
        grains.last().map_or(0, |&(g, _)| g.saturating_add(1))
    };
    Ok(Scan {
        index: StreamIndex {
            grains,
            horizon,
            cut: format!("the stream was cut off ({why}); this grain was not found before the cut"),
        },
        stopped_at,
        why,
    })
}

/// The last few inflated grains, keyed by marker offset. Inflation happens outside the
/// lock, so several threads decompress different grains at once.
#[derive(Default)]
pub struct InflatedCache {
    slots: Mutex<Vec<(u64, Arc<[u8]>)>>,
}

impl InflatedCache {
    fn get(&self, host: u64) -> Option<Arc<[u8]>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, g)| g.clone())
    }

    fn put(&self, host: u64, grain: Arc<[u8]>) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= INFLATED_SLOTS {
            slots.remove(0);
        }
        slots.push((host, grain));
    }
}

impl GrainTables {
    /// The inflated content of the compressed grain `index` stored at `host`. Shorter than
    /// a grain only for a last grain cut by the extent's end.
    pub fn inflate(&self, host: u64, index: u64) -> Result<Result<Arc<[u8]>, String>, CrateError> {
        if let Some(g) = self.inflated.get(host) {
            return Ok(Ok(g));
        }
        let grain_size = self.geometry.grain_size;
        let len = self.source.len();
        let (data_at, stored) = if self.markers {
            let mut head = [0u8; 12];
            self.source
                .read_exact_at(&mut head, host)
                .map_err(|e| CrateError::io(&self.file, host, "grain marker", e))?;
            let [a, b, c, d, e, f, g, h, i, j, k, l] = head;
            let lba = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
            let size = u64::from(u32::from_le_bytes([i, j, k, l]));
            let expected = index.saturating_mul(grain_size / 512);
            if lba != expected {
                return Ok(Err(format!(
                    "grain marker at {host:#x} is for sector {lba:#x}, not {expected:#x}"
                )));
            }
            if size == 0 || size > grain_size.saturating_mul(2).saturating_add(4096) {
                return Ok(Err(format!(
                    "grain marker at {host:#x} claims {size} compressed bytes"
                )));
            }
            (host + GRAIN_MARKER_LEN, size)
        } else {
            (host, grain_size.saturating_mul(2))
        };
        let available = len.saturating_sub(data_at).min(stored);
        if self.markers && available < stored {
            return Ok(Err(format!(
                "compressed grain at {host:#x} is cut by the end of the file"
            )));
        }
        let mut input = vec![0u8; usize::try_from(available).unwrap_or(0)];
        self.source
            .read_exact_at(&mut input, data_at)
            .map_err(|e| CrateError::io(&self.file, data_at, "compressed grain", e))?;
        let mut out = vec![0u8; usize::try_from(grain_size).unwrap_or(0)];
        let produced = match inflate_zlib(&input, &mut out) {
            Ok(n) => n,
            Err(what) => return Ok(Err(format!("compressed grain at {host:#x}: {what}"))),
        };
        out.truncate(produced);
        let grain: Arc<[u8]> = out.into();
        self.inflated.put(host, grain.clone());
        Ok(Ok(grain))
    }
}

/// Inflates one zlib stream into `out`; returns the bytes produced. Input after the
/// stream's end is ignored; a stream that would produce more than `out` is an error.
pub fn inflate_zlib(input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    use flate2::{Decompress, FlushDecompress, Status};
    if let Some(n) = crate::inflate::zlib(input, out) {
        return Ok(n);
    }
    let mut z = Decompress::new(true);
    loop {
        let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
        let produced = usize::try_from(z.total_out()).unwrap_or(usize::MAX);
        let (Some(rest_in), Some(rest_out)) = (input.get(consumed..), out.get_mut(produced..))
        else {
            return Err("deflate stream position out of bounds".into());
        };
        let status = z
            .decompress(rest_in, rest_out, FlushDecompress::Finish)
            .map_err(|e| format!("zlib: {e}"))?;
        let now = usize::try_from(z.total_out()).unwrap_or(usize::MAX);
        match status {
            Status::StreamEnd => return Ok(now),
            _ if now == out.len() => {
                // Full: fine only if the stream ends right here.
                let mut probe = [0u8; 1];
                let rest = input
                    .get(usize::try_from(z.total_in()).unwrap_or(usize::MAX)..)
                    .unwrap_or_default();
                return match z.decompress(rest, &mut probe, FlushDecompress::Finish) {
                    Ok(Status::StreamEnd) if z.total_out() as usize == out.len() => Ok(now),
                    _ => Err(format!("inflates to more than {} bytes", out.len())),
                };
            }
            _ if z.total_in() as usize == consumed && now == produced => {
                return Err(format!(
                    "zlib stream ends early after {now} bytes (from {} input bytes)",
                    input.len()
                ))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zlib_grain_with_trailing_padding_inflates() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let mut s = zlib(&data);
        s.extend_from_slice(&[0u8; 300]);
        let mut out = vec![0u8; 65536];
        assert_eq!(inflate_zlib(&s, &mut out).unwrap(), 65536);
        assert_eq!(out, data);
    }

    #[test]
    fn truncated_zlib_is_an_error_and_oversized_too() {
        let data = vec![7u8; 65536];
        let s = zlib(
            &(0..65536u32)
                .map(|i| (i * 31 % 256) as u8)
                .collect::<Vec<_>>(),
        );
        let mut out = vec![0u8; 65536];
        assert!(inflate_zlib(&s[..s.len() / 2], &mut out).is_err());
        let big = zlib(&[data.clone(), data].concat());
        assert!(inflate_zlib(&big, &mut out).is_err());
    }

    #[test]
    fn short_stream_gives_its_length() {
        let s = zlib(&[1u8; 1000]);
        let mut out = vec![0u8; 4096];
        assert_eq!(inflate_zlib(&s, &mut out).unwrap(), 1000);
    }
}
