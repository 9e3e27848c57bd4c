//! `vdr info`, `vdr ls` and `vdr extract` on the real VMFS3/5/6 images of
//! ../shared/corpus/vmfs, against that corpus' oracle tables (EXPECTED.tsv: every entry's
//! type, size and sha256 from vmfs-tools and dissect.vmfs; VOLUMES.tsv: the volumes'
//! descriptors and block counts). Tests print a `SKIP:` line when the corpus is absent.
//!
//! The images are expanded (sparse) once into the target's test tmpdir and shared by the
//! tests; each test proves they were not written (size, mtime and ctime unchanged), and
//! one test compares the full sha256 before and after every command.

mod cli_support;
mod vmfs_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use cli_support::{sha256, vdr};
use serde_json::Value;
use vmfs_support::{
    big_directory_vmfs5, corpus, damaged_vmfs5, expected, image, is_system, json, locked_vmfs5, os,
    partitioned_vmfs5, stamp, volume, IMAGES, VMFS5_HEARTBEAT,
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
fn extract_all_writes_the_expected_tree_of_each_corpus_image() {
    if corpus("extract_all").is_none() {
        return;
    }
    for name in IMAGES {
        let img = image(name);
        let before = stamp(&img);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");

        let report = json(&[
            os("extract"),
            img.as_os_str(),
            os("--all"),
            out.as_os_str(),
            os("--json"),
        ]);

        let mut wanted = 0;
        for row in expected(name) {
            let path = &row["path"];
            let target = out.join(path.trim_start_matches('/'));
            if is_system(path) {
                assert!(
                    fs::symlink_metadata(&target).is_err(),
                    "{name}: system file {path} written without --system-files"
                );
                continue;
            }
            wanted += 1;
            let meta = fs::symlink_metadata(&target).expect("extracted entry");
            match row["type"].as_str() {
                "file" => {
                    assert!(meta.is_file(), "{name}: {path}");
                    assert_eq!(meta.len().to_string(), row["size"], "{name}: {path}");
                    assert_eq!(sha256(&target), row["sha256"], "{name}: {path}");
                }
                "dir" => assert!(meta.is_dir(), "{name}: {path}"),
                "symlink" => {
                    assert!(meta.file_type().is_symlink(), "{name}: {path}");
                    assert_eq!(
                        fs::read_link(&target).expect("readlink"),
                        Path::new(&row["sha256"])
                    );
                }
                other => panic!("unknown type {other}"),
            }
        }
        let written = walk_count(&out);
        assert_eq!(written, wanted, "{name}: extra entries in the output");
        let counted = report["files"].as_u64().unwrap_or(0)
            + report["symlinks"].as_u64().unwrap_or(0)
            + report["dirs"].as_u64().unwrap_or(0)
            - 1; // `dirs` counts OUT_DIR itself
        assert_eq!(counted as usize, wanted, "{name}: {report}");
        assert_eq!(report["unreadable"], Value::Array(Vec::new()));
        assert_eq!(stamp(&img), before, "{name} was written");
    }
}

fn walk_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("read output dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            1 + if is_dir { walk_count(&e.path()) } else { 0 }
        })
        .sum()
}

#[test]
fn extract_all_with_system_files_writes_them_and_the_sdd_directory() {
    if corpus("extract_system_files").is_none() {
        return;
    }
    let img = image("vmfs5");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("--all")
        .arg(&out)
        .arg("--system-files")
        .assert()
        .success();

    for row in expected("vmfs5").iter().filter(|r| is_system(&r["path"])) {
        let target = out.join(row["path"].trim_start_matches('/'));
        if row["type"] == "dir" {
            assert!(target.is_dir(), "{}", row["path"]);
        } else {
            assert_eq!(sha256(&target), row["sha256"], "{}", row["path"]);
        }
    }
}

#[test]
fn thin_files_are_extracted_sparse() {
    if corpus("thin_sparse").is_none() {
        return;
    }
    let img = image("vmfs3");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("thin-flat.vmdk");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/thin-flat.vmdk")
        .arg(&out)
        .assert()
        .success();

    let meta = fs::metadata(&out).expect("extracted");
    assert_eq!(meta.len(), 200 << 20);
    assert!(
        meta.blocks() * 512 <= 2 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
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
fn extract_of_one_file_writes_its_content() {
    if corpus("extract_file").is_none() {
        return;
    }
    let img = image("vmfs5");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("file5");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&out)
        .assert()
        .success();

    let row = expected("vmfs5")
        .into_iter()
        .find(|r| r["path"] == "/directory/file5")
        .expect("row");
    assert_eq!(sha256(&out), row["sha256"]);
}

#[test]
fn extract_of_a_directory_writes_its_tree_under_out() {
    if corpus("extract_dir").is_none() {
        return;
    }
    let img = image("vmfs6");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("d");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory")
        .arg(&out)
        .assert()
        .success();

    for row in expected("vmfs6")
        .iter()
        .filter(|r| r["path"].starts_with("/directory/"))
    {
        let target = out.join(row["path"].trim_start_matches("/directory/"));
        match row["type"].as_str() {
            "symlink" => assert_eq!(
                fs::read_link(&target).expect("symlink"),
                Path::new(&row["sha256"])
            ),
            _ => assert_eq!(sha256(&target), row["sha256"], "{}", row["path"]),
        }
    }
}

#[test]
fn extract_refuses_an_existing_output_without_force() {
    if corpus("extract_force").is_none() {
        return;
    }
    let img = image("vmfs5");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("file5");
    fs::write(&out, b"keep me").expect("write");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("already exists; use --force"));
    assert_eq!(fs::read(&out).expect("read"), b"keep me");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&out)
        .arg("--force")
        .assert()
        .success();
    assert_eq!(fs::metadata(&out).expect("out").len(), 8193);
}

#[test]
fn extract_never_writes_over_the_datastore_even_with_force() {
    if corpus("extract_input").is_none() {
        return;
    }
    let img = image("vmfs5");
    let before = stamp(&img);
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("alias.bin");
    std::os::unix::fs::symlink(&img, &link).expect("symlink");

    for out in [&img, &link] {
        vdr()
            .arg("extract")
            .arg(&img)
            .arg("/directory/file5")
            .arg(out)
            .arg("--force")
            .assert()
            .code(2)
            .stderr(predicates::str::contains("it is the input file"));
    }
    assert_eq!(stamp(&img), before);
}

#[test]
fn every_command_leaves_the_image_byte_identical() {
    if corpus("image_unchanged").is_none() {
        return;
    }
    let img = image("vmfs5");
    let sha = volume("vmfs5")["image_sha256"].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = dir.path().join("all");

    for args in [
        vec![os("info"), img.as_os_str()],
        vec![os("info"), img.as_os_str(), os("--json")],
        vec![os("ls"), img.as_os_str(), os("-lR")],
        vec![
            os("ls"),
            img.as_os_str(),
            os("-R"),
            os("--json"),
            os("--salvage"),
        ],
        vec![
            os("extract"),
            img.as_os_str(),
            os("--all"),
            all.as_os_str(),
            os("--system-files"),
        ],
    ] {
        vdr().args(&args).assert().success();
    }

    assert_eq!(sha256(&img), sha);
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
fn an_unreadable_block_stops_a_strict_extract_and_leaves_no_file() {
    if corpus("unreadable_strict").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = damaged_vmfs5(dir.path());
    let out = dir.path().join("file5");

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "/directory/file5: file bytes 0x0..",
        ))
        .stderr(predicates::str::contains("unreadable"));
    assert!(!out.exists());
}

#[test]
fn salvage_fills_an_unreadable_block_with_zeros_and_exits_1() {
    if corpus("unreadable_salvage").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = damaged_vmfs5(dir.path());
    let out = dir.path().join("tree");

    let run = vdr()
        .arg("extract")
        .arg(&img)
        .arg("--all")
        .arg(&out)
        .arg("--salvage")
        .arg("--json")
        .output()
        .expect("run");

    assert_eq!(run.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(report["unreadable"][0]["path"], "/directory/file5");
    assert_eq!(report["unreadable"][0]["offset"], 0);
    let file5 = fs::read(out.join("directory/file5")).expect("file5");
    assert_eq!(file5, vec![0u8; 8193]);
    assert_eq!(
        fs::read(out.join("directory/file4")).expect("file4"),
        b"content\n"
    );
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
    if corpus("held_lock").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut owner = [0u8; 16];
    fs::File::open(image("vmfs5"))
        .and_then(|f| f.read_exact_at(&mut owner, 0x110_0000 + VMFS5_HEARTBEAT + 0x1C))
        .expect("heartbeat owner");
    let img = locked_vmfs5(dir.path(), owner);

    let listing = json(&[os("ls"), img.as_os_str(), os("/directory"), os("--json")]);
    let info = json(&[os("info"), img.as_os_str(), os("--json")]);
    let text = vdr().arg("info").arg(&img).output().expect("run");

    let host = "61137d5a-a2df8778-7ed5-000c29801686";
    let file5 = &listing.as_array().expect("array")[4];
    assert_eq!(file5["name"], "file5");
    assert_eq!(file5["locked_by"]["owner"], host, "{file5}");
    assert_eq!(file5["locked_by"]["mac"], "00:0c:29:80:16:86");
    assert_eq!(file5["locked_by"]["mode"], 1);
    assert_eq!(file5["locked_by"]["heartbeat_live"], true);
    assert_eq!(info["heartbeats"][0]["owner"], host);
    assert_eq!(info["heartbeats"][0]["live"], true);
    assert_eq!(info["locks"][0]["path"], "/directory/file5");
    assert_eq!(info["locks"][0]["owner"], host);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("/directory/file5 by host {host}")),
        "{text}"
    );
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

#[test]
fn extract_warns_about_a_file_a_host_holds_locked() {
    if corpus("extract_locked").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = locked_vmfs5(dir.path(), [0x5A; 16]);
    let out = dir.path().join("file5");

    let run = vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&out)
        .arg("--json")
        .output()
        .expect("run");

    assert!(run.status.success());
    let report: Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(report["locked"][0]["path"], "/directory/file5", "{report}");
    assert_eq!(report["locked"][0]["mac"], "5a:5a:5a:5a:5a:5a");
    assert!(String::from_utf8_lossy(&run.stderr).contains("locked by host"));
    assert_eq!(fs::metadata(&out).expect("written").len(), 8193);
}

#[test]
fn a_directory_of_10000_files_is_listed_quickly() {
    if corpus("big_directory").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = big_directory_vmfs5(dir.path(), 10_000);

    let started = std::time::Instant::now();
    let listing = json(&[
        os("ls"),
        img.as_os_str(),
        os("/directory"),
        os("-R"),
        os("--json"),
    ]);
    let took = started.elapsed();

    let entries = listing.as_array().expect("array");
    assert_eq!(entries.len(), 10_006);
    assert_eq!(entries[0]["name"], "f000000");
    assert_eq!(entries[9_999]["size"], entries[4]["size"]);
    // The target is < 1 s; 5 s leaves room for a loaded machine and still catches
    // per-entry lookups by path (quadratic: minutes).
    assert!(took.as_secs() < 5, "listing took {took:?}");
}
