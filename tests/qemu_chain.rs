//! The QCOW2 matrix against qemu-img, multi-file and multi-state images: backing chains
//! of depth 3–4 mixing raw and qcow2 (v2 and v3, backing files shorter than the child),
//! internal snapshots, external data files (raw and not). The checks made on every image
//! are those of tests/common/case.rs.

mod common;

use std::path::Path;

use common::case::*;
use common::*;

/// base.raw (3 MiB, sparse) ← mid.qcow2 (v2, 4 KiB clusters, 4 MiB) ← top.qcow2 (v3,
/// 64 KiB, 5 MiB) ← leaf.qcow2 (v3 extended L2, 6 MiB): every backing file is shorter
/// than its child, zero clusters and discards in upper layers hide parent data, and
/// unallocated subclusters read through.
#[test]
fn chain_raw_v2_v3_extended_l2() {
    if skip_without_qemu() {
        return;
    }
    let case = Case::new("chain_raw_v2_v3_extended_l2", "leaf.qcow2")
        .layer("qcow2", Some(("3", 64 * KIB)))
        .backed_by("top.qcow2", "qcow2")
        .layer("qcow2", Some(("3", 64 * KIB)))
        .backed_by("mid.qcow2", "qcow2")
        .layer("qcow2", Some(("2", 4 * KIB)))
        .backed_by("base.raw", "raw")
        .layer("raw", None);
    case.create("raw", "base.raw", "", 3 * MIB);
    case.io("raw", "base.raw", &patterns(3 * MIB, 4 * KIB, 0x80));
    case.create_over(
        "mid.qcow2",
        "compat=0.10,cluster_size=4096",
        ("base.raw", "raw"),
        4 * MIB,
    );
    let mut mid = patterns(4 * MIB, 4 * KIB, 0x90);
    mid.push("write -z 0x180000 0x2000".into());
    case.io("qcow2", "mid.qcow2", &mid);
    case.create_over(
        "top.qcow2",
        "cluster_size=65536",
        ("mid.qcow2", "qcow2"),
        5 * MIB,
    );
    let mut top = patterns(5 * MIB, 64 * KIB, 0xa0);
    top.extend(zero_and_discard(5 * MIB, 64 * KIB));
    top.push("write -z 0x0 0x10000".into());
    case.io("qcow2", "top.qcow2", &top);
    case.create_over(
        "leaf.qcow2",
        "extended_l2=on,cluster_size=65536",
        ("top.qcow2", "qcow2"),
        6 * MIB,
    );
    case.io(
        "qcow2",
        "leaf.qcow2",
        &[
            "write -P 0xb1 0x800 0x800".into(),
            "write -P 0xb2 0x200000 0x1001".into(),
            "write -z 0x2800 0x1000".into(),
            "discard 0x14000 0x800".into(),
            "write -P 0xb3 0x5ff000 0x1000".into(),
        ],
    );
    verify(&case);
}

/// A chain of compat 0.10 images over raw: base.raw ← a.qcow2 (v2) ← b.qcow2 (v2); v2 has
/// no zero flag, so qemu writes zeros as data.
#[test]
fn chain_v2_over_raw() {
    if skip_without_qemu() {
        return;
    }
    let case = Case::new("chain_v2_over_raw", "b.qcow2")
        .layer("qcow2", Some(("2", 512)))
        .backed_by("a.qcow2", "qcow2")
        .layer("qcow2", Some(("2", 64 * KIB)))
        .backed_by("base.raw", "raw")
        .layer("raw", None);
    case.create("raw", "base.raw", "", 2 * MIB);
    case.io("raw", "base.raw", &patterns(2 * MIB, 64 * KIB, 0xc0));
    case.create_over("a.qcow2", "compat=0.10", ("base.raw", "raw"), 3 * MIB);
    let mut a = patterns(3 * MIB, 64 * KIB, 0xd0);
    a.extend(zero_and_discard(3 * MIB, 64 * KIB));
    case.io("qcow2", "a.qcow2", &a);
    case.create_over(
        "b.qcow2",
        "compat=0.10,cluster_size=512",
        ("a.qcow2", "qcow2"),
        3 * MIB,
    );
    let mut b = patterns(3 * MIB, 512, 0xe0);
    b.extend(zero_and_discard(3 * MIB, 512));
    case.io("qcow2", "b.qcow2", &b);
    verify(&case);
}

/// Internal snapshots: the active layer and each snapshot (s1 before, s2 after a round of
/// overwrites, zero writes and discards).
fn snapshots(name: &'static str, compat: &str, cs: u64) {
    if skip_without_qemu() {
        return;
    }
    let size = 4 * MIB;
    let version = if compat == "0.10" { "2" } else { "3" };
    let mut case = Case::new(name, "disk.qcow2").layer("qcow2", Some((version, cs)));
    case.snapshots = vec!["s1", "s2"];
    case.create(
        "qcow2",
        "disk.qcow2",
        &format!("compat={compat},cluster_size={cs}"),
        size,
    );
    case.io("qcow2", "disk.qcow2", &patterns(size, cs, 0x21));
    case.img(&["snapshot", "-c", "s1", "disk.qcow2"]);
    let mut round = patterns(size, cs, 0x71);
    round.truncate(3);
    round.extend(zero_and_discard(size, cs));
    case.io("qcow2", "disk.qcow2", &round);
    case.img(&["snapshot", "-c", "s2", "disk.qcow2"]);
    case.io(
        "qcow2",
        "disk.qcow2",
        &[
            format!("write -P 0x99 {:#x} 0x1800", size - 0x1800),
            "discard 0x0 0x10000".into(),
        ],
    );
    verify(&case);
}

#[test]
fn snapshot_v3() {
    snapshots("snapshot_v3", "1.1", 64 * KIB);
}

#[test]
fn snapshot_v2_cluster_4k() {
    snapshots("snapshot_v2_cluster_4k", "0.10", 4 * KIB);
}

/// An external data file (`data_file=x.data`), raw (guest offsets = file offsets) or not.
fn data_file(name: &'static str, raw: bool) {
    if skip_without_qemu() {
        return;
    }
    let size = 4 * MIB;
    let mut case = Case::new(name, "disk.qcow2").layer("qcow2", Some(("3", 64 * KIB)));
    case.data_file = Some("x.data");
    let options = format!(
        "data_file=x.data,data_file_raw={}",
        if raw { "on" } else { "off" }
    );
    case.create("qcow2", "disk.qcow2", &options, size);
    case.io("qcow2", "disk.qcow2", &patterns(size, 64 * KIB, 0xf0));
    case.io("qcow2", "disk.qcow2", &zero_and_discard(size, 64 * KIB));
    verify(&case);
}

#[test]
fn data_file_raw_on() {
    data_file("data_file_raw_on", true);
}

#[test]
fn data_file_raw_off() {
    data_file("data_file_raw_off", false);
}

/// The map/normalisation helpers agree with themselves on qemu-img's own output: guards
/// the comparison logic, which the cases above rely on.
#[test]
fn qemu_map_normalises_to_a_tiling() {
    if skip_without_qemu() {
        return;
    }
    let case = Case::new("qemu_map_normalises", "disk.qcow2");
    let image: &Path = &case.create("qcow2", "disk.qcow2", "cluster_size=4096", MIB);
    case.io("qcow2", "disk.qcow2", &patterns(MIB, 4 * KIB, 1));
    let map = qemu_map(&case.input(), image);
    assert_tiles("qemu-img map", &map, MIB);
    let merged = merge_flags(&map);
    assert_tiles("merged", &merged, MIB);
    assert!(merged.len() <= map.len());
    assert!(!data_offsets(&map).is_empty());
}
