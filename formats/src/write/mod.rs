//! Writers used by `vdr convert`: a sparse raw writer, a QCOW2 (v3) writer and VMDK
//! writers (monolithicSparse, streamOptimized, monolithicFlat), fed by a parallel,
//! ordered pipeline.
//!
//! What each file is for:
//! - `pipeline.rs`: cuts the virtual disk into cluster-aligned work units; `threads`
//!   workers prepare units (map, read, decompress input through `read_at`, compress
//!   output); the calling thread consumes them strictly in unit order, with a bounded
//!   window of units in flight, and reports progress. For qcow2 the consumer is the one
//!   writer, so the layout is the same for any thread count; for raw, where every byte's
//!   place is its virtual offset, the workers write their own units and the consumer only
//!   adds up the report (measured faster, see below).
//! - `gather.rs`: reading a unit: the extent map, the unreadable policy, the bytes.
//! - `raw.rs` + `copy.rs`: sparse raw output; long data runs of a file source go through
//!   `copy_file_range(2)`.
//! - `clusters.rs`: the worker side of qcow2 output: a unit's clusters, zero / plain /
//!   compressed.
//! - `qcow2.rs` + `refcount.rs` + `appender.rs`: the QCOW2 v3 layout (header, L1/L2,
//!   packed compressed clusters, refcounts streamed as they become final).
//! - `compress.rs`: deflate (4 KiB window, no header) and zstd cluster compression for
//!   qcow2, zlib streams for VMDK grains.
//! - `vmdk.rs`: VMDK output by subformat; `vmdk_sparse.rs` (monolithicSparse),
//!   `vmdk_stream.rs` (streamOptimized, VMware's layout), `vmdk_flat.rs` (monolithicFlat,
//!   through the raw writer), `vmdk_extent.rs` (header, markers, grain tables) and
//!   `vmdk_descriptor.rs` (the descriptor text). The sparse ones use the qcow2 worker side
//!   (`clusters.rs`) with 64 KiB grains as clusters.
//!
//! The output is created with `create_new` and is the only file written (monolithicFlat
//! also creates its `-flat` extent beside it, the same way). On error it is
//! removed again (it is ours: `create_new` made it), so a failed conversion leaves nothing
//! that looks like a finished image. The output is not fsync'ed (neither does qemu-img
//! convert with its default output cache mode: strace shows no sync call); callers that
//! need durability sync it.
//!
//! Memory is bounded by the pipeline window (at most `IN_FLIGHT_BUDGET` bytes of units,
//! but always one per worker and one more) plus, for qcow2, the L1 table and a few clusters
//! of metadata: it does not grow with the disk beyond the L1 (8 bytes per L2 table) and
//! the refcount table (8 bytes per refcount block). Measured peak RSS on a 4 GiB raw
//! disk holding 2 GiB of data: 2.5 MB for raw output, 27.5 MB for `qcow2 -c` with two
//! threads. VMDK output keeps one grain table and the grain directory (4 bytes per 32 MiB
//! of disk); same kind of disk (bench/gen-disk.py, read as raw), two threads: 16 MB for
//! monolithicSparse, 4 MB for monolithicFlat, 22 MB for streamOptimized.
//!
//! Raw output, same 4 GiB input on ext4 (medians of 5, machine loaded by other builds, so
//! the spread is wide: each set is one interleaved run):
//!
//! | set | vdr (2 threads, copy_file_range) | qemu-img | qemu-img -C |
//! |-----|----------------------------------|----------|-------------|
//! | 1   | 0.60 s                           | 0.96 s   | —           |
//! | 2   | 1.60 s                           | 1.68 s   | 1.76 s      |
//! | 3   | 1.32 s                           | 0.80 s   | 1.61 s      |
//! | 4   | 1.22 s                           | 1.07 s   | —           |
//!
//! With the qcow2 reader of the `qcow2` branch merged in a scratch build (same data as a
//! qcow2 made by `qemu-img convert`; medians of 5, loaded machine):
//!
//! | input → raw                      | vdr, 2 threads | qemu-img | qemu-img -C / -W |
//! |----------------------------------|----------------|----------|------------------|
//! | qcow2, 2 GiB of data             | 0.80 s         | 1.25 s   | 0.93 s (-C)      |
//! | qcow2 -c (deflate), medians of 3 | 13.8 s         | 12.1 s   | 11.8 s (-W)      |
//!
//! The compressed case is CPU-bound in inflate (74% of samples in zlib-rs inflate, inside
//! the reader's `read_at`): vdr used 11.3 s of CPU against qemu-img's 14.8 s, but with
//! two threads got 0.83 of the two cores the other builds left, where qemu-img's larger
//! thread pool got 1.3. On two idle cores that CPU time would be about 6 s of wall
//! (estimated, not measured: the machine was never idle while this was written).
//!
//! One writer thread issuing every copy took 0.79 s where the parallel workers took
//! 0.60 s; reading and writing through buffers instead of copy_file_range took 1.69 s
//! against 1.22 s (set 4). qcow2 output without compression: 1.29 s against qemu-img's
//! 0.77 s (one set), 1.57 s against 1.68 s (another).
//!
//! Compression level: deflate uses zlib's default level 6 (what qemu uses) with qemu's
//! 4 KiB window; zstd level 3 (zstd's default, what qemu uses). Measured 2026-11-26 on this
//! 2-core machine (loaded by parallel builds, so wall times are noisy; CPU times are
//! steadier), 1 GiB raw input with 512 MiB of text-like data, 64 KiB clusters:
//!
//! | output                        | wall   | CPU    | file size |
//! |-------------------------------|--------|--------|-----------|
//! | vdr deflate level 6, 2 threads| 4.2 s  | 7.2 s  | 302.5 MB  |
//! | vdr deflate level 6, 1 thread | 7.2 s  | 6.8 s  | 302.5 MB  |
//! | vdr deflate level 3, 1 thread | 7.5 s  | 5.8 s  | 302.6 MB  |
//! | vdr deflate level 1, 1 thread | 5.8 s  | 3.4 s  | 488.1 MB  |
//! | qemu-img -c                   | 20.0 s | 17.9 s | 320.0 MB  |
//! | qemu-img -c -W                | 12.6 s | 18.6 s | 320.0 MB  |
//! | vdr zstd, 2 threads           | 1.8 s  | 2.8 s  | 258.3 MB  |
//! | qemu-img -c zstd -W           | 3.1 s  | 4.2 s  | 258.3 MB  |
//!
//! (The 2-thread deflate run took 7.8–15 s with the same 7.4 s of CPU while other builds
//! held the cores; qemu-img's 64-thread pool wins more of a contended machine.)
//! zlib-rs level 1 is its "quick" strategy and barely compresses text; level 3 saves
//! 15% CPU for the same size, within the noise of this machine, so qemu's level stays.
//! zlib-rs with a 4 KiB window runs at ~75 MB/s per core here, twice qemu's zlib.

use std::path::Path;

use serde::Serialize;

use crate::disk::VirtualDisk;
use crate::error::Error;

mod appender;
mod clusters;
mod compress;
mod copy;
mod gather;
mod pipeline;
mod qcow2;
mod raw;
mod refcount;
mod vmdk;
mod vmdk_descriptor;
mod vmdk_extent;
mod vmdk_flat;
mod vmdk_sparse;
mod vmdk_stream;

pub use vmdk_flat::flat_extent_path;

/// Output formats `vdr convert` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Raw,
    Qcow2,
    Vmdk(VmdkSubformat),
}

/// The VMDK layouts `vdr convert` writes (the descriptor's `createType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VmdkSubformat {
    /// One sparse extent file with the descriptor inside; grains stored plain.
    MonolithicSparse,
    /// One compressed sparse extent with markers, grain directory and footer at the end
    /// (VMware's layout, what OVF/OVA packages carry).
    StreamOptimized,
    /// A descriptor file and a raw extent `NAME-flat.EXT` beside it.
    MonolithicFlat,
}

impl VmdkSubformat {
    /// The name used in descriptors and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VmdkSubformat::MonolithicSparse => "monolithicSparse",
            VmdkSubformat::StreamOptimized => "streamOptimized",
            VmdkSubformat::MonolithicFlat => "monolithicFlat",
        }
    }
}

/// Compression for compressed output clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Deflate,
    Zstd,
}

/// What to do with ranges the input cannot provide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnreadablePolicy {
    /// Stop with an error naming the range (default: never write wrong bytes silently).
    #[default]
    Fail,
    /// Write zeros there and list the range in the report. Input reads that fail are
    /// treated the same way: the failed extent is re-read in 4 KiB, then 512-byte pieces,
    /// and only the pieces that still fail are zeros and listed.
    Zeros,
}

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub format: OutputFormat,
    /// Compress data clusters: qcow2 output (either kind), or VMDK streamOptimized,
    /// whose grains are always deflate-compressed (`None` and `Deflate` both mean that).
    pub compression: Option<Compression>,
    /// Worker threads for compression / decompression; 0 means all cores.
    pub threads: usize,
    /// Cluster size of qcow2 output.
    pub cluster_size: u64,
    pub unreadable: UnreadablePolicy,
    /// The content ID (CID) of VMDK output; None picks a new one from the clock. Fixed
    /// values make the output reproducible.
    pub vmdk_cid: Option<u32>,
}

impl Default for ConvertOptions {
    fn default() -> ConvertOptions {
        ConvertOptions {
            format: OutputFormat::Raw,
            compression: None,
            threads: 0,
            cluster_size: 65536,
            unreadable: UnreadablePolicy::Fail,
            vmdk_cid: None,
        }
    }
}

/// A range of the input that could not be read and was written as zeros.
#[derive(Clone, Debug, Serialize)]
pub struct UnreadableRange {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What a conversion did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConvertReport {
    pub virtual_size: u64,
    /// Bytes of data written (not counting holes).
    pub data_bytes: u64,
    /// Bytes left as holes / zero clusters.
    pub zero_bytes: u64,
    pub unreadable: Vec<UnreadableRange>,
    /// Length of the output file.
    pub output_size: u64,
    /// Clusters stored compressed (qcow2 with compression).
    pub compressed_clusters: u64,
}

/// Converts `disk` (a layer or a chain: the leaf's view) into a new file at `out`, which
/// must not exist yet unless the caller removed it. `progress` is called with the number of
/// virtual bytes done so far.
pub fn convert(
    disk: &dyn VirtualDisk,
    out: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertReport, Error> {
    let path = out.display().to_string();
    let refused = match (options.format, options.compression) {
        (_, None) | (OutputFormat::Qcow2, _) => None,
        (OutputFormat::Vmdk(VmdkSubformat::StreamOptimized), Some(Compression::Deflate)) => None,
        (OutputFormat::Vmdk(VmdkSubformat::StreamOptimized), Some(Compression::Zstd)) => {
            Some("streamOptimized grains are deflate-compressed; zstd does not apply")
        }
        (OutputFormat::Raw | OutputFormat::Vmdk(_), Some(_)) => {
            Some("compression applies to qcow2 output only, and to vmdk streamOptimized (deflate)")
        }
    };
    if let Some(what) = refused {
        return Err(Error::Output {
            path,
            what: what.into(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    let result = match options.format {
        OutputFormat::Raw => convert_raw(disk, file, &path, options, progress),
        OutputFormat::Qcow2 => convert_qcow2(disk, file, &path, options, progress),
        OutputFormat::Vmdk(subformat) => {
            vmdk::convert_vmdk(disk, file, out, &path, subformat, options, progress)
        }
    };
    if result.is_err() {
        // Ours to remove: create_new made it. A removal failure leaves the error as it is.
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Most bytes of prepared units waiting for the writer (see `pipeline::Plan`).
const IN_FLIGHT_BUDGET: u64 = 24 << 20;

fn convert_raw(
    disk: &dyn VirtualDisk,
    file: std::fs::File,
    path: &str,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertReport, Error> {
    let size = disk.size();
    let target = raw::RawTarget::new(file, path, size)?;
    let mut report = ConvertReport {
        virtual_size: size,
        output_size: size,
        ..ConvertReport::default()
    };
    let plan = pipeline::Plan::new(size, raw::UNIT_LEN, options.threads, IN_FLIGHT_BUDGET);
    pipeline::run(
        plan,
        path,
        || Ok(Vec::new()),
        |buf, offset, len| target.write_unit(disk, offset, len, options.unreadable, buf),
        |offset, len, done| {
            raw::account(&mut report, done);
            progress(offset + len);
            Ok(())
        },
    )?;
    Ok(report)
}

fn convert_qcow2(
    disk: &dyn VirtualDisk,
    file: std::fs::File,
    path: &str,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertReport, Error> {
    let cluster_size = options.cluster_size;
    let mut writer =
        qcow2::Qcow2Writer::new(file, path, disk.size(), cluster_size, options.compression)?;
    convert_clusters(
        disk,
        path,
        cluster_size,
        options.compression.map(compress::Codec::from),
        options,
        progress,
        |offset, unit| writer.write_unit(offset, unit),
    )?;
    writer.finish()
}

/// Runs the cluster pipeline shared by the qcow2 and VMDK sparse writers: workers cut the
/// disk into units of whole `cluster_size` clusters, find the all-zero ones and compress
/// the others with `codec` (if any); `place` stores each unit, in unit order, and gives
/// its buffer back for reuse.
fn convert_clusters(
    disk: &dyn VirtualDisk,
    path: &str,
    cluster_size: u64,
    codec: Option<compress::Codec>,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
    mut place: impl FnMut(u64, clusters::ClusterUnit) -> Result<Vec<u8>, Error>,
) -> Result<(), Error> {
    let plan = pipeline::Plan::new(
        disk.size(),
        clusters::unit_len(cluster_size),
        options.threads,
        IN_FLIGHT_BUDGET,
    );
    let (recycle, recycled): clusters::Recycler = crossbeam_channel::bounded(plan.window);
    pipeline::run(
        plan,
        path,
        || {
            let compressor = codec
                .map(|codec| compress::ClusterCompressor::new(codec, cluster_size as usize, path))
                .transpose()?;
            Ok(clusters::ClusterWorker::new(
                cluster_size,
                options.unreadable,
                compressor,
                recycled.clone(),
            ))
        },
        |worker, offset, len| worker.prepare(disk, offset, len),
        |offset, len, unit| {
            let buffer = place(offset, unit)?;
            if buffer.capacity() > 0 {
                // Full pool: the buffer is simply freed.
                let _ = recycle.try_send(buffer);
            }
            progress(offset + len);
            Ok(())
        },
    )
}
