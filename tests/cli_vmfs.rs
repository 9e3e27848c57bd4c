//! `vdr info` and `vdr ls` on the real VMFS3/5/6 images of
//! ../shared/corpus/vmfs, against that corpus' oracle tables (EXPECTED.tsv: every entry's
//! type, size and sha256 from vmfs-tools and dissect.vmfs; VOLUMES.tsv: the volumes'
//! descriptors and block counts). Tests print a `SKIP:` line when the corpus is absent.
//! What the corpus lacks (a held lock, a directory of 10,000 files) is tested on volumes
//! from the fixture builder (vdr_fixtures::vmfs).
//!
//! The images are expanded (sparse) once into the target's test tmpdir and shared by the
//! tests; each test proves they were not written (size, mtime and ctime unchanged), and
//! one test compares the full sha256 before and after every command.

mod cli_support;
mod vmfs_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use cli_support::{sha256, vdr};
use serde_json::Value;
use vdr_fixtures::vmfs::{many_files_spec, Version};
use vmfs_support::synthetic::{built, locked_volume, LOCKED_PATH, LOCK_HOST, LOCK_HOST_MAC};
use vmfs_support::{
    corpus, expected, image, is_system, json, os, partitioned_vmfs5, stamp, volume, IMAGES,
};

#[test]
fn ls_json_lists_the_expected_entries_of_each_corpus_image() {
    if corpus("ls_json").is_none() {
        return;
    }
    for name in IMAGES {
        let img = image(name);
        let before = stamp(&img);

        let listing = json(&[os("ls"), img.as_os_str(), os("-R"), os("--json")]);

        let entries = listing.as_array().expect("an array");
        let listed: BTreeMap<&str, &Value> = entries
            .iter()
            .map(|e| (e["path"].as_str().expect("path"), e))
            .collect();
        let expected = expected(name);
        assert_eq!(listed.len(), expected.len(), "{name}: {listing}");
        for row in &expected {
            let path = row["path"].as_str();
            let entry = listed
                .get(path)
                .unwrap_or_else(|| panic!("{name}: {path} not listed"));
            assert_eq!(entry["system"], is_system(path), "{name}: {path}");
            if row["type"] != "file" || !is_system(path) {
                assert_eq!(entry["type"], row["type"].as_str(), "{name}: {path}");
            } else {
                assert_eq!(entry["type"], "sysfile", "{name}: {path}");
            }
            if row["type"] != "dir" {
                assert_eq!(entry["size"], row["size"].parse::<u64>().expect("size"));
            }
            if row["type"] == "symlink" {
                assert_eq!(entry["target"], row["sha256"].as_str(), "{name}: {path}");
            }
            assert!(entry["fd_address"].as_u64().is_some_and(|a| a != 0));
            assert!(entry.get("locked_by").is_some_and(Value::is_null));
        }
        assert_eq!(stamp(&img), before, "{name} was written");
    }
}

#[test]
fn ls_without_recursion_lists_one_directory_by_name() {
    if corpus("ls_names").is_none() {
        return;
    }
    let img = image("vmfs6");

    let out = vdr()
        .arg("ls")
        .arg(&img)
        .arg("/directory")
        .output()
        .expect("run");

    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().collect();
    assert_eq!(
        names,
        ["file1", "file2", "file3", "file4", "file5", "symlink"]
    );
}

#[test]
fn info_json_matches_the_volume_table() {
    if corpus("info_json").is_none() {
        return;
    }
    for name in IMAGES {
        let img = image(name);
        let row = volume(name);

        let info = json(&[os("info"), img.as_os_str(), os("--json")]);

        assert_eq!(info["kind"], "vmfs", "{info}");
        assert_eq!(info["label"], row["label"].as_str());
        assert_eq!(info["uuid"], row["uuid"].as_str());
        assert_eq!(info["lv_uuid"], row["lv_uuid"].as_str());
        assert_eq!(info["fs_version"], row["fs_version"].as_str());
        assert_eq!(info["vmfs_version"].to_string(), row["vmfs_version"]);
        for field in [
            "block_size",
            "sub_block_size",
            "total_blocks",
            "free_blocks",
            "free_bytes",
        ] {
            assert_eq!(info[field].to_string(), row[field], "{name}: {field}");
        }
        assert_eq!(info["capacity"].to_string(), row["lv_bytes"]);
        assert_eq!(
            info["devices"][0]["lvm_version"],
            row["lvm_version"].as_str()
        );
        let files = expected(name)
            .iter()
            .filter(|r| r["type"] != "dir" && !is_system(&r["path"]))
            .count();
        assert_eq!(info["files"], files as u64, "{name}");
        assert_eq!(info["locks"], Value::Array(Vec::new()));
    }
}

#[test]
fn a_zero_filled_file_is_no_datastore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("zero.img");
    fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("zero image");
    let out = dir.path().join("out");

    for args in [
        vec![os("ls"), img.as_os_str()],
        vec![os("info"), img.as_os_str(), os("--vmfs")],
        vec![os("extract"), img.as_os_str(), os("--all"), out.as_os_str()],
    ] {
        vdr()
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicates::str::contains("no VMFS volume found"));
    }
    assert!(!out.exists());

    vdr()
        .arg("info")
        .arg(&img)
        .assert()
        .success()
        .stdout(predicates::str::contains("file format: raw"));
}

#[test]
fn a_device_of_another_volume_is_refused_without_salvage() {
    if corpus("extent_other_volume").is_none() {
        return;
    }
    let (five, six) = (image("vmfs5"), image("vmfs6"));

    vdr()
        .arg("ls")
        .arg(&five)
        .arg("--extent")
        .arg(&six)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("belongs to another volume"));
    vdr()
        .arg("ls")
        .arg(&five)
        .arg("--extent")
        .arg(&six)
        .arg("--salvage")
        .assert()
        .success();
}

#[test]
fn a_datastore_is_found_through_an_mbr_or_a_gpt() {
    if corpus("partitioned").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (gpt, located) in [(false, "mbr"), (true, "gpt")] {
        let disk = partitioned_vmfs5(dir.path(), gpt);
        let out = dir.path().join(format!("file5.{located}"));

        let info = json(&[os("info"), disk.as_os_str(), os("--json")]);
        vdr()
            .arg("extract")
            .arg(&disk)
            .arg("/directory/file5")
            .arg(&out)
            .assert()
            .success();

        assert_eq!(info["kind"], "vmfs", "{info}");
        assert_eq!(info["label"], "VMFS5 Test");
        assert_eq!(info["devices"][0]["located"], located);
        assert_eq!(info["devices"][0]["partition_number"], 1);
        assert_eq!(info["devices"][0]["partition_offset"], 1 << 20);
        assert_eq!(
            sha256(&out),
            "227c62ef44ec9d9d4dbda23feaf622078a496368e919980afcd786acd9f455c4"
        );
    }
}

#[test]
fn a_held_lock_names_its_host_in_ls_and_info() {
    for version in [Version::V5, Version::V6] {
        let b = locked_volume(version);

        let listing = json(&[os("ls"), b.img.as_os_str(), os("/vm"), os("--json")]);
        let info = json(&[os("info"), b.img.as_os_str(), os("--json")]);
        let text = vdr().arg("info").arg(&b.img).output().expect("run");

        let flat = &listing.as_array().expect("array")[0];
        assert_eq!(flat["path"], LOCKED_PATH);
        assert_eq!(flat["locked_by"]["owner"], LOCK_HOST, "{flat}");
        assert_eq!(flat["locked_by"]["mac"], LOCK_HOST_MAC);
        assert_eq!(flat["locked_by"]["mode"], 1);
        assert_eq!(flat["locked_by"]["heartbeat_live"], true);
        let live: Vec<&Value> = info["heartbeats"]
            .as_array()
            .expect("heartbeats")
            .iter()
            .filter(|h| h["live"] == true)
            .collect();
        assert_eq!(live.len(), 1, "{info}");
        assert_eq!(live[0]["owner"], LOCK_HOST);
        assert_eq!(info["locks"][0]["path"], LOCKED_PATH);
        assert_eq!(info["locks"][0]["owner"], LOCK_HOST);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!("{LOCKED_PATH} by host {LOCK_HOST}")),
            "{text}"
        );
    }
}

#[test]
fn ls_long_shows_fd_addresses_address_types_and_symlink_targets() {
    if corpus("ls_long").is_none() {
        return;
    }
    let img = image("vmfs5");

    let out = vdr()
        .arg("ls")
        .arg("-l")
        .arg(&img)
        .arg("/directory")
        .output()
        .expect("run");

    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let file5 = text
        .lines()
        .find(|l| l.ends_with(" file5"))
        .expect("file5 row");
    for column in ["file", "-rw-r--r--", "8193", "1048576", "0x3400004", "FB"] {
        assert!(
            file5.split_whitespace().any(|c| c == column),
            "{column} missing: {file5}"
        );
    }
    assert!(text.contains("symlink -> file4"), "{text}");
    assert!(text.lines().next().is_some_and(|h| h.contains("LOCKED BY")));
}

/// `vdr ls` lists every name of a directory of 10,000 files (one FD each), and `ls -l`,
/// which reads every FD, takes < 1 s in a release build (the bench/vmfs.sh target;
/// per-entry lookups by path would take minutes). Debug builds only print the time.
fn a_directory_of_10000_files_is_listed_quickly(version: Version) {
    let b = built(&many_files_spec(version, "/many", 10_000));

    let names = vdr()
        .arg("ls")
        .arg(&b.img)
        .arg("/many")
        .output()
        .expect("run");
    let started = Instant::now();
    let long = vdr()
        .arg("ls")
        .arg("-l")
        .arg(&b.img)
        .arg("/many")
        .output()
        .expect("run");
    let took = started.elapsed();

    assert!(names.status.success() && long.status.success());
    let listed: BTreeSet<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let wanted: BTreeSet<String> = (0..10_000).map(|i| format!("file{i:05}.txt")).collect();
    assert_eq!(listed, wanted);
    // A header and one row a file.
    assert_eq!(
        String::from_utf8_lossy(&long.stdout).lines().count(),
        10_001
    );
    println!("{version:?}: vdr ls -l of 10,000 files took {took:?}");
    if !cfg!(debug_assertions) {
        assert!(
            took < Duration::from_secs(1),
            "{version:?}: ls -l took {took:?}"
        );
    }
}

#[test]
fn vmfs5_a_directory_of_10000_files_is_listed_quickly() {
    a_directory_of_10000_files_is_listed_quickly(Version::V5);
}

#[test]
fn vmfs6_a_directory_of_10000_files_is_listed_quickly() {
    a_directory_of_10000_files_is_listed_quickly(Version::V6);
}

#[test]
fn info_text_of_vmfs5_matches_its_golden_file() {
    if corpus("info_text").is_none() {
        return;
    }
    let img = image("vmfs5");
    let dir = img.parent().expect("cache dir");

    let out = vdr()
        .current_dir(dir)
        .arg("info")
        .arg("vmfs5.bin")
        .output()
        .expect("run");

    assert!(out.status.success());
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cli/vmfs5-info.txt");
    if std::env::var_os("VDR_BLESS").is_some_and(|v| v == "1") {
        fs::write(&golden, &out.stdout).expect("bless");
        return;
    }
    let expected = fs::read_to_string(&golden).expect("golden file (bless with VDR_BLESS=1)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}
