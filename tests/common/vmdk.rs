//! Helpers of the VMDK end-to-end tests (tests/vmdk_cli_*.rs): running `vdr` on an image
//! by path, comparing large (sparse) raw outputs range by range, reading `--json` reports.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use super::{merge_flags, parse_map, qemu_map, union, vdr, Run};

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `vdr convert IN OUT -O raw EXTRA...` in `dir`.
pub fn vdr_raw(dir: &Path, input: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["convert", s(input), s(out), "-O", "raw"];
    args.extend(extra);
    vdr(dir, &args)
}

/// `vdr info --json EXTRA... IMAGE`, exit 0, parsed.
pub fn vdr_info(dir: &Path, image: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["info", "--json"];
    args.extend(extra);
    args.push(s(image));
    vdr(dir, &args).expect_code(0).json()
}

/// Panics unless `vdr map --json` and `qemu-img map --output=json` describe the same
/// ranges with the same depth and kind (runs merged; host offsets not compared: qemu and
/// vdr name different files for flat and split extents).
///
/// A hole in a flat extent's file is `data: true, zero: true` in qemu-img's map (the
/// extent is allocated, the file layer says the bytes read as zeros) and a zero range
/// (`data: false`) in vdr's, as for holes of a raw file: both read zeros.
pub fn assert_map_agrees_with_qemu(dir: &Path, image: &Path) {
    let ours = parse_map(&vdr(dir, &["map", "--json", s(image)]).expect_code(0).json());
    let mut theirs = qemu_map(dir, image);
    for e in &mut theirs {
        if e.data && e.zero {
            e.data = false;
        }
    }
    assert_eq!(
        merge_flags(&ours),
        merge_flags(&theirs),
        "map of {} differs from qemu-img's",
        image.display()
    );
}

/// The byte ranges where the two files differ (lengths must be equal), in chunks of
/// 64 KiB: enough to locate a difference, fast on sparse multi-GiB outputs.
pub fn differing_chunks(a: &Path, b: &Path) -> Vec<Range<u64>> {
    const CHUNK: usize = 1 << 16;
    let len_a = std::fs::metadata(a).expect("stat").len();
    let len_b = std::fs::metadata(b).expect("stat").len();
    assert_eq!(
        len_a,
        len_b,
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    let (mut ba, mut bb) = (vec![0u8; CHUNK << 4], vec![0u8; CHUNK << 4]);
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len_a {
        let n = ((len_a - at) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).expect("read");
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            for (i, (x, y)) in ba[..n].chunks(CHUNK).zip(bb[..n].chunks(CHUNK)).enumerate() {
                if x != y {
                    let start = at + (i * CHUNK) as u64;
                    out.push(start..start + x.len() as u64);
                }
            }
        }
        at += n as u64;
    }
    union(out)
}

/// The first byte where the files differ outside `skip`, if any (exact, byte by byte
/// inside the differing chunks).
pub fn first_difference_outside(a: &Path, b: &Path, skip: &[Range<u64>]) -> Option<u64> {
    for chunk in differing_chunks(a, b) {
        let x = read_range(a, chunk.clone());
        let y = read_range(b, chunk.clone());
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            let at = chunk.start + i as u64;
            if p != q && !skip.iter().any(|r| r.contains(&at)) {
                return Some(at);
            }
        }
    }
    None
}

/// The bytes of `range` of the file at `path`.
pub fn read_range(path: &Path, range: Range<u64>) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    File::open(path)
        .expect("open")
        .read_exact_at(&mut buf, range.start)
        .expect("read range");
    buf
}

/// The unreadable ranges of a `convert --json` report, each with a reason.
pub fn unreadable_ranges(report: &Value) -> Vec<Range<u64>> {
    report["unreadable"]
        .as_array()
        .expect("unreadable array")
        .iter()
        .map(|r| {
            let offset = r["offset"].as_u64().expect("offset");
            let len = r["len"].as_u64().expect("len");
            assert!(
                r["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "every unreadable range says why: {r}"
            );
            offset..offset + len
        })
        .collect()
}

/// The `create_type`, `cid` and `parent_cid` of each layer of an `info --json` report,
/// leaf first.
pub fn chain_of(info: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    info["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            let d = &l["details"];
            let text = |k: &str| d[k].as_str().map(str::to_string);
            (
                text("create_type").unwrap_or_default(),
                text("cid"),
                text("parent_cid"),
            )
        })
        .collect()
}
