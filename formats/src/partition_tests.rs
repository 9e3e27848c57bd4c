use std::sync::Arc;

use super::*;
use crate::raw::RawDisk;
use crate::source::SliceSource;

const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const LINUX_BYTES: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

fn disk(bytes: Vec<u8>) -> RawDisk {
    RawDisk::new(Arc::new(SliceSource::new(bytes, "test.raw")))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn mbr_entry(b: &mut [u8], sector_base: usize, slot: usize, kind: u8, start: u32, len: u32) {
    let e = sector_base + 446 + 16 * slot;
    b[e + 4] = kind;
    put_u32(b, e + 8, start);
    put_u32(b, e + 12, len);
    b[sector_base + 510] = 0x55;
    b[sector_base + 511] = 0xAA;
}

/// A disk of `sectors` × `ss` bytes with a protective MBR and primary + backup GPT
/// holding one Linux partition over LBAs `first..=last` named "root".
fn gpt_disk(ss: usize, sectors: u64, first: u64, last: u64) -> Vec<u8> {
    let mut b = vec![0u8; ss * sectors as usize];
    mbr_entry(&mut b, 0, 0, MBR_PROTECTIVE, 1, (sectors - 1) as u32);
    let mut entries = vec![0u8; 128 * 128];
    entries[..16].copy_from_slice(&LINUX_BYTES);
    for (i, byte) in entries[16..32].iter_mut().enumerate() {
        *byte = i as u8; // the unique GUID: bytes 00..0f
    }
    put_u64(&mut entries, 32, first);
    put_u64(&mut entries, 40, last);
    for (i, c) in "root".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);
    let array_sectors = (entries.len() / ss) as u64;
    let last_lba = sectors - 1;
    for (my, alt, array_lba) in [(1, last_lba, 2), (last_lba, 1, last_lba - array_sectors)] {
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        put_u32(&mut h, 8, 0x0001_0000);
        put_u32(&mut h, 12, 92);
        put_u64(&mut h, 24, my);
        put_u64(&mut h, 32, alt);
        put_u64(&mut h, 72, array_lba);
        put_u32(&mut h, 80, 128);
        put_u32(&mut h, 84, 128);
        put_u32(&mut h, 88, entries_crc);
        let crc = crc32fast::hash(&h);
        put_u32(&mut h, 16, crc);
        let at = my as usize * ss;
        b[at..at + 92].copy_from_slice(&h);
        let at = array_lba as usize * ss;
        b[at..at + entries.len()].copy_from_slice(&entries);
    }
    b
}

#[test]
fn primary_gpt_is_read() {
    let table = read_partitions(&disk(gpt_disk(512, 200, 40, 159)))
        .expect("reads")
        .expect("a table");
    assert_eq!(table.scheme, Scheme::GptPrimary);
    assert_eq!(table.sector_size, 512);
    assert_eq!(
        table.partitions,
        vec![Partition {
            index: 1,
            start: 40 * 512,
            len: 120 * 512,
            type_id: LINUX.into(),
            description: "Linux filesystem".into(),
            name: "root".into(),
            // the GUID's first three fields are little-endian on disk; Linux prints the
            // PARTUUID in lower case
            uuid: Some("03020100-0504-0706-0809-0a0b0c0d0e0f".into()),
        }]
    );
    assert!(table.findings.is_empty(), "{:?}", table.findings);
}

#[test]
fn damaged_primary_header_falls_back_to_backup() {
    let mut b = gpt_disk(512, 200, 40, 159);
    b[512 + 40] ^= 0xFF; // first usable LBA: header CRC no longer matches
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.scheme, Scheme::GptBackup);
    assert_eq!(table.partitions.len(), 1);
    assert_eq!(table.partitions[0].start, 40 * 512);
    assert!(table.findings.iter().any(|f| f.contains("CRC32 mismatch")));
}

#[test]
fn damaged_primary_entries_fall_back_to_backup() {
    let mut b = gpt_disk(512, 200, 40, 159);
    b[2 * 512 + 32] ^= 0x01; // entry 0 first LBA in the primary array
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.scheme, Scheme::GptBackup);
    assert_eq!(table.partitions[0].start, 40 * 512);
}

#[test]
fn both_gpts_damaged_gives_an_empty_table_with_findings() {
    let mut b = gpt_disk(512, 200, 40, 159);
    b[512 + 40] ^= 0xFF;
    b[199 * 512 + 40] ^= 0xFF;
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.scheme, Scheme::Mbr);
    assert!(table.partitions.is_empty());
    assert!(table.findings.iter().any(|f| f.contains("protective MBR")));
}

#[test]
fn gpt_with_4k_sectors_is_found() {
    let table = read_partitions(&disk(gpt_disk(4096, 64, 10, 49)))
        .expect("reads")
        .expect("a table");
    assert_eq!(table.sector_size, 4096);
    assert_eq!(table.partitions[0].start, 10 * 4096);
    assert_eq!(table.partitions[0].len, 40 * 4096);
}

#[test]
fn mbr_primaries_and_logicals_are_read() {
    let mut b = vec![0u8; 512 * 400];
    mbr_entry(&mut b, 0, 0, 0x83, 2, 50);
    mbr_entry(&mut b, 0, 1, 0x05, 100, 300);
    // EBR 1 at sector 100: logical at +2 (len 20), next EBR at base+50.
    mbr_entry(&mut b, 100 * 512, 0, 0x83, 2, 20);
    mbr_entry(&mut b, 100 * 512, 1, 0x05, 50, 100);
    // EBR 2 at sector 150: logical at +4 (len 30), end of chain.
    mbr_entry(&mut b, 150 * 512, 0, 0x82, 4, 30);
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.scheme, Scheme::Mbr);
    let got: Vec<(u32, u64, u64, &str)> = table
        .partitions
        .iter()
        .map(|p| (p.index, p.start / 512, p.len / 512, p.type_id.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 2, 50, "0x83"),
            (2, 100, 300, "0x05"),
            (5, 102, 20, "0x83"),
            (6, 154, 30, "0x82"),
        ]
    );
}

#[test]
fn an_ebr_loop_ends() {
    let mut b = vec![0u8; 512 * 400];
    mbr_entry(&mut b, 0, 0, 0x05, 100, 300);
    mbr_entry(&mut b, 100 * 512, 0, 0x83, 2, 20);
    mbr_entry(&mut b, 100 * 512, 1, 0x05, 0, 100); // points back at itself (start 0 ends)
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.partitions.len(), 2);
}

#[test]
fn partition_past_the_end_is_cut() {
    let mut b = vec![0u8; 512 * 100];
    mbr_entry(&mut b, 0, 0, 0x83, 50, 1000);
    mbr_entry(&mut b, 0, 1, 0x83, 5000, 10);
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert_eq!(table.partitions.len(), 1);
    assert_eq!(table.partitions[0].len, 50 * 512);
    assert_eq!(table.findings.len(), 2);
}

#[test]
fn no_signature_means_no_table() {
    assert!(read_partitions(&disk(vec![0u8; 512 * 10]))
        .expect("reads")
        .is_none());
}

#[test]
fn a_whole_disk_ntfs_or_fat_boot_sector_is_not_an_mbr() {
    // NTFS: its boot code and BPB sit where an MBR's entries would
    let mut ntfs = vec![0u8; 512 * 100];
    ntfs[..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
    ntfs[3..11].copy_from_slice(b"NTFS    ");
    mbr_entry(&mut ntfs, 0, 0, 0x83, 60_000, 10); // boot code that looks like an entry
    ntfs[510] = 0x55;
    ntfs[511] = 0xAA;
    assert!(read_partitions(&disk(ntfs)).expect("reads").is_none());

    // FAT16 with a plausible BPB (512-byte sectors, 4 sectors a cluster)
    let mut fat = vec![0u8; 512 * 100];
    fat[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    fat[11..13].copy_from_slice(&512u16.to_le_bytes());
    fat[13] = 4;
    fat[0x36..0x3b].copy_from_slice(b"FAT16");
    fat[510] = 0x55;
    fat[511] = 0xAA;
    assert!(read_partitions(&disk(fat.clone()))
        .expect("reads")
        .is_none());

    // the same bytes with an implausible BPB stay an MBR (a boot loader's text)
    fat[13] = 3;
    mbr_entry(&mut fat, 0, 0, 0x83, 2, 50);
    let table = read_partitions(&disk(fat))
        .expect("reads")
        .expect("a table");
    assert_eq!(table.partitions.len(), 1);
}

#[test]
fn mbr_partuuids_are_the_disk_signature_and_the_index() {
    let mut b = vec![0u8; 512 * 400];
    mbr_entry(&mut b, 0, 0, 0x83, 2, 50);
    mbr_entry(&mut b, 0, 1, 0x05, 100, 300);
    mbr_entry(&mut b, 100 * 512, 0, 0x83, 2, 20);
    put_u32(&mut b, 440, 0x1234_abcd);
    let table = read_partitions(&disk(b.clone()))
        .expect("reads")
        .expect("a table");
    let uuids: Vec<Option<&str>> = table.partitions.iter().map(|p| p.uuid.as_deref()).collect();
    assert_eq!(
        uuids,
        [
            Some("1234abcd-01"),
            Some("1234abcd-02"),
            Some("1234abcd-05")
        ]
    );

    put_u32(&mut b, 440, 0);
    let table = read_partitions(&disk(b)).expect("reads").expect("a table");
    assert!(table.partitions.iter().all(|p| p.uuid.is_none()));
}
