//! Helpers shared by the end-to-end tests of the `vdr` binary (tests/cli_*.rs): running
//! it, making raw images, hashing inputs to prove they were not written, and finding
//! qemu-img for the tests that use it as the oracle.

#![allow(dead_code)] // each test file uses its own subset

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin_cmd;

/// A `vdr` command ready for arguments.
pub fn vdr() -> assert_cmd::Command {
    cargo_bin_cmd!("vdr")
}

/// The directory holding the checked-in demo chain.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo")
}

/// Writes a sparse raw image of `size` bytes with `(offset, bytes)` written into it.
pub fn sparse_raw(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
    let file = fs::File::create(path).expect("create raw image");
    file.set_len(size).expect("size raw image");
    for (offset, bytes) in writes {
        file.write_all_at(bytes, *offset).expect("write raw image");
    }
}

/// Lowercase hex sha256 of a file.
pub fn sha256(path: &Path) -> String {
    vdr_fixtures::sha256_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Content hash and modification time of each input, to prove a command left them alone.
pub fn fingerprint(paths: &[&Path]) -> Vec<(String, std::time::SystemTime)> {
    paths
        .iter()
        .map(|p| {
            let modified = fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("input metadata");
            (sha256(p), modified)
        })
        .collect()
}

/// Whether qemu-img can be run; prints a `SKIP:` line naming `test` when it cannot.
pub fn have_qemu_img(test: &str) -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIP: {test}: qemu-img not found (Debian package qemu-utils)");
    }
    found
}

/// Runs qemu-img with `args`, failing the test if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
