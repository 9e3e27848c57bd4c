//! The sparse raw writer: output bytes equal the input, holes stay holes, every extent
//! kind and the unreadable policy behave as documented.

mod write_support;

use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use vdr_formats::{Compression, ConvertOptions, Error, UnreadablePolicy};
use write_support::*;

fn raw(threads: usize) -> ConvertOptions {
    ConvertOptions {
        threads,
        ..ConvertOptions::default()
    }
}

#[test]
fn file_input_converts_byte_for_byte_with_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    let bytes = mixed_bytes(21);
    write_sparse(&input, &bytes);
    for threads in [1, 2, 4] {
        let out = dir.path().join(format!("out-{threads}.raw"));
        let report = run(&file_disk(&input), &out, &raw(threads)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        assert_eq!(report.virtual_size, bytes.len() as u64);
        assert_eq!(report.data_bytes + report.zero_bytes, bytes.len() as u64);
    }
}

#[test]
fn holes_of_the_input_stay_holes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sparse.raw");
    let mut bytes = vec![0u8; 64 << 20];
    bytes[..1 << 20].copy_from_slice(&text_bytes(1 << 20, 2));
    write_sparse(&input, &bytes);
    let out = dir.path().join("sparse.out");
    let report = run(&file_disk(&input), &out, &raw(2)).unwrap();
    assert_eq!(report.zero_bytes, 63 << 20);
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated < 4 << 20, "{allocated} bytes allocated");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn zero_data_read_through_memory_is_left_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = vec![0u8; 16 << 20];
    bytes[5 << 20..(5 << 20) + 100].fill(7);
    let out = dir.path().join("mem.out");
    let report = run(&slice_disk(&bytes), &out, &raw(2)).unwrap();
    assert_eq!(report.data_bytes, 4096);
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated <= 64 << 10, "{allocated} bytes allocated");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn every_extent_kind_converts_to_what_read_at_returns() {
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(100_000, 1)),
        Piece::Compressed(text_bytes(5_000_000, 2)),
        Piece::Zero(200_000),
        Piece::Unallocated(70_000),
        Piece::Compressed(random_bytes(50_000, 3)),
        Piece::Data(random_bytes(12_345, 4)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kinds.raw");
    run(&disk, &out, &raw(3)).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), disk.content());
}

#[test]
fn unreadable_range_fails_by_default_and_leaves_no_output() {
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(9 << 20, 1)),
        Piece::Unreadable(4096, "grain directory entry out of range"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fail.raw");
    let err = run(&disk, &out, &raw(2)).unwrap_err();
    assert!(
        matches!(err, Error::Unreadable { offset, .. } if offset == 9 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("grain directory"), "{err}");
    assert!(!out.exists());
}

#[test]
fn unreadable_ranges_become_zeros_and_are_listed() {
    let disk = ScriptedDisk::new(&[
        Piece::Data(text_bytes(3 << 20, 1)),
        Piece::Unreadable(6 << 20, "L2 table unreadable"),
        Piece::Data(text_bytes(4096, 2)),
        Piece::Unreadable(512, "bad sector"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zeros.raw");
    let options = ConvertOptions {
        unreadable: UnreadablePolicy::Zeros,
        ..raw(2)
    };
    let report = run(&disk, &out, &options).unwrap();
    let ranges: Vec<_> = report
        .unreadable
        .iter()
        .map(|r| (r.offset, r.len, r.reason.as_str()))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (3 << 20, 6 << 20, "L2 table unreadable"),
            ((9 << 20) + 4096, 512, "bad sector"),
        ]
    );
    assert_eq!(std::fs::read(&out).unwrap(), disk.content());
}

#[test]
fn progress_rises_to_the_virtual_size() {
    let bytes = text_bytes(10 << 20, 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.raw");
    let seen = Mutex::new(Vec::new());
    vdr_formats::convert(&slice_disk(&bytes), &out, &raw(4), &|done| {
        seen.lock().unwrap().push(done)
    })
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&(10 << 20)));
}

#[test]
fn compression_is_refused_for_raw_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.raw");
    let options = ConvertOptions {
        compression: Some(Compression::Zstd),
        ..raw(1)
    };
    let err = run(&slice_disk(&[1u8; 512]), &out, &options).unwrap_err();
    assert!(err.to_string().contains("qcow2 output only"), "{err}");
    assert!(!out.exists());
}

/// A disk whose second extent claims 1 MiB of a file that holds only its first 100 KiB
/// (a truncated image), between two readable extents.
fn truncated_disk(dir: &std::path::Path) -> ScriptedDisk {
    let short = dir.join("short.bin");
    std::fs::write(&short, text_bytes(100 << 10, 5)).unwrap();
    let source: vdr_formats::SourceRef =
        std::sync::Arc::new(vdr_formats::FileSource::open(&short).unwrap());
    ScriptedDisk::new(&[
        Piece::Data(text_bytes(1 << 20, 1)),
        Piece::Stored(source, 0, 1 << 20),
        Piece::Compressed(text_bytes(1 << 20, 2)),
    ])
}

#[test]
fn read_error_fails_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let disk = truncated_disk(dir.path());
    let out = dir.path().join("fail.raw");
    let err = run(&disk, &out, &raw(2)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn read_error_under_zeros_policy_salvages_what_reads_and_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let disk = truncated_disk(dir.path());
    let out = dir.path().join("salvaged.raw");
    let options = ConvertOptions {
        unreadable: UnreadablePolicy::Zeros,
        ..raw(2)
    };
    let report = run(&disk, &out, &options).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), disk.content());
    assert_eq!(report.unreadable.len(), 1, "{:?}", report.unreadable);
    let range = &report.unreadable[0];
    // The source ends on a sector boundary: nothing readable is lost.
    assert_eq!(
        (range.offset, range.len),
        ((1 << 20) + (100 << 10), (1 << 20) - (100 << 10))
    );
    assert!(range.reason.starts_with("read error"), "{}", range.reason);
}
