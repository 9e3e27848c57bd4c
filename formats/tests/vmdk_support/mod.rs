//! Helpers shared by the qemu-backed VMDK tests: running qemu-img/qemu-io, qemu's and
//! vdr's views of an image (content compared piece by piece, map), byte patching, and a
//! writer for VMware's streamOptimized layout (footer and directory at the end), which
//! qemu-img reads but does not write.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
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

/// Runs `program` with `args` in `dir`; panics with its stderr when it fails.
pub fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
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

fn dir_of(img: &Path) -> &Path {
    img.parent().unwrap()
}

/// `qemu-img create -f vmdk -o OPTS IMG SIZE`.
pub fn create(img: &Path, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "vmdk"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p(img), size]);
    run_in(dir_of(img), "qemu-img", &args);
}

/// A child of `parent` (a file name in the same directory).
pub fn create_child(img: &Path, parent: &str) {
    run_in(
        dir_of(img),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            parent,
            "-F",
            "vmdk",
            p(img),
        ],
    );
}

/// Runs qemu-io commands on a vmdk image.
pub fn qemu_io(img: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "vmdk"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    run_in(dir_of(img), "qemu-io", &args);
}

pub fn options(mode: ParseMode) -> OpenOptions {
    OpenOptions {
        mode,
        ..OpenOptions::default()
    }
}

/// Compares vdr's view of `img` with `expected_raw` (a raw file) in odd-sized pieces.
pub fn assert_reads_like(img: &Path, mode: ParseMode, expected_raw: &Path) {
    let disk = open_disk(img, &options(mode)).unwrap();
    let file = fs::File::open(expected_raw).unwrap();
    let size = file.metadata().unwrap().len();
    assert_eq!(disk.size(), size, "{}: size", img.display());
    let piece = 3 * 1024 * 1024 + 12345;
    let mut ours = vec![0u8; piece];
    let mut theirs = vec![0u8; piece];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(piece as u64) as usize;
        disk.read_at(&mut ours[..n], offset).unwrap();
        file.read_exact_at(&mut theirs[..n], offset).unwrap();
        if ours[..n] != theirs[..n] {
            let at = (0..n).find(|&i| ours[i] != theirs[i]).unwrap();
            panic!(
                "{}: first difference at {:#x}",
                img.display(),
                offset + at as u64
            );
        }
        offset += n as u64;
    }
}

/// qemu's raw conversion of `img`, written next to it.
pub fn qemu_raw(img: &Path) -> std::path::PathBuf {
    let out = img.with_extension("oracle.raw");
    run_in(
        dir_of(img),
        "qemu-img",
        &["convert", "-f", "vmdk", "-O", "raw", p(img), p(&out)],
    );
    out
}

/// vdr reads `img` exactly as `qemu-img convert -O raw` does.
pub fn assert_same_content(img: &Path) {
    let raw = qemu_raw(img);
    assert_reads_like(img, ParseMode::Strict, &raw);
    fs::remove_file(raw).unwrap();
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

/// qemu's map. Holes in flat extent files are "zero" (qemu says zero and data there; vdr
/// maps them as zero so that converts stay sparse).
pub fn qemu_map(img: &Path) -> Vec<Run> {
    let json: Value = serde_json::from_str(&run_in(
        dir_of(img),
        "qemu-img",
        &["map", "--output=json", "-f", "vmdk", p(img)],
    ))
    .unwrap();
    let mut out = Vec::new();
    for e in json.as_array().unwrap() {
        let flag = |k: &str| e[k].as_bool().unwrap_or(false);
        let kind = if !flag("present") {
            "unallocated"
        } else if flag("compressed") {
            "compressed"
        } else if flag("zero") {
            "zero"
        } else {
            "data"
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

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A raw file with text-like, random-like and zero regions.
pub fn pattern_raw(path: &Path, size: usize) {
    let mut bytes = vec![0u8; size];
    let mut x = 0x1234_5678u32;
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = match (i / 65536) % 4 {
            0 => b"vmdk stream grain test "[i % 23],
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

pub fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

pub fn le64(path: &Path, at: u64) -> u64 {
    let f = fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

/// Writes `raw` as a streamOptimized extent in VMware's layout: header with gdOffset =
/// GD_AT_END, embedded descriptor, grains (64 KiB) behind grain markers, then grain
/// tables and the directory behind their markers, the footer and the end-of-stream marker.
/// All-zero grains are left out. Returns the byte offset where the metadata starts.
pub fn write_vmware_stream(raw: &[u8], out: &Path) -> u64 {
    let capacity = (raw.len() as u64).div_ceil(512);
    let grain = 65536usize;
    let grains = raw.len().div_ceil(grain);
    let tables = grains.div_ceil(512);
    let header = |gd_offset: u64| {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
        h[12..20].copy_from_slice(&capacity.to_le_bytes());
        h[20..28].copy_from_slice(&128u64.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
        h[64..72].copy_from_slice(&128u64.to_le_bytes());
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&1u16.to_le_bytes());
        h
    };
    let mut f = header(u64::MAX);
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fedcba98\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         RW {capacity} SPARSE \"vmware-stream.vmdk\"\n\nddb.virtualHWVersion = \"10\"\nddb.adapterType = \"lsilogic\"\n"
    );
    f.resize(512 * 21, 0);
    f[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
    f.resize(128 * 512, 0);
    let mut gt = vec![0u32; tables * 512];
    for (i, chunk) in raw.chunks(grain).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(chunk).unwrap();
        let data = enc.finish().unwrap();
        gt[i] = (f.len() / 512) as u32;
        f.extend_from_slice(&((i * 128) as u64).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&data);
        f.resize(f.len().div_ceil(512) * 512, 0);
    }
    let metadata_at = f.len() as u64;
    let marker = |f: &mut Vec<u8>, sectors: u64, kind: u32| {
        let mut m = vec![0u8; 512];
        m[0..8].copy_from_slice(&sectors.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&m);
    };
    let mut gd = Vec::new();
    for t in 0..tables {
        marker(&mut f, 4, 1);
        gd.push((f.len() / 512) as u32);
        for e in &gt[t * 512..(t + 1) * 512] {
            f.extend_from_slice(&e.to_le_bytes());
        }
    }
    let gd_sectors = (tables * 4).div_ceil(512) as u64;
    marker(&mut f, gd_sectors, 2);
    let gd_at = (f.len() / 512) as u64;
    for e in &gd {
        f.extend_from_slice(&e.to_le_bytes());
    }
    f.resize(f.len().div_ceil(512) * 512, 0);
    marker(&mut f, 1, 3);
    f.extend_from_slice(&header(gd_at));
    marker(&mut f, 0, 0);
    fs::write(out, f).unwrap();
    metadata_at
}
