//! Helpers shared by the qemu-backed QCOW2 tests: running qemu-img/qemu-io, qemu's and
//! vdr's views of an image (content, map, check), and byte patching for damaged variants.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vdr_formats::{open_disk, ExtentKind, OpenOptions, ParseMode, VirtualDisk};

pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        println!("SKIP: qemu-img not found");
    }
    ok
}

/// Runs `program` in the directory of the images: qemu opens an external data file
/// relative to its working directory (vdr, relative to the image).
pub fn run(program: &str, args: &[&str]) -> String {
    let dir = args
        .iter()
        .rev()
        .map(Path::new)
        .find(|a| a.is_absolute() && a.parent().is_some_and(Path::is_dir))
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs qemu-io commands on a qcow2 image.
pub fn qemu_io(img: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    run("qemu-io", &args);
}

/// qemu's raw view of `img` (optionally of an internal snapshot).
pub fn qemu_raw(img: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let out = img.with_extension("oracle.raw");
    let mut args = vec!["convert", "-O", "raw"];
    let spec;
    if let Some(s) = snapshot {
        spec = format!("snapshot.name={s}");
        args.push("-l");
        args.push(&spec);
    }
    args.push(p(img));
    args.push(p(&out));
    run("qemu-img", &args);
    let bytes = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    bytes
}

pub fn options(mode: ParseMode) -> OpenOptions {
    OpenOptions {
        mode,
        ..OpenOptions::default()
    }
}

/// vdr's view of `img` through `open_disk` (which builds the chain).
pub fn vdr_raw(img: &Path, options: &OpenOptions) -> Vec<u8> {
    let disk = open_disk(img, options).unwrap();
    let mut buf = vec![0u8; disk.size() as usize];
    // Odd-sized pieces exercise reads that start and end inside clusters.
    let mut offset = 0usize;
    while offset < buf.len() {
        let n = (buf.len() - offset).min(300_000);
        disk.read_at(&mut buf[offset..offset + n], offset as u64)
            .unwrap();
        offset += n;
    }
    buf
}

pub fn assert_same_content(img: &Path, snapshot: Option<&str>) {
    let expected = qemu_raw(img, snapshot);
    let opts = OpenOptions {
        snapshot: snapshot.map(str::to_string),
        ..OpenOptions::default()
    };
    let got = vdr_raw(img, &opts);
    assert_eq!(got.len(), expected.len(), "{}: size", img.display());
    if let Some(at) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!("{}: first difference at {at:#x}", img.display());
    }
}

/// (start, length, kind, host offset of data) runs, merged.
pub type Run = (u64, u64, &'static str, Option<u64>);

pub fn push_run(out: &mut Vec<Run>, run: Run) {
    if let Some(last) = out.last_mut() {
        let contiguous = match (last.3, run.3) {
            (Some(a), Some(b)) => a + last.1 == b,
            (None, None) => true,
            _ => false,
        };
        if last.2 == run.2 && last.0 + last.1 == run.0 && contiguous {
            last.1 += run.1;
            return;
        }
    }
    out.push(run);
}

pub fn qemu_map(img: &Path) -> Vec<Run> {
    let json: Value = serde_json::from_str(&run(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", p(img)],
    ))
    .unwrap();
    let mut out = Vec::new();
    for e in json.as_array().unwrap() {
        let flag = |k: &str| e[k].as_bool().unwrap_or(false);
        let kind = if !flag("present") {
            "unallocated"
        } else if flag("compressed") {
            "compressed"
        } else if flag("data") {
            "data"
        } else {
            "zero"
        };
        let offset = if kind == "data" {
            e["offset"].as_u64()
        } else {
            None
        };
        push_run(
            &mut out,
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                kind,
                offset,
            ),
        );
    }
    out
}

pub fn vdr_map(img: &Path) -> Vec<Run> {
    let disk = open_disk(img, &options(ParseMode::Strict)).unwrap();
    let mut out = Vec::new();
    for e in disk.map(0, disk.size()).unwrap() {
        let offset = match &e.kind {
            ExtentKind::Data { at, .. } => Some(*at),
            _ => None,
        };
        push_run(&mut out, (e.offset, e.len, e.kind.name(), offset));
    }
    out
}

pub fn assert_same_map(img: &Path) {
    assert_eq!(vdr_map(img), qemu_map(img), "{}", img.display());
}

/// qemu-img check's numbers: (corruptions, leaks, allocated, total, image end).
pub fn qemu_check(img: &Path) -> (u64, u64, u64, u64, u64) {
    let out = Command::new("qemu-img")
        .current_dir(img.parent().unwrap())
        .args(["check", "--output=json", "-f", "qcow2", p(img)])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| json[k].as_u64().unwrap_or(0);
    (
        n("corruptions"),
        n("leaks"),
        n("allocated-clusters"),
        n("total-clusters"),
        n("image-end-offset"),
    )
}

pub fn vdr_check(img: &Path) -> (u64, u64, u64, u64, u64) {
    let disk = open_disk(img, &options(ParseMode::Salvage)).unwrap();
    let r = disk.check().unwrap();
    (
        r.errors.len() as u64,
        r.leaked_clusters,
        r.allocated_clusters,
        r.total_clusters,
        r.image_end_offset.unwrap_or(0),
    )
}

pub fn assert_same_check(img: &Path) {
    assert_eq!(vdr_check(img), qemu_check(img), "{}", img.display());
}

pub fn create(img: &Path, opts: &str, size: &str) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, p(img), size],
    );
}

/// Writes, zero writes and discards at aligned and unaligned places.
pub fn scribble(img: &Path) {
    qemu_io(
        img,
        &[
            "write -P 0xab 0 64k",
            "write -P 0xcd 1000000 100000",
            "write -z 1M 64k",
            "write -P 0x11 2M 192k",
            "discard 2M 64k",
            "write -z 3000000 5000",
            "write -P 0x22 3500000 512",
        ],
    );
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A raw file with text-like, random-like and zero regions.
pub fn pattern_raw(path: &Path, size: usize) {
    let mut bytes = vec![0u8; size];
    let mut x = 0x1234_5678u32;
    for (i, b) in bytes.iter_mut().enumerate() {
        let region = i / 65536;
        *b = match region % 4 {
            0 => b"qcow2 compressed cluster test "[i % 30],
            1 => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
            2 => 0,
            _ => (i / 512) as u8,
        };
    }
    fs::write(path, bytes).unwrap();
}

/// Host offset of the L2 table that maps guest offset 0 and of its first entry's cluster.
pub fn first_l2(img: &Path) -> (u64, u64) {
    let f = fs::File::open(img).unwrap();
    let be = |at: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        u64::from_be_bytes(b)
    };
    let l1 = be(40);
    let l2 = be(l1) & 0x00ff_ffff_ffff_fe00;
    (l2, be(l2) & 0x00ff_ffff_ffff_fe00)
}

/// Host offset of the first refcount block.
pub fn first_refblock(img: &Path) -> u64 {
    let f = fs::File::open(img).unwrap();
    let be = |at: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        u64::from_be_bytes(b)
    };
    be(be(48)) & 0x00ff_ffff_ffff_fe00
}

pub fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// A 64 KiB-cluster image with data at 0, 1 MiB and 3 MiB.
pub fn damaged_base(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    create(&img, "compat=1.1,cluster_size=64k", "4M");
    qemu_io(
        &img,
        &[
            "write -P 0x71 0 64k",
            "write -P 0x72 1M 64k",
            "write -P 0x73 3M 64k",
        ],
    );
    img
}

/// In salvage mode: unreadable ranges are reported, everything else equals `good`.
pub fn assert_salvage_matches_elsewhere(img: &Path, good: &[u8]) -> Vec<(u64, u64)> {
    let disk = open_disk(img, &options(ParseMode::Salvage)).unwrap();
    let mut unreadable = Vec::new();
    for e in disk.map(0, disk.size()).unwrap() {
        if let ExtentKind::Unreadable { .. } = e.kind {
            let mut buf = vec![0u8; e.len as usize];
            assert!(disk.read_at(&mut buf, e.offset).is_err());
            unreadable.push((e.offset, e.len));
        } else {
            let mut buf = vec![0u8; e.len as usize];
            disk.read_at(&mut buf, e.offset).unwrap();
            assert!(buf == good[e.offset as usize..e.end() as usize], "{e:?}");
        }
    }
    assert!(!disk.findings().is_empty());
    unreadable
}
