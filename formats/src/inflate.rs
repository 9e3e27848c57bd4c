//! Whole-buffer inflation with libdeflate, shared by the formats whose compressed units
//! (qcow2 clusters, VMDK grains) are small and of known maximum size.
//!
//! libdeflate inflates such a buffer about twice as fast as zlib-rs, which decides the
//! speed of converting compressed images. It only accepts a stream that ends inside the
//! output buffer; callers fall back to flate2 (zlib-rs), which decides every other case
//! exactly as before, so this is purely a fast path: `None` means "ask the streaming
//! inflater", never "the data is bad".

use std::cell::RefCell;

use libdeflater::Decompressor;

thread_local! {
    /// One decompressor per thread: setting one up costs more than inflating a grain.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

fn with_decompressor(f: impl FnOnce(&mut Decompressor) -> Option<usize>) -> Option<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        f(slot.get_or_insert_with(Decompressor::new))
    })
}

/// Inflates a raw deflate stream (no header) into `out`; the number of bytes produced, or
/// None when libdeflate cannot decide (the caller then uses the streaming inflater).
pub fn raw_deflate(input: &[u8], out: &mut [u8]) -> Option<usize> {
    with_decompressor(|d| d.deflate_decompress(input, out).ok())
}

/// Inflates a zlib-wrapped stream into `out`, checksum checked; as [`raw_deflate`].
pub fn zlib(input: &[u8], out: &mut [u8]) -> Option<usize> {
    with_decompressor(|d| d.zlib_decompress(input, out).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn zlib_stream_inflates_and_trailing_bytes_are_ignored() {
        let data: Vec<u8> = (0..10000u32).map(|i| (i % 97) as u8).collect();
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut stream = enc.finish().unwrap();
        stream.extend_from_slice(&[0u8; 100]);
        let mut out = vec![0u8; 65536];
        assert_eq!(zlib(&stream, &mut out), Some(data.len()));
        assert_eq!(&out[..data.len()], &data[..]);
    }

    #[test]
    fn output_too_small_is_left_to_the_caller() {
        let data = vec![7u8; 8192];
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let stream = enc.finish().unwrap();
        let mut out = vec![0u8; 4096];
        assert_eq!(raw_deflate(&stream, &mut out), None);
    }
}
