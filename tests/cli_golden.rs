//! Golden outputs of the text and `--json` forms, kept in tests/golden/cli/ and reviewed
//! in diffs. Re-bless with `VDR_BLESS=1 cargo test -p vdr --test cli_golden -- --include-ignored`.
//!
//! Each command runs with a relative image path from a fixed working directory, so paths
//! in the output are the same on every machine.

mod cli_support;

use std::fs;
use std::path::Path;

use cli_support::vdr;

/// Compares `actual` with the golden file `name`, or rewrites it under `VDR_BLESS=1`.
fn assert_golden(name: &str, actual: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/cli")
        .join(name);
    if std::env::var_os("VDR_BLESS").is_some_and(|v| v == "1") {
        fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with VDR_BLESS=1 and review the diff",
            path.display()
        )
    });
    assert_eq!(
        String::from_utf8_lossy(actual),
        String::from_utf8_lossy(&expected),
        "output differs from {} (re-bless with VDR_BLESS=1 if the change is intended)",
        path.display()
    );
}

/// Runs vdr in `dir` and returns its stdout, checking the exit code.
fn stdout_in(dir: &Path, args: &[&str], code: i32) -> Vec<u8> {
    let output = vdr().current_dir(dir).args(args).output().expect("run vdr");
    assert_eq!(
        output.status.code(),
        Some(code),
        "vdr {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A 1 MiB raw image with every byte written (no holes, so every file system maps it the
/// same way), and a copy with one byte changed.
fn raw_pair(dir: &Path) {
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(dir.join("disk.raw"), &bytes).expect("write disk.raw");
    let mut other = bytes;
    other[300_000] ^= 0xff;
    fs::write(dir.join("other.raw"), &other).expect("write other.raw");
}

#[test]
fn raw_outputs_match_golden_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    raw_pair(dir.path());
    let d = dir.path();

    assert_golden("raw_info.txt", &stdout_in(d, &["info", "disk.raw"], 0));
    assert_golden(
        "raw_info.json",
        &stdout_in(d, &["info", "disk.raw", "--json"], 0),
    );
    assert_golden("raw_map.txt", &stdout_in(d, &["map", "disk.raw"], 0));
    assert_golden(
        "raw_map.json",
        &stdout_in(d, &["map", "disk.raw", "--json"], 0),
    );
    assert_golden(
        "raw_check.json",
        &stdout_in(d, &["check", "disk.raw", "--json"], 0),
    );
    assert_golden(
        "raw_compare.json",
        &stdout_in(d, &["compare", "disk.raw", "other.raw", "--json"], 1),
    );
}

#[test]
fn demo_outputs_match_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let leaf = "fixtures/demo/leaf.qcow2";

    assert_golden("demo_info.txt", &stdout_in(root, &["info", leaf], 0));
    assert_golden(
        "demo_info.json",
        &stdout_in(root, &["info", leaf, "--json"], 0),
    );
    assert_golden("demo_map.txt", &stdout_in(root, &["map", leaf], 0));
    assert_golden(
        "demo_map.json",
        &stdout_in(root, &["map", leaf, "--json"], 0),
    );
    assert_golden("demo_check.txt", &stdout_in(root, &["check", leaf], 0));
}
