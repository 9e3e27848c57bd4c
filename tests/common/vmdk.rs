//! Helpers of the VMDK end-to-end tests (tests/vmdk_cli_*.rs): running `vdr` on an image
//! by path, comparing large (sparse) raw outputs range by range, reading `--json` reports.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use super::{data_offsets, merge_flags, parse_map, qemu_map, vdr, Run};

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
/// ranges with the same depth and kind (runs merged), and the same host offsets for
/// uncompressed data (the offset in the extent file holding it).
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
    assert_eq!(
        data_offsets(&ours),
        data_offsets(&theirs),
        "host offsets in the map of {} differ from qemu-img's",
        image.display()
    );
}

/// The first byte `i` in `0..len` where `ours[i]` differs from `theirs[theirs_at + i]`
/// outside the ranges `skip` (offsets in `ours`), if any. Reads 1 MiB chunks: fast on
/// multi-GiB sparse outputs.
pub fn first_difference(
    ours: &Path,
    theirs: &Path,
    theirs_at: u64,
    len: u64,
    skip: &[Range<u64>],
) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let (a, b) = (
        File::open(ours).expect("open"),
        File::open(theirs).expect("open"),
    );
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK) as usize;
        a.read_exact_at(&mut ba[..n], at).expect("read ours");
        b.read_exact_at(&mut bb[..n], theirs_at + at)
            .expect("read theirs");
        if ba[..n] != bb[..n] {
            let bad = (0..n).find(|&i| {
                let off = at + i as u64;
                ba[i] != bb[i] && !skip.iter().any(|r| r.contains(&off))
            });
            if let Some(i) = bad {
                return Some(at + i as u64);
            }
        }
        at += n as u64;
    }
    None
}

/// True when every byte of `range` of the file at `path` is zero.
pub fn is_zero_range(path: &Path, range: Range<u64>) -> bool {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let file = File::open(path).expect("open");
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], at).expect("read range");
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
        at += n as u64;
    }
    true
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
