//! virtio-mmio transport tests: a driver written against the register layout of virtio 1.1
//! §4.2.2 (what Linux's virtio_mmio.c does at probe time), plus drivers that get it wrong.

use std::sync::Arc;

use proptest::prelude::*;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::MmioDevice;
use crate::virtio::test_util::*;
use crate::virtio::{BlkAccess, VirtioBlk, VirtioMmio, QUEUE_MAX_SIZE};

type Device = VirtioMmio<VirtioBlk, GuestMemoryMmap>;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const DISK_SIZE: usize = 64 * 1024;

fn read32(dev: &mut Device, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    dev.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write32(dev: &mut Device, offset: u32, value: u32) {
    dev.write(u64::from(offset), &value.to_le_bytes());
}

struct Rig {
    mem: GuestMemoryMmap,
    disk: Arc<MemDisk>,
    irq: Arc<CountingIrq>,
    dev: Device,
}

fn rig(access: BlkAccess) -> Rig {
    let mem = guest_memory();
    let disk = Arc::new(MemDisk::new(pattern(DISK_SIZE)));
    let (irq, line) = counting_irq();
    let dev = VirtioMmio::new(VirtioBlk::new(disk.clone(), access), mem.clone(), line);
    Rig {
        mem,
        disk,
        irq,
        dev,
    }
}

fn device_features(dev: &mut Device) -> u64 {
    write32(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = read32(dev, VIRTIO_MMIO_DEVICE_FEATURES);
    write32(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = read32(dev, VIRTIO_MMIO_DEVICE_FEATURES);
    u64::from(high) << 32 | u64::from(low)
}

/// §3.1.1 steps 1-6; returns the status read back after FEATURES_OK.
fn negotiate(dev: &mut Device, features: u64) -> u32 {
    write32(dev, VIRTIO_MMIO_STATUS, 0);
    write32(dev, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        dev,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write32(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(dev, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write32(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(dev, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write32(
        dev,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    read32(dev, VIRTIO_MMIO_STATUS)
}

fn set_queue(dev: &mut Device, num: u32, desc: u64, avail: u64, used: u64) {
    write32(dev, VIRTIO_MMIO_QUEUE_SEL, 0);
    write32(dev, VIRTIO_MMIO_QUEUE_NUM, num);
    for (low, value) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
        (VIRTIO_MMIO_QUEUE_USED_LOW, used),
    ] {
        write32(dev, low, value as u32);
        write32(dev, low + 4, (value >> 32) as u32);
    }
    write32(dev, VIRTIO_MMIO_QUEUE_READY, 1);
}

fn driver_ok(dev: &mut Device) {
    let status = read32(dev, VIRTIO_MMIO_STATUS);
    write32(dev, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
}

/// The whole bring-up with the mock queue's rings.
fn bring_up(rig: &mut Rig, mock: &MockSplitQueue<GuestMemoryMmap>) {
    let features = device_features(&mut rig.dev);
    assert_ne!(
        negotiate(&mut rig.dev, features) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    let (d, a, u) = (
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    );
    set_queue(&mut rig.dev, u32::from(TEST_QUEUE_SIZE), d, a, u);
    driver_ok(&mut rig.dev);
}

/// Queues a one-sector read of sector 0.
fn queue_read(rig: &Rig, mock: &MockSplitQueue<GuestMemoryMmap>) {
    write_header(&rig.mem, HEADER_ADDR, VIRTIO_BLK_T_IN, 0);
    mock.add_desc_chains(&request_chain(512, true), 0).unwrap();
}

#[test]
fn registers_identify_a_version_2_block_device() {
    let mut rig = rig(BlkAccess::ReadOnly);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_DEVICE_ID), 2);
    assert_ne!(read32(&mut rig.dev, VIRTIO_MMIO_VENDOR_ID), 0);
    assert_eq!(
        read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_MAX_SIZE)
    );
    let features = device_features(&mut rig.dev);
    assert_ne!(features & VERSION_1, 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn overlay_device_does_not_offer_read_only() {
    let mut rig = rig(BlkAccess::Overlay { cap_bytes: 1 << 20 });
    assert_eq!(device_features(&mut rig.dev) & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn config_space_holds_capacity_and_reads_zero_past_its_end() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mut capacity = [0u8; 8];
    rig.dev.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), (DISK_SIZE / 512) as u64);
    assert_eq!(read32(&mut rig.dev, 0x100), (DISK_SIZE / 512) as u32);
    assert_eq!(read32(&mut rig.dev, 0x104), 0);
    assert_eq!(read32(&mut rig.dev, 0x100 + 20), 512, "blk_size");
    let mut byte = [0xffu8; 1];
    rig.dev.read(0x100 + 1, &mut byte);
    assert_eq!(byte, [((DISK_SIZE / 512) >> 8) as u8]);
    for offset in [0x100 + 22, 0x100 + 24, 0x800, 0xffc, u64::MAX - 3] {
        let mut data = [0xffu8; 4];
        rig.dev.read(offset, &mut data);
        assert!(
            data.iter().all(|&b| b == 0) || offset == 0x100 + 22,
            "{offset:#x}"
        );
    }
    rig.dev.write(0x100, &[0xff; 8]);
    rig.dev.write(u64::MAX - 1, &[0xff; 8]);
    assert_eq!(
        read32(&mut rig.dev, 0x100),
        (DISK_SIZE / 512) as u32,
        "config is read-only"
    );
}

#[test]
fn narrow_wide_and_unaligned_register_accesses_read_zero_and_are_ignored() {
    let mut rig = rig(BlkAccess::ReadOnly);
    for len in [1usize, 2, 8] {
        let mut data = vec![0xffu8; len];
        rig.dev.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut data);
        assert!(data.iter().all(|&b| b == 0), "{len}-byte read");
    }
    let mut data = [0xffu8; 4];
    rig.dev.read(2, &mut data);
    assert_eq!(data, [0; 4], "unaligned read");
    rig.dev.write(
        u64::from(VIRTIO_MMIO_STATUS),
        &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8],
    );
    rig.dev
        .write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
    rig.dev
        .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn read_request_is_served_and_raises_the_used_buffer_interrupt() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY), 1);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(status_byte(&rig.mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used_entries(&mock), vec![(0, 513)]);
    let mut data = vec![0u8; 512];
    rig.mem
        .read_slice(&mut data, GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(data, &rig.disk.bytes()[..512]);
    assert_eq!(rig.irq.count(), 1);
    assert_eq!(
        read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    write32(
        &mut rig.dev,
        VIRTIO_MMIO_INTERRUPT_ACK,
        VIRTIO_MMIO_INT_VRING,
    );
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(rig.dev.device().stats().snapshot().reads, 1);
    // A notification with nothing new raises nothing.
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(rig.irq.count(), 1);
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let offered = device_features(&mut rig.dev);
    assert_eq!(
        negotiate(&mut rig.dev, offered & !VERSION_1) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    assert_eq!(
        negotiate(&mut rig.dev, offered | 1 << 40) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    // DRIVER_OK without FEATURES_OK does not start the device.
    driver_ok(&mut rig.dev);
    assert_eq!(
        read32(&mut rig.dev, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
        0
    );
    assert_ne!(
        negotiate(&mut rig.dev, offered) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
}

#[test]
fn notify_before_driver_ok_or_queue_ready_does_nothing() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let features = device_features(&mut rig.dev);
    negotiate(&mut rig.dev, features);
    driver_ok(&mut rig.dev);
    // DRIVER_OK but the queue was never made ready.
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(used_entries(&mock).is_empty());
    assert_eq!(rig.irq.count(), 0);
}

#[test]
fn notify_of_a_missing_queue_is_ignored() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    queue_read(&rig, &mock);
    for index in [1, 7, 0x1_0000, u32::MAX] {
        write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, index);
    }
    assert!(used_entries(&mock).is_empty());
    assert_eq!(
        read32(&mut rig.dev, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_SEL, 5);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY), 0);
}

fn needs_reset(rig: &mut Rig) -> bool {
    read32(&mut rig.dev, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

#[test]
fn bad_queue_size_or_misaligned_rings_refuse_queue_ready() {
    let cases: [(u32, u64, u64, u64); 6] = [
        (0, 0, 0x200, 0x400),
        (12, 0, 0x200, 0x400),
        (512, 0, 0x2000, 0x4000),
        (0x1_0010, 0, 0x200, 0x400),
        (16, 8, 0x200, 0x400),
        (16, 0, 0x201, 0x402),
    ];
    for (num, desc, avail, used) in cases {
        let mut rig = rig(BlkAccess::ReadOnly);
        let features = device_features(&mut rig.dev);
        negotiate(&mut rig.dev, features);
        set_queue(&mut rig.dev, num, desc, avail, used);
        assert_eq!(
            read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY),
            0,
            "num {num} desc {desc:#x}"
        );
        assert!(needs_reset(&mut rig));
        assert_eq!(
            read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }
}

#[test]
fn rings_outside_guest_memory_set_needs_reset_on_notify() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let features = device_features(&mut rig.dev);
    negotiate(&mut rig.dev, features);
    set_queue(&mut rig.dev, 16, GUEST_MEMORY_SIZE, 0x200, !3);
    driver_ok(&mut rig.dev);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY), 1);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(needs_reset(&mut rig));
    assert_eq!(rig.irq.count(), 1);
    // Once broken, notifications are ignored until the driver resets the device.
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(rig.irq.count(), 1);
    write32(&mut rig.dev, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn broken_avail_ring_sets_needs_reset() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    mock.avail().idx().store(TEST_QUEUE_SIZE + 5);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(needs_reset(&mut rig));
    assert_ne!(
        read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
}

#[test]
fn status_zero_resets_queues_features_and_interrupts() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    write32(&mut rig.dev, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn reset_then_new_rings_serve_from_the_start() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let first = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &first);
    queue_read(&rig, &first);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    write32(&mut rig.dev, VIRTIO_MMIO_STATUS, 0);
    let second = MockSplitQueue::create(&mem, GuestAddress(0x4000), TEST_QUEUE_SIZE);
    bring_up(&mut rig, &second);
    write_header(&rig.mem, HEADER_ADDR, VIRTIO_BLK_T_IN, 0);
    second
        .add_desc_chains(&request_chain(512, true), 0)
        .unwrap();
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(used_entries(&second), vec![(0, 513)]);
}

#[test]
fn queue_registers_are_locked_while_the_queue_is_ready() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9000);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NUM, 3);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(used_entries(&mock), vec![(0, 513)]);
}

#[test]
fn driver_features_are_fixed_once_features_ok_is_set() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let offered = device_features(&mut rig.dev);
    negotiate(&mut rig.dev, offered);
    write32(&mut rig.dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(&mut rig.dev, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(rig.dev.driver_features(), offered);
}

#[test]
fn queue_ready_zero_stops_the_queue_and_restarts_its_rings() {
    let mut rig = rig(BlkAccess::ReadOnly);
    let mem = rig.mem.clone();
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    // Linux's vm_del_vq: QueueReady 0, read back 0; the queue is set up again later.
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_QUEUE_READY), 0);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let fresh = MockSplitQueue::create(&mem, GuestAddress(0x4000), TEST_QUEUE_SIZE);
    let (d, a, u) = (
        fresh.desc_table_addr().0,
        fresh.avail_addr().0,
        fresh.used_addr().0,
    );
    set_queue(&mut rig.dev, u32::from(TEST_QUEUE_SIZE), d, a, u);
    fresh.add_desc_chains(&request_chain(512, true), 0).unwrap();
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(used_entries(&fresh), vec![(0, 513)]);
}

struct BrokenIrq;

impl crate::devices::IrqLine for BrokenIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("irqfd closed"))
    }
}

#[test]
fn undeliverable_interrupts_are_counted_and_the_request_still_completes() {
    let mem = guest_memory();
    let disk = Arc::new(MemDisk::new(pattern(DISK_SIZE)));
    let dev = VirtioMmio::new(
        VirtioBlk::new(disk, BlkAccess::ReadOnly),
        mem.clone(),
        Arc::new(BrokenIrq),
    );
    let (irq, _) = counting_irq();
    let mut rig = Rig {
        mem: mem.clone(),
        disk: Arc::new(MemDisk::new(Vec::new())),
        irq,
        dev,
    };
    let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
    bring_up(&mut rig, &mock);
    queue_read(&rig, &mock);
    write32(&mut rig.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(used_entries(&mock), vec![(0, 513)]);
    assert_eq!(rig.dev.irq_failures(), 1);
    assert_eq!(
        read32(&mut rig.dev, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random register traffic (any offset, width and value, notifications included) after
    /// a normal bring-up never panics, and the device never reports itself as another.
    #[test]
    fn random_register_traffic_never_panics(
        ops in proptest::collection::vec(
            (
                prop_oneof![0u64..0x200, Just(0x50u64), Just(0x70), Just(0x44), any::<u64>()],
                prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
                any::<u64>(),
                any::<bool>(),
            ),
            1..64,
        ),
    ) {
        let mut rig = rig(BlkAccess::Overlay { cap_bytes: 1 << 16 });
        let mem = rig.mem.clone();
        let mock = MockSplitQueue::new(&mem, TEST_QUEUE_SIZE);
        bring_up(&mut rig, &mock);
        queue_read(&rig, &mock);
        for (offset, width, value, is_write) in ops {
            let bytes = value.to_le_bytes();
            if is_write {
                rig.dev.write(offset, &bytes[..width]);
            } else {
                let mut data = vec![0u8; width];
                rig.dev.read(offset, &mut data);
            }
        }
        prop_assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_DEVICE_ID), 2);
        prop_assert_eq!(read32(&mut rig.dev, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    }
}
