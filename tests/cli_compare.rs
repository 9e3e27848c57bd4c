//! `vdr compare`: identical and different images, offsets of the first difference,
//! different sizes (zero tail allowed unless --strict-size), exit codes 0 / 1.

mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::{fingerprint, sparse_raw, vdr};
use predicates::prelude::*;

fn image(dir: &Path, name: &str, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    sparse_raw(&path, size, writes);
    path
}

fn compare_json(a: &Path, b: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = vdr()
        .arg("compare")
        .arg(a)
        .arg(b)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run vdr");
    let value = serde_json::from_slice(&out.stdout).expect("compare --json is JSON");
    (out.status.code().unwrap_or(-1), value)
}

#[test]
fn same_content_is_identical_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writes: &[(u64, &[u8])] = &[(4096, b"hello"), (3 << 20, &[7; 9000])];
    let a = image(dir.path(), "a.raw", 8 << 20, writes);
    let b = image(dir.path(), "b.raw", 8 << 20, writes);
    let before = fingerprint(&[&a, &b]);

    vdr()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .assert()
        .success()
        .stdout("Images are identical.\n");

    assert_eq!(fingerprint(&[&a, &b]), before);
}

#[test]
fn data_against_a_hole_reports_the_first_different_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 8 << 20, &[(5 << 20, &[0, 0, 0, 9])]);
    let b = image(dir.path(), "b.raw", 8 << 20, &[]);

    vdr()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .assert()
        .code(1)
        .stdout(format!("Content mismatch at offset {}!\n", (5 << 20) + 3));
}

#[test]
fn json_names_the_first_difference_and_both_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 1 << 20, &[(1000, b"abcdef")]);
    let b = image(dir.path(), "b.raw", 1 << 20, &[(1000, b"abcXef")]);

    let (code, value) = compare_json(&a, &b, &[]);

    assert_eq!(code, 1);
    assert_eq!(
        value,
        serde_json::json!({"identical": false, "first_difference": 1003,
                           "size_a": 1 << 20, "size_b": 1 << 20})
    );
}

#[test]
fn larger_image_with_a_zero_tail_is_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 1 << 20, &[(10, b"x")]);
    let b = image(dir.path(), "b.raw", 3 << 20, &[(10, b"x")]);

    let (code, value) = compare_json(&a, &b, &[]);

    assert_eq!(code, 0);
    assert_eq!(value["identical"], true);
    assert_eq!(value["first_difference"], serde_json::Value::Null);
    assert_eq!(value["size_b"], 3 << 20);
}

#[test]
fn data_in_the_tail_of_the_larger_image_is_a_difference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 1 << 20, &[]);
    let b = image(dir.path(), "b.raw", 2 << 20, &[((1 << 20) + 77, b"z")]);

    let (code, value) = compare_json(&b, &a, &[]);

    assert_eq!(code, 1);
    assert_eq!(value["first_difference"], (1 << 20) + 77);
}

#[test]
fn strict_size_makes_different_sizes_a_difference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 1 << 20, &[]);
    let b = image(dir.path(), "b.raw", 2 << 20, &[]);

    let (code, value) = compare_json(&a, &b, &["--strict-size"]);
    assert_eq!(code, 1);
    assert_eq!(value["identical"], false);

    vdr()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .arg("--strict-size")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("size mismatch"));
}

#[test]
fn missing_second_image_is_an_input_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.raw", 4096, &[]);

    vdr()
        .arg("compare")
        .arg(&a)
        .arg(dir.path().join("b.raw"))
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("vdr: "));
}

/// The oracle: first differing byte of two files, the shorter one read as zero-extended.
fn naive_first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    let len = a.len().max(b.len());
    (0..len)
        .find(|&i| a.get(i).copied().unwrap_or(0) != b.get(i).copied().unwrap_or(0))
        .map(|i| i as u64)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    #[test]
    fn first_difference_matches_a_byte_by_byte_comparison(
        size_a in 1u64..300_000,
        size_b in 1u64..300_000,
        writes_a in proptest::collection::vec((0u64..300_000, 1u8..=255, 1usize..5000), 0..4),
        writes_b in proptest::collection::vec((0u64..300_000, 1u8..=255, 1usize..5000), 0..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |name: &str, size: u64, writes: &[(u64, u8, usize)]| {
            let fill: Vec<(u64, Vec<u8>)> = writes
                .iter()
                .filter(|(offset, _, _)| *offset < size)
                .map(|&(offset, byte, len)| {
                    let len = len.min((size - offset) as usize);
                    (offset, vec![byte; len])
                })
                .collect();
            let refs: Vec<(u64, &[u8])> = fill.iter().map(|(o, v)| (*o, v.as_slice())).collect();
            image(dir.path(), name, size, &refs)
        };
        let a = make("a.raw", size_a, &writes_a);
        let b = make("b.raw", size_b, &writes_b);
        let expected = naive_first_difference(
            &std::fs::read(&a).expect("read a"),
            &std::fs::read(&b).expect("read b"),
        );

        let (code, value) = compare_json(&a, &b, &[]);

        proptest::prop_assert_eq!(code, if expected.is_some() { 1 } else { 0 });
        proptest::prop_assert_eq!(value["first_difference"].as_u64(), expected);
    }
}
