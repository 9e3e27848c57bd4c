//! Unit tests: header validation, L2 entry classification, and small images built by hand
//! (fixed layout, 4 KiB clusters) in intact and damaged variants.

use std::sync::Arc;

use super::header::{Header, RawHeader};
use super::lookup::{decode_l2_entry, L2Entry, COMPRESSED, COPIED, ZERO};
use super::snapshot;
use super::Qcow2Disk;
use crate::disk::{ExtentKind, ParseMode, VirtualDisk};
use crate::open::OpenOptions;
use crate::source::{SliceSource, Source};

const CS: u64 = 4096;
const REFTABLE: u64 = CS;
const REFBLOCK: u64 = 2 * CS;
const L1: u64 = 3 * CS;
const L2: u64 = 4 * CS;
/// First host cluster the builder gives to data.
const FIRST_DATA: u64 = 5;

/// A hand-made image: header at 0, refcount table at 1, one refcount block at 2, L1 at 3,
/// one L2 table at 4, data clusters from 5 on. Refcounts are 1 for every cluster.
struct Image {
    version: u32,
    refcount_order: u32,
    size: u64,
    incompatible: u64,
    extensions: Vec<u8>,
    l2: Vec<u64>,
    data: Vec<Vec<u8>>,
}

impl Image {
    fn new(version: u32) -> Image {
        Image {
            version,
            refcount_order: 4,
            size: 1 << 20,
            incompatible: 0,
            extensions: Vec::new(),
            l2: vec![0; (CS / 8) as usize],
            data: Vec::new(),
        }
    }

    /// Stores a data cluster filled with `byte` and maps guest cluster `guest` to it.
    fn data(mut self, guest: usize, byte: u8) -> Image {
        let host = (FIRST_DATA + self.data.len() as u64) * CS;
        self.data.push(vec![byte; CS as usize]);
        self.l2[guest] = COPIED | host;
        self
    }

    fn entry(mut self, guest: usize, entry: u64) -> Image {
        self.l2[guest] = entry;
        self
    }

    fn extension(mut self, kind: u32, data: &[u8]) -> Image {
        self.extensions.extend_from_slice(&kind.to_be_bytes());
        self.extensions
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.extensions.extend_from_slice(data);
        while !self.extensions.len().is_multiple_of(8) {
            self.extensions.push(0);
        }
        self
    }

    fn build(&self) -> Vec<u8> {
        let clusters = FIRST_DATA + self.data.len() as u64;
        let mut f = vec![0u8; (clusters * CS) as usize];
        let put = |f: &mut Vec<u8>, at: u64, bytes: &[u8]| {
            f[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut f, 0, b"QFI\xfb");
        put(&mut f, 4, &self.version.to_be_bytes());
        put(&mut f, 20, &12u32.to_be_bytes());
        put(&mut f, 24, &self.size.to_be_bytes());
        put(&mut f, 36, &1u32.to_be_bytes());
        put(&mut f, 40, &L1.to_be_bytes());
        put(&mut f, 48, &REFTABLE.to_be_bytes());
        put(&mut f, 56, &1u32.to_be_bytes());
        if self.version >= 3 {
            put(&mut f, 72, &self.incompatible.to_be_bytes());
            put(&mut f, 96, &self.refcount_order.to_be_bytes());
            put(&mut f, 100, &112u32.to_be_bytes());
            put(&mut f, 112, &self.extensions);
        } else {
            put(&mut f, 72, &self.extensions);
        }
        put(&mut f, REFTABLE, &REFBLOCK.to_be_bytes());
        let bits = 1u64 << self.refcount_order;
        for k in 0..clusters {
            let bit = k * bits;
            if bits < 8 {
                f[(REFBLOCK + bit / 8) as usize] |= 1 << (bit % 8);
            } else {
                let width = bits / 8;
                f[(REFBLOCK + bit / 8 + width - 1) as usize] = 1;
            }
        }
        put(&mut f, L1, &(COPIED | L2).to_be_bytes());
        for (i, e) in self.l2.iter().enumerate() {
            put(&mut f, L2 + i as u64 * 8, &e.to_be_bytes());
        }
        for (i, d) in self.data.iter().enumerate() {
            put(&mut f, (FIRST_DATA + i as u64) * CS, d);
        }
        f
    }
}

fn open(bytes: Vec<u8>, mode: ParseMode) -> Result<Qcow2Disk, crate::Error> {
    let source = Arc::new(SliceSource::new(bytes, "img.qcow2"));
    Qcow2Disk::open(
        source,
        &OpenOptions {
            mode,
            ..OpenOptions::default()
        },
    )
}

fn header_of(bytes: &[u8]) -> Result<Header, super::Error> {
    Header::validate(&RawHeader::parse(bytes), "img.qcow2", bytes.len() as u64)
}

#[test]
fn version_2_header_is_72_bytes_with_16_bit_refcounts() {
    let h = header_of(&Image::new(2).build()).unwrap();
    assert_eq!((h.version, h.header_length, h.refcount_order), (2, 72, 4));
    assert_eq!(h.cluster_size, CS);
}

#[test]
fn cluster_bits_outside_9_to_21_are_refused() {
    for bits in [8u32, 22] {
        let mut b = Image::new(3).build();
        b[20..24].copy_from_slice(&bits.to_be_bytes());
        let err = header_of(&b).unwrap_err().to_string();
        assert!(err.contains("cluster_bits"), "{err}");
    }
}

#[test]
fn refcount_order_above_6_is_refused() {
    let mut img = Image::new(3);
    img.refcount_order = 7;
    let err = header_of(&img.build()).unwrap_err().to_string();
    assert!(err.contains("refcount_order 7"), "{err}");
}

#[test]
fn l1_table_too_small_for_the_virtual_size_is_refused() {
    let mut img = Image::new(3);
    img.size = 4 << 20; // needs 2 L1 entries with 4 KiB clusters
    let err = header_of(&img.build()).unwrap_err().to_string();
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn extended_l2_needs_16k_clusters() {
    let mut img = Image::new(3);
    img.incompatible = 1 << 4;
    let err = header_of(&img.build()).unwrap_err().to_string();
    assert!(err.contains("extended L2"), "{err}");
}

#[test]
fn unknown_incompatible_bits_are_refused_by_name() {
    let mut name = vec![0u8, 9];
    name.extend_from_slice(b"future_feature");
    name.resize(48, 0);
    let mut img = Image::new(3).extension(0x6803_f857, &name);
    img.incompatible = (1 << 9) | (1 << 12);
    let err = open(img.build(), ParseMode::Salvage)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("future_feature (bit 9)"), "{err}");
    assert!(err.contains("bit 12"), "{err}");
}

#[test]
fn garbage_header_is_refused_in_salvage_mode_too() {
    let err = open(vec![0x5a; 8192], ParseMode::Salvage)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a qcow2 image"), "{err}");
    let err = open(b"QFI\xfb\0\0".to_vec(), ParseMode::Salvage)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("too short"), "{err}");
}

#[test]
fn zero_flag_is_a_zero_cluster_in_v3_only() {
    let v3 = header_of(&Image::new(3).build()).unwrap();
    let v2 = header_of(&Image::new(2).build()).unwrap();
    let entry = COPIED | 0x5000 | ZERO;
    assert!(matches!(
        decode_l2_entry(&v3, entry, 0),
        L2Entry::Standard {
            alloc: 0,
            zero: 1,
            host: 0x5000,
            ..
        }
    ));
    assert!(matches!(
        decode_l2_entry(&v2, entry, 0),
        L2Entry::Standard {
            alloc: 1,
            zero: 0,
            host: 0x5000,
            ..
        }
    ));
    assert_eq!(
        decode_l2_entry(&v3, ZERO, 0),
        L2Entry::Unallocated { zero: 1 }
    );
    assert_eq!(decode_l2_entry(&v2, 0, 0), L2Entry::Unallocated { zero: 0 });
}

#[test]
fn compressed_descriptor_gives_offset_and_sector_rounded_length() {
    let h = header_of(&Image::new(3).build()).unwrap();
    // 4 KiB clusters: x = 62 - 4 = 58 offset bits, then the extra sector count.
    let entry = COMPRESSED | (2u64 << 58) | 0x6123;
    assert_eq!(
        decode_l2_entry(&h, entry, 0),
        L2Entry::Compressed {
            host: 0x6123,
            len: 3 * 512 - 0x123,
            copied: false,
            bitmap: 0
        }
    );
}

#[test]
fn subcluster_both_allocated_and_zero_is_invalid() {
    let mut h = header_of(&Image::new(3).build()).unwrap();
    h.cluster_bits = 16;
    h.cluster_size = 1 << 16;
    h.incompatible = 1 << 4;
    assert!(matches!(
        decode_l2_entry(&h, 0x10000, (1 << 32) | 1),
        L2Entry::Invalid { .. }
    ));
    assert!(matches!(decode_l2_entry(&h, 0, 1), L2Entry::Invalid { .. }));
    assert!(matches!(
        decode_l2_entry(&h, 0x10000, (0b10 << 32) | 0b01),
        L2Entry::Standard {
            alloc: 1,
            zero: 2,
            ..
        }
    ));
}

#[test]
fn hand_made_image_reads_data_zero_and_unallocated() {
    let img = Image::new(3)
        .data(0, 0xaa)
        .data(1, 0xbb)
        .entry(2, ZERO)
        .data(5, 0xcc);
    let disk = open(img.build(), ParseMode::Strict).unwrap();
    let mut buf = vec![0xffu8; 6 * CS as usize];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|b| *b == 0xaa));
    assert!(buf[4096..8192].iter().all(|b| *b == 0xbb));
    assert!(buf[8192..5 * 4096].iter().all(|b| *b == 0));
    assert!(buf[5 * 4096..].iter().all(|b| *b == 0xcc));
    let map = disk.map(0, 6 * CS).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| (e.offset, e.kind.name())).collect();
    assert_eq!(
        kinds,
        vec![
            (0, "data"),
            (2 * CS, "zero"),
            (3 * CS, "unallocated"),
            (5 * CS, "data")
        ]
    );
    assert_eq!(map[0].len, 2 * CS, "contiguous host clusters merge");
    assert!(disk.check().unwrap().is_clean());
}

#[test]
fn every_refcount_width_checks_clean() {
    for order in 0..=6 {
        let mut img = Image::new(3).data(0, 1).data(1, 2);
        img.refcount_order = order;
        let disk = open(img.build(), ParseMode::Strict).unwrap();
        let report = disk.check().unwrap();
        assert!(report.is_clean(), "order {order}: {:?}", report.errors);
        assert_eq!(report.image_end_offset, Some(7 * CS));
        assert_eq!(report.allocated_clusters, 2);
    }
}

#[test]
fn misaligned_l2_entry_is_a_strict_error_naming_table_and_entry() {
    let img = Image::new(3).data(0, 1).entry(3, COPIED | (5 * CS + 512));
    let disk = open(img.build(), ParseMode::Strict).unwrap();
    let err = disk.map(0, 1 << 20).unwrap_err().to_string();
    assert!(
        err.contains("img.qcow2: L2 table at 0x4000: entry 3 points to a misaligned"),
        "{err}"
    );
}

#[test]
fn entry_into_the_refcount_block_is_unreadable_in_salvage() {
    let img = Image::new(3).data(0, 1).entry(1, COPIED | REFBLOCK);
    let disk = open(img.build(), ParseMode::Salvage).unwrap();
    let map = disk.map(0, 2 * CS).unwrap();
    assert_eq!(map[0].kind.name(), "data");
    assert!(
        matches!(&map[1].kind, ExtentKind::Unreadable { reason } if reason.contains("refcount block")),
        "{map:?}"
    );
    let findings = disk.findings();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].offset, L2);
    let mut buf = vec![0u8; CS as usize];
    assert!(disk.read_at(&mut buf, CS).is_err());
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == 1));
}

#[test]
fn l1_entry_past_eof_makes_its_whole_span_unreadable_in_salvage() {
    let mut bytes = Image::new(3).data(0, 1).build();
    bytes[L1 as usize..L1 as usize + 8].copy_from_slice(&(COPIED | (1u64 << 30)).to_be_bytes());
    let disk = open(bytes.clone(), ParseMode::Salvage).unwrap();
    let map = disk.map(0, 1 << 20).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map[0].kind.name(), "unreadable");
    let disk = open(bytes, ParseMode::Strict).unwrap();
    let err = disk.map(0, 1).unwrap_err().to_string();
    assert!(
        err.contains("L1 table at 0x3000: entry 0 points past end of file"),
        "{err}"
    );
}

#[test]
fn broken_compressed_cluster_is_an_error_never_data() {
    // A compressed descriptor pointing at bytes that are not a deflate stream.
    let img = Image::new(3).data(0, 0xff).entry(1, COMPRESSED | (5 * CS));
    for mode in [ParseMode::Strict, ParseMode::Salvage] {
        let disk = open(img.build(), mode).unwrap();
        let mut buf = vec![0u8; CS as usize];
        let err = disk.read_at(&mut buf, CS).unwrap_err().to_string();
        assert!(err.contains("inflate") || err.contains("deflate"), "{err}");
        assert_eq!(disk.findings().is_empty(), mode == ParseMode::Strict);
    }
}

#[test]
fn leaked_cluster_is_counted() {
    let mut bytes = Image::new(3).data(0, 1).build();
    // One more cluster with refcount 1 and nothing referencing it.
    bytes.extend_from_slice(&[0u8; CS as usize]);
    let k = bytes.len() as u64 / CS - 1;
    bytes[(REFBLOCK + k * 2 + 1) as usize] = 1;
    let report = open(bytes, ParseMode::Strict).unwrap().check().unwrap();
    assert_eq!(report.leaked_clusters, 1);
    assert!(report.errors.is_empty());
    assert_eq!(report.image_end_offset, Some((k + 1) * CS));
}

#[test]
fn reads_from_many_threads_at_once_agree() {
    let mut img = Image::new(3);
    for g in 0..64 {
        img = img.data(g, g as u8);
    }
    let disk = Arc::new(open(img.build(), ParseMode::Strict).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let disk = disk.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 3000];
                for i in 0..200u64 {
                    let offset = (i * 7919 + t * 131) % (64 * CS - 3000);
                    disk.read_at(&mut buf, offset).unwrap();
                    for (j, b) in buf.iter().enumerate() {
                        assert_eq!(u64::from(*b), (offset + j as u64) / CS);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn snapshot_table_entry_with_extra_data_is_parsed() {
    let mut entry = Vec::new();
    entry.extend_from_slice(&0x30000u64.to_be_bytes()); // L1 offset
    entry.extend_from_slice(&2u32.to_be_bytes()); // L1 size
    entry.extend_from_slice(&1u16.to_be_bytes()); // id length
    entry.extend_from_slice(&4u16.to_be_bytes()); // name length
    entry.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    entry.extend_from_slice(&5u32.to_be_bytes());
    entry.extend_from_slice(&77u64.to_be_bytes());
    entry.extend_from_slice(&9u32.to_be_bytes()); // 32-bit vm state size (ignored)
    entry.extend_from_slice(&24u32.to_be_bytes()); // extra data size
    entry.extend_from_slice(&(1u64 << 33).to_be_bytes()); // vm_state_size_large
    entry.extend_from_slice(&(8u64 << 20).to_be_bytes()); // disk size
    entry.extend_from_slice(&1234u64.to_be_bytes()); // icount
    entry.extend_from_slice(b"1snap");
    while entry.len() % 8 != 0 {
        entry.push(0);
    }
    let len = entry.len() as u64;
    let mut table = entry.clone();
    table.extend_from_slice(&entry);
    let source = SliceSource::new(table, "t");
    let (snaps, bytes) = snapshot::read_table(&source, 0, 2).unwrap();
    assert_eq!(bytes, 2 * len);
    assert_eq!(source.len(), 2 * len);
    let s = &snaps[1];
    assert_eq!((s.id.as_str(), s.name.as_str()), ("1", "snap"));
    assert_eq!(s.vm_state_size, 1 << 33);
    assert_eq!(s.disk_size, Some(8 << 20));
    assert_eq!(s.icount, Some(1234));
    assert_eq!(
        (s.date_sec, s.date_nsec, s.vm_clock_nsec),
        (1_700_000_000, 5, 77)
    );
    assert_eq!(snapshot::select(&snaps, "snap").unwrap().0, 0);
}

#[test]
fn absurd_snapshot_count_is_refused_before_allocating() {
    let source = SliceSource::new(vec![0u8; 4096], "t");
    let err = snapshot::read_table(&source, 0, 60_000)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Damage anywhere in the metadata never panics, never allocates without bound, and
    /// never turns an unreadable range into bytes: reads either succeed or fail cleanly.
    #[test]
    fn random_metadata_damage_never_panics(
        header_flips in proptest::collection::vec((0usize..128, proptest::prelude::any::<u8>()), 0..4),
        flips in proptest::collection::vec((0usize..5 * 4096, proptest::prelude::any::<u8>()), 1..12),
        salvage in proptest::prelude::any::<bool>(),
    ) {
        let mut img = Image::new(3).data(0, 1).entry(2, ZERO).entry(3, COMPRESSED | (6 * CS));
        img = img.data(7, 2).data(8, 3);
        let mut bytes = img.build();
        for (at, value) in header_flips.into_iter().chain(flips) {
            bytes[at] = value;
        }
        let mode = if salvage { ParseMode::Salvage } else { ParseMode::Strict };
        if let Ok(disk) = open(bytes, mode) {
            let size = disk.size().min(1 << 24);
            let _ = disk.map(0, size);
            let mut buf = vec![0u8; 64 * 1024];
            let _ = disk.read_at(&mut buf, 0);
            let _ = disk.check();
            let _ = disk.info();
            let _ = disk.findings();
        }
    }
}

#[test]
fn misaligned_refcount_table_is_strict_error_but_salvage_still_reads() {
    let mut bytes = Image::new(3).data(0, 0x42).build();
    bytes[48..56].copy_from_slice(&(REFTABLE + 8).to_be_bytes());
    let err = open(bytes.clone(), ParseMode::Strict)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("refcount table at 0x1008: offset is not aligned"),
        "{err}"
    );
    let disk = open(bytes, ParseMode::Salvage).unwrap();
    let mut buf = vec![0u8; CS as usize];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == 0x42));
    assert_eq!(disk.findings().len(), 1);
}

#[test]
fn info_names_known_and_unknown_feature_bits() {
    let mut name = vec![1u8, 5];
    name.extend_from_slice(b"shiny");
    name.resize(48, 0);
    let mut bytes = Image::new(3)
        .extension(0x6803_f857, &name)
        .data(0, 1)
        .build();
    // dirty + corrupt incompatible bits, lazy refcounts + unknown compatible bits 5 and 7.
    bytes[72..80].copy_from_slice(&3u64.to_be_bytes());
    bytes[80..88].copy_from_slice(&((1u64 << 5) | (1 << 7) | 1).to_be_bytes());
    let disk = open(bytes, ParseMode::Strict).unwrap();
    let info = disk.info();
    assert_eq!(
        info.features,
        vec![
            "dirty",
            "corrupt",
            "lazy_refcounts",
            "compatible:shiny",
            "compatible:bit 7"
        ]
    );
    assert_eq!(info.format_version.as_deref(), Some("3"));
    assert_eq!(info.details["refcount_bits"], 16);
    assert_eq!(disk.findings().len(), 2, "dirty and corrupt are findings");
}

#[test]
fn l2_table_cut_by_the_end_of_the_file_keeps_its_present_entries_in_salvage() {
    let mut bytes = Image::new(3).entry(0, ZERO).build();
    bytes.truncate((L2 + 16) as usize);
    let disk = open(bytes.clone(), ParseMode::Salvage).unwrap();
    let map = disk.map(0, 1 << 20).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| (e.offset, e.kind.name())).collect();
    assert_eq!(
        kinds,
        vec![(0, "zero"), (CS, "unallocated"), (2 * CS, "unreadable")]
    );
    assert_eq!(map[2].end(), 1 << 20);
    let err = open(bytes, ParseMode::Strict)
        .unwrap()
        .map(0, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("L1 table at 0x3000: entry 0 points past end of file"),
        "{err}"
    );
}
