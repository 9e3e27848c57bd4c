//! Writers used by `vdr convert`: a sparse raw writer and a QCOW2 (v3) writer.
//! (API fixed; bodies being written.)

use std::path::Path;

use serde::Serialize;

use crate::disk::VirtualDisk;
use crate::error::Error;

/// Output formats `vdr convert` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Raw,
    Qcow2,
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
    /// Write zeros there and list the range in the report.
    Zeros,
}

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub format: OutputFormat,
    /// Compress data clusters (qcow2 output only).
    pub compression: Option<Compression>,
    /// Worker threads for compression / decompression; 0 means all cores.
    pub threads: usize,
    /// Cluster size of qcow2 output.
    pub cluster_size: u64,
    pub unreadable: UnreadablePolicy,
}

impl Default for ConvertOptions {
    fn default() -> ConvertOptions {
        ConvertOptions {
            format: OutputFormat::Raw,
            compression: None,
            threads: 0,
            cluster_size: 65536,
            unreadable: UnreadablePolicy::Fail,
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
    let _ = (disk, options, progress);
    Err(Error::Output {
        path: out.display().to_string(),
        what: "convert is not written yet".into(),
    })
}
