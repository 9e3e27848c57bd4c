//! `vdr convert -O vmdk --subformat ...`: the flags (default subformat, `-c` implied for
//! streamOptimized and refused for the others, `--subformat` only with `-O vmdk`), the
//! two files of monolithicFlat under the safety rules (an existing extent, an extent that
//! is the input, an interrupted run), and the output against qemu-img.

mod cli_support;

use std::fs;
use std::path::{Path, PathBuf};

use cli_support::{fingerprint, have_qemu_img, qemu_img, sparse_raw, vdr};
use predicates::prelude::*;

fn raw_input(dir: &Path, name: &str) -> PathBuf {
    let input = dir.join(name);
    let text: Vec<u8> = b"a datastore full of recovered grains\n"
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    sparse_raw(
        &input,
        (6 << 20) + 4096,
        &[
            (0, b"boot sector"),
            (1 << 20, &text),
            (5 << 20, &[0xa5; 65536]),
            ((6 << 20) + 4093, b"end"),
        ],
    );
    input
}

/// qemu-img's create-type and compressed flag of `image`.
fn qemu_subformat(image: &Path) -> (String, bool) {
    let info: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        &image.to_string_lossy(),
    ]))
    .expect("qemu-img info json");
    let data = &info["format-specific"]["data"];
    (
        data["create-type"].as_str().unwrap_or_default().to_string(),
        data["extents"][0]["compressed"].as_bool().unwrap_or(false),
    )
}

#[test]
fn every_subformat_is_read_back_by_qemu_img() {
    if !have_qemu_img("every_subformat_is_read_back_by_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path(), "in.raw");
    let cases: [(&[&str], &str, bool); 4] = [
        (&[], "monolithicSparse", false),
        (&["--subformat", "streamOptimized"], "streamOptimized", true),
        (
            &["--subformat", "streamOptimized", "-c"],
            "streamOptimized",
            true,
        ),
        (&["--subformat", "monolithicFlat"], "monolithicFlat", false),
    ];
    for (i, (flags, create_type, compressed)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}.vmdk"));
        vdr()
            .arg("convert")
            .arg(&input)
            .arg(&out)
            .args(["-O", "vmdk", "--threads", "2"])
            .args(flags)
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("(vmdk {create_type})")));
        qemu_img(&["check", &out.to_string_lossy()]);
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "vmdk",
            &input.to_string_lossy(),
            &out.to_string_lossy(),
        ]);
        assert_eq!(qemu_subformat(&out), (create_type.to_string(), compressed));
    }
    assert!(dir.path().join("out3-flat.vmdk").exists());
}

#[test]
fn contradictory_flags_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path(), "in.raw");
    let out = dir.path().join("out.vmdk");
    let cases: [(&[&str], &str); 4] = [
        (&["--subformat", "streamOptimized"], "-O vmdk only"),
        (
            &["-O", "qcow2", "--subformat", "monolithicFlat"],
            "-O vmdk only",
        ),
        (&["-O", "vmdk", "-c"], "streamOptimized"),
        (
            &[
                "-O",
                "vmdk",
                "--subformat",
                "streamOptimized",
                "-c",
                "--compression",
                "zstd",
            ],
            "zstd",
        ),
    ];
    for (flags, says) in cases {
        vdr()
            .arg("convert")
            .arg(&input)
            .arg(&out)
            .args(flags)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
        assert!(!out.exists());
    }
}

#[test]
fn existing_flat_extent_is_refused_without_force_and_replaced_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path(), "in.raw");
    let out = dir.path().join("disk.vmdk");
    let flat = dir.path().join("disk-flat.vmdk");
    fs::write(&flat, b"precious").expect("write existing extent");
    let convert = || {
        let mut cmd = vdr();
        cmd.arg("convert").arg(&input).arg(&out).args([
            "-O",
            "vmdk",
            "--subformat",
            "monolithicFlat",
        ]);
        cmd
    };

    convert().assert().code(2).stderr(
        predicate::str::contains("disk-flat.vmdk").and(predicate::str::contains("--force")),
    );
    assert_eq!(fs::read(&flat).expect("read extent"), b"precious");
    assert!(!out.exists());

    convert().arg("--force").assert().success();
    assert_eq!(
        fs::metadata(&flat).expect("extent").len(),
        (6 << 20) + 4096,
        "the extent holds the whole disk"
    );
    let descriptor = fs::read_to_string(&out).expect("descriptor");
    assert!(
        descriptor.contains("RW 12296 FLAT \"disk-flat.vmdk\" 0"),
        "{descriptor}"
    );
}

#[test]
fn flat_extent_that_is_the_input_is_refused_even_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path(), "disk-flat.vmdk");
    let before = fingerprint(&[&input]);
    let out = dir.path().join("disk.vmdk");

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .args(["-O", "vmdk", "--subformat", "monolithicFlat", "--force"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert_eq!(fingerprint(&[&input]), before);
    assert!(!out.exists());
}

#[test]
fn json_report_counts_compressed_grains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path(), "in.raw");
    let out = dir.path().join("out.vmdk");
    let assert = vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .args(["-O", "vmdk", "--subformat", "streamOptimized", "--json"])
        .assert()
        .success();
    let report: serde_json::Value =
        serde_json::from_slice(&assert.get_output().stdout).expect("json report");
    assert_eq!(report["virtual_size"].as_u64(), Some((6 << 20) + 4096));
    // grains 0, 16..20 (the text), 80, 96 (the last, short one)
    assert_eq!(report["compressed_clusters"].as_u64(), Some(8), "{report}");
}

#[test]
fn interrupted_flat_conversion_leaves_neither_file() {
    use std::time::{Duration, Instant};
    if !have_qemu_img("interrupted_flat_conversion_leaves_neither_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A compressed qcow2: a debug build inflates it slowly enough to interrupt.
    let raw = dir.path().join("text.raw");
    let text: Vec<u8> = b"grain table entry of a recovered extent\n"
        .iter()
        .copied()
        .cycle()
        .take(96 << 20)
        .collect();
    fs::write(&raw, &text).expect("write text");
    let input = dir.path().join("in.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        &raw.to_string_lossy(),
        &input.to_string_lossy(),
    ]);
    let out = dir.path().join("disk.vmdk");
    let flat = dir.path().join("disk-flat.vmdk");
    let bin = assert_cmd::cargo::cargo_bin!("vdr");
    let mut child = std::process::Command::new(bin)
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .args([
            "-O",
            "vmdk",
            "--subformat",
            "monolithicFlat",
            "--threads",
            "1",
        ])
        .spawn()
        .expect("spawn vdr");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !flat.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(flat.exists(), "convert never created the extent file");
    std::thread::sleep(Duration::from_millis(50));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let code = child.wait().expect("wait vdr").code();

    if code == Some(0) {
        println!("SKIP: interrupted_flat_conversion_leaves_neither_file: convert finished first");
        return;
    }
    assert_eq!(code, Some(130));
    assert!(!out.exists(), "the descriptor must be removed");
    assert!(!flat.exists(), "the extent file must be removed");
}
