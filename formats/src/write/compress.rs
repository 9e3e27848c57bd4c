//! Compression of one output cluster: a qcow2 cluster (qcow2.txt, "Compressed Clusters
//! Descriptor" and header field 104 `compression_type`) or a VMDK grain (VMware "Virtual
//! Disk Format 1.1", "Stream-Optimized Compressed Sparse Extents": grains are deflate
//! data in a zlib stream, RFC 1950).
//!
//! - [`Codec::Qcow2Deflate`] (compression_type 0): a raw deflate stream, no zlib header,
//!   with a 4 KiB window, because qemu inflates with `inflateInit2(-12)`
//!   (block/qcow2-threads.c): a stream made with a larger window may refer further back
//!   than qemu's window and fail to decompress there.
//! - [`Codec::Zstd`] (compression_type 1): one zstd frame per cluster.
//! - [`Codec::VmdkZlib`]: a zlib stream (2-byte header, deflate, Adler-32), which qemu
//!   reads with `uncompress()` and VMware's stream reader with `java.util.zip.Inflater`;
//!   both take any window up to 32 KiB, and the header says which one was used. The
//!   window and level are chosen in `vmdk_stream.rs` (see its module doc).
//!
//! Like qemu, a qcow2 cluster is stored compressed only when the result is smaller than
//! the cluster (qemu compresses into `cluster_size - 1` bytes and writes the cluster plain
//! when that does not fit). A VMDK grain is always kept compressed: a compressed sparse
//! extent has no way to store a grain plain, and a zlib stream of incompressible data is
//! only a few bytes longer than the grain.
//!
//! Levels: deflate level [`DEFLATE_LEVEL`], zstd level [`ZSTD_LEVEL`], as qemu (zlib's
//! default 6, zstd's default 3); the measurements behind keeping them are in the module
//! doc of `write`.

use crate::error::Error;

use super::Compression;

/// Deflate level of compressed VMDK grains (why: the vmdk_stream module doc).
pub(super) const GRAIN_DEFLATE_LEVEL: u32 = 6;
/// Deflate window of compressed VMDK grains, as log2 bytes (the vmdk_stream module doc).
pub(super) const GRAIN_WINDOW_BITS: u8 = 15;

/// Deflate level for compressed clusters (see the module doc for the measurement).
pub(super) const DEFLATE_LEVEL: u32 = 6;

/// Zstd level for compressed clusters: zstd's own default, as qemu uses.
pub(super) const ZSTD_LEVEL: i32 = 3;

/// qemu's deflate window for qcow2 clusters: 2^12 bytes.
const DEFLATE_WINDOW_BITS: u8 = 12;

/// What a compressed cluster is made of: the codec and its framing, fixed by the output
/// format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    /// qcow2 compression_type 0: raw deflate with a 4 KiB window.
    Qcow2Deflate,
    /// qcow2 compression_type 1: one zstd frame.
    Zstd,
    /// A VMDK compressed grain: a zlib stream.
    VmdkZlib,
}

impl From<Compression> for Codec {
    /// The codec of a qcow2 `compression_type`.
    fn from(kind: Compression) -> Codec {
        match kind {
            Compression::Deflate => Codec::Qcow2Deflate,
            Compression::Zstd => Codec::Zstd,
        }
    }
}

/// A per-worker compressor; its state is reused from cluster to cluster.
pub(super) struct ClusterCompressor {
    engine: Engine,
    /// Keep the compressed form even when it is not smaller (VMDK grains).
    always: bool,
    /// Room for the whole compressed stream, even of incompressible input (twice the
    /// cluster). The stream is always finished and then judged by its length: with only
    /// `cluster_size - 1` bytes of room (qemu's way), zlib-rs 0.6.8 with a 4 KiB window
    /// panicked ("buf.len() must fit in remaining()", deflate.rs) on partly random
    /// clusters in the write_qcow2 tests.
    scratch: Vec<u8>,
}

enum Engine {
    Deflate(flate2::Compress),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl ClusterCompressor {
    /// A compressor for clusters of `cluster_size` bytes.
    pub fn new(codec: Codec, cluster_size: usize, path: &str) -> Result<Self, Error> {
        let engine = match codec {
            Codec::Qcow2Deflate => Engine::Deflate(flate2::Compress::new_with_window_bits(
                flate2::Compression::new(DEFLATE_LEVEL),
                false,
                DEFLATE_WINDOW_BITS,
            )),
            Codec::VmdkZlib => Engine::Deflate(flate2::Compress::new_with_window_bits(
                flate2::Compression::new(GRAIN_DEFLATE_LEVEL),
                true,
                GRAIN_WINDOW_BITS,
            )),
            Codec::Zstd => Engine::Zstd(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| {
                Error::Output {
                    path: path.to_string(),
                    what: format!("cannot set up zstd: {e}"),
                }
            })?),
        };
        Ok(ClusterCompressor {
            engine,
            always: codec == Codec::VmdkZlib,
            scratch: vec![0; cluster_size * 2 + 1024],
        })
    }

    /// Compresses `cluster` and appends the result to `out` when it is smaller than the
    /// cluster (or always, for VMDK grains); returns the compressed length, or None
    /// (nothing appended) when the cluster is better stored as it is.
    pub fn compress(&mut self, cluster: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let room = &mut self.scratch[..];
        let len = match &mut self.engine {
            Engine::Deflate(deflate) => {
                deflate.reset();
                match deflate.compress(cluster, room, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => usize::try_from(deflate.total_out()).ok()?,
                    // Ok / BufError: the stream did not end inside the room.
                    _ => return None,
                }
            }
            // Any error here means "did not fit" in practice (the parameters are fixed and
            // valid); storing the cluster plain is always correct.
            Engine::Zstd(zstd) => zstd.compress_to_buffer(cluster, room).ok()?,
        };
        if len == 0 || (len >= cluster.len() && !self.always) {
            return None;
        }
        out.extend_from_slice(self.scratch.get(..len)?);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn text(len: usize) -> Vec<u8> {
        let words = [
            "disk ",
            "cluster ",
            "qcow2 ",
            "refcount ",
            "table ",
            "zero ",
        ];
        let mut out = Vec::new();
        let mut i = 7u32;
        while out.len() < len {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(words[(i >> 16) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn deflate_cluster_inflates_with_a_4k_window() {
        let cluster = text(65536);
        let mut c = ClusterCompressor::new(Codec::Qcow2Deflate, 65536, "t").unwrap();
        let mut out = Vec::new();
        let n = c.compress(&cluster, &mut out).unwrap();
        assert_eq!(n, out.len());
        let mut inflate = flate2::Decompress::new_with_window_bits(false, 12);
        let mut back = vec![0u8; 65536];
        inflate
            .decompress(&out, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, cluster);
    }

    #[test]
    fn zstd_cluster_is_one_frame() {
        let cluster = text(4096);
        let mut c = ClusterCompressor::new(Codec::Zstd, 4096, "t").unwrap();
        let mut out = Vec::new();
        c.compress(&cluster, &mut out).unwrap();
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&out[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, cluster);
    }

    #[test]
    fn incompressible_clusters_are_refused_and_nothing_is_appended() {
        let mut x = 1u64;
        let random: Vec<u8> = (0..2 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for size in [512, 4096, 65536, 2 << 20] {
            for kind in [Compression::Deflate, Compression::Zstd] {
                let mut c = ClusterCompressor::new(kind.into(), size, "t").unwrap();
                let mut out = vec![9u8];
                assert_eq!(c.compress(&random[..size], &mut out), None);
                assert_eq!(out, vec![9u8]);
            }
        }
    }

    #[test]
    fn one_compressor_serves_many_clusters_of_any_kind() {
        let mut x = 3u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let text = text(65536);
        let mut c = ClusterCompressor::new(Codec::Qcow2Deflate, 65536, "t").unwrap();
        for cluster in [&random, &random, &text, &random, &text, &text] {
            let mut out = Vec::new();
            if c.compress(cluster, &mut out).is_some() {
                let mut inflate = flate2::Decompress::new_with_window_bits(false, 12);
                let mut back = vec![0u8; 65536];
                inflate
                    .decompress(&out, &mut back, flate2::FlushDecompress::Finish)
                    .unwrap();
                assert_eq!(&back, cluster);
            }
        }
    }

    #[test]
    fn half_random_clusters_still_compress_and_inflate() {
        // Incompressible stretches inside a compressible cluster make deflate emit stored
        // blocks; zlib-rs 0.6 panicked there when the output room was short.
        let mut cluster = text(65536);
        let mut x = 5u64;
        for b in &mut cluster[10_000..40_000] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let mut c = ClusterCompressor::new(Codec::Qcow2Deflate, 65536, "t").unwrap();
        let mut out = Vec::new();
        c.compress(&cluster, &mut out).unwrap();
        let mut inflate = flate2::Decompress::new_with_window_bits(false, 12);
        let mut back = vec![0u8; 65536];
        inflate
            .decompress(&out, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, cluster);
    }

    #[test]
    fn vmdk_grains_are_zlib_streams_kept_even_when_larger() {
        let mut x = 7u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let text = text(65536);
        let mut c = ClusterCompressor::new(Codec::VmdkZlib, 65536, "t").unwrap();
        for grain in [&random, &text] {
            let mut out = Vec::new();
            let n = c.compress(grain, &mut out).unwrap();
            assert_eq!(n, out.len());
            // A plain zlib decoder (32 KiB window, header checked) reads it back.
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(&back, grain);
        }
    }
}
