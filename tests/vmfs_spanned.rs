//! vdr on spanned (multi-extent) VMFS5 volumes from the fixture builder
//! (fixtures/tests/vmfs_spanned.rs checks the same images against vmfs-tools and
//! dissect.vmfs): with every device given, in any order, vdr returns the manifest's
//! tree and bytes; without the second device strict mode refuses and names what is
//! missing, salvage mode reads what the head device holds and marks exactly the missing
//! extent's ranges unreadable; without the head device nothing can be read.

#[path = "../fixtures/tests/vmfs6_oracles/mod.rs"]
mod vmfs6_oracles;
#[path = "../fixtures/tests/vmfs_oracles/mod.rs"]
mod vmfs_oracles;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdr_fixtures::vmfs::{build_spanned, EntryKind, Manifest, Spec};
use vdr_formats::source::{FileSource, Source, SourceRef};
use vdr_formats::vmfs::{self, PieceKind};
use vdr_formats::{ParseMode, Severity};
use vmfs_oracles::{sha_hex, spanned_spec};

const MIB: u64 = 1 << 20;

struct Built {
    _dir: tempfile::TempDir,
    devs: Vec<PathBuf>,
    m: Manifest,
}

fn built() -> Built {
    built_from(&spanned_spec())
}

fn built_from(spec: &Spec) -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let devs: Vec<PathBuf> = ["head.img", "second.img"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let refs: Vec<&Path> = devs.iter().map(|p| p.as_path()).collect();
    let m = build_spanned(spec, &refs).expect("the builder writes both devices");
    Built { _dir: dir, devs, m }
}

fn open(devs: &[&PathBuf], mode: ParseMode) -> Result<Arc<vmfs::Volume>, vmfs::Error> {
    let srcs: Vec<SourceRef> = devs
        .iter()
        .map(|p| Arc::new(FileSource::open(p).expect("open device")) as SourceRef)
        .collect();
    vmfs::open(&srcs, mode)
}

fn read_all(f: &dyn Source) -> Result<Vec<u8>, String> {
    let mut all = vec![0u8; f.len() as usize];
    let mut at = 0;
    while at < f.len() {
        let n = f
            .read_at(&mut all[at as usize..], at)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("short read at {at:#x}"));
        }
        at += n as u64;
    }
    Ok(all)
}

/// The manifest's live entries (the root excluded), by path.
fn live(m: &Manifest) -> BTreeMap<&str, &vdr_fixtures::vmfs::Entry> {
    m.entries
        .iter()
        .filter(|e| !e.deleted && e.path != "/")
        .map(|e| (e.path.as_str(), e))
        .collect()
}

fn assert_reads_like_manifest(volume: &Arc<vmfs::Volume>, m: &Manifest) {
    let walked: BTreeMap<String, vmfs::FileDescriptor> = volume
        .walk("/")
        .expect("walk")
        .into_iter()
        .map(|e| (e.path, e.fd))
        .collect();
    let live = live(m);
    assert_eq!(
        walked.keys().map(String::as_str).collect::<Vec<_>>(),
        live.keys().copied().collect::<Vec<_>>(),
        "vdr lists the live entries"
    );
    for (path, e) in live {
        let fd = &walked[path];
        match e.kind {
            EntryKind::Dir => assert!(fd.is_dir(), "{path}"),
            EntryKind::File => {
                assert_eq!(fd.length, e.size, "{path} size");
                let f = volume.open_file(path).expect("open file");
                let data = read_all(&f).expect("read file");
                assert_eq!(sha_hex(&data), e.sha256, "{path} content");
            }
            EntryKind::Symlink => {
                let f = volume.open_file(path).expect("open link");
                let t = read_all(&f).expect("read link");
                assert_eq!(Some(String::from_utf8(t).expect("utf-8")), e.target);
            }
        }
    }
    let counts = volume.block_counts().expect("block counts");
    assert_eq!(counts, (m.total_blocks, m.free_blocks), "block counts");
}

#[test]
fn every_device_given_in_either_order_reads_like_the_manifest() {
    let b = built();
    let (head, second) = (&b.devs[0], &b.devs[1]);
    for order in [[head, second], [second, head]] {
        let volume = open(&order, ParseMode::Strict).expect("vdr opens the spanned volume");
        assert!(volume.findings().is_empty(), "{:?}", volume.findings());
        assert_eq!(volume.devices().len(), 2);
        assert_eq!(volume.logical_volume().len(), 320 * MIB);
        assert_eq!(volume.logical_volume().missing().count(), 0);
        // The head device comes first whatever the order given.
        assert_eq!(volume.devices()[0].file, head.display().to_string());
        assert_reads_like_manifest(&volume, &b.m);
    }
}

#[test]
fn without_the_second_device_strict_mode_names_what_is_missing() {
    let b = built();
    let err = match open(&[&b.devs[0]], ParseMode::Strict) {
        Err(e) => e,
        Ok(_) => panic!("strict mode opened a volume with a missing extent"),
    };
    assert!(
        matches!(
            err,
            vmfs::Error::MissingExtents {
                expected: 2,
                given: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("{msg}");
    let second = &b.m.devices[1];
    // The LV range, which device in LV order, and the name the head's SD table has
    // for it; its device UUID is recorded only on itself.
    assert!(msg.contains("LV bytes 0x10000000..0x14000000"), "{msg}");
    assert!(msg.contains("device 2 of 2"), "{msg}");
    assert!(
        msg.contains(&format!("SD table entry 2: \"{}\"", second.sd_name)),
        "{msg}"
    );
}

/// The file bytes each file keeps on the missing second device (LV 256..320 MiB).
fn on_second_device(e: &vdr_fixtures::vmfs::Entry, m: &Manifest) -> Vec<(u64, u64)> {
    if e.kind != EntryKind::File || e.block_size < MIB {
        return Vec::new();
    }
    let lv = |at: u64| at - m.volume_offset;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    // Data blocks are listed in file order with the holes left out: walk the file's
    // blocks and skip the ones that are holes (reads as zeros in the manifest too).
    let mut blocks = e.data_blocks.iter();
    for n in 0..e.size.div_ceil(e.block_size) {
        let hole = e.path == "/thin-late.bin" && n == 1;
        if hole {
            continue;
        }
        let Some(&b) = blocks.next() else { break };
        if lv(b) >= 256 * MIB {
            let start = n * e.block_size;
            let end = (start + e.block_size).min(e.size);
            match ranges.last_mut() {
                Some(r) if r.1 == start => r.1 = end,
                _ => ranges.push((start, end)),
            }
        }
    }
    ranges
}

#[test]
fn without_the_second_device_salvage_reads_the_head_and_marks_the_rest() {
    let b = built();
    let volume = open(&[&b.devs[0]], ParseMode::Salvage).expect("salvage opens the volume");
    let findings = volume.findings();
    assert!(
        findings.iter().any(|f| f.severity == Severity::Error
            && f.what.contains("0x10000000..0x14000000")
            && f.what.contains(&b.m.devices[1].sd_name)),
        "{findings:?}"
    );
    // The whole tree is on the head device.
    let walked: Vec<String> = volume
        .walk("/")
        .expect("walk")
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        walked,
        live(&b.m).keys().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    let mut partial = Vec::new();
    for (path, e) in live(&b.m) {
        if e.kind == EntryKind::Dir {
            continue;
        }
        let f = volume.open_file(path).expect("open file");
        let missing = on_second_device(e, &b.m);
        if missing.is_empty() {
            let data = read_all(&f).expect("a file on the head device reads");
            if e.kind == EntryKind::File {
                assert_eq!(sha_hex(&data), e.sha256, "{path}");
            }
            continue;
        }
        partial.push(path);
        assert!(read_all(&f).is_err(), "{path} reads without its extent");
        // Exactly the ranges on the missing device are unreadable, naming it.
        let pieces = f.map(0, e.size).expect("map");
        let mut at = 0;
        let mut unreadable: Vec<(u64, u64)> = Vec::new();
        for p in &pieces {
            if let PieceKind::Unreadable(why) = &p.kind {
                assert!(why.contains("missing"), "{path}: {why}");
                match unreadable.last_mut() {
                    Some(r) if r.1 == at => r.1 = at + p.len,
                    _ => unreadable.push((at, at + p.len)),
                }
            }
            at += p.len;
        }
        assert_eq!(at, e.size, "{path}: the map covers the file");
        assert_eq!(unreadable, missing, "{path}: {pieces:?}");
        // What lies on the head device still reads.
        for p in pieces.iter().scan(0u64, |at, p| {
            let start = *at;
            *at += p.len;
            Some((start, p))
        }) {
            if let (
                start,
                vmfs::Piece {
                    kind: PieceKind::Data(_),
                    len,
                },
            ) = p
            {
                let mut buf = vec![0u8; *len as usize];
                f.read_exact_at(&mut buf, start).expect("head part reads");
            }
        }
    }
    assert_eq!(
        partial,
        [
            "/late.bin",
            "/straddle.bin",
            "/thin-late.bin",
            "/vm/vm-flat.vmdk"
        ]
    );
}

#[test]
fn without_the_head_device_nothing_opens() {
    let b = built();
    let second = &b.devs[1];
    for mode in [ParseMode::Strict, ParseMode::Salvage] {
        let err = match open(&[second], mode) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{mode:?}: opened a volume without its head device"),
        };
        eprintln!("{err}");
        // The second device records neither the head's name nor its UUID: only the
        // LV range and the device's place in LV order can be named.
        assert!(err.contains("LV bytes 0x0..0x10000000"), "{mode:?}: {err}");
        assert!(
            err.contains("device 1 of 2, the head device"),
            "{mode:?}: {err}"
        );
        assert!(err.contains("nothing can be read"), "{mode:?}: {err}");
    }
}

/// VMFS6: the same with both devices, and without the second one the LFB file that
/// lives there maps to one unreadable piece while the head's files read.
#[test]
fn vmfs6_spanned_volume_reads_and_names_its_missing_extent() {
    let b = built_from(&vmfs6_oracles::spanned_spec6());
    let (head, second) = (&b.devs[0], &b.devs[1]);
    for order in [[head, second], [second, head]] {
        let volume = open(&order, ParseMode::Strict).expect("vdr opens the spanned volume");
        assert!(volume.findings().is_empty(), "{:?}", volume.findings());
        assert_reads_like_manifest(&volume, &b.m);
    }
    let err = open(&[head], ParseMode::Strict)
        .err()
        .expect("strict refuses");
    let msg = err.to_string();
    assert!(msg.contains("LV bytes 0x10000000..0x40000000"), "{msg}");
    assert!(msg.contains(&b.m.devices[1].sd_name), "{msg}");
    let volume = open(&[head], ParseMode::Salvage).expect("salvage opens");
    for path in ["/small.txt", "/head.bin"] {
        let f = volume.open_file(path).expect("open");
        let data = read_all(&f).expect("a head file reads");
        assert_eq!(
            sha_hex(&data),
            b.m.entry(path).expect("entry").sha256,
            "{path}"
        );
    }
    let f = volume
        .open_file("/vm/lfb-flat.vmdk")
        .expect("open lfb file");
    let pieces = f.map(0, f.len()).expect("map");
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    assert_eq!(pieces[0].len, 512 * MIB);
    assert!(
        matches!(&pieces[0].kind, PieceKind::Unreadable(why) if why.contains("missing extent")),
        "{pieces:?}"
    );
}

fn vdr_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vdr"))
        .args(args)
        .output()
        .expect("run vdr")
}

/// The CLI takes the other devices with `--extent`: with both, `ls` and `extract` see the
/// whole volume; without, strict mode refuses naming the missing device, and a salvage
/// extract lists exactly the files whose blocks lie on it as unreadable and exits 1.
#[test]
fn cli_reads_a_spanned_volume_given_its_extents() {
    let b = built();
    let (head, second) = (b.devs[0].as_os_str(), b.devs[1].as_os_str());
    let os = std::ffi::OsStr::new;

    let ls = vdr_cli(&[
        os("ls"),
        head,
        os("-R"),
        os("--json"),
        os("--extent"),
        second,
    ]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let live =
        b.m.entries
            .iter()
            .filter(|e| !e.deleted && e.path != "/")
            .count();
    assert_eq!(listed.as_array().unwrap().len(), live);

    let refused = vdr_cli(&[os("ls"), head]);
    assert_eq!(refused.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("device 2 of 2"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let salvaged = vdr_cli(&[
        os("extract"),
        head,
        os("--all"),
        out.as_os_str(),
        os("--salvage"),
        os("--json"),
    ]);
    assert_eq!(
        salvaged.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&salvaged.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&salvaged.stdout).unwrap();
    let unreadable: std::collections::BTreeSet<&str> = report["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert!(!unreadable.is_empty());
    for e in
        b.m.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && !e.deleted)
    {
        let on_second = !on_second_device(e, &b.m).is_empty();
        assert_eq!(
            unreadable.contains(e.path.as_str()),
            on_second,
            "{}",
            e.path
        );
    }
}
