//! Helpers shared by the end-to-end tests: running the `vdr` binary, hashing evidence,
//! comparing outputs and normalising `map` output (vdr's and qemu-img's).
#![allow(dead_code)] // each test binary uses a different subset

pub mod case;
pub mod vmdk;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The binary under test: `VDR_BIN` when set (to test an installed build), else the one
/// cargo built for this test run.
pub fn vdr_bin() -> PathBuf {
    match std::env::var_os("VDR_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_vdr")),
    }
}

/// True (after printing the SKIP line) when qemu-img or qemu-io is missing.
pub fn skip_without_qemu() -> bool {
    if vdr_fixtures::qemu::qemu_available() {
        return false;
    }
    println!("SKIP: qemu-img not found");
    true
}

/// What one `vdr` run did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The parsed stdout (the command was run with --json).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "vdr {:?}: stdout is not JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// Panics with the whole run unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "vdr {:?}: exit {} (wanted {code})\nstdout: {}\nstderr: {}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `vdr ARGS` in `dir`. A panic (exit 101, "panicked at") or death by a signal is a
/// failure of every test, whatever the test expected otherwise.
pub fn vdr(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(vdr_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", vdr_bin().display()));
    let run = Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        run.code != 101 && run.code != -1 && !run.stderr.contains("panicked at"),
        "vdr {:?} panicked or died ({}):\n{}",
        run.args,
        out.status,
        run.stderr
    );
    run
}

/// Lower-case hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> String {
    vdr_fixtures::sha256_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// sha256 of every regular file under `dir` (recursively), by path.
pub fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), sha256_file(&path));
            }
        }
    }
    out
}

/// Panics unless the two files have the same bytes, naming the first difference.
pub fn assert_same_content(what: &str, got: &Path, want: &Path) {
    let a = std::fs::read(got).expect("read output");
    let b = std::fs::read(want).expect("read oracle");
    if a == b {
        return;
    }
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    panic!(
        "{what}: {} differs from {} (sizes {} vs {}, first difference at {:?})",
        got.display(),
        want.display(),
        a.len(),
        b.len(),
        first.map(|o| format!("{o:#x}"))
    );
}

/// One `map --json` entry in qemu-img's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
    pub unreadable: bool,
}

impl MapEntry {
    fn flags(&self) -> (u64, bool, bool, bool, bool, bool) {
        (
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed,
            self.unreadable,
        )
    }

    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// Parses a `map --json` array (vdr's or qemu-img's).
pub fn parse_map(json: &Value) -> Vec<MapEntry> {
    let array = json.as_array().expect("map output is a JSON array");
    array
        .iter()
        .map(|e| {
            let num = |k: &str| {
                e.get(k)
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("map entry without {k}: {e}"))
            };
            let flag = |k: &str| e.get(k).and_then(Value::as_bool).unwrap_or(false);
            MapEntry {
                start: num("start"),
                length: num("length"),
                depth: num("depth"),
                present: flag("present"),
                zero: flag("zero"),
                data: flag("data"),
                compressed: flag("compressed"),
                offset: e.get("offset").and_then(Value::as_u64),
                unreadable: flag("unreadable"),
            }
        })
        .collect()
}

/// Adjacent entries with equal depth/present/zero/data/compressed merged, offsets dropped:
/// qemu-img and vdr may split runs differently (per L2 table, per request size).
pub fn merge_flags(entries: &[MapEntry]) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for e in entries {
        if let Some(last) = out.last_mut() {
            if last.end() == e.start && last.flags() == e.flags() {
                last.length += e.length;
                continue;
            }
        }
        out.push(MapEntry {
            offset: None,
            ..e.clone()
        });
    }
    out
}

/// Host offsets of uncompressed data entries, as runs `(virtual start, length, host
/// offset, depth)` that are contiguous in both spaces merged: the part of `map` where the
/// offset means something comparable (compressed and zero entries have none worth
/// comparing).
pub fn data_offsets(entries: &[MapEntry]) -> Vec<(u64, u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64, u64)> = Vec::new();
    for e in entries {
        if !e.data || e.compressed || e.zero {
            continue;
        }
        let Some(off) = e.offset else {
            panic!("data entry without offset: {e:?}");
        };
        if let Some(last) = out.last_mut() {
            if last.0 + last.1 == e.start && last.2 + last.1 == off && last.3 == e.depth {
                last.1 += e.length;
                continue;
            }
        }
        out.push((e.start, e.length, off, e.depth));
    }
    out
}

/// Panics unless the map entries tile `[0, size)` without gaps or overlaps.
pub fn assert_tiles(what: &str, entries: &[MapEntry], size: u64) {
    let mut pos = 0;
    for e in entries {
        assert_eq!(e.start, pos, "{what}: gap or overlap at {pos:#x}: {e:?}");
        assert!(e.length > 0, "{what}: empty entry {e:?}");
        pos = e.end();
    }
    assert_eq!(
        pos, size,
        "{what}: map ends at {pos:#x}, disk size {size:#x}"
    );
}

/// The union of `ranges`, sorted and coalesced.
pub fn union(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges.into_iter().filter(|r| r.start < r.end) {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// True when every byte of `inner` lies in `outer` (both coalesced).
pub fn covered(inner: &[Range<u64>], outer: &[Range<u64>]) -> bool {
    inner
        .iter()
        .all(|r| outer.iter().any(|o| o.start <= r.start && r.end <= o.end))
}

/// Runs `qemu-img check --output=json` on `image` and panics unless it is clean (no
/// corruptions, no leaks, exit 0).
pub fn assert_qemu_check_clean(dir: &Path, image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(image)
        .current_dir(dir)
        .output()
        .expect("run qemu-img check");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "qemu-img check {}: no JSON ({e}): {text} {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let count = |k: &str| report.get(k).and_then(Value::as_u64).unwrap_or(0);
    assert!(
        out.status.success()
            && count("corruptions") == 0
            && count("leaks") == 0
            && count("check-errors") == 0,
        "qemu-img check {} is not clean ({}): {report}",
        image.display(),
        out.status
    );
}

/// Panics unless `qemu-img compare A B` says the two images have identical content.
pub fn assert_qemu_identical(dir: &Path, a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .current_dir(dir)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img convert [EXTRA] -O raw IN OUT`: the content oracle.
pub fn qemu_raw(dir: &Path, input: &Path, extra: &[&str], out: &Path) {
    let mut args: Vec<&str> = vec!["convert"];
    args.extend(extra);
    args.extend(["-O", "raw"]);
    let (i, o) = (input.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    args.extend([i, o]);
    vdr_fixtures::qemu::qemu_img(dir, &args);
}

/// `qemu-img map --output=json IMAGE`, parsed.
pub fn qemu_map(dir: &Path, image: &Path) -> Vec<MapEntry> {
    let out = vdr_fixtures::qemu::qemu_img(
        dir,
        &["map", "--output=json", image.to_str().expect("utf-8")],
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
    parse_map(&json)
}
