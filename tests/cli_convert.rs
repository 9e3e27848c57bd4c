//! `vdr convert`: the safety rules (never write an input, not even with --force; an
//! existing output only with --force; inputs unchanged) and raw → raw content.

mod cli_support;

use std::fs;
use std::path::Path;

use cli_support::{fingerprint, sha256, sparse_raw, vdr};
use predicates::prelude::*;

fn raw_input(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("in.raw");
    sparse_raw(
        &input,
        4 << 20,
        &[
            (0, b"boot sector"),
            (1 << 20, &[0x5a; 65536]),
            ((4 << 20) - 3, b"end"),
        ],
    );
    input
}

#[test]
fn existing_output_is_refused_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let out = dir.path().join("out.raw");
    fs::write(&out, b"precious").expect("write existing output");

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--force"));

    assert_eq!(fs::read(&out).expect("read output"), b"precious");
}

#[test]
fn output_equal_to_input_is_refused_even_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&input)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn output_through_another_path_to_the_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).expect("mkdir");
    let dotted = sub.join("..").join("in.raw");
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&dotted)
        .arg("--force")
        .assert()
        .code(2);

    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn output_hard_linked_to_the_input_is_refused_even_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let link = dir.path().join("link.raw");
    fs::hard_link(&input, &link).expect("hard link");
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&link)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert!(link.exists(), "the hard link must not be removed");
    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn output_symlinked_to_the_input_is_refused_even_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let link = dir.path().join("link.raw");
    std::os::unix::fs::symlink(&input, &link).expect("symlink");
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&link)
        .arg("--force")
        .assert()
        .code(2);

    assert!(fs::symlink_metadata(&link).is_ok(), "symlink must stay");
    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn input_named_through_a_symlink_is_still_protected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let link = dir.path().join("alias.raw");
    std::os::unix::fs::symlink(&input, &link).expect("symlink");
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&link)
        .arg(&input)
        .arg("--force")
        .assert()
        .code(2);

    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn output_directory_is_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let out = dir.path().join("outdir");
    fs::create_dir(&out).expect("mkdir");

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .arg("--force")
        .assert()
        .code(2);

    assert!(out.is_dir());
}

#[test]
fn failed_conversion_leaves_no_output_and_input_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("not-there.raw");
    let out = dir.path().join("out.raw");

    vdr().arg("convert").arg(&input).arg(&out).assert().code(2);

    assert!(!out.exists());
}

#[test]
fn raw_to_raw_equals_input_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let out = dir.path().join("out.raw");
    let before = fingerprint(&[&input]);

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("Converted"));

    assert_eq!(sha256(&out), sha256(&input));
    assert_eq!(fingerprint(&[&input]), before);
}

#[test]
fn force_replaces_an_existing_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let out = dir.path().join("out.raw");
    fs::write(&out, b"old").expect("write old output");

    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .arg("--force")
        .assert()
        .success();

    assert_eq!(sha256(&out), sha256(&input));
}

#[test]
fn json_report_has_the_documented_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = raw_input(dir.path());
    let out = dir.path().join("out.raw");

    let assert = vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .arg("--json")
        .assert()
        .success();

    let report: serde_json::Value =
        serde_json::from_slice(&assert.get_output().stdout).expect("convert --json is JSON");
    assert_eq!(report["virtual_size"], 4 << 20);
    assert!(report["data_bytes"].as_u64().is_some());
    assert!(report["zero_bytes"].as_u64().is_some());
    assert_eq!(report["unreadable"], serde_json::json!([]));
}

#[test]
fn interrupted_conversion_leaves_no_output() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("big.raw");
    // Incompressible data, compressed into qcow2 by a debug build: slow enough to interrupt.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..64 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(&input, &noise).expect("write input");
    let out = dir.path().join("out.qcow2");
    let bin = assert_cmd::cargo::cargo_bin!("vdr");
    let mut child = std::process::Command::new(bin)
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .args(["-O", "qcow2", "-c", "--threads", "1"])
        .spawn()
        .expect("spawn vdr");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(out.exists(), "convert never created its output");
    std::thread::sleep(Duration::from_millis(50));
    // SIGINT, as Ctrl-C sends it.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let code = child.wait().expect("wait vdr").code();

    if code == Some(0) {
        println!("SKIP: interrupted_conversion_leaves_no_output: convert finished first");
        return;
    }
    assert_eq!(code, Some(130));
    assert!(!out.exists(), "the partial output must be removed");
}
