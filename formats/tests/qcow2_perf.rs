//! Throughput of sequential `read_at` on a QCOW2 image named by `VDR_QCOW2_BENCH`.
//! Ignored by default; run with
//! `VDR_QCOW2_BENCH=big.qcow2 cargo test --release -p vdr-formats --test qcow2_perf -- --ignored --nocapture`.

use std::path::Path;
use std::time::Instant;

use vdr_formats::{open_disk, OpenOptions, VirtualDisk};

/// Resident set size in KiB (Linux), for the memory budget.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore]
fn sequential_read_throughput() {
    let Ok(path) = std::env::var("VDR_QCOW2_BENCH") else {
        println!("SKIP: VDR_QCOW2_BENCH not set");
        return;
    };
    let disk = open_disk(Path::new(&path), &OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let start = Instant::now();
    let mut offset = 0;
    let mut checksum = 0u64;
    while offset < disk.size() {
        let n = (disk.size() - offset).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], offset).unwrap();
        checksum = checksum.wrapping_add(u64::from(buf[n / 2]));
        offset += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let timed = Instant::now();
    let extents = disk.map(0, disk.size()).unwrap().len();
    let map_secs = timed.elapsed().as_secs_f64();
    let timed = Instant::now();
    let report = disk.check().unwrap();
    println!(
        "map: {extents} extents in {map_secs:.3} s; check: clean={} in {:.3} s",
        report.is_clean(),
        timed.elapsed().as_secs_f64()
    );
    println!(
        "{path}: {} MiB in {secs:.2} s = {:.0} MiB/s, peak RSS {} KiB (checksum {checksum})",
        disk.size() >> 20,
        (disk.size() >> 20) as f64 / secs,
        rss_kib()
    );
}

#[test]
#[ignore]
fn print_info() {
    let Ok(path) = std::env::var("VDR_QCOW2_INFO") else {
        return;
    };
    let options = OpenOptions {
        mode: vdr_formats::ParseMode::Salvage,
        ..OpenOptions::default()
    };
    let disk = open_disk(Path::new(&path), &options).unwrap();
    println!("{}", serde_json::to_string_pretty(&disk.info()).unwrap());
    println!(
        "{}",
        serde_json::to_string_pretty(&disk.check().unwrap()).unwrap()
    );
    println!("{:?}", disk.findings());
}
