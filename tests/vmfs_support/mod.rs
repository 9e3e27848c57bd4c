//! Helpers of tests/cli_vmfs*.rs: the VMFS corpus (../shared/corpus/vmfs) and its oracle
//! tables, the images expanded once per target directory, and images derived from them
//! (a damaged copy, the volume inside an MBR or GPT disk); volumes from the fixture
//! builder in [`synthetic`].

#![allow(dead_code)]

pub mod synthetic;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use vdr_fixtures::vmfs::label;

use crate::cli_support::vdr;

pub const IMAGES: [&str; 3] = ["vmfs3", "vmfs5", "vmfs6"];

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/vmfs")
}

/// The corpus directory, or None after printing a `SKIP:` line for `test`.
pub fn corpus(test: &str) -> Option<PathBuf> {
    let dir = corpus_dir();
    if dir.join("VOLUMES.tsv").is_file() && dir.join("EXPECTED.tsv").is_file() {
        Some(dir)
    } else {
        println!("SKIP: {test}: no VMFS corpus at {}", dir.display());
        None
    }
}

/// Rows of a corpus TSV file as column-name → value maps.
pub fn tsv(name: &str) -> Vec<BTreeMap<String, String>> {
    let text = fs::read_to_string(corpus_dir().join(name)).expect("read corpus table");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

pub fn volume(image: &str) -> BTreeMap<String, String> {
    tsv("VOLUMES.tsv")
        .into_iter()
        .find(|r| r["image"] == image)
        .expect("image in VOLUMES.tsv")
}

pub fn expected(image: &str) -> Vec<BTreeMap<String, String>> {
    tsv("EXPECTED.tsv")
        .into_iter()
        .filter(|r| r["image"] == image)
        .collect()
}

pub fn is_system(path: &str) -> bool {
    path.starts_with("/.") && path.split('/').nth(1).is_some_and(|n| n.ends_with(".sf"))
}

pub static EXPAND: Mutex<()> = Mutex::new(());

/// The expanded, read-only image (expanded once per target directory).
pub fn image(name: &str) -> PathBuf {
    let _one_at_a_time = EXPAND.lock().unwrap_or_else(|e| e.into_inner());
    let row = volume(name);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmfs-corpus");
    fs::create_dir_all(&dir).expect("corpus cache dir");
    let gz = &row["gz_file"];
    let path = dir.join(gz.trim_end_matches(".gz"));
    let bytes: u64 = row["image_bytes"].parse().expect("image_bytes");
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return path;
    }
    let partial = dir.join(format!("{gz}.{}.partial", std::process::id()));
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; gunzip -c \"$1\" | cp --sparse=always /dev/stdin \"$2\"")
        .arg("bash")
        .arg(corpus_dir().join(gz))
        .arg(&partial)
        .status()
        .expect("run gunzip");
    assert!(status.success(), "expanding {gz} failed");
    let mut perms = fs::metadata(&partial).expect("expanded").permissions();
    perms.set_readonly(true);
    fs::set_permissions(&partial, perms).expect("chmod");
    fs::rename(&partial, &path).expect("rename expanded image");
    path
}

/// Size, mtime and ctime: any write through any descriptor changes them.
pub fn stamp(path: &Path) -> (u64, i64, i64, i64, i64) {
    let m = fs::metadata(path).expect("image metadata");
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

pub fn json(args: &[&std::ffi::OsStr]) -> Value {
    let out = vdr().args(args).output().expect("run vdr");
    assert!(
        out.status.success(),
        "vdr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json output is JSON")
}

pub fn os<T: AsRef<std::ffi::OsStr> + ?Sized>(s: &T) -> &std::ffi::OsStr {
    s.as_ref()
}

/// The LV offset of the FD of `path` in `img`.
pub fn fd_offset(img: &Path, path: &str) -> u64 {
    let listing = json(&[os("ls"), img.as_os_str(), os("-R"), os("--json")]);
    listing
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["path"] == path)
        .and_then(|e| e["fd_offset"].as_u64())
        .expect("fd_offset")
}

/// A writable copy of vmfs5 in `dir` with `patches` (LV offset, bytes) written over it.
pub fn patched_vmfs5(dir: &Path, name: &str, patches: &[(u64, Vec<u8>)]) -> PathBuf {
    let img = image("vmfs5");
    let copy = dir.join(name);
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let mut perms = fs::metadata(&copy).expect("copy").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&copy, perms).expect("chmod");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open copy");
    // The LV starts at partition + 0x1100000 in every corpus image.
    for (offset, bytes) in patches {
        file.write_all_at(bytes, LV_START + offset).expect("patch");
    }
    copy
}

/// Where the LV starts in every corpus image.
pub const LV_START: u64 = 0x110_0000;

/// A copy of vmfs5 whose /directory/file5 points at a block past the end of the volume:
/// the VMFS5 block array is at FD + 0x400; an FB address (type 1) with a block number
/// far past the 256 MiB volume.
pub fn damaged_vmfs5(dir: &Path) -> PathBuf {
    let fd = fd_offset(&image("vmfs5"), "/directory/file5");
    patched_vmfs5(
        dir,
        "damaged.bin",
        &[(fd + 0x400, 0xFFFF_FFC1u32.to_le_bytes().to_vec())],
    )
}

/// A disk image holding vmfs5 as partition 1 at 1 MiB, behind an MBR (type 0xfb) or a
/// GPT (the VMFS type GUID).
pub fn partitioned_vmfs5(dir: &Path, gpt: bool) -> PathBuf {
    const SECTOR: u64 = 512;
    let img = image("vmfs5");
    let part_sectors = fs::metadata(&img).expect("image").len() / SECTOR;
    let disk_sectors = 2048 + part_sectors + 2048;
    let disk = dir.join(if gpt { "gpt.img" } else { "mbr.img" });
    let status = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=sparse", "status=none"])
        .status()
        .expect("dd");
    assert!(status.success());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("disk");
    file.set_len(disk_sectors * SECTOR).expect("size");
    if gpt {
        for (at, bytes) in label::gpt(
            disk_sectors,
            2048,
            2048 + part_sectors - 1,
            [9; 16],
            [7; 16],
        ) {
            file.write_all_at(&bytes, at).expect("gpt");
        }
    } else {
        file.write_all_at(&label::mbr(0xFB, 2048, part_sectors), 0)
            .expect("mbr");
    }
    disk
}
