//! The QCOW2 matrix against qemu-img: images made at test time by qemu-img and qemu-io
//! (compat 0.10/1.1 × cluster sizes 512 B…2 MiB × deflate/zstd compression × extended L2 ×
//! zero clusters × discards × backing chains mixing raw and qcow2 × internal snapshots ×
//! external data files), each read by vdr and compared with qemu-img as the oracle:
//!
//! (a) `vdr convert -O raw` has the bytes of `qemu-img convert -O raw`;
//! (b) `vdr map --json` agrees with `qemu-img map --output=json`;
//! (c) `vdr convert -O qcow2` (plain, `-c`, `-c --compression zstd`) passes `qemu-img check`
//!     and `qemu-img compare` with the source;
//! (d) no input file changed;
//! (e) `vdr info --json` reports version, cluster size, chain, snapshots, data file.
//!
//! Not a cartesian product: every value of every axis appears, combined where the
//! combination exercises a distinct code path. Images are a few MiB.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use tempfile::TempDir;
use vdr_fixtures::qemu::{create, qemu_img, qemu_io};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What `vdr info --json` must say about one layer (leaf first).
struct Layer {
    format: &'static str,
    /// qcow2 version ("2", "3") and cluster size; None for raw layers.
    qcow2: Option<(&'static str, u64)>,
    /// Backing file name and format as the layer records them.
    backing: Option<(&'static str, &'static str)>,
}

/// One image of the matrix, built in `dir/in`.
struct Case {
    name: &'static str,
    dir: TempDir,
    image: &'static str,
    layers: Vec<Layer>,
    features: Vec<&'static str>,
    snapshots: Vec<&'static str>,
    data_file: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, image: &'static str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdr-{name}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("in")).expect("mkdir in");
        std::fs::create_dir(dir.path().join("out")).expect("mkdir out");
        Case {
            name,
            dir,
            image,
            layers: Vec::new(),
            features: Vec::new(),
            snapshots: Vec::new(),
            data_file: None,
        }
    }

    fn input(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    fn layer(mut self, format: &'static str, qcow2: Option<(&'static str, u64)>) -> Case {
        self.layers.push(Layer {
            format,
            qcow2,
            backing: None,
        });
        self
    }

    fn backed_by(mut self, name: &'static str, format: &'static str) -> Case {
        self.layers.last_mut().expect("a layer first").backing = Some((name, format));
        self
    }

    fn io(&self, format: &str, image: &str, commands: &[String]) {
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        qemu_io(&self.input(), format, image, &commands);
    }

    fn create(&self, format: &str, name: &str, options: &str, size: u64) -> PathBuf {
        create(
            &self.input(),
            format,
            name,
            options,
            None,
            &size.to_string(),
        )
    }

    fn create_over(&self, name: &str, options: &str, backing: (&str, &str), size: u64) -> PathBuf {
        create(
            &self.input(),
            "qcow2",
            name,
            options,
            Some(backing),
            &size.to_string(),
        )
    }

    fn img(&self, args: &[&str]) {
        qemu_img(&self.input(), args);
    }
}

/// `write -P` commands with distinct patterns at odd offsets, partial clusters, across
/// cluster boundaries and on the last bytes of a `size`-byte disk with `cs`-byte clusters
/// (spots past the end of a small disk with huge clusters are left out).
fn patterns(size: u64, cs: u64, first: u8) -> Vec<String> {
    let spots = [
        (0, cs.min(64 * KIB)),
        (cs + 0x1234, 0x3011),
        (3 * cs + 7, cs / 2 + 99),
        (size / 2 - 777, 2 * cs + 1555),
        (size / 3 + 5, 64 * KIB),
        (size - 1001, 1001),
    ];
    spots
        .iter()
        .enumerate()
        .filter(|(_, &(off, _))| off < size)
        .map(|(i, &(off, len))| {
            let len = len.min(size - off);
            format!(
                "write -P {:#04x} {off:#x} {len:#x}",
                first.wrapping_add(i as u8)
            )
        })
        .collect()
}

/// Zero writes and discards over data that `patterns` wrote: whole clusters (zero flag in
/// v3) and unaligned pieces (qemu writes zeros or leaves the cluster).
fn zero_and_discard(size: u64, cs: u64) -> Vec<String> {
    let down = |x: u64| x / cs * cs;
    let ops = [
        ("write -z", cs, cs),
        ("write -z", size / 2, 0x300),
        ("discard", down(size / 3 + 5), cs),
        ("discard", 3 * cs + 512, 0x200),
        (
            "write -P 0x7e",
            down(size / 3 + 5) + 1024.min(cs / 2),
            0x200,
        ),
    ];
    ops.iter()
        .filter(|&&(_, off, _)| off < size)
        .map(|&(op, off, len)| format!("{op} {off:#x} {:#x}", len.min(size - off)))
        .collect()
}

/// Runs checks (a)–(e) on a built case.
fn verify(case: &Case) {
    let dir = case.input();
    let image = dir.join(case.image);
    let image_s = image.to_str().expect("utf-8");
    let before = hash_tree(&dir);

    // (a) raw content
    let want = case.out("qemu.raw");
    qemu_raw(&dir, &image, &[], &want);
    let got = case.out("vdr.raw");
    let report = vdr(
        &dir,
        &[
            "convert",
            image_s,
            got.to_str().unwrap(),
            "-O",
            "raw",
            "--json",
        ],
    );
    report.expect_code(0);
    assert_same_content(case.name, &got, &want);
    let report = report.json();
    let size = std::fs::metadata(&want).expect("oracle").len();
    assert_eq!(report["virtual_size"].as_u64(), Some(size), "{report}");
    assert_eq!(report["unreadable"], Value::Array(vec![]), "{report}");
    let cmp = vdr(
        &dir,
        &["compare", image_s, want.to_str().unwrap(), "--json"],
    );
    cmp.expect_code(0);
    assert_eq!(cmp.json()["identical"], Value::Bool(true), "{}", cmp.stdout);

    // (b) map
    let theirs = qemu_map(&dir, &image);
    let run = vdr(&dir, &["map", image_s, "--json"]);
    run.expect_code(0);
    let ours = parse_map(&run.json());
    assert_tiles(case.name, &ours, size);
    assert_eq!(
        merge_flags(&ours),
        merge_flags(&theirs),
        "{}: map differs from qemu-img map",
        case.name
    );
    assert_eq!(
        data_offsets(&ours),
        data_offsets(&theirs),
        "{}: data offsets differ from qemu-img map",
        case.name
    );

    // (c) qcow2 output, plain and compressed, two threads
    let variants: [(&str, &[&str]); 3] = [
        ("plain", &[]),
        ("deflate", &["-c"]),
        ("zstd", &["-c", "--compression", "zstd"]),
    ];
    for (label, extra) in variants {
        let out = case.out(&format!("vdr-{label}.qcow2"));
        let out_s = out.to_str().unwrap();
        let mut args = vec!["convert", image_s, out_s, "-O", "qcow2", "--threads", "2"];
        args.extend(extra);
        vdr(&dir, &args).expect_code(0);
        assert_qemu_check_clean(&dir, &out);
        assert_qemu_identical(&dir, &image, &out);
    }

    // internal snapshots: vdr convert --snapshot S == qemu-img convert -l snapshot.name=S
    for snap in &case.snapshots {
        let want = case.out(&format!("qemu-{snap}.raw"));
        let opt = format!("snapshot.name={snap}");
        qemu_raw(&dir, &image, &["-l", &opt], &want);
        let got = case.out(&format!("vdr-{snap}.raw"));
        vdr(
            &dir,
            &[
                "convert",
                image_s,
                got.to_str().unwrap(),
                "-O",
                "raw",
                "--snapshot",
                snap,
            ],
        )
        .expect_code(0);
        assert_same_content(&format!("{} snapshot {snap}", case.name), &got, &want);
    }

    // (e) info
    let info = vdr(&dir, &["info", image_s, "--json"]);
    info.expect_code(0);
    check_info(case, &info.json(), size);

    // (d) the inputs are untouched
    assert_eq!(
        hash_tree(&dir),
        before,
        "{}: an input file changed",
        case.name
    );
}

fn check_info(case: &Case, info: &Value, size: u64) {
    let name = case.name;
    assert_eq!(info["format"], "qcow2", "{name}: {info}");
    assert_eq!(info["virtual_size"].as_u64(), Some(size), "{name}: {info}");
    let layers = info["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), case.layers.len(), "{name}: layers: {info}");
    assert_eq!(
        info["chain_depth"].as_u64(),
        Some(case.layers.len() as u64),
        "{name}: chain_depth counts the layers: {info}"
    );
    for (got, want) in layers.iter().zip(&case.layers) {
        assert_eq!(got["format"], want.format, "{name}: {got}");
        if let Some((version, cluster_size)) = want.qcow2 {
            assert_eq!(got["format_version"], version, "{name}: {got}");
            assert_eq!(
                got["cluster_size"].as_u64(),
                Some(cluster_size),
                "{name}: {got}"
            );
        }
        match want.backing {
            Some((file, format)) => {
                assert_eq!(got["backing"]["name"], file, "{name}: {got}");
                assert_eq!(got["backing"]["format"], format, "{name}: {got}");
            }
            None => assert!(got["backing"].is_null(), "{name}: {got}"),
        }
    }
    let leaf = &layers[0];
    let features: Vec<&str> = leaf["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for f in &case.features {
        assert!(features.contains(f), "{name}: feature {f} missing: {leaf}");
    }
    let snapshots: Vec<&str> = leaf["snapshots"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(snapshots, case.snapshots, "{name}: snapshots: {leaf}");
    match case.data_file {
        Some(file) => assert_eq!(leaf["data_file"], file, "{name}: {leaf}"),
        None => assert!(leaf["data_file"].is_null(), "{name}: {leaf}"),
    }
}

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
