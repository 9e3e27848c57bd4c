//! Usage and input errors: exit code 2, a `vdr: ` or clap message on stderr, never a panic.

mod cli_support;

use cli_support::{sparse_raw, vdr};
use predicates::prelude::*;

#[test]
fn no_command_is_a_usage_error() {
    vdr().assert().code(2);
}

#[test]
fn unknown_command_is_a_usage_error() {
    vdr().arg("frobnicate").assert().code(2);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    vdr().args(["info", "--frobnicate", "x"]).assert().code(2);
}

#[test]
fn compression_with_raw_output_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.raw");
    sparse_raw(&input, 65536, &[]);
    let out = dir.path().join("out.raw");
    vdr()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .args(["-O", "raw", "-c"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("-O qcow2"));
    assert!(!out.exists());
}

#[test]
fn unknown_output_format_is_a_usage_error() {
    vdr()
        .args(["convert", "a", "b", "-O", "vhdx"])
        .assert()
        .code(2);
}

#[test]
fn unknown_compression_is_a_usage_error() {
    vdr()
        .args([
            "convert",
            "a",
            "b",
            "-O",
            "qcow2",
            "-c",
            "--compression",
            "lz4",
        ])
        .assert()
        .code(2);
}

#[test]
fn cluster_size_must_be_a_power_of_two() {
    vdr()
        .args(["convert", "a", "b", "-O", "qcow2", "--cluster-size", "3000"])
        .assert()
        .code(2);
}

#[test]
fn missing_input_is_an_input_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere.qcow2");
    for command in ["info", "map", "check"] {
        vdr()
            .arg(command)
            .arg(&missing)
            .assert()
            .code(2)
            .stderr(predicate::str::starts_with("vdr: "))
            .stderr(predicate::str::contains("nowhere.qcow2"))
            .stderr(predicate::str::contains("panicked").not());
    }
}

#[test]
fn help_exits_zero() {
    vdr().arg("--help").assert().success();
    vdr().args(["convert", "--help"]).assert().success();
}

#[test]
fn snapshot_of_an_image_without_snapshots_is_an_input_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.raw");
    sparse_raw(&input, 65536, &[]);

    for command in ["info", "map"] {
        vdr()
            .arg(command)
            .arg(&input)
            .args(["--snapshot", "before-update"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no internal snapshot"));
    }
}
