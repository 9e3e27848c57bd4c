//! What a device on the VM's buses looks like to the VMM, and how it raises an interrupt.
//! Kept apart from [`crate::vmm`] so devices are built and tested without /dev/kvm.

use std::io;

/// A device in the MMIO gap. `offset` is relative to the device's base address; `data` is
/// the access (1, 2, 4 or 8 bytes, little-endian). Devices never panic on odd accesses:
/// reads they do not understand return zeros, writes are ignored.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An edge-triggered legacy interrupt line (an irqfd on the KVM backend, a counter in
/// tests).
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}
