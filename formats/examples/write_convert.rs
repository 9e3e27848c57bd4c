//! Measures the writers outside the CLI: converts a raw image (or, once the qcow2 reader
//! lands, any image vdr opens) and prints the report and the throughput.
//!
//! `cargo run --release -p vdr-formats --example write_convert -- IN OUT raw|qcow2
//!  [none|deflate|zstd] [THREADS] [CLUSTER_SIZE]`
//!
//! With `VDR_BENCH_MMAP=1` a raw input is read through a mapping instead of a file, so no
//! copy offload happens: every byte goes through the workers' read path, as compressed
//! input does.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vdr_formats::raw::RawDisk;
use vdr_formats::{
    convert, open_disk, Compression, ConvertOptions, MmapSource, OpenOptions, OutputFormat,
    VirtualDisk,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, format, rest @ ..] = args.as_slice() else {
        return Err("usage: IN OUT raw|qcow2 [none|deflate|zstd] [THREADS] [CLUSTER]".into());
    };
    let mut options = ConvertOptions {
        format: match format.as_str() {
            "raw" => OutputFormat::Raw,
            _ => OutputFormat::Qcow2,
        },
        ..ConvertOptions::default()
    };
    options.compression = match rest.first().map(String::as_str) {
        Some("deflate") => Some(Compression::Deflate),
        Some("zstd") => Some(Compression::Zstd),
        _ => None,
    };
    if let Some(t) = rest.get(1) {
        options.threads = t.parse()?;
    }
    if let Some(c) = rest.get(2) {
        options.cluster_size = c.parse()?;
    }
    let disk: Box<dyn VirtualDisk> = if std::env::var_os("VDR_BENCH_MMAP").is_some() {
        Box::new(RawDisk::new(Arc::new(MmapSource::open(input)?)))
    } else {
        Box::new(open_disk(Path::new(input), &OpenOptions::default())?)
    };
    let start = Instant::now();
    let report = convert(disk.as_ref(), Path::new(output), &options, &|_| {})?;
    let secs = start.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(&report)?);
    println!(
        "{secs:.3} s, {:.0} MB/s of virtual disk, {:.0} MB/s of data",
        report.virtual_size as f64 / secs / 1e6,
        report.data_bytes as f64 / secs / 1e6
    );
    Ok(())
}
