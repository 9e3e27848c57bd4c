//! The virtio-mmio transport, version 2 (virtio 1.1 §4.2.2): the register file a driver
//! uses to discover a device, negotiate features, set up its queues and notify it. Queue
//! notifications are served synchronously on the vCPU that wrote QueueNotify, then the
//! used-buffer interrupt is raised on the device's [`IrqLine`].
//!
//! Register rules (§4.2.2.1, §4.2.2.2): registers below 0x100 are 32-bit and only 4-byte
//! aligned accesses reach them (anything else reads as zero and is ignored on write); the
//! configuration space from 0x100 is forwarded to the device at any width. Queue registers
//! are latched while a queue is not ready and validated when the driver sets QueueReady.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use crate::devices::{IrqLine, MmioDevice};
use crate::virtio::VirtioDevice;

/// "virt" in little-endian (§4.2.2).
const MAGIC: u32 = 0x7472_6976;
/// The non-legacy register layout.
const VERSION: u32 = 2;
/// vdr's vendor ID: "VDR\0"; drivers do not look at it.
const VENDOR_ID: u32 = 0x0052_4456;

/// One queue: the virtio-queue state plus the raw values the driver wrote, latched until
/// QueueReady so a bad size or misaligned ring is refused as a whole.
struct QueueSlot {
    queue: Queue,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueSlot {
    fn new(max_size: u16) -> Option<QueueSlot> {
        let queue = Queue::new(max_size).ok()?;
        Some(QueueSlot {
            queue,
            num: u32::from(max_size),
            desc: 0,
            driver: 0,
            device: 0,
        })
    }

    /// Stops the queue and forgets its ring positions; the latched registers stay.
    fn disable(&mut self) {
        self.queue.reset();
    }

    fn reset(&mut self) {
        self.disable();
        self.num = u32::from(self.queue.max_size());
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
    }

    /// Applies the latched values; false when the size or an address is invalid (§2.6:
    /// power-of-two size up to QueueNumMax, 16/2/4-byte ring alignment).
    fn activate(&mut self) -> bool {
        let Ok(size) = u16::try_from(self.num) else {
            return false;
        };
        let q = &mut self.queue;
        let ok = q.try_set_size(size).is_ok()
            && q.try_set_desc_table_address(GuestAddress(self.desc))
                .is_ok()
            && q.try_set_avail_ring_address(GuestAddress(self.driver))
                .is_ok()
            && q.try_set_used_ring_address(GuestAddress(self.device))
                .is_ok();
        q.set_ready(ok);
        ok
    }
}

/// Replaces the low or high half of `value`.
fn set_half(value: &mut u64, high: bool, half: u32) {
    *value = if high {
        (*value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (*value & !0xffff_ffff) | u64::from(half)
    };
}

/// A virtio device behind the MMIO transport, ready for the VM's MMIO bus.
pub struct VirtioMmio<D: VirtioDevice, M: GuestMemory> {
    device: D,
    mem: M,
    irq: Arc<dyn IrqLine>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Option<QueueSlot>>,
    interrupt_status: u32,
    status: u32,
    irq_failures: u64,
}

impl<D: VirtioDevice, M: GuestMemory + Send> VirtioMmio<D, M> {
    /// The transport for `device`, reading queues from `mem` and interrupting on `irq`.
    pub fn new(device: D, mem: M, irq: Arc<dyn IrqLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueSlot::new(max))
            .collect();
        VirtioMmio {
            device,
            mem,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            status: 0,
            irq_failures: 0,
        }
    }

    /// The device behind the transport (e.g. to take a block device's stats).
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register as the driver last left it (plus NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Interrupts that could not be delivered (the irq line returned an error).
    pub fn irq_failures(&self) -> u64 {
        self.irq_failures
    }

    fn selected(&mut self) -> Option<&mut QueueSlot> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(index)?.as_mut()
    }

    /// Queue registers may only change while the queue is not ready (§4.2.3.2).
    fn selected_unready(&mut self) -> Option<&mut QueueSlot> {
        self.selected().filter(|slot| !slot.queue.ready())
    }

    fn reset(&mut self) {
        self.device.reset();
        for slot in self.queues.iter_mut().flatten() {
            slot.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.status = 0;
    }

    fn interrupt(&mut self, cause: u32) {
        self.interrupt_status |= cause;
        if self.irq.trigger().is_err() {
            self.irq_failures = self.irq_failures.saturating_add(1);
        }
    }

    /// The device cannot go on with what the driver set up (§2.1.2): flag it and tell the
    /// driver through a configuration change interrupt.
    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The driver may only accept offered features, and must accept VERSION_1 (§6.1).
    fn features_acceptable(&self) -> bool {
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        self.driver_features & !self.device.features() == 0 && self.driver_features & version_1 != 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device; only a reset clears it.
        let mut status =
            (value & !VIRTIO_CONFIG_S_NEEDS_RESET) | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        let newly_features_ok = status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        // §3.1.1 step 5-6: a device that does not accept the features leaves FEATURES_OK
        // clear; the driver reads it back and gives up (FAILED).
        if newly_features_ok && !self.features_acceptable() {
            status &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            status &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        self.status = status;
    }

    fn notify(&mut self, queue_index: u32) {
        let running = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FEATURES_OK;
        if self.status & running != running || self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        let Ok(index) = u16::try_from(queue_index) else {
            return;
        };
        let Some(Some(slot)) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        if !slot.queue.ready() {
            return;
        }
        if !slot.queue.is_valid(&self.mem) {
            self.needs_reset();
            return;
        }
        match self.device.process_queue(index, &mut slot.queue, &self.mem) {
            Ok(true) => self.interrupt(VIRTIO_MMIO_INT_VRING),
            Ok(false) => {}
            Err(_) => {
                // Chains used before the queue broke are still announced.
                self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
                self.needs_reset();
            }
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .selected()
                .map_or(0, |slot| u32::from(slot.queue.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .selected()
                .map_or(0, |slot| u32::from(slot.queue.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            // The configuration never changes while the device runs.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            // No shared memory regions: their length reads as -1 (§4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // Features are fixed once FEATURES_OK is set (§3.1.1).
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
                    && self.driver_features_sel < 2 =>
            {
                set_half(
                    &mut self.driver_features,
                    self.driver_features_sel == 1,
                    value,
                );
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(slot) = self.selected_unready() {
                    slot.num = value;
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                if let Some(slot) = self.selected_unready() {
                    set_half(&mut slot.desc, offset == VIRTIO_MMIO_QUEUE_DESC_HIGH, value);
                }
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                if let Some(slot) = self.selected_unready() {
                    set_half(
                        &mut slot.driver,
                        offset == VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                        value,
                    );
                }
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if let Some(slot) = self.selected_unready() {
                    set_half(
                        &mut slot.device,
                        offset == VIRTIO_MMIO_QUEUE_USED_HIGH,
                        value,
                    );
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let Some(slot) = self.selected() else {
            return;
        };
        if value == 0 {
            // Linux writes 0 when it tears a queue down (vm_del_vq).
            slot.disable();
            return;
        }
        if !slot.queue.ready() && !slot.activate() {
            self.needs_reset();
        }
    }
}

impl<D: VirtioDevice, M: GuestMemory + Send> MmioDevice for VirtioMmio<D, M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
            return;
        }
        data.fill(0);
        if let (Ok(bytes), true) = (
            <&mut [u8; 4]>::try_from(&mut *data),
            offset.is_multiple_of(4),
        ) {
            // offset < 0x100 here, so it fits in u32.
            *bytes = self.read_register(offset as u32).to_le_bytes();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.write_config(offset - config, data);
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        }
    }
}
