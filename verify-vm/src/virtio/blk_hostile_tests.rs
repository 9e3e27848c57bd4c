//! virtio-blk against a hostile or broken driver: chains that break the virtio rules,
//! buffers outside guest memory, loops, garbage indirect tables, broken rings, and random
//! descriptor tables. None may panic; each gets the status the spec asks for when there is
//! a status byte to write, and the chain is consumed.

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::test_util::*;
use crate::virtio::{BlkAccess, VirtioBlk, VirtioDevice};

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
fn header_shorter_than_16_bytes_is_ioerr() {
    let mem = guest_memory();
    let mut blk = VirtioBlk::new(disk(), BlkAccess::ReadOnly);
    let descs = linked(
        &[desc(HEADER_ADDR, 12, false), desc(STATUS_ADDR, 1, true)],
        0,
    );
    let (status, used) = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(blk.stats().snapshot().malformed, 1);
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
