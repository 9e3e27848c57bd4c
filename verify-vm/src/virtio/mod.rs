//! Virtio devices for the microVM: the virtio-mmio transport ([`VirtioMmio`], virtio 1.1
//! §4.2.2, version 2 registers) and the virtio-blk device ([`VirtioBlk`], §5.2) that serves a
//! [`vdr_formats::VirtualDisk`] read-only or through a copy-on-write [`Overlay`].
//!
//! The transport owns the queues (virtio-queue's split [`Queue`]) and the status machine;
//! a device only sees "here is a valid, ready queue, process what is available". That split
//! follows rust-vmm's `virtio-device` crate and lets a later device (a console, an entropy
//! source) reuse the transport by implementing [`VirtioDevice`].
//!
//! Everything here is driven by a guest that may be hostile or simply buggy: every address,
//! length and index read from guest memory is checked, nothing panics, and no allocation
//! is sized by the guest beyond the limits the device advertises.
//!
//! Attaching a disk to the VM (stats stay readable after the VM is gone):
//!
//! ```text
//! let irq = vm.irq_line(layout::VIRTIO_IRQ_BASE)?;
//! let dev = VirtioMmio::new(VirtioBlk::new(spec.disk.clone(), spec.access), vm.memory().clone(), irq);
//! let stats: Arc<BlkStats> = dev.device().stats();
//! vm.add_mmio_device(layout::VIRTIO_MMIO_BASE, layout::MMIO_DEVICE_SIZE, Box::new(dev))?;
//! // ... run ...
//! let report = stats.snapshot();
//! ```
//!
//! Not for: PCI transport, packed rings, EVENT_IDX, multiqueue, or writing to the evidence.

mod blk;
mod chain;
mod mmio;
mod overlay;
mod stats;

#[cfg(test)]
mod blk_hostile_tests;
#[cfg(test)]
mod blk_tests;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod test_util;

pub use blk::{
    BlkAccess, VirtioBlk, BLK_ID, DEFAULT_OVERLAY_CAP_BYTES, QUEUE_MAX_SIZE, SEG_MAX, SIZE_MAX,
};
pub use mmio::VirtioMmio;
pub use overlay::{Overlay, OverlayError, OVERLAY_BLOCK_SIZE};
pub use stats::{BlkStats, BlkStatsSnapshot, FailedRange, MAX_FAILED_RANGES};

pub use virtio_queue::Queue;
use vm_memory::GuestMemory;

/// A virtio device behind a transport. The transport negotiates features, owns the queues
/// and raises interrupts; the device describes itself and serves its queues.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.1 §5: 2 for a block device).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; the length is the number of queues.
    /// Each size must be a power of two no larger than 32768 (§2.6).
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers, including VIRTIO_F_VERSION_1.
    fn features(&self) -> u64;

    /// Reads `data.len()` bytes of the device configuration space at `offset`. Bytes past
    /// the end of the configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write to the configuration space; devices ignore what they do not support.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Serves the available descriptor chains of queue `queue_index`. The transport has
    /// checked that the queue is ready and its rings lie in guest memory
    /// ([`virtio_queue::QueueT::is_valid`]). Returns whether a used-buffer interrupt is
    /// needed, or the queue error when the queue itself is broken (the transport then sets
    /// DEVICE_NEEDS_RESET, §2.1.2).
    fn process_queue<M: GuestMemory>(
        &mut self,
        queue_index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, virtio_queue::Error>;

    /// Returns the device to its initial state after the driver wrote 0 to the status
    /// register. Backing data (a disk's overlay) is kept: it is the medium, not the device.
    fn reset(&mut self);
}
