//! The VM's two address spaces (port I/O and MMIO): non-overlapping ranges, each served by
//! one device behind its own mutex so vCPU threads can access different devices at once
//! and the same device one access at a time (Firecracker's `devices::Bus` shape).

use std::sync::Mutex;

use crate::devices::MmioDevice;

/// One device's window: `[base, base + len)`.
struct Slot {
    base: u64,
    len: u64,
    device: Mutex<Box<dyn MmioDevice>>,
}

/// A set of devices keyed by address range.
#[derive(Default)]
pub struct AddressSpace {
    /// Sorted by `base`, non-overlapping.
    slots: Vec<Slot>,
}

/// Why a device could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("empty or wrapping range {base:#x}+{len:#x}")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

impl AddressSpace {
    /// Places `device` at `[base, base + len)`; refuses empty, wrapping and overlapping
    /// ranges.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), InsertError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(InsertError::BadRange { base, len }),
        };
        if let Some(other) = self
            .slots
            .iter()
            .find(|s| base < s.base.saturating_add(s.len) && s.base < end)
        {
            return Err(InsertError::Overlap {
                base,
                len,
                other_base: other.base,
                other_len: other.len,
            });
        }
        let at = self.slots.partition_point(|s| s.base < base);
        self.slots.insert(
            at,
            Slot {
                base,
                len,
                device: Mutex::new(device),
            },
        );
        Ok(())
    }

    /// The slot that wholly contains `[addr, addr + len)`, and the offset of `addr` in it.
    /// An access that straddles a device's end belongs to no device.
    fn find(&self, addr: u64, len: usize) -> Option<(&Slot, u64)> {
        let len = u64::try_from(len).ok()?;
        let at = self.slots.partition_point(|s| s.base <= addr);
        let slot = self.slots.get(at.checked_sub(1)?)?;
        let offset = addr - slot.base;
        (offset.checked_add(len)? <= slot.len).then_some((slot, offset))
    }

    /// Reads through the device at `addr`; `false` when no device holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                // A device that panicked while holding its lock is still used: its state
                // is whatever it was, and the guest sees the consequences, not the VMM.
                let mut device = slot.device.lock().unwrap_or_else(|e| e.into_inner());
                device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes through the device at `addr`; `false` when no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                let mut device = slot.device.lock().unwrap_or_else(|e| e.into_inner());
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// All devices of a VM, shared by its vCPU threads.
#[derive(Default)]
pub struct Bus {
    /// Port-I/O devices (the serial port); offsets are relative to the first port.
    pub pio: AddressSpace,
    /// Devices in the MMIO gap (virtio-mmio).
    pub mmio: AddressSpace,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl MmioDevice for Nop {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x11);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut space = AddressSpace::default();
        space.insert(0x1000, 0x1000, Box::new(Nop)).unwrap();
        space.insert(0x3000, 0x1000, Box::new(Nop)).unwrap();
        for (base, len) in [(0x1fff, 2), (0x800, 0x1000), (0x2000, 0x1001), (0, 0x10000)] {
            assert!(
                matches!(
                    space.insert(base, len, Box::new(Nop)),
                    Err(InsertError::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        space.insert(0x2000, 0x1000, Box::new(Nop)).unwrap();
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        let mut space = AddressSpace::default();
        assert!(space.insert(0x1000, 0, Box::new(Nop)).is_err());
        assert!(space.insert(u64::MAX, 2, Box::new(Nop)).is_err());
    }

    #[test]
    fn accesses_outside_or_straddling_a_device_find_nothing() {
        let mut space = AddressSpace::default();
        space.insert(0x1000, 0x10, Box::new(Nop)).unwrap();
        let mut data = [0u8; 4];
        assert!(space.read(0x100c, &mut data));
        assert!(!space.read(0x100d, &mut data));
        assert!(!space.read(0xffe, &mut data));
        assert!(!space.read(u64::MAX - 1, &mut data));
    }
}
