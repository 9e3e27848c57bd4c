//! Unit tests of header validation and of opening in-memory VMDKs.

use std::sync::Arc;

use crate::disk::{ParseMode, VirtualDisk};
use crate::open::OpenOptions;
use crate::source::{SliceSource, SourceRef};

use super::sparse::{RawHeader, MAGIC};

/// A minimal monolithicSparse image: header, descriptor, GD at sector 21, one GT at 22,
/// grains from sector 128 (grain size `gs` sectors, 512 GTEs per table).
fn image(capacity: u64, gs: u64, grains: &[(usize, u8)]) -> Vec<u8> {
    let mut img = vec![0u8; 128 * 512];
    img[0..4].copy_from_slice(&MAGIC);
    let put32 =
        |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |img: &mut Vec<u8>, at: usize, v: u64| img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut img, 4, 1);
    put32(&mut img, 8, 3);
    put64(&mut img, 12, capacity);
    put64(&mut img, 20, gs);
    put64(&mut img, 28, 1);
    put64(&mut img, 36, 20);
    put32(&mut img, 44, 512);
    put64(&mut img, 48, 0);
    put64(&mut img, 56, 21);
    put64(&mut img, 64, 128);
    img[73..77].copy_from_slice(b"\n \r\n");
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW {capacity} SPARSE \"x.vmdk\"\n"
    );
    img[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
    put32(&mut img, 21 * 512, 22);
    for (n, &(grain, byte)) in grains.iter().enumerate() {
        let sector = 128 + n as u64 * gs;
        put32(&mut img, 22 * 512 + grain * 4, sector as u32);
        img.resize(((sector + gs) * 512) as usize, byte);
    }
    img
}

fn open(bytes: Vec<u8>, mode: ParseMode) -> Result<Arc<dyn VirtualDisk>, crate::Error> {
    let source: SourceRef = Arc::new(SliceSource::new(bytes, "t.vmdk"));
    let options = OpenOptions {
        mode,
        ..OpenOptions::default()
    };
    crate::open::open_layer(source, &options)
}

#[test]
fn small_grains_read_and_map() {
    let disk = open(image(64, 8, &[(1, 0xaa), (3, 0xbb)]), ParseMode::Strict).unwrap();
    assert_eq!(disk.size(), 64 * 512);
    let mut buf = vec![1u8; 64 * 512];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..8192].iter().all(|&b| b == 0xaa));
    assert!(buf[3 * 4096..4 * 4096].iter().all(|&b| b == 0xbb));
    let map = disk.map(0, u64::MAX).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        kinds,
        ["unallocated", "data", "unallocated", "data", "unallocated"]
    );
    let info = disk.info();
    assert_eq!(info.details["cid"], "12345678");
    assert_eq!(info.cluster_size, Some(4096));
}

#[test]
fn header_with_bad_grain_size_is_refused_naming_the_field() {
    let mut img = image(64, 8, &[]);
    img[20..28].copy_from_slice(&3u64.to_le_bytes());
    let err = open(img, ParseMode::Salvage).err().unwrap().to_string();
    assert!(err.contains("grain size") && err.contains("0x14"), "{err}");
}

#[test]
fn huge_capacity_is_refused_without_allocating() {
    let mut img = image(64, 8, &[]);
    img[12..20].copy_from_slice(&(1u64 << 50).to_le_bytes());
    let err = open(img, ParseMode::Salvage).err().unwrap().to_string();
    assert!(err.contains("exceeds the limit"), "{err}");
}

#[test]
fn text_mode_transfer_is_detected() {
    let mut img = image(64, 8, &[]);
    img[73..77].copy_from_slice(b"\n \n\n");
    assert!(open(img.clone(), ParseMode::Strict).is_err());
    let disk = open(img, ParseMode::Salvage).unwrap();
    assert_eq!(disk.findings().len(), 1);
}

#[test]
fn grain_past_end_of_file_is_strict_error_and_salvage_unreadable() {
    let mut img = image(64, 8, &[(0, 0x11)]);
    img[22 * 512 + 4..22 * 512 + 8].copy_from_slice(&5000u32.to_le_bytes());
    let strict = open(img.clone(), ParseMode::Strict).unwrap();
    let mut buf = vec![0u8; 8192];
    assert!(strict.read_at(&mut buf, 0).is_err());
    let disk = open(img, ParseMode::Salvage).unwrap();
    disk.read_at(&mut buf[..4096], 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0x11));
    let err = disk.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains("past end of file"), "{err}");
    assert!(!disk.check().unwrap().errors.is_empty());
}

#[test]
fn raw_header_parses_all_fields() {
    let img = image(64, 8, &[]);
    let raw = RawHeader::parse(&img[..512]).unwrap();
    assert_eq!(
        (raw.capacity, raw.grain_size, raw.gd_offset, raw.overhead),
        (64, 8, 21, 128)
    );
    assert_eq!(raw.check_bytes, *b"\n \r\n");
}

#[test]
fn check_reports_grains_sharing_storage() {
    let mut img = image(64, 8, &[(0, 0x11), (1, 0x22)]);
    // Entry 2 names the same sectors as entry 0.
    let first = img[22 * 512..22 * 512 + 4].to_vec();
    img[22 * 512 + 8..22 * 512 + 12].copy_from_slice(&first);
    let disk = open(img, ParseMode::Strict).unwrap();
    let report = disk.check().unwrap();
    assert!(
        report.errors.iter().any(|e| e.what.contains("overlap")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.allocated_clusters, 3);
}

#[test]
fn check_reports_grains_over_metadata() {
    let mut img = image(64, 8, &[(0, 0x11)]);
    img[22 * 512..22 * 512 + 4].copy_from_slice(&21u32.to_le_bytes());
    let disk = open(img, ParseMode::Strict).unwrap();
    let report = disk.check().unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.what.contains("overlaps the grain directory")),
        "{:?}",
        report.errors
    );
}

/// A seSparse extent of 16 MiB: constant header, volatile header at sector 1, directory
/// at sector 2 (one sector), grain tables from sector 3 (64 sectors each), grains from
/// sector 67 (4 KiB each). `entries` are grain table entries of table 0.
fn sesparse(entries: &[(usize, u64)], grains: usize) -> Vec<u8> {
    let mut img = vec![0u8; (67 * 512) + grains * 4096];
    let fields: [(usize, u64); 14] = [
        (0, 0xcafe_babe),
        (8, 0x2_0000_0001),
        (16, 32768),
        (24, 8),
        (32, 64),
        (80, 1),
        (88, 1),
        (128, 2),
        (136, 1),
        (144, 3),
        (152, 64),
        (192, 67),
        (200, grains as u64 * 8),
        (96, 0),
    ];
    for (at, v) in fields {
        img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    img[512..520].copy_from_slice(&0xcafe_cafeu64.to_le_bytes());
    img[1024..1032].copy_from_slice(&0x1000_0000_0000_0000u64.to_le_bytes());
    for &(i, e) in entries {
        img[3 * 512 + i * 8..3 * 512 + i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    for g in 0..grains {
        let at = 67 * 512 + g * 4096;
        img[at..at + 4096].fill(0x40 + g as u8);
    }
    img
}

#[test]
fn sesparse_entry_types_and_grain_numbers_decode() {
    let allocated = |n: u64| 0x3000_0000_0000_0000 | ((n & 0xfff) << 48) | (n >> 12);
    let img = sesparse(
        &[
            (0, allocated(1)),
            (1, 0x2000_0000_0000_0000),
            (2, 0x1000_0000_0000_0000),
            (3, allocated(0)),
        ],
        2,
    );
    let disk = open(img, ParseMode::Strict).unwrap();
    assert_eq!(disk.size(), 16 << 20);
    let kinds: Vec<_> = disk
        .map(0, 5 * 4096)
        .unwrap()
        .iter()
        .map(|e| (e.offset, e.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, "data"),
            (4096, "zero"),
            (3 * 4096, "data"),
            (4 * 4096, "unallocated")
        ]
    );
    let mut buf = vec![0u8; 4 * 4096];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0x41));
    assert!(buf[4096..3 * 4096].iter().all(|&b| b == 0));
    assert!(buf[3 * 4096..].iter().all(|&b| b == 0x40));
}

#[test]
fn sesparse_bad_entries_are_refused_or_unreadable() {
    let img = sesparse(&[(0, 0x5000_0000_0000_0000), (1, 0x0000_0000_0000_0007)], 1);
    let strict = open(img.clone(), ParseMode::Strict).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(strict.read_at(&mut buf, 0).is_err());
    let salvage = open(img, ParseMode::Salvage).unwrap();
    let map = salvage.map(0, 3 * 4096).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["unreadable", "unreadable", "unallocated"]);
}

#[test]
fn dirty_sesparse_journal_is_refused_in_strict() {
    let mut img = sesparse(&[], 0);
    img[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
    let err = open(img.clone(), ParseMode::Strict)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("journal"), "{err}");
    assert!(open(img, ParseMode::Salvage).is_ok());
}
