//! Damaged QCOW2 images made from qemu-made ones: strict mode refuses them with a precise
//! error; salvage mode reports the affected ranges as unreadable, with findings, and reads
//! everything else exactly as qemu does. Also leaked and corrupted refcounts, checked
//! against `qemu-img check`. Skips when qemu-img is missing.

mod qcow2_support;

use std::fs;

use qcow2_support::*;
use vdr_formats::{open_disk, Format, OpenOptions, ParseMode, VirtualDisk};

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
    // The cluster's bytes still in the file read as they were; only the cut-off tail
    // of 40000 bytes is unreadable.
    assert_eq!(unreadable, vec![((3 << 20) + 65536 - 40000, 40000)]);
    assert_same_check(&img);
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
    assert_same_check(&img);
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
    assert_same_check(&img);
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

/// Random byte damage to the metadata of qemu-made images (extended L2 with compressed
/// clusters, and version 2) never panics, and a range mapped unreadable never reads.
#[test]
fn random_damage_to_qemu_made_images_never_panics_or_lies() {
    use proptest::prelude::*;
    use std::sync::Arc;
    use vdr_formats::qcow2::Qcow2Disk;
    use vdr_formats::SliceSource;

    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 1 << 20);
    let mut images = Vec::new();
    for (name, opts, compress) in [
        ("ext.qcow2", "extended_l2=on,cluster_size=16k", true),
        ("v2.qcow2", "compat=0.10,cluster_size=4k", false),
    ] {
        let img = dir.path().join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", opts];
        if compress {
            args.push("-c");
        }
        args.push(p(&raw));
        args.push(p(&img));
        run("qemu-img", &args);
        qemu_io(&img, &["write -P 0x5c 200k 20k", "write -z 600k 16k"]);
        let good = qemu_raw(&img, None);
        images.push((fs::read(&img).unwrap(), good));
    }
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let strategy = (
        0usize..2,
        proptest::collection::vec((0usize..0x18000, any::<u8>()), 1..8),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(which, flips, salvage)| {
            let (bytes, good) = &images[which];
            let mut bytes = bytes.clone();
            for (at, value) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            let mode = if salvage {
                ParseMode::Salvage
            } else {
                ParseMode::Strict
            };
            let source = Arc::new(SliceSource::new(bytes, "damaged.qcow2"));
            let opts = OpenOptions {
                mode,
                ..OpenOptions::default()
            };
            let Ok(disk) = Qcow2Disk::open(source, &opts) else {
                return Ok(());
            };
            let _ = disk.check();
            let Ok(map) = disk.map(0, disk.size().min(good.len() as u64)) else {
                return Ok(());
            };
            for e in map {
                let mut buf = vec![0u8; e.len as usize];
                if disk.read_at(&mut buf, e.offset).is_ok() && e.kind.name() == "unreadable" {
                    return Err(TestCaseError::fail(format!("unreadable {e:?} was read")));
                }
            }
            Ok(())
        })
        .unwrap();
}
