//! The VMDK writers against qemu-img (`check`, `compare -f raw -F vmdk`, `info`,
//! `convert -O raw`) and, for streamOptimized, against a sequential reader that walks the
//! markers the way VMware's stream reader does (StreamVmdkReader: grains in order, each
//! metadata marker skipped by its sector count, stop at the end-of-stream marker).

mod write_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use vdr_formats::{
    flat_extent_path, Compression, ConvertOptions, Error, OutputFormat, UnreadablePolicy,
    VmdkSubformat,
};
use write_support::*;

const SUBFORMATS: [VmdkSubformat; 3] = [
    VmdkSubformat::MonolithicSparse,
    VmdkSubformat::StreamOptimized,
    VmdkSubformat::MonolithicFlat,
];

fn vmdk(subformat: VmdkSubformat, threads: usize) -> ConvertOptions {
    ConvertOptions {
        format: OutputFormat::Vmdk(subformat),
        threads,
        vmdk_cid: Some(0x5eed_cafe),
        ..ConvertOptions::default()
    }
}

/// `qemu-img check` exits 0 with no check errors.
fn qemu_check_vmdk(image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "vmdk", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {}: {text} {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["check-errors"].as_u64(), Some(0), "{text}");
}

/// `qemu-img compare -f raw -F vmdk RAW VMDK` says identical.
fn qemu_compare_vmdk(raw: &Path, image: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vmdk"])
        .arg(raw)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {} {}",
        raw.display(),
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's content as qemu-img reads it.
fn qemu_read_vmdk(image: &Path, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(scratch);
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(image)
        .arg(scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(scratch).unwrap()
}

/// Converts the raw file at `input`, then: qemu-img check clean, compare identical, and
/// info shows the subformat and whether grains are compressed.
fn convert_and_verify(input: &Path, out: &Path, options: &ConvertOptions) {
    let OutputFormat::Vmdk(subformat) = options.format else {
        panic!("not a vmdk conversion");
    };
    let report = run(&file_disk(input), out, options).unwrap();
    let input_size = std::fs::metadata(input).unwrap().len();
    assert_eq!(report.virtual_size, input_size);
    qemu_check_vmdk(out);
    qemu_compare_vmdk(input, out);
    let info = qemu_info(out);
    let data = &info["format-specific"]["data"];
    assert_eq!(
        data["create-type"].as_str(),
        Some(subformat.name()),
        "{info}"
    );
    assert_eq!(data["cid"].as_u64(), Some(0x5eed_cafe), "{info}");
    assert_eq!(data["parent-cid"].as_u64(), Some(0xffff_ffff), "{info}");
    let compressed = data["extents"][0]["compressed"].as_bool().unwrap_or(false);
    assert_eq!(
        compressed,
        subformat == VmdkSubformat::StreamOptimized,
        "{info}"
    );
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(input_size.next_multiple_of(512))
    );
}

/// Inputs: all zeros (written out), random, text of a size that is no grain multiple,
/// the mixed disk, and a 70 MiB sparse disk whose middle grain tables map nothing.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let mut add = |name: &str, bytes: &[u8], sparse: bool| {
        let path = dir.join(name);
        if sparse {
            write_sparse(&path, bytes);
        } else {
            std::fs::write(&path, bytes).unwrap();
        }
        made.push(path);
    };
    add("zeros.raw", &vec![0u8; 3 << 20], false);
    add("random.raw", &random_bytes(3 << 20, 1), false);
    add("text.raw", &text_bytes((3 << 20) + 4608, 2), false);
    add("mixed.raw", &mixed_bytes(3), true);
    let mut far = vec![0u8; 70 << 20];
    far[..100_000].copy_from_slice(&text_bytes(100_000, 4));
    far[(40 << 20) + 512..(40 << 20) + 1024].copy_from_slice(&random_bytes(512, 5));
    let tail = far.len() - 70_000;
    far[tail..].copy_from_slice(&text_bytes(70_000, 6));
    add("far.raw", &far, true);
    made
}

#[test]
fn every_subformat_passes_check_and_compare_for_every_input_and_thread_count() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    for input in inputs(dir.path()) {
        for subformat in SUBFORMATS {
            for threads in [1, 2] {
                let stem = input.file_stem().unwrap().to_string_lossy();
                let out = dir
                    .path()
                    .join(format!("{stem}-{}-{threads}.vmdk", subformat.name()));
                convert_and_verify(&input, &out, &vmdk(subformat, threads));
            }
        }
    }
}

#[test]
fn output_is_byte_identical_across_runs_and_thread_counts() {
    let bytes = mixed_bytes(11);
    let disk = slice_disk(&bytes);
    for subformat in SUBFORMATS {
        let dir = tempfile::tempdir().unwrap();
        let mut outputs = Vec::new();
        for (i, threads) in [4, 4, 1, 2].into_iter().enumerate() {
            // Same file name each time: the descriptor records it.
            let run_dir = dir.path().join(format!("run-{i}"));
            std::fs::create_dir(&run_dir).unwrap();
            let out = run_dir.join("disk.vmdk");
            run(&disk, &out, &vmdk(subformat, threads)).unwrap();
            let mut files = std::fs::read(&out).unwrap();
            if subformat == VmdkSubformat::MonolithicFlat {
                files.extend(std::fs::read(flat_extent_path(&out)).unwrap());
            }
            outputs.push(files);
        }
        assert!(
            outputs.windows(2).all(|w| w[0] == w[1]),
            "{} output differs between runs",
            subformat.name()
        );
    }
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Reads a streamOptimized file the way VMware's sequential stream reader does: header,
/// skip to overHead, then grain markers (inflated with a stock zlib decoder) and metadata
/// markers skipped by their sector count, until the end-of-stream marker.
fn read_stream_sequentially(file: &[u8]) -> Vec<u8> {
    assert_eq!(&file[0..4], b"KDMV");
    assert_eq!(le32(file, 4), 3, "version");
    assert_eq!(le32(file, 8), 0x30001, "flags");
    assert_eq!(&file[73..77], b"\n \r\n");
    assert_eq!(u16::from_le_bytes([file[77], file[78]]), 1, "deflate");
    let capacity = le64(file, 12);
    let mut disk = vec![0u8; (capacity * 512) as usize];
    let mut pos = (le64(file, 64) * 512) as usize;
    let mut last_lba = None;
    loop {
        let (value, size) = (le64(file, pos), le32(file, pos + 8));
        if size == 0 {
            match le32(file, pos + 12) {
                0 => break,
                1..=3 => pos += 512 + value as usize * 512,
                other => panic!("unknown marker type {other} at {pos:#x}"),
            }
            continue;
        }
        assert!(last_lba.is_none_or(|l| value > l), "grains out of order");
        last_lba = Some(value);
        let data = &file[pos + 12..pos + 12 + size as usize];
        let mut grain = Vec::new();
        flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut grain)
            .unwrap();
        assert_eq!(grain.len(), 65536, "every grain is inflated whole");
        let at = (value * 512) as usize;
        let keep = grain.len().min(disk.len() - at);
        disk[at..at + keep].copy_from_slice(&grain[..keep]);
        pos = (pos + 12 + size as usize).next_multiple_of(512);
    }
    assert_eq!(
        pos + 512,
        file.len(),
        "the end-of-stream marker ends the file"
    );
    disk
}

#[test]
fn stream_reads_back_through_a_sequential_marker_walk() {
    let mut bytes = mixed_bytes(5);
    bytes.extend(text_bytes(40 << 20, 6)); // past the first grain table's 32 MiB
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.vmdk");
    let report = run(
        &slice_disk(&bytes),
        &out,
        &vmdk(VmdkSubformat::StreamOptimized, 2),
    )
    .unwrap();
    assert!(report.compressed_clusters > 0);
    let back = read_stream_sequentially(&std::fs::read(&out).unwrap());
    assert_eq!(&back[..bytes.len()], &bytes[..]);
    assert!(back[bytes.len()..].iter().all(|&b| b == 0));
}

#[test]
fn stream_footer_is_the_header_with_the_directory_offset() {
    let bytes = text_bytes(5 << 20, 7);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("footer.vmdk");
    run(
        &slice_disk(&bytes),
        &out,
        &vmdk(VmdkSubformat::StreamOptimized, 2),
    )
    .unwrap();
    let file = std::fs::read(&out).unwrap();
    let end = file.len();
    assert_eq!(end % 512, 0);
    assert_eq!(le64(&file, 56), u64::MAX, "header: gdOffset = GD_AT_END");
    assert_eq!(le64(&file, 48), 0, "no redundant directory");
    // footer marker, footer, end-of-stream marker: the last three sectors
    let marker = &file[end - 1536..end - 1024];
    assert_eq!(
        (le64(marker, 0), le32(marker, 8), le32(marker, 12)),
        (1, 0, 3)
    );
    let footer = &file[end - 1024..end - 512];
    assert_eq!(&footer[..56], &file[..56]);
    assert_eq!(&footer[64..512], &file[64..512]);
    assert!(file[end - 512..].iter().all(|&b| b == 0), "end-of-stream");
    // The directory sits behind its marker and points at grain tables behind theirs.
    let gd = le64(footer, 56) as usize * 512;
    let gd_marker = &file[gd - 512..gd];
    assert_eq!((le64(gd_marker, 0), le32(gd_marker, 12)), (1, 2));
    let gt = le32(&file, gd) as usize * 512;
    let gt_marker = &file[gt - 512..gt];
    assert_eq!((le64(gt_marker, 0), le32(gt_marker, 12)), (4, 1));
    // The first grain starts at overHead (128 sectors) and holds LBA 0.
    let first = le32(&file, gt) as usize * 512;
    assert_eq!((first, le64(&file, first)), (65536, 0));
    // The descriptor follows the header.
    let descriptor = String::from_utf8_lossy(&file[512..1024]);
    assert!(
        descriptor.contains("createType=\"streamOptimized\""),
        "{descriptor}"
    );
    assert!(
        descriptor.contains("RW 10240 SPARSE \"footer.vmdk\""),
        "{descriptor}"
    );
    assert!(
        descriptor.contains("ddb.virtualHWVersion = \"4\""),
        "{descriptor}"
    );
}

#[test]
fn sparse_layout_matches_qemus_and_the_redundant_directory_reads_the_same() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    let mut bytes = vec![0u8; 70 << 20];
    bytes[..1 << 20].copy_from_slice(&text_bytes(1 << 20, 1));
    bytes[(69 << 20)..].copy_from_slice(&random_bytes(1 << 20, 2));
    write_sparse(&input, &bytes);
    let out = dir.path().join("sparse.vmdk");
    run(
        &file_disk(&input),
        &out,
        &vmdk(VmdkSubformat::MonolithicSparse, 2),
    )
    .unwrap();
    let ours = std::fs::read(&out).unwrap();
    let theirs_path = dir.path().join("qemu.vmdk");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&theirs_path)
        .arg((70u64 << 20).to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = std::fs::read(&theirs_path).unwrap();
    // version, flags, capacity, grain, descriptor, numGTEsPerGT, rgd, gd, overHead, checks
    assert_eq!(&ours[..79], &theirs[..79]);

    // qemu reads only the primary directory: swap the two offsets in a copy, and it reads
    // the disk through the redundant directory and its tables.
    let mut swapped = ours.clone();
    swapped[48..56].copy_from_slice(&ours[56..64]);
    swapped[56..64].copy_from_slice(&ours[48..56]);
    let swapped_path = dir.path().join("swapped.vmdk");
    std::fs::write(&swapped_path, &swapped).unwrap();
    qemu_compare_vmdk(&input, &swapped_path);
}

#[test]
fn all_zero_disk_stores_no_grain() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("zero.raw");
    std::fs::write(&input, vec![0u8; 3 << 20]).unwrap();
    for subformat in [
        VmdkSubformat::MonolithicSparse,
        VmdkSubformat::StreamOptimized,
    ] {
        let out = dir.path().join(format!("zero-{}.vmdk", subformat.name()));
        let report = run(&file_disk(&input), &out, &vmdk(subformat, 2)).unwrap();
        assert_eq!((report.data_bytes, report.zero_bytes), (0, 3 << 20));
        assert_eq!(report.compressed_clusters, 0);
        // nothing past the metadata: overHead, or the stream's fixed sectors
        assert!(report.output_size <= 1152 * 512, "{}", report.output_size);
        qemu_check_vmdk(&out);
        qemu_compare_vmdk(&input, &out);
    }
}

#[test]
fn every_extent_kind_converts_to_what_read_at_returns() {
    require_qemu_img!();
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(100_000, 1)),
        Piece::Compressed(text_bytes(300_000, 2)),
        Piece::Zero(200_000),
        Piece::Unallocated(70_000),
        Piece::Compressed(random_bytes(50_000, 3)),
        Piece::Data(vec![0u8; 30_000]),
        Piece::Data(random_bytes(13_488, 4)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, disk.content()).unwrap();
    for subformat in SUBFORMATS {
        let out = dir.path().join(format!("kinds-{}.vmdk", subformat.name()));
        run(&disk, &out, &vmdk(subformat, 2)).unwrap();
        qemu_check_vmdk(&out);
        qemu_compare_vmdk(&expected, &out);
    }
}

#[test]
fn unreadable_range_becomes_zeros_and_is_listed_under_zeros_policy() {
    require_qemu_img!();
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(1_500_000, 1)),
        Piece::Unreadable(1_000_000, "grain table damaged"),
        Piece::Data(random_bytes(700_128, 2)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, disk.content()).unwrap();
    for subformat in SUBFORMATS {
        let out = dir.path().join(format!("zeros-{}.vmdk", subformat.name()));
        let options = ConvertOptions {
            unreadable: UnreadablePolicy::Zeros,
            ..vmdk(subformat, 2)
        };
        let report = run(&disk, &out, &options).unwrap();
        let ranges: Vec<_> = report
            .unreadable
            .iter()
            .map(|r| (r.offset, r.len))
            .collect();
        assert_eq!(ranges, vec![(1_500_000, 1_000_000)]);
        qemu_check_vmdk(&out);
        qemu_compare_vmdk(&expected, &out);
    }
}

#[test]
fn compression_that_does_not_apply_is_refused() {
    let disk = slice_disk(&[1u8; 4096]);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (VmdkSubformat::StreamOptimized, Compression::Zstd, "zstd"),
        (
            VmdkSubformat::MonolithicSparse,
            Compression::Deflate,
            "qcow2",
        ),
        (VmdkSubformat::MonolithicFlat, Compression::Deflate, "qcow2"),
    ];
    for (subformat, compression, says) in cases {
        let out = dir.path().join(format!("{}.vmdk", subformat.name()));
        let options = ConvertOptions {
            compression: Some(compression),
            ..vmdk(subformat, 1)
        };
        let err = run(&disk, &out, &options).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
        assert!(!out.exists());
    }
    // -c with streamOptimized (deflate) is what it does anyway.
    let out = dir.path().join("c.vmdk");
    let options = ConvertOptions {
        compression: Some(Compression::Deflate),
        ..vmdk(VmdkSubformat::StreamOptimized, 1)
    };
    run(&disk, &out, &options).unwrap();
}

#[test]
fn disks_a_sparse_extent_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.raw");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 40)
        .unwrap();
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    for (input, says) in [(&huge, "monolithicFlat"), (&empty, "empty disk")] {
        for subformat in [
            VmdkSubformat::MonolithicSparse,
            VmdkSubformat::StreamOptimized,
        ] {
            let out = dir.path().join("big.vmdk");
            let err = run(&file_disk(input), &out, &vmdk(subformat, 1)).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert!(!out.exists());
        }
    }
}

#[test]
fn flat_output_refuses_an_existing_extent_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.vmdk");
    let flat = dir.path().join("disk-flat.vmdk");
    std::fs::write(&flat, b"keep me").unwrap();
    let err = run(
        &slice_disk(&[1u8; 4096]),
        &out,
        &vmdk(VmdkSubformat::MonolithicFlat, 1),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err}");
    assert!(err.to_string().contains("disk-flat.vmdk"), "{err}");
    assert_eq!(std::fs::read(&flat).unwrap(), b"keep me");
    assert!(
        !out.exists(),
        "the descriptor of a failed conversion is removed"
    );
}

#[test]
fn failed_flat_conversion_removes_both_files() {
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(3 << 20, 1)),
        Piece::Unreadable(8192, "damaged"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fail.vmdk");
    run(&disk, &out, &vmdk(VmdkSubformat::MonolithicFlat, 2)).unwrap_err();
    assert!(!out.exists());
    assert!(!flat_extent_path(&out).exists());
}

/// A small sparse disk: runs of zeros, text and random bytes, in 512-byte steps, some
/// of them grain-sized so whole grains are zero.
fn sparse_disk() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..3, 1usize..400, any::<u64>()), 1..10).prop_map(|runs| {
        let mut v = Vec::new();
        for (kind, sectors, seed) in runs {
            let len = sectors * 512;
            match kind {
                0 => v.resize(v.len() + len, 0),
                1 => v.extend(text_bytes(len, seed)),
                _ => v.extend(random_bytes(len, seed)),
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_writer_round_trips_through_qemu(
        bytes in sparse_disk(),
        threads in 1usize..4,
    ) {
        if !have_qemu_img() {
            eprintln!("SKIP: qemu-img not found");
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.raw");
        write_sparse(&input, &bytes);
        for subformat in SUBFORMATS {
            let out = dir.path().join(format!("out-{}.vmdk", subformat.name()));
            run(&file_disk(&input), &out, &vmdk(subformat, threads)).unwrap();
            qemu_check_vmdk(&out);
            let back = qemu_read_vmdk(&out, &dir.path().join("back.raw"));
            prop_assert_eq!(&back, &bytes, "{}", subformat.name());
            if subformat == VmdkSubformat::StreamOptimized {
                let walked = read_stream_sequentially(&std::fs::read(&out).unwrap());
                prop_assert_eq!(&walked, &bytes);
            }
        }
    }
}
