//! `vdr map`, `vdr info` and `vdr check` on raw images: the documented JSON shapes, the
//! qemu-img map fields, and inputs left unchanged.

mod cli_support;

use cli_support::{fingerprint, sparse_raw, vdr};
use predicates::prelude::*;
use serde_json::Value;

fn stdout_json(args: &[&std::ffi::OsStr]) -> Value {
    let out = vdr().args(args).assert().success();
    serde_json::from_slice(&out.get_output().stdout).expect("--json output is JSON")
}

#[test]
fn map_json_of_a_sparse_raw_file_lists_holes_and_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("sparse.raw");
    sparse_raw(&img, 4 << 20, &[(1 << 20, &[1; 65536])]);
    let before = fingerprint(&[&img]);

    let map = stdout_json(&["map".as_ref(), img.as_os_str(), "--json".as_ref()]);

    let entries = map.as_array().expect("an array");
    let data: Vec<&Value> = entries.iter().filter(|e| e["data"] == true).collect();
    assert_eq!(data.len(), 1, "{map}");
    assert_eq!(data[0]["start"], data[0]["offset"]);
    assert!(data[0]["start"].as_u64().expect("start") <= 1 << 20);
    assert_eq!(entries[0]["start"], 0);
    assert_eq!(entries[0]["zero"], true);
    assert_eq!(entries[0]["present"], true);
    assert!(entries[0].get("offset").is_none());
    let total: u64 = entries.iter().filter_map(|e| e["length"].as_u64()).sum();
    assert_eq!(total, 4 << 20);
    for entry in entries {
        for field in [
            "start",
            "length",
            "depth",
            "present",
            "zero",
            "data",
            "compressed",
        ] {
            assert!(entry.get(field).is_some(), "{field} missing in {entry}");
        }
    }
    assert_eq!(fingerprint(&[&img]), before);
}

#[test]
fn map_table_has_qemu_img_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("full.raw");
    std::fs::write(&img, vec![3u8; 8192]).expect("write");

    vdr()
        .arg("map")
        .arg(&img)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "Offset          Length          Mapped to",
        ))
        .stdout(predicate::str::contains("0x2000"));
}

#[test]
fn info_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_raw(&img, 2 << 20, &[(0, &[9; 4096])]);
    let before = fingerprint(&[&img]);

    let info = stdout_json(&["info".as_ref(), img.as_os_str(), "--json".as_ref()]);

    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual_size"], 2 << 20);
    assert_eq!(info["chain_depth"], 1);
    assert_eq!(info["file"], img.display().to_string());
    assert_eq!(info["findings"], serde_json::json!([]));
    let layers = info["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    for field in [
        "format",
        "file",
        "virtual_size",
        "file_size",
        "snapshots",
        "features",
    ] {
        assert!(
            layers[0].get(field).is_some(),
            "layer field {field} missing"
        );
    }
    let allocation = &info["allocation"];
    let sum: u64 = ["data", "compressed", "zero", "unallocated", "unreadable"]
        .iter()
        .map(|k| allocation[k].as_u64().expect("allocation field"))
        .sum();
    assert_eq!(sum, 2 << 20);
    assert!(allocation["data"].as_u64().expect("data") >= 4096);
    assert_eq!(fingerprint(&[&img]), before);
}

#[test]
fn info_text_names_format_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_raw(&img, 1 << 20, &[]);

    vdr()
        .arg("info")
        .arg(&img)
        .assert()
        .success()
        .stdout(predicate::str::contains("file format: raw"))
        .stdout(predicate::str::contains(
            "virtual size: 1 MiB (1048576 bytes)",
        ));
}

#[test]
fn check_on_raw_says_unsupported_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_raw(&img, 1 << 20, &[]);
    let before = fingerprint(&[&img]);

    vdr()
        .arg("check")
        .arg(&img)
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing was checked"));

    let report = stdout_json(&["check".as_ref(), img.as_os_str(), "--json".as_ref()]);
    assert_eq!(report["supported"], false);
    assert_eq!(report["format"], "raw");
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(fingerprint(&[&img]), before);
}

#[test]
fn map_merges_ranges_across_its_one_gib_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("big.raw");
    sparse_raw(&img, 3 << 30, &[((3 << 30) - 512, &[1; 512])]);

    let map = stdout_json(&["map".as_ref(), img.as_os_str(), "--json".as_ref()]);

    let entries = map.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{map}");
    assert_eq!(entries[0]["zero"], true);
    assert_eq!(entries[1]["data"], true);
    let hole_end = entries[0]["length"].as_u64().expect("length");
    assert!(hole_end > 1 << 30 && hole_end <= (3 << 30) - 512, "{map}");
}
