//! Compressed clusters (qcow2.txt "Compressed Clusters Descriptor", header
//! compression_type): raw deflate (no zlib wrapper) or one zstd frame, each inflating to
//! exactly one cluster. The descriptor's sector count may overrun the stream and the end
//! of the file: read what exists and stop at the stream's end, as qemu's
//! `qcow2_zlib_decompress`/`qcow2_zstd_decompress` do. A small shared cache keeps the
//! last clusters inflated, since sequential readers ask for pieces of one cluster in turn.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};

use flate2::{Decompress, FlushDecompress, Status};

use super::header::CompressionType;

/// Inflated clusters kept (per image).
const CACHE_SLOTS: usize = 4;

/// The last few inflated clusters, keyed by the stream's host offset.
#[derive(Default)]
pub struct DecompressedCache {
    slots: Mutex<Vec<(u64, Arc<[u8]>)>>,
}

impl DecompressedCache {
    pub fn get(&self, host: u64) -> Option<Arc<[u8]>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, c)| c.clone())
    }

    pub fn put(&self, host: u64, cluster: Arc<[u8]>) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= CACHE_SLOTS {
            slots.remove(0);
        }
        slots.push((host, cluster));
    }
}

/// Inflates `input` into `out` (one cluster). Fails unless exactly `out.len()` bytes come
/// out; bytes after the end of the stream are ignored.
pub fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match kind {
        CompressionType::Deflate => inflate_raw(input, out),
        CompressionType::Zstd => zstd_frame(input, out),
    }
}

thread_local! {
    /// One inflater per thread, reset for every cluster: creating zlib or zstd state per
    /// cluster costs more than inflating a 64 KiB cluster of text.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The compressed stream as read from the file, reused by the thread's next cluster.
    static STREAM: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `read` to fill a reusable per-thread buffer of `len` bytes with a compressed
/// stream, then `inflate` on it.
pub fn with_stream_buffer<T>(
    len: usize,
    read: impl FnOnce(&mut [u8]) -> Result<(), T>,
    inflate: impl FnOnce(&[u8]) -> Result<(), T>,
) -> Result<(), T> {
    STREAM.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.resize(len, 0);
            read(&mut buf)?;
            inflate(&buf)
        }
        // Re-entered on the same thread (cannot happen today): use a fresh buffer.
        Err(_) => {
            let mut buf = vec![0u8; len];
            read(&mut buf)?;
            inflate(&buf)
        }
    })
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    // libdeflate inflates a whole cluster about twice as fast as zlib, but only a stream
    // that ends inside the cluster; a stream that merely fills it (qemu accepts those)
    // or any other refusal goes to the streaming inflater, which decides.
    let whole = crate::inflate::raw_deflate(input, out);
    if whole == Some(out.len()) {
        return Ok(());
    }
    INFLATER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let inflater = slot.get_or_insert_with(|| Decompress::new(false));
            inflater.reset(false);
            inflate_with(inflater, input, out)
        }
        Err(_) => inflate_with(&mut Decompress::new(false), input, out),
    })
}

fn inflate_with(inflater: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    loop {
        let consumed = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let produced = usize::try_from(inflater.total_out()).unwrap_or(usize::MAX);
        let (Some(rest_in), Some(rest_out)) = (input.get(consumed..), out.get_mut(produced..))
        else {
            return Err("deflate stream position out of bounds".into());
        };
        if rest_out.is_empty() {
            return Ok(());
        }
        let status = inflater
            .decompress(rest_in, rest_out, FlushDecompress::Finish)
            .map_err(|e| format!("deflate: {e}"))?;
        let total_out = inflater.total_out();
        if total_out == out.len() as u64 {
            return Ok(());
        }
        let stalled = inflater.total_in() == consumed as u64 && total_out == produced as u64;
        if status == Status::StreamEnd || stalled {
            return Err(format!(
                "deflate stream gives {total_out} of {} bytes (from {} input bytes)",
                out.len(),
                input.len()
            ));
        }
    }
}

fn zstd_frame(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    // Decode exactly the first frame: the sector-rounded stored size may include bytes
    // of the next compressed cluster, which would otherwise be taken for another frame.
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(input)
        .map_err(|code| format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))?;
    let frame = input
        .get(..frame_len)
        .ok_or_else(|| "zstd frame longer than the data".to_string())?;
    let n = ZSTD.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
            }
            match slot.as_mut() {
                Some(dctx) => dctx
                    .decompress_to_buffer(frame, out)
                    .map_err(|e| format!("zstd: {e}")),
                None => Err("zstd: no decompression context".to_string()),
            }
        }
        Err(_) => zstd::bulk::decompress_to_buffer(frame, out).map_err(|e| format!("zstd: {e}")),
    })?;
    if n != out.len() {
        return Err(format!(
            "zstd frame inflates to {n} bytes, not {}",
            out.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn raw_deflate_with_trailing_garbage_inflates_one_cluster() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut stream = deflate_raw(&data);
        stream.extend_from_slice(&[0xff; 300]);
        let mut out = vec![0u8; 4096];
        decompress(CompressionType::Deflate, &stream, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn stream_that_fills_the_cluster_without_ending_still_inflates() {
        // A sync-flushed stream has no final block: libdeflate refuses it, qemu (and the
        // streaming fallback) accept it once the cluster is full.
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
        let mut stream = Vec::with_capacity(8192);
        compress
            .compress_vec(&data, &mut stream, flate2::FlushCompress::Sync)
            .unwrap();
        let mut out = vec![0u8; 4096];
        decompress(CompressionType::Deflate, &stream, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn truncated_deflate_is_an_error() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
        let stream = deflate_raw(&data);
        let mut out = vec![0u8; 65536];
        let half = stream.len() / 2;
        assert!(decompress(CompressionType::Deflate, &stream[..half], &mut out).is_err());
    }

    #[test]
    fn zstd_frame_followed_by_other_bytes_decodes_only_the_frame() {
        let data = vec![0x5au8; 8192];
        let mut stream = zstd::bulk::compress(&data, 3).unwrap();
        stream.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        let mut out = vec![0u8; 8192];
        decompress(CompressionType::Zstd, &stream, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_frame_of_the_wrong_size_is_an_error() {
        let stream = zstd::bulk::compress(&[1u8; 100], 3).unwrap();
        let mut out = vec![0u8; 4096];
        assert!(decompress(CompressionType::Zstd, &stream, &mut out).is_err());
    }
}
