//! The QCOW2 matrix against qemu-img, single images: compat 0.10/1.1 × cluster sizes
//! 512 B…2 MiB, deflate/zstd compression × each cluster size, extended L2 × zero writes ×
//! discards. Chains, snapshots and external data files are in tests/qemu_chain.rs; the
//! checks made on every image are those of tests/common/case.rs.
//!
//! Not a cartesian product: every value of every axis appears, combined where the
//! combination exercises a distinct code path. Images are a few MiB.

mod common;

use common::case::*;
use common::skip_without_qemu;

/// A single qcow2 image: compat (`0.10`/`1.1`), cluster size, patterns, zeros, discards.
fn plain(name: &'static str, compat: &str, cs: u64, size: u64) {
    if skip_without_qemu() {
        return;
    }
    let version = if compat == "0.10" { "2" } else { "3" };
    let case = Case::new(name, "disk.qcow2").layer("qcow2", Some((version, cs)));
    case.create(
        "qcow2",
        "disk.qcow2",
        &format!("compat={compat},cluster_size={cs}"),
        size,
    );
    case.io("qcow2", "disk.qcow2", &patterns(size, cs, 0x10));
    case.io("qcow2", "disk.qcow2", &zero_and_discard(size, cs));
    verify(&case);
}

#[test]
fn v2_cluster_512() {
    plain("v2_cluster_512", "0.10", 512, 3 * MIB + 1536);
}

#[test]
fn v2_cluster_4k() {
    plain("v2_cluster_4k", "0.10", 4 * KIB, 5 * MIB + 512);
}

#[test]
fn v2_cluster_64k() {
    plain("v2_cluster_64k", "0.10", 64 * KIB, 6 * MIB);
}

#[test]
fn v2_cluster_2m() {
    plain("v2_cluster_2m", "0.10", 2 * MIB, 7 * MIB + 512);
}

#[test]
fn v3_cluster_512() {
    plain("v3_cluster_512", "1.1", 512, 3 * MIB + 1536);
}

#[test]
fn v3_cluster_4k() {
    plain("v3_cluster_4k", "1.1", 4 * KIB, 5 * MIB + 512);
}

#[test]
fn v3_cluster_64k() {
    plain("v3_cluster_64k", "1.1", 64 * KIB, 6 * MIB);
}

#[test]
fn v3_cluster_2m() {
    plain("v3_cluster_2m", "1.1", 2 * MIB, 7 * MIB + 512);
}

/// A compressed image (`qemu-img convert -c`) with later uncompressed writes, zero
/// clusters and discards on top, so compressed, plain data, zero and unallocated clusters
/// sit side by side.
fn compressed(name: &'static str, compat: &str, compression: &str, cs: u64) {
    if skip_without_qemu() {
        return;
    }
    let size = 4 * MIB + 512;
    let version = if compat == "0.10" { "2" } else { "3" };
    let case = Case::new(name, "disk.qcow2").layer("qcow2", Some((version, cs)));
    case.create("raw", "src.raw", "", size);
    // text-like data compresses, so clusters really are stored compressed
    let mut fill = patterns(size, cs, 0x30);
    fill.push(format!("write -P 0x41 {:#x} {:#x}", MIB, MIB));
    case.io("raw", "src.raw", &fill);
    let mut options = format!("compat={compat},cluster_size={cs}");
    if compat != "0.10" {
        options += &format!(",compression_type={compression}");
    }
    case.img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        &options,
        "src.raw",
        "disk.qcow2",
    ]);
    std::fs::remove_file(case.input().join("src.raw")).expect("rm src.raw");
    let mut more = vec![format!("write -P 0x5a {:#x} {:#x}", MIB + 333, cs + 4000)];
    more.extend(zero_and_discard(size, cs));
    case.io("qcow2", "disk.qcow2", &more);
    verify(&case);
}

#[test]
fn compressed_zlib_cluster_512() {
    compressed("compressed_zlib_cluster_512", "1.1", "zlib", 512);
}

#[test]
fn compressed_zlib_cluster_4k() {
    compressed("compressed_zlib_cluster_4k", "1.1", "zlib", 4 * KIB);
}

#[test]
fn compressed_zlib_cluster_64k() {
    compressed("compressed_zlib_cluster_64k", "1.1", "zlib", 64 * KIB);
}

#[test]
fn compressed_zlib_cluster_2m() {
    compressed("compressed_zlib_cluster_2m", "1.1", "zlib", 2 * MIB);
}

#[test]
fn compressed_zstd_cluster_512() {
    compressed("compressed_zstd_cluster_512", "1.1", "zstd", 512);
}

#[test]
fn compressed_zstd_cluster_4k() {
    compressed("compressed_zstd_cluster_4k", "1.1", "zstd", 4 * KIB);
}

#[test]
fn compressed_zstd_cluster_64k() {
    compressed("compressed_zstd_cluster_64k", "1.1", "zstd", 64 * KIB);
}

#[test]
fn compressed_zstd_cluster_2m() {
    compressed("compressed_zstd_cluster_2m", "1.1", "zstd", 2 * MIB);
}

#[test]
fn compressed_v2_cluster_64k() {
    compressed("compressed_v2_cluster_64k", "0.10", "zlib", 64 * KIB);
}

/// Extended L2 entries: writes, zero writes and discards of single subclusters
/// (cluster/32), so one cluster holds data, zero and unallocated subclusters.
fn extended_l2(name: &'static str, cs: u64, compress: Option<&str>) {
    if skip_without_qemu() {
        return;
    }
    let size = 6 * MIB;
    let sub = cs / 32;
    let mut case = Case::new(name, "disk.qcow2").layer("qcow2", Some(("3", cs)));
    case.features.push("extended_l2");
    let options = format!("extended_l2=on,cluster_size={cs}");
    let mut subclusters = vec![
        format!("write -P 0x61 {:#x} {sub:#x}", 3 * sub),
        format!("write -P 0x62 {:#x} {:#x}", 8 * sub + 17, 2 * sub),
        format!("write -P 0x63 {:#x} {:#x}", cs + 31 * sub, 2 * sub),
        format!("write -z {:#x} {:#x}", 4 * sub, 2 * sub),
        format!("discard {:#x} {sub:#x}", 9 * sub),
        format!("write -z {:#x} {cs:#x}", 2 * cs),
    ];
    match compress {
        None => {
            case.create("qcow2", "disk.qcow2", &options, size);
            case.io("qcow2", "disk.qcow2", &patterns(size, cs, 0x50));
        }
        Some(kind) => {
            case.create("raw", "src.raw", "", size);
            case.io("raw", "src.raw", &patterns(size, cs, 0x50));
            let options = format!("{options},compression_type={kind}");
            case.img(&[
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &options,
                "src.raw",
                "disk.qcow2",
            ]);
            std::fs::remove_file(case.input().join("src.raw")).expect("rm src.raw");
            subclusters.push(format!("write -P 0x64 {:#x} {sub:#x}", size / 2 + sub));
        }
    }
    case.io("qcow2", "disk.qcow2", &subclusters);
    case.io("qcow2", "disk.qcow2", &zero_and_discard(size, cs));
    verify(&case);
}

#[test]
fn extended_l2_cluster_64k_zero_discard() {
    extended_l2("extended_l2_cluster_64k_zero_discard", 64 * KIB, None);
}

#[test]
fn extended_l2_cluster_2m_zero_discard() {
    extended_l2("extended_l2_cluster_2m_zero_discard", 2 * MIB, None);
}

#[test]
fn extended_l2_compressed_zstd() {
    extended_l2("extended_l2_compressed_zstd", 32 * KIB, Some("zstd"));
}
