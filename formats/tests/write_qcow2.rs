//! The qcow2 writer against qemu-img: every output must pass `qemu-img check` and read back
//! as the input (`qemu-img compare`, `qemu-img convert -O raw`).

mod write_support;

use std::path::Path;

use proptest::prelude::*;
use vdr_formats::{Compression, ConvertOptions, Error, OutputFormat, UnreadablePolicy};
use write_support::*;

fn qcow2(cluster_size: u64, compression: Option<Compression>, threads: usize) -> ConvertOptions {
    ConvertOptions {
        format: OutputFormat::Qcow2,
        compression,
        threads,
        cluster_size,
        ..ConvertOptions::default()
    }
}

/// Converts the raw file at `input` to qcow2 with `options` and checks it with qemu-img.
fn convert_and_verify(input: &Path, out: &Path, options: &ConvertOptions) -> serde_json::Value {
    let disk = file_disk(input);
    let report = run(&disk, out, options).unwrap();
    let input_size = std::fs::metadata(input).unwrap().len();
    assert_eq!(report.virtual_size, input_size.next_multiple_of(512));
    let check = qemu_check_clean(out);
    qemu_compare_identical(input, out);
    check
}

#[test]
fn every_cluster_size_and_compression_passes_check_and_compare() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.raw");
    write_sparse(&input, &mixed_bytes(3));
    let threads = [1, 2, 4];
    let mut case = 0;
    for cluster_size in [512u64, 4096, 65536, 2 << 20] {
        for compression in [None, Some(Compression::Deflate), Some(Compression::Zstd)] {
            let options = qcow2(cluster_size, compression, threads[case % 3]);
            case += 1;
            let out = dir.path().join(format!("out-{case}.qcow2"));
            let check = convert_and_verify(&input, &out, &options);
            let compressed = check["compressed-clusters"].as_u64().unwrap_or(0);
            assert_eq!(
                compressed > 0,
                compression.is_some(),
                "cluster {cluster_size} {compression:?}: {check}"
            );
        }
    }
}

#[test]
fn all_zero_disk_allocates_no_data_cluster() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("zero.raw");
    // Zeros written out (not holes), so the zero detection, not the map, must find them.
    std::fs::write(&input, vec![0u8; 3 << 20]).unwrap();
    let out = dir.path().join("zero.qcow2");
    let disk = file_disk(&input);
    let report = run(&disk, &out, &qcow2(65536, Some(Compression::Deflate), 2)).unwrap();
    assert_eq!(report.data_bytes, 0);
    assert_eq!(report.zero_bytes, 3 << 20);
    let check = qemu_check_clean(&out);
    assert_eq!(
        check["allocated-clusters"].as_u64().unwrap_or(0),
        0,
        "{check}"
    );
    qemu_compare_identical(&input, &out);
}

#[test]
fn random_data_is_stored_plain_even_when_compression_is_asked() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("random.raw");
    std::fs::write(&input, random_bytes((1 << 20) + 4096, 9)).unwrap();
    for compression in [Compression::Deflate, Compression::Zstd] {
        let out = dir.path().join(format!("random-{compression:?}.qcow2"));
        let check = convert_and_verify(&input, &out, &qcow2(4096, Some(compression), 2));
        assert_eq!(check["compressed-clusters"].as_u64().unwrap_or(0), 0);
    }
}

#[test]
fn many_refcount_blocks_and_a_multi_cluster_refcount_table() {
    require_qemu_img!();
    // 512-byte clusters: one refcount block covers 128 KiB of file and one table cluster
    // 64 blocks (8 MiB), so 9 MiB of data streams 70+ blocks and needs a 2-cluster table.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.raw");
    std::fs::write(&input, random_bytes(9 << 20, 5)).unwrap();
    let out = dir.path().join("big.qcow2");
    convert_and_verify(&input, &out, &qcow2(512, None, 2));
}

#[test]
fn zstd_output_declares_its_compression_type() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("text.raw");
    std::fs::write(&input, text_bytes(1 << 20, 4)).unwrap();
    let out = dir.path().join("text.qcow2");
    convert_and_verify(&input, &out, &qcow2(65536, Some(Compression::Zstd), 2));
    let info = qemu_info(&out);
    assert_eq!(
        info["format-specific"]["data"]["compression-type"].as_str(),
        Some("zstd"),
        "{info}"
    );
    let out = dir.path().join("deflate.qcow2");
    convert_and_verify(&input, &out, &qcow2(65536, Some(Compression::Deflate), 2));
    assert_eq!(
        qemu_info(&out)["format-specific"]["data"]["compression-type"].as_str(),
        Some("zlib")
    );
}

#[test]
fn output_is_byte_identical_across_runs_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = mixed_bytes(11);
    let disk = slice_disk(&bytes);
    let mut outputs = Vec::new();
    for (i, threads) in [4, 4, 1, 3].into_iter().enumerate() {
        let out = dir.path().join(format!("run-{i}.qcow2"));
        run(
            &disk,
            &out,
            &qcow2(4096, Some(Compression::Deflate), threads),
        )
        .unwrap();
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
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
        Piece::Data(random_bytes(12_345, 4)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, disk.content()).unwrap();
    for compression in [None, Some(Compression::Zstd)] {
        let out = dir.path().join(format!("kinds-{compression:?}.qcow2"));
        run(&disk, &out, &qcow2(4096, compression, 2)).unwrap();
        qemu_check_clean(&out);
        qemu_compare_identical(&expected, &out);
    }
}

#[test]
fn a_chain_converts_into_one_flat_image() {
    require_qemu_img!();
    let leaf = ScriptedDisk::new(&[
        Piece::Data(text_bytes(1 << 20, 1)),
        Piece::Unallocated(2 << 20),
        Piece::Compressed(text_bytes(1 << 20, 2)),
    ])
    .with_parent("base.raw");
    let base_bytes = random_bytes(3 << 20, 3);
    let mut expected_bytes = leaf.content().to_vec();
    expected_bytes[1 << 20..3 << 20].copy_from_slice(&base_bytes[1 << 20..3 << 20]);
    let base: std::sync::Arc<dyn vdr_formats::VirtualDisk> =
        std::sync::Arc::new(slice_disk(&base_bytes));
    let chain =
        vdr_formats::Chain::build(std::sync::Arc::new(leaf), None, &OneParent(base), 8).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &expected_bytes).unwrap();

    let flat = dir.path().join("flat.raw");
    run(&chain, &flat, &ConvertOptions::default()).unwrap();
    assert_eq!(std::fs::read(&flat).unwrap(), expected_bytes);
    let out = dir.path().join("flat.qcow2");
    run(&chain, &out, &qcow2(65536, Some(Compression::Deflate), 2)).unwrap();
    qemu_check_clean(&out);
    qemu_compare_identical(&expected, &out);
}

#[test]
fn unreadable_range_fails_by_default_naming_the_offset() {
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(3 << 20, 1)),
        Piece::Unreadable(8192, "L2 table points past end of file"),
        Piece::Data(text_bytes(1 << 20, 2)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fail.qcow2");
    let err = run(&disk, &out, &qcow2(65536, None, 2)).unwrap_err();
    match &err {
        Error::Unreadable { offset, len, .. } => assert_eq!((*offset, *len), (3 << 20, 8192)),
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("0x300000"), "{err}");
    assert!(!out.exists(), "a failed conversion leaves no output behind");
}

#[test]
fn size_that_is_not_whole_sectors_reads_back_as_qemu_pads_it() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("odd.raw");
    std::fs::write(&input, text_bytes(762_345, 8)).unwrap();
    let out = dir.path().join("odd.qcow2");
    let report = run(&file_disk(&input), &out, &qcow2(65536, None, 2)).unwrap();
    assert_eq!(report.virtual_size, 762_368);
    qemu_check_clean(&out);
    // qemu itself reads the raw file as 762368 bytes, the tail as zeros.
    qemu_compare_identical(&input, &out);
}

#[test]
fn unreadable_range_becomes_zeros_and_is_listed_under_zeros_policy() {
    require_qemu_img!();
    // The unreadable range straddles the 2 MiB unit boundary: reported once, whole.
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(1_500_000, 1)),
        Piece::Unreadable(1_000_000, "grain table damaged"),
        Piece::Data(random_bytes(700_000, 2)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, disk.content()).unwrap();
    let out = dir.path().join("zeros.qcow2");
    let options = ConvertOptions {
        unreadable: UnreadablePolicy::Zeros,
        ..qcow2(65536, Some(Compression::Deflate), 2)
    };
    let report = run(&disk, &out, &options).unwrap();
    assert_eq!(report.unreadable.len(), 1, "{:?}", report.unreadable);
    let range = &report.unreadable[0];
    assert_eq!((range.offset, range.len), (1_500_000, 1_000_000));
    assert_eq!(range.reason, "grain table damaged");
    qemu_check_clean(&out);
    qemu_compare_identical(&expected, &out);
}

#[test]
fn read_errors_under_zeros_policy_leave_zeros_and_are_listed() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(&short, random_bytes(70_000, 5)).unwrap();
    let source: vdr_formats::SourceRef =
        std::sync::Arc::new(vdr_formats::FileSource::open(&short).unwrap());
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(300_000, 1)),
        Piece::Stored(source, 10_000, 200_000),
        Piece::Data(text_bytes(300_000, 2)),
    ]);
    let out = dir.path().join("salvaged.qcow2");
    let options = ConvertOptions {
        unreadable: UnreadablePolicy::Zeros,
        ..qcow2(4096, Some(Compression::Zstd), 2)
    };
    let report = run(&disk, &out, &options).unwrap();
    let ranges: Vec<_> = report
        .unreadable
        .iter()
        .map(|r| (r.offset, r.len))
        .collect();
    // 60000 bytes of the stored extent read (to 360000); salvage works in 512-byte
    // sectors of the virtual disk, so the sector holding the source's end (from 359936)
    // is lost with the rest.
    assert_eq!(
        ranges,
        vec![(359_936, 500_000 - 359_936)],
        "{:?}",
        report.unreadable
    );
    // Listed bytes are zeros, the readable ones the disk's.
    let mut expected_bytes = disk.content().to_vec();
    expected_bytes[359_936..360_000].fill(0);
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &expected_bytes).unwrap();
    qemu_check_clean(&out);
    qemu_compare_identical(&expected, &out);
}

#[test]
fn invalid_cluster_size_is_refused() {
    let disk = slice_disk(&[1u8; 4096]);
    let dir = tempfile::tempdir().unwrap();
    for cluster_size in [256u64, 3000, 4 << 20] {
        let out = dir.path().join(format!("c{cluster_size}.qcow2"));
        let err = run(&disk, &out, &qcow2(cluster_size, None, 1)).unwrap_err();
        assert!(err.to_string().contains("cluster size"), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn existing_output_is_not_overwritten() {
    let disk = slice_disk(&[1u8; 4096]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("there.qcow2");
    std::fs::write(&out, b"keep me").unwrap();
    let err = run(&disk, &out, &qcow2(65536, None, 1)).unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn empty_disk_is_a_valid_image() {
    require_qemu_img!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.raw");
    std::fs::write(&input, b"").unwrap();
    let out = dir.path().join("empty.qcow2");
    convert_and_verify(&input, &out, &qcow2(65536, None, 1));
}

/// A small sparse disk: runs of zeros, text and random bytes, sizes in 512-byte steps.
fn sparse_disk() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..3, 1usize..40, any::<u64>()), 1..12).prop_map(|runs| {
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
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn raw_and_qcow2_round_trip(
        bytes in sparse_disk(),
        cluster_bits in 9u32..17,
        compression in prop::sample::select(vec![None, Some(Compression::Deflate), Some(Compression::Zstd)]),
        threads in 1usize..4,
    ) {
        if !have_qemu_img() {
            eprintln!("SKIP: qemu-img not found");
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.raw");
        write_sparse(&input, &bytes);
        let disk = file_disk(&input);

        let raw_out = dir.path().join("out.raw");
        let raw = ConvertOptions { threads, ..ConvertOptions::default() };
        run(&disk, &raw_out, &raw).unwrap();
        prop_assert_eq!(std::fs::read(&raw_out).unwrap(), bytes.clone());

        let qcow2_out = dir.path().join("out.qcow2");
        run(&disk, &qcow2_out, &qcow2(1 << cluster_bits, compression, threads)).unwrap();
        qemu_check_clean(&qcow2_out);
        let back = qemu_read_qcow2(&qcow2_out, &dir.path().join("back.raw"));
        prop_assert_eq!(back, bytes);
    }
}

/// Scripted disks mixing every readable extent kind at unaligned boundaries.
fn scripted_pieces() -> impl Strategy<Value = Vec<Piece>> {
    prop::collection::vec((0u8..5, 1usize..20_000, any::<u64>()), 1..10).prop_map(|runs| {
        let mut pieces: Vec<Piece> = runs
            .into_iter()
            .map(|(kind, len, seed)| match kind {
                0 => Piece::Data(text_bytes(len, seed)),
                1 => Piece::Data(random_bytes(len, seed)),
                2 => Piece::Compressed(text_bytes(len, seed)),
                3 => Piece::Zero(len as u64),
                _ => Piece::Unallocated(len as u64),
            })
            .collect();
        // qemu reads whole sectors: end the disk on one.
        let total: u64 = pieces
            .iter()
            .map(|p| match p {
                Piece::Data(b) | Piece::Compressed(b) => b.len() as u64,
                Piece::Zero(n) | Piece::Unallocated(n) => *n,
                _ => 0,
            })
            .sum();
        let pad = total.next_multiple_of(512) - total;
        if pad > 0 {
            pieces.push(Piece::Data(vec![0x11; pad as usize]));
        }
        pieces
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn every_extent_kind_round_trips_through_both_writers(
        pieces in scripted_pieces(),
        cluster_bits in 9u32..14,
        compression in prop::sample::select(vec![None, Some(Compression::Deflate), Some(Compression::Zstd)]),
    ) {
        if !have_qemu_img() {
            eprintln!("SKIP: qemu-img not found");
            return Ok(());
        }
        let disk = ScriptedDisk::new(&pieces);
        let dir = tempfile::tempdir().unwrap();
        let raw_out = dir.path().join("out.raw");
        run(&disk, &raw_out, &ConvertOptions { threads: 2, ..ConvertOptions::default() }).unwrap();
        prop_assert_eq!(std::fs::read(&raw_out).unwrap(), disk.content().to_vec());

        let qcow2_out = dir.path().join("out.qcow2");
        run(&disk, &qcow2_out, &qcow2(1 << cluster_bits, compression, 2)).unwrap();
        qemu_check_clean(&qcow2_out);
        let back = qemu_read_qcow2(&qcow2_out, &dir.path().join("back.raw"));
        prop_assert_eq!(back, disk.content().to_vec());
    }
}
