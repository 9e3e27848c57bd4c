//! virtio-blk request tests: reads, writes, flush, GET_ID and their error statuses, with
//! the device driven through virtio-queue's MockSplitQueue (the driver side) over a small
//! guest memory.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::test_util::*;
use crate::virtio::{BlkAccess, VirtioBlk, BLK_ID};

#[test]
fn read_returns_the_disk_bytes() {
    let (mem, disk) = (guest_memory(), disk());
    let mut blk = VirtioBlk::new(disk.clone(), BlkAccess::ReadOnly);
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        8,
        &request_chain(8192, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 8193)]);
    assert_eq!(
        guest_bytes(&mem, DATA_ADDR, 8192),
        &disk.bytes()[4096..12288]
    );
    let stats = blk.stats().snapshot();
    assert_eq!((stats.reads, stats.bytes_read), (1, 8192));
}

#[test]
fn read_over_many_segments_and_odd_framing_returns_the_disk_bytes() {
    // Header split in two, data in three pieces, status sharing the last data buffer
    // (§2.6.4: the device must not depend on the framing).
    let (mem, disk) = (guest_memory(), disk());
    let mut blk = VirtioBlk::new(disk.clone(), BlkAccess::ReadOnly);
    let descs = linked(
        &[
            desc(HEADER_ADDR, 10, false),
            desc(HEADER_ADDR + 10, 6, false),
            desc(DATA_ADDR, 512, true),
            desc(DATA_ADDR + 0x1000, 1000, true),
            desc(DATA_ADDR + 0x2000, 24, true),
            desc(STATUS_ADDR - 512, 513, true),
        ],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 1, &descs);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 2049)]);
    let expected = &disk.bytes()[512..2560];
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 512), &expected[..512]);
    assert_eq!(
        guest_bytes(&mem, DATA_ADDR + 0x1000, 1000),
        &expected[512..1512]
    );
    assert_eq!(
        guest_bytes(&mem, DATA_ADDR + 0x2000, 24),
        &expected[1512..1536]
    );
    assert_eq!(guest_bytes(&mem, STATUS_ADDR - 512, 512), &expected[1536..]);
}

#[test]
fn unreadable_disk_range_is_ioerr_and_recorded() {
    let mem = guest_memory();
    let damaged = MemDisk::new(pattern(DISK_SIZE)).with_unreadable(0x2000, 0x1000);
    let mut blk = VirtioBlk::new(Arc::new(damaged), BlkAccess::ReadOnly);
    mem.write_slice(&[0x5a; 8192], GuestAddress(DATA_ADDR))
        .unwrap();
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        8,
        &request_chain(8192, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(used.len(), 1);
    // Never zeros: the guest buffer is left as it was.
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 8192), vec![0x5a; 8192]);
    let stats = blk.stats().snapshot();
    assert_eq!((stats.reads, stats.io_errors), (0, 1));
    assert_eq!(stats.failed_ranges.len(), 1);
    // The range the disk named, not the whole request.
    let failed = &stats.failed_ranges[0];
    assert_eq!(
        (failed.offset, failed.len, failed.op),
        (0x2000, 0x1000, "read")
    );
    assert!(stats.failed_ranges[0].reason.contains("unreadable"));
}

#[test]
fn read_past_the_end_or_with_overflowing_sector_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let last_sector = (DISK_SIZE / 512) as u64;
    for sector in [last_sector, last_sector - 1, u64::MAX / 512, u64::MAX] {
        let (status, _) = request(
            &mut blk,
            &mem,
            VIRTIO_BLK_T_IN,
            sector,
            &request_chain(1024, true),
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
    }
    assert_eq!(blk.stats().snapshot().io_errors, 4);
}

#[test]
fn read_of_a_partial_sector_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        0,
        &request_chain(100, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn overlay_write_reads_back_and_leaves_the_disk_unchanged() {
    let (mem, disk) = (guest_memory(), disk());
    let before = disk.bytes().to_vec();
    let mut blk = VirtioBlk::new(disk.clone(), OVERLAY);
    mem.write_slice(&[0xc3; 1024], GuestAddress(DATA_ADDR))
        .unwrap();
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_OUT,
        3,
        &request_chain(1024, false),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 1)]);
    mem.write_slice(&[0; 4096], GuestAddress(DATA_ADDR))
        .unwrap();
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        0,
        &request_chain(4096, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let mut expected = before.clone();
    expected[1536..2560].fill(0xc3);
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 4096), &expected[..4096]);
    assert_eq!(disk.bytes(), &before[..]);
    let stats = blk.stats().snapshot();
    assert_eq!((stats.writes, stats.bytes_written), (1, 1024));
}

#[test]
fn read_only_device_refuses_writes_with_ioerr() {
    let (mem, disk) = (guest_memory(), disk());
    let mut blk = VirtioBlk::new(disk.clone(), BlkAccess::ReadOnly);
    mem.write_slice(&[0xc3; 512], GuestAddress(DATA_ADDR))
        .unwrap();
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_OUT,
        0,
        &request_chain(512, false),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        0,
        &request_chain(512, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 512), &disk.bytes()[..512]);
    let stats = blk.stats().snapshot();
    assert_eq!(
        (stats.writes_refused, stats.io_errors, stats.writes),
        (1, 1, 0)
    );
}

#[test]
fn write_beyond_the_overlay_cap_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::Overlay { cap_bytes: 4096 });
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_OUT,
        0,
        &request_chain(4096, false),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_OUT,
        8,
        &request_chain(512, false),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    let stats = blk.stats().snapshot();
    assert_eq!(stats.failed_ranges[0].op, "write");
}

#[test]
fn write_past_the_end_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), OVERLAY);
    let sector = (DISK_SIZE / 512) as u64;
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_OUT,
        sector,
        &request_chain(512, false),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn flush_succeeds() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[desc(HEADER_ADDR, 16, false), desc(STATUS_ADDR, 1, true)],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_FLUSH, 0, &descs);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 1)]);
}

#[test]
fn get_id_returns_the_nul_padded_id() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_GET_ID,
        0,
        &request_chain(20, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 21)]);
    let mut expected = BLK_ID.as_bytes().to_vec();
    expected.resize(20, 0);
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 20), expected);
}

#[test]
fn unknown_request_type_is_unsupp() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), OVERLAY);
    for request_type in [2, 11, 13, 0xdead_beef] {
        let (status, _) = request(&mut blk, &mem, request_type, 0, &request_chain(512, true));
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8, "type {request_type}");
    }
    assert_eq!(blk.stats().snapshot().unsupported, 4);
}

#[test]
fn indirect_request_returns_the_disk_bytes() {
    let (mem, disk) = (guest_memory(), disk());
    let mut blk = VirtioBlk::new(disk.clone(), BlkAccess::ReadOnly);
    let table = linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, 512, true),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    );
    let head = indirect(&mem, 0x8000, &table);
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 2, &[head]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 513)]);
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 512), &disk.bytes()[1024..1536]);
}

#[test]
fn several_chains_are_served_in_one_pass() {
    let (mem, disk) = (guest_memory(), disk());
    let mut blk = VirtioBlk::new(disk.clone(), BlkAccess::ReadOnly);
    write_header(&mem, HEADER_ADDR, VIRTIO_BLK_T_IN, 0);
    write_header(&mem, HEADER_ADDR + 16, VIRTIO_BLK_T_IN, 4);
    let mut descs = linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, 512, true),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    );
    descs.extend(linked(
        &[
            desc(HEADER_ADDR + 16, 16, false),
            desc(DATA_ADDR + 512, 512, true),
            desc(STATUS_ADDR + 1, 1, true),
        ],
        3,
    ));
    let (result, used) = serve(&mut blk, &mem, &descs);
    assert!(result.unwrap());
    assert_eq!(used, vec![(0, 513), (3, 513)]);
    assert_eq!(
        guest_bytes(&mem, DATA_ADDR + 512, 512),
        &disk.bytes()[2048..2560]
    );
}

#[test]
fn empty_queue_needs_no_interrupt() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let (result, used) = serve(&mut blk, &mem, &[]);
    assert!(!result.unwrap());
    assert!(used.is_empty());
}

#[test]
fn get_id_into_a_short_buffer_writes_what_fits() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    mem.write_slice(&[0xee; 8], GuestAddress(DATA_ADDR))
        .unwrap();
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_GET_ID,
        0,
        &request_chain(5, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 6)]);
    assert_eq!(guest_bytes(&mem, DATA_ADDR, 8), b"vdr-e\xee\xee\xee");
}

#[test]
fn trailing_partial_sector_is_not_exposed() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(
        Arc::new(MemDisk::new(pattern(4096 + 100))),
        BlkAccess::ReadOnly,
    );
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        7,
        &request_chain(512, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let (status, _) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        8,
        &request_chain(512, true),
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn read_without_data_buffers_succeeds() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[desc(HEADER_ADDR, 16, false), desc(STATUS_ADDR, 1, true)],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 3, &descs);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, vec![(0, 1)]);
}
