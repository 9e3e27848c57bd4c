//! QCOW2 against qemu: images are made at test time with qemu-img/qemu-io in a temp dir;
//! what vdr reads must equal `qemu-img convert -O raw`, its map must agree with
//! `qemu-img map --output=json`, and its check with `qemu-img check --output=json`.
//! Skips (printing `SKIP: qemu-img not found`) when qemu-img is missing.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vdr_formats::{open_disk, ExtentKind, Format, OpenOptions, ParseMode, VirtualDisk};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        println!("SKIP: qemu-img not found");
    }
    ok
}

/// Runs `program` in the directory of the images: qemu opens an external data file
/// relative to its working directory (vdr, relative to the image).
fn run(program: &str, args: &[&str]) -> String {
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

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs qemu-io commands on a qcow2 image.
fn qemu_io(img: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    run("qemu-io", &args);
}

/// qemu's raw view of `img` (optionally of an internal snapshot).
fn qemu_raw(img: &Path, snapshot: Option<&str>) -> Vec<u8> {
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

fn options(mode: ParseMode) -> OpenOptions {
    OpenOptions {
        mode,
        ..OpenOptions::default()
    }
}

/// vdr's view of `img` through `open_disk` (which builds the chain).
fn vdr_raw(img: &Path, options: &OpenOptions) -> Vec<u8> {
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

fn assert_same_content(img: &Path, snapshot: Option<&str>) {
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
type Run = (u64, u64, &'static str, Option<u64>);

fn push_run(out: &mut Vec<Run>, run: Run) {
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

fn qemu_map(img: &Path) -> Vec<Run> {
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

fn vdr_map(img: &Path) -> Vec<Run> {
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

fn assert_same_map(img: &Path) {
    assert_eq!(vdr_map(img), qemu_map(img), "{}", img.display());
}

/// qemu-img check's numbers: (corruptions, leaks, allocated, total, image end).
fn qemu_check(img: &Path) -> (u64, u64, u64, u64, u64) {
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

fn vdr_check(img: &Path) -> (u64, u64, u64, u64, u64) {
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

fn assert_same_check(img: &Path) {
    assert_eq!(vdr_check(img), qemu_check(img), "{}", img.display());
}

fn create(img: &Path, opts: &str, size: &str) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, p(img), size],
    );
}

/// Writes, zero writes and discards at aligned and unaligned places.
fn scribble(img: &Path) {
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

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn plain_images_read_and_map_like_qemu_for_both_versions_and_all_cluster_sizes() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for compat in ["0.10", "1.1"] {
        for cluster in ["512", "4k", "64k", "2M"] {
            let img = dir.path().join(format!("plain-{compat}-{cluster}.qcow2"));
            create(
                &img,
                &format!("compat={compat},cluster_size={cluster}"),
                "4M",
            );
            scribble(&img);
            assert_same_content(&img, None);
            assert_same_map(&img);
            assert_same_check(&img);
        }
    }
}

/// A raw file with text-like, random-like and zero regions.
fn pattern_raw(path: &Path, size: usize) {
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

#[test]
fn compressed_images_read_like_qemu_for_zlib_and_zstd() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 3 * 1024 * 1024 + 12345 * 3);
    for kind in ["zlib", "zstd"] {
        for cluster in ["4k", "64k", "2M"] {
            let img = dir.path().join(format!("c-{kind}-{cluster}.qcow2"));
            let opts = format!("compression_type={kind},cluster_size={cluster}");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    &opts,
                    p(&raw),
                    p(&img),
                ],
            );
            assert_same_content(&img, None);
            assert_same_map(&img);
            assert_same_check(&img);
        }
    }
}

#[test]
fn extended_l2_images_read_and_map_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for cluster in ["16k", "64k", "2M"] {
        let img = dir.path().join(format!("ext-{cluster}.qcow2"));
        create(
            &img,
            &format!("extended_l2=on,cluster_size={cluster}"),
            "4M",
        );
        scribble(&img);
        qemu_io(&img, &["write -P 0x33 5000 3000", "write -z 70000 2048"]);
        assert_same_content(&img, None);
        assert_same_map(&img);
        assert_same_check(&img);
    }
}

#[test]
fn three_deep_backing_chain_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    pattern_raw(&base, 4 << 20);
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            p(&mid),
        ],
    );
    qemu_io(&mid, &["write -P 0x44 64k 128k", "write -z 1M 64k"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    qemu_io(&top, &["write -P 0x55 100k 10k", "discard 1M 64k"]);
    assert_same_content(&top, None);
    let chain = open_disk(&top, &OpenOptions::default()).unwrap();
    assert_eq!(chain.layers().len(), 3);
    let parent = chain.leaf().parent().unwrap();
    assert_eq!(
        (parent.name.as_str(), parent.format.as_deref()),
        ("mid.qcow2", Some("qcow2"))
    );
}

#[test]
fn internal_snapshot_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("snap.qcow2");
    create(&img, "compat=1.1", "4M");
    qemu_io(&img, &["write -P 0x61 0 256k", "write -P 0x62 2M 64k"]);
    run("qemu-img", &["snapshot", "-c", "before", p(&img)]);
    qemu_io(
        &img,
        &[
            "write -P 0x63 64k 64k",
            "discard 2M 64k",
            "write -P 0x64 3M 4k",
        ],
    );
    assert_same_content(&img, None);
    assert_same_content(&img, Some("before"));
    assert_same_check(&img);
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    let info = disk.info();
    assert_eq!(info.snapshots.len(), 1);
    assert_eq!(info.snapshots[0].name, "before");
    assert_eq!(info.snapshots[0].disk_size, 4 << 20);
    let err = open_disk(
        &img,
        &OpenOptions {
            snapshot: Some("nope".into()),
            ..OpenOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("nope") && err.contains("before"), "{err}");
}

#[test]
fn external_data_file_reads_like_qemu_raw_or_not() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for raw in ["on", "off"] {
        let img = dir.path().join(format!("df-{raw}.qcow2"));
        let data = format!("df-{raw}.data");
        // Created from inside the directory, so the image records the name relatively.
        let out = Command::new("qemu-img")
            .current_dir(dir.path())
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("data_file={data},data_file_raw={raw}"))
            .args([format!("df-{raw}.qcow2").as_str(), "4M"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        scribble(&img);
        assert_same_content(&img, None);
        assert_same_map(&img);
        assert_same_check(&img);
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        let info = disk.info();
        assert_eq!(info.data_file.as_deref(), Some(data.as_str()));
        assert!(info.features.iter().any(|f| f == "external_data_file"));
        let data_extent = disk
            .map(0, 65536)
            .unwrap()
            .into_iter()
            .find_map(|e| match e.kind {
                ExtentKind::Data { source, at } => Some((source.name().to_string(), at)),
                _ => None,
            })
            .unwrap();
        assert!(data_extent.0.ends_with(&data), "{data_extent:?}");
        assert_eq!(data_extent.1, 0, "data file offset equals the guest offset");
    }
}

/// Host offset of the L2 table that maps guest offset 0 and of its first entry's cluster.
fn first_l2(img: &Path) -> (u64, u64) {
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
fn first_refblock(img: &Path) -> u64 {
    let f = fs::File::open(img).unwrap();
    let be = |at: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        u64::from_be_bytes(b)
    };
    be(be(48)) & 0x00ff_ffff_ffff_fe00
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// A 64 KiB-cluster image with data at 0, 1 MiB and 3 MiB.
fn damaged_base(dir: &Path, name: &str) -> PathBuf {
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
fn assert_salvage_matches_elsewhere(img: &Path, good: &[u8]) -> Vec<(u64, u64)> {
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

#[test]
fn truncated_image_is_an_error_in_strict_and_unreadable_in_salvage() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "trunc.qcow2");
    let good = qemu_raw(&img, None);
    let len = fs::metadata(&img).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(len - 40000)
        .unwrap();
    let disk = open_disk(&img, &options(ParseMode::Strict)).unwrap();
    let err = disk.map(0, disk.size()).unwrap_err().to_string();
    assert!(
        err.contains("L2 table at 0x") && err.contains("past end of file"),
        "{err}"
    );
    let unreadable = assert_salvage_matches_elsewhere(&img, &good);
    assert_eq!(unreadable, vec![(3 << 20, 65536)]);
}

#[test]
fn l2_entry_past_eof_is_an_error_in_strict_and_unreadable_in_salvage() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "l2.qcow2");
    let good = qemu_raw(&img, None);
    let (l2, _) = first_l2(&img);
    // Entry 16 maps guest 1 MiB: point it far past the end of the file.
    let entry = (1u64 << 63) | (1u64 << 40);
    patch(&img, l2 + 16 * 8, &entry.to_be_bytes());
    let disk = open_disk(&img, &options(ParseMode::Strict)).unwrap();
    let err = disk.map(0, disk.size()).unwrap_err().to_string();
    let expected = format!("L2 table at {l2:#x}: entry 16 points past end of file");
    assert!(err.contains(&expected), "{err}");
    let unreadable = assert_salvage_matches_elsewhere(&img, &good);
    assert_eq!(unreadable, vec![(1 << 20, 65536)]);
}

#[test]
fn data_cluster_overlapping_metadata_is_unreadable_in_salvage() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "overlap.qcow2");
    let good = qemu_raw(&img, None);
    let (l2, _) = first_l2(&img);
    // Entry 0 now points at the L2 table itself.
    patch(&img, l2, &((1u64 << 63) | l2).to_be_bytes());
    let unreadable = assert_salvage_matches_elsewhere(&img, &good);
    assert_eq!(unreadable, vec![(0, 65536)]);
}

#[test]
fn zeroed_or_garbage_header_is_an_error_in_both_modes() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "hdr.qcow2");
    // Magic kept, the rest of the header zeroed: detection says qcow2, the header is bad.
    patch(&img, 4, &[0u8; 100]);
    for mode in [ParseMode::Strict, ParseMode::Salvage] {
        let err = open_disk(&img, &options(mode)).err().unwrap().to_string();
        assert!(
            err.contains("qcow2 header") && err.contains("version 0"),
            "{err}"
        );
    }
    // Everything zeroed: only a forced qcow2 open sees it, and refuses it by magic.
    patch(&img, 0, &[0u8; 4]);
    for mode in [ParseMode::Strict, ParseMode::Salvage] {
        let opts = OpenOptions {
            mode,
            format: Some(Format::Qcow2),
            ..OpenOptions::default()
        };
        let err = open_disk(&img, &opts).err().unwrap().to_string();
        assert!(err.contains("not a qcow2 image"), "{err}");
    }
}

#[test]
fn leaked_cluster_is_reported_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "leak.qcow2");
    // Append one cluster and give it refcount 1 in the first refcount block.
    let len = fs::metadata(&img).unwrap().len();
    let cluster = len / 65536;
    patch(&img, len, &[0u8; 65536]);
    let refblock = first_refblock(&img);
    patch(&img, refblock + cluster * 2, &1u16.to_be_bytes());
    let ours = vdr_check(&img);
    assert_eq!(ours.1, 1);
    assert_eq!(ours, qemu_check(&img));
}

#[test]
fn corrupted_refcount_is_reported_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = damaged_base(dir.path(), "corrupt.qcow2");
    // The first data cluster's refcount drops to 0 while the L2 table still maps it.
    let (_, data) = first_l2(&img);
    let refblock = first_refblock(&img);
    patch(&img, refblock + (data / 65536) * 2, &0u16.to_be_bytes());
    let ours = vdr_check(&img);
    assert!(ours.0 > 0);
    assert_eq!(ours, qemu_check(&img));
}

#[test]
fn encrypted_images_open_but_refuse_to_read() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for (method, extra) in [("luks", ",encrypt.iter-time=10"), ("aes", "")] {
        let img = dir.path().join(format!("{method}.qcow2"));
        let opts = format!("encrypt.format={method},encrypt.key-secret=sec0{extra}");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "--object",
                "secret,id=sec0,data=123456",
                "-f",
                "qcow2",
                "-o",
                &opts,
                p(&img),
                "1M",
            ],
        );
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        assert_eq!(disk.info().encryption.as_deref(), Some(method));
        let mut buf = [0u8; 512];
        let err = disk.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
        assert!(disk.map(0, 512).is_err());
        assert!(disk.check().unwrap().is_clean());
    }
}
