//! virtio-blk behaviour tests: the device is driven through virtio-queue's MockSplitQueue
//! (the driver side) over a small guest memory, with well-formed and hostile chains.

use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::test_util::*;
use crate::virtio::{BlkAccess, VirtioBlk, VirtioDevice, BLK_ID};

const DISK_SIZE: usize = 64 * 1024;
const OVERLAY: BlkAccess = BlkAccess::Overlay { cap_bytes: 1 << 20 };

fn disk() -> Arc<MemDisk> {
    Arc::new(MemDisk::new(pattern(DISK_SIZE)))
}

/// Puts `descs` in a fresh queue, lets the device serve it, and returns what
/// process_queue said and the used ring.
fn serve(
    blk: &mut VirtioBlk,
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (Result<bool, virtio_queue::Error>, Vec<(u32, u32)>) {
    let mock = MockSplitQueue::new(mem, TEST_QUEUE_SIZE);
    mock.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = mock.create_queue().unwrap();
    let result = blk.process_queue(0, &mut queue, mem);
    (result, used_entries(&mock))
}

/// Serves one request and returns (status byte, used ring).
fn request(
    blk: &mut VirtioBlk,
    mem: &GuestMemoryMmap,
    request_type: u32,
    sector: u64,
    descs: &[RawDescriptor],
) -> (u8, Vec<(u32, u32)>) {
    write_header(mem, HEADER_ADDR, request_type, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let (result, used) = serve(blk, mem, descs);
    assert!(result.unwrap(), "a served chain needs an interrupt");
    (status_byte(mem), used)
}

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

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
    assert_eq!(stats.failed_ranges[0].offset, 4096);
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
fn chain_of_one_descriptor_is_consumed_without_a_status() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let (status, used) = request(
        &mut blk,
        &mem,
        VIRTIO_BLK_T_IN,
        0,
        &[desc(HEADER_ADDR, 16, false)],
    );
    assert_eq!(status, 0xff, "no status byte to write");
    assert_eq!(used, vec![(0, 0)]);
    assert_eq!(blk.stats().snapshot().malformed, 1);
}

#[test]
fn write_only_header_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[
            desc(HEADER_ADDR, 16, true),
            desc(DATA_ADDR, 512, true),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(used.len(), 1);
}

#[test]
fn read_only_or_empty_status_descriptor_gets_no_status() {
    for status_desc in [desc(STATUS_ADDR, 1, false), desc(STATUS_ADDR, 0, true)] {
        let mem = guest_memory();
        let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
        let descs = linked(
            &[
                desc(HEADER_ADDR, 16, false),
                desc(DATA_ADDR, 512, true),
                status_desc,
            ],
            0,
        );
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA_ADDR))
            .unwrap();
        let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
        assert_eq!(status, 0xff);
        assert_eq!(used, vec![(0, 0)]);
        assert_eq!(
            guest_bytes(&mem, DATA_ADDR, 512),
            vec![0x5a; 512],
            "nothing served"
        );
    }
}

#[test]
fn readable_descriptor_after_writable_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, 512, true),
            desc(DATA_ADDR + 512, 512, false),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    );
    let (status, _) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn data_buffer_outside_guest_memory_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), OVERLAY);
    for (addr, len) in [
        (GUEST_MEMORY_SIZE - 256, 512),
        (GUEST_MEMORY_SIZE + 0x1000, 512),
        (u64::MAX - 255, 512),
    ] {
        for request_type in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            let write = request_type == VIRTIO_BLK_T_IN;
            let descs = linked(
                &[
                    desc(HEADER_ADDR, 16, false),
                    desc(addr, len, write),
                    desc(STATUS_ADDR, 1, true),
                ],
                0,
            );
            let (status, _) = request(&mut blk, &mem, request_type, 0, &descs);
            assert_eq!(
                status, VIRTIO_BLK_S_IOERR as u8,
                "{addr:#x} type {request_type}"
            );
        }
    }
}

#[test]
fn status_outside_guest_memory_is_consumed_silently() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, 512, true),
            desc(u64::MAX, 1, true),
        ],
        0,
    );
    write_header(&mem, HEADER_ADDR, VIRTIO_BLK_T_IN, 0);
    let (result, used) = serve(&mut blk, &mem, &descs);
    assert!(result.unwrap());
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn lengths_overflowing_u32_end_the_chain_without_a_status() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, u32::MAX - 8, true),
            desc(DATA_ADDR, 512, true),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(status, 0xff);
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn descriptor_loop_is_consumed_without_a_status() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HEADER_ADDR, 16, next, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            DATA_ADDR,
            512,
            next | VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(status, 0xff);
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn next_index_past_the_table_is_consumed_without_a_status() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        HEADER_ADDR,
        16,
        VRING_DESC_F_NEXT as u16,
        TEST_QUEUE_SIZE + 3,
    ))];
    let (_, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(used, vec![(0, 0)]);
}

/// An indirect descriptor pointing at a table of `entries` written at `table`.
fn indirect(mem: &GuestMemoryMmap, table: u64, entries: &[RawDescriptor]) -> RawDescriptor {
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    RawDescriptor::from(SplitDescriptor::new(
        table,
        16 * entries.len() as u32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ))
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
fn garbage_indirect_tables_are_consumed_without_panic() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let flags = VRING_DESC_F_INDIRECT as u16;
    let heads = [
        // Length not a multiple of 16.
        SplitDescriptor::new(0x8000, 17, flags, 0),
        // Table outside guest memory.
        SplitDescriptor::new(GUEST_MEMORY_SIZE, 64, flags, 0),
        SplitDescriptor::new(u64::MAX - 15, 16, flags, 0),
        // Empty table.
        SplitDescriptor::new(0x8000, 0, flags, 0),
    ];
    for head in heads {
        let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &[head.into()]);
        assert_eq!(status, 0xff);
        assert_eq!(used, vec![(0, 0)]);
    }
    // A table whose entry is itself indirect (§2.7.5.3.1 forbids nesting).
    let nested = indirect(
        &mem,
        0x9000,
        &[RawDescriptor::from(SplitDescriptor::new(
            0x8000, 32, flags, 0,
        ))],
    );
    let (_, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &[nested]);
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn chain_with_more_descriptors_than_seg_max_is_consumed_without_a_status() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let mut entries = vec![desc(HEADER_ADDR, 16, false)];
    entries.extend((0..200).map(|i| desc(DATA_ADDR + 512 * i, 512, true)));
    entries.push(desc(STATUS_ADDR, 1, true));
    let head = indirect(&mem, 0x8000, &linked(&entries, 0));
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &[head]);
    assert_eq!(status, 0xff);
    assert_eq!(used, vec![(0, 0)]);
    assert_eq!(blk.stats().snapshot().reads, 0);
}

#[test]
fn head_index_past_the_queue_breaks_the_queue() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    mock.avail()
        .ring()
        .ref_at(0)
        .unwrap()
        .store(TEST_QUEUE_SIZE + 1);
    mock.avail().idx().store(1);
    let mut queue: Queue = mock.create_queue().unwrap();
    assert!(blk.process_queue(0, &mut queue, &mem).is_err());
}

#[test]
fn avail_index_too_far_ahead_breaks_the_queue() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    mock.avail().idx().store(TEST_QUEUE_SIZE + 1);
    let mut queue: Queue = mock.create_queue().unwrap();
    assert!(blk.process_queue(0, &mut queue, &mem).is_err());
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

fn arbitrary_descriptor() -> impl Strategy<Value = RawDescriptor> {
    let addr = prop_oneof![
        0u64..GUEST_MEMORY_SIZE,
        Just(HEADER_ADDR),
        Just(DATA_ADDR),
        Just(STATUS_ADDR),
        any::<u64>(),
    ];
    let len = prop_oneof![0u32..0x2000, Just(16), Just(1), Just(512), any::<u32>()];
    let flags = 0u16..8;
    let next = prop_oneof![0u16..TEST_QUEUE_SIZE, any::<u16>()];
    (addr, len, flags, next)
        .prop_map(|(a, l, f, n)| RawDescriptor::from(SplitDescriptor::new(a, l, f, n)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the driver puts in the table, rings and header, the device neither panics
    /// nor uses more chains in one pass than the queue holds.
    #[test]
    fn random_descriptor_tables_never_panic(
        table in proptest::collection::vec(arbitrary_descriptor(), TEST_QUEUE_SIZE as usize),
        heads in proptest::collection::vec(any::<u16>(), TEST_QUEUE_SIZE as usize),
        avail_idx in prop_oneof![0u16..=TEST_QUEUE_SIZE, any::<u16>()],
        request_type in prop_oneof![0u32..16, any::<u32>()],
        sector in prop_oneof![0u64..200, any::<u64>()],
        read_only in any::<bool>(),
    ) {
        let mem = guest_memory();
        let access = if read_only { BlkAccess::ReadOnly } else { OVERLAY };
        let mut blk = VirtioBlk::new(disk(), access);
        let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
        for (i, d) in table.iter().enumerate() {
            mock.desc_table().store(i as u16, *d).unwrap();
        }
        for (i, h) in heads.iter().enumerate() {
            mock.avail().ring().ref_at(i).unwrap().store(*h % (TEST_QUEUE_SIZE + 2));
        }
        mock.avail().idx().store(avail_idx);
        write_header(&mem, HEADER_ADDR, request_type, sector);
        let mut queue: Queue = mock.create_queue().unwrap();
        let _ = blk.process_queue(0, &mut queue, &mem);
        // The used ring itself may have been overwritten by a hostile data buffer, so the
        // device's own count is what is checked.
        prop_assert!(queue.next_used() <= TEST_QUEUE_SIZE);
    }
}
