//! The commands on the checked-in demo chain (fixtures/demo: raw base ← qcow2 mid with
//! compressed clusters ← qcow2 leaf with zero/discarded clusters and an internal
//! snapshot), with qemu-img as the content oracle. Tests that need the QCOW2 reader or the
//! convert engine are ignored until those land; tests that need qemu-img print `SKIP:`
//! and pass when it is missing.

mod cli_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cli_support::{demo_dir, fingerprint, have_qemu_img, qemu_img, sha256, vdr};
use predicates::prelude::*;
use serde_json::Value;

const DEMO_FILES: [&str; 3] = ["base.raw", "mid.qcow2", "leaf.qcow2"];

/// A private copy of the demo chain (the checked-in files are never the test's inputs).
fn demo_copy(dir: &Path) -> PathBuf {
    for name in DEMO_FILES {
        fs::copy(demo_dir().join(name), dir.join(name)).expect("copy demo file");
    }
    dir.join("leaf.qcow2")
}

fn expected_raw_sha256() -> String {
    let text = fs::read_to_string(demo_dir().join("EXPECTED.sha256")).expect("EXPECTED.sha256");
    text.split_whitespace().next().expect("a hash").to_string()
}

fn json_of(assert: &assert_cmd::assert::Assert) -> Value {
    serde_json::from_slice(&assert.get_output().stdout).expect("JSON on stdout")
}

#[test]
fn no_command_writes_to_the_demo_chain_or_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let files: Vec<PathBuf> = DEMO_FILES.iter().map(|n| dir.path().join(n)).collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let before = fingerprint(&paths);
    let out = dir.path().join("out.img");
    let leaf_s = leaf.to_str().expect("utf-8 path");
    let out_s = out.to_str().expect("utf-8 path");
    let mid_s = files[1].to_str().expect("utf-8 path");
    let runs: Vec<Vec<&str>> = vec![
        vec!["info", leaf_s],
        vec!["info", leaf_s, "--json", "--salvage"],
        vec!["info", leaf_s, "--no-backing"],
        vec!["map", leaf_s, "--json"],
        vec!["check", leaf_s],
        vec!["compare", leaf_s, mid_s],
        vec!["convert", leaf_s, out_s, "--force"],
        vec!["convert", leaf_s, out_s, "-O", "qcow2", "-c", "--force"],
        vec!["convert", leaf_s, mid_s, "--force"],
        vec!["convert", leaf_s, leaf_s, "--force"],
    ];

    for args in &runs {
        let output = vdr().args(args).output().expect("run vdr");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "vdr {args:?} panicked: {stderr}"
        );
        assert!(output.status.code().is_some(), "vdr {args:?} was killed");
    }

    assert_eq!(fingerprint(&paths), before);
}

#[test]
fn converting_over_a_backing_file_is_refused_even_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let base = dir.path().join("base.raw");
    let before = fingerprint(&[&base]);

    vdr()
        .arg("convert")
        .arg(&leaf)
        .arg(&base)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert_eq!(fingerprint(&[&base]), before);
}

#[test]
fn info_shows_the_three_layer_chain_and_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());

    let info = json_of(
        &vdr()
            .arg("info")
            .arg(&leaf)
            .arg("--json")
            .assert()
            .success(),
    );

    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual_size"], 65536);
    assert_eq!(info["chain_depth"], 3);
    let formats: Vec<&str> = info["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["format"].as_str())
        .collect();
    assert_eq!(formats, ["qcow2", "qcow2", "raw"]);
    assert_eq!(info["layers"][0]["cluster_size"], 4096);
    assert_eq!(info["layers"][0]["snapshots"][0]["name"], "before-update");
    // From qemu-img map of the demo: 4 KiB + 4 KiB of leaf data and 20 KiB of base data;
    // two compressed clusters in mid; a zero and a discarded cluster in the leaf; 8 KiB
    // past the end of the 32 KiB base plus 12 KiB that no layer holds.
    assert_eq!(
        info["allocation"],
        serde_json::json!({"data": 28672, "compressed": 8192, "zero": 8192,
                           "unallocated": 20480, "unreadable": 0})
    );
}

#[test]
fn info_text_lists_chain_and_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());

    vdr()
        .arg("info")
        .arg(&leaf)
        .assert()
        .success()
        .stdout(predicate::str::contains("file format: qcow2"))
        .stdout(predicate::str::contains("mid.qcow2 (qcow2)"))
        .stdout(predicate::str::contains("base.raw (raw)"))
        .stdout(predicate::str::contains("before-update"));
}

/// What a map says about one 512-byte sector.
#[derive(Debug, PartialEq, Eq)]
struct Sector {
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    /// Host offset of plain (uncompressed) data.
    offset: Option<u64>,
    /// Layer holding the data.
    depth: Option<u64>,
}

/// Each sector of a map. Offsets of raw holes (qemu prints one) and depths of ranges
/// without data (qemu's depth past a shorter parent differs) are left out: qemu-img and
/// vdr are allowed to differ there (see docs/CLI.md).
fn sectors(map: &Value) -> BTreeMap<u64, Sector> {
    let mut out = BTreeMap::new();
    for e in map.as_array().expect("map array") {
        let start = e["start"].as_u64().expect("start");
        let length = e["length"].as_u64().expect("length");
        let data = e["data"] == true;
        let compressed = e["compressed"] == true;
        for sector in (start..start + length).step_by(512) {
            let offset = (data && !compressed)
                .then(|| e["offset"].as_u64().expect("offset of data") + (sector - start));
            out.insert(
                sector,
                Sector {
                    present: e["present"] == true,
                    zero: e["zero"] == true,
                    data,
                    compressed,
                    offset,
                    depth: data.then(|| e["depth"].as_u64().expect("depth")),
                },
            );
        }
    }
    out
}

#[test]
fn map_json_agrees_with_qemu_img_map() {
    if !have_qemu_img("map_json_agrees_with_qemu_img_map") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let leaf_s = leaf.to_str().expect("utf-8 path");

    let ours = json_of(&vdr().args(["map", leaf_s, "--json"]).assert().success());
    let theirs: Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", leaf_s])).expect("qemu json");

    assert_eq!(sectors(&ours), sectors(&theirs));
}

#[test]
fn compare_agrees_with_qemu_img_convert() {
    if !have_qemu_img("compare_agrees_with_qemu_img_convert") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let raw = dir.path().join("oracle.raw");
    let (leaf_s, raw_s) = (leaf.to_str().expect("utf-8"), raw.to_str().expect("utf-8"));
    qemu_img(&["convert", "-O", "raw", leaf_s, raw_s]);

    vdr().args(["compare", leaf_s, raw_s]).assert().success();

    // 0xbb at 4K is the leaf's own data; change its last byte.
    fs::write(&raw, {
        let mut bytes = fs::read(&raw).expect("read oracle");
        bytes[8191] = 0;
        bytes
    })
    .expect("write oracle");
    vdr()
        .args(["compare", leaf_s, raw_s])
        .assert()
        .code(1)
        .stdout("Content mismatch at offset 8191!\n");
}

#[test]
fn demo_converts_to_qemu_img_raw_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let out = dir.path().join("demo.raw");

    vdr().arg("convert").arg(&leaf).arg(&out).assert().success();

    assert_eq!(sha256(&out), expected_raw_sha256());
}

#[test]
fn compressed_qcow2_output_is_clean_and_equal_for_qemu_img() {
    if !have_qemu_img("compressed_qcow2_output_is_clean_and_equal_for_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let leaf_s = leaf.to_str().expect("utf-8 path");
    for compression in ["deflate", "zstd"] {
        let out = dir.path().join(format!("out-{compression}.qcow2"));
        let out_s = out.to_str().expect("utf-8 path");

        vdr()
            .args(["convert", leaf_s, out_s, "-O", "qcow2", "-c"])
            .args(["--compression", compression, "--cluster-size", "4096"])
            .assert()
            .success();

        qemu_img(&["check", out_s]);
        qemu_img(&["compare", leaf_s, out_s]);
    }
}

#[test]
fn snapshot_converts_like_qemu_img() {
    if !have_qemu_img("snapshot_converts_like_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    let ours = dir.path().join("ours.raw");
    let theirs = dir.path().join("theirs.raw");
    let leaf_s = leaf.to_str().expect("utf-8 path");

    vdr()
        .arg("convert")
        .arg(&leaf)
        .arg(&ours)
        .args(["--snapshot", "before-update"])
        .assert()
        .success();
    qemu_img(&[
        "convert",
        "-l",
        "snapshot.name=before-update",
        "-O",
        "raw",
        leaf_s,
        theirs.to_str().expect("utf-8 path"),
    ]);

    assert_eq!(sha256(&ours), sha256(&theirs));
}

#[test]
fn check_on_the_demo_leaf_is_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());

    vdr()
        .arg("check")
        .arg(&leaf)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "No errors were found on the image.",
        ));
}

#[test]
fn converting_over_an_external_data_file_is_refused_even_with_force() {
    if !have_qemu_img("converting_over_an_external_data_file_is_refused_even_with_force") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("ext.qcow2");
    let data = dir.path().join("ext.data");
    let image_s = image.to_str().expect("utf-8 path");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", data.display()),
        image_s,
        "1M",
    ]);
    let before = fingerprint(&[&image, &data]);

    vdr()
        .arg("convert")
        .arg(&image)
        .arg(&data)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert_eq!(fingerprint(&[&image, &data]), before);
}

#[test]
fn missing_backing_file_is_named_and_no_backing_still_opens_the_leaf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = demo_copy(dir.path());
    fs::remove_file(dir.path().join("mid.qcow2")).expect("remove mid");

    vdr()
        .arg("info")
        .arg(&leaf)
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("vdr: "))
        .stderr(predicate::str::contains("mid.qcow2"));

    let info = json_of(
        &vdr()
            .arg("info")
            .arg(&leaf)
            .args(["--json", "--no-backing"])
            .assert()
            .success(),
    );
    assert_eq!(info["chain_depth"], 1);
    assert_eq!(info["layers"][0]["backing"]["name"], "mid.qcow2");
}
