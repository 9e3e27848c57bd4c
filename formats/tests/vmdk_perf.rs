//! Throughput of sequential `read_at` on a VMDK named by `VDR_VMDK_BENCH`, on one thread
//! and on `VDR_VMDK_THREADS` threads (interleaved 4 MiB pieces, as the convert engine
//! reads). Ignored by default; run with
//! `VDR_VMDK_BENCH=big.vmdk cargo test --release -p vdr-formats --test vmdk_perf -- --ignored --nocapture`.

use std::path::Path;
use std::time::Instant;

use vdr_formats::{open_disk, OpenOptions, VirtualDisk};

/// Peak resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads every `threads`-th 4 MiB piece starting at piece `first`.
fn read_share(disk: &dyn VirtualDisk, first: u64, threads: u64) -> u64 {
    let piece = 4u64 << 20;
    let mut buf = vec![0u8; piece as usize];
    let mut checksum = 0u64;
    let mut offset = first * piece;
    while offset < disk.size() {
        let n = (disk.size() - offset).min(piece) as usize;
        disk.read_at(&mut buf[..n], offset).unwrap();
        checksum = checksum.wrapping_add(u64::from(buf[n / 2]));
        offset += piece * threads;
    }
    checksum
}

#[test]
#[ignore]
fn sequential_read_throughput() {
    let Ok(path) = std::env::var("VDR_VMDK_BENCH") else {
        println!("SKIP: VDR_VMDK_BENCH not set");
        return;
    };
    let threads: u64 = std::env::var("VDR_VMDK_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let disk = open_disk(Path::new(&path), &OpenOptions::default()).unwrap();
    let mib = (disk.size() >> 20) as f64;
    let start = Instant::now();
    read_share(&disk, 0, 1);
    let one = start.elapsed().as_secs_f64();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let disk = &disk;
            s.spawn(move || read_share(disk, t, threads));
        }
    });
    let many = start.elapsed().as_secs_f64();
    let timed = Instant::now();
    let extents = disk.map(0, disk.size()).unwrap().len();
    let map_secs = timed.elapsed().as_secs_f64();
    println!(
        "{path}: {mib} MiB: 1 thread {one:.2} s ({:.0} MiB/s), {threads} threads {many:.2} s ({:.0} MiB/s); map {extents} extents in {map_secs:.3} s; peak RSS {} KiB",
        mib / one,
        mib / many,
        rss_kib()
    );
}
