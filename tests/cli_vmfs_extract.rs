//! `vdr extract` on the real VMFS3/5/6 images of ../shared/corpus/vmfs, against that
//! corpus' oracle table EXPECTED.tsv (every entry's type, size and sha256 from vmfs-tools
//! and dissect.vmfs), on a damaged copy, and the output-safety rules. Tests print a
//! `SKIP:` line when the corpus is absent. The locked file is on a volume from the
//! fixture builder (vdr_fixtures::vmfs).
//!
//! The images are expanded (sparse) once into the target's test tmpdir and shared by the
//! tests; each test proves they were not written (size, mtime and ctime unchanged), and
//! one test compares the full sha256 before and after every command.

mod cli_support;
mod vmfs_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cli_support::{sha256, vdr};
use serde_json::Value;
use vdr_fixtures::vmfs::Version;
use vmfs_support::synthetic::{locked_volume, LOCKED_PATH, LOCK_HOST_MAC};
use vmfs_support::{
    corpus, damaged_vmfs5, expected, image, is_system, json, os, stamp, volume, IMAGES,
};

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
fn extract_warns_about_a_file_a_host_holds_locked() {
    let b = locked_volume(Version::V5);
    let out = b.dir.path().join("flat");

    let run = vdr()
        .arg("extract")
        .arg(&b.img)
        .arg(LOCKED_PATH)
        .arg(&out)
        .arg("--json")
        .output()
        .expect("run");

    assert!(run.status.success());
    let report: Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(report["locked"][0]["path"], LOCKED_PATH, "{report}");
    assert_eq!(report["locked"][0]["mac"], LOCK_HOST_MAC);
    assert_eq!(report["locked"][0]["heartbeat_live"], true);
    assert!(String::from_utf8_lossy(&run.stderr).contains("locked by host"));
    assert_eq!(
        sha256(&out),
        b.manifest.entry(LOCKED_PATH).expect("entry").sha256
    );
}

#[test]
fn extract_never_replaces_a_special_file_even_with_force() {
    if corpus("extract_special").is_none() {
        return;
    }
    let img = image("vmfs5");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());

    vdr()
        .arg("extract")
        .arg(&img)
        .arg("/directory/file5")
        .arg(&fifo)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("not a regular file"));

    let meta = fs::symlink_metadata(&fifo).expect("fifo still there");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
}
