//! The Linux boot protocol for vdr's microVM: everything that has to be in guest memory
//! before the first vCPU instruction of a Linux kernel runs.
//!
//! [`prepare_linux`] loads the kernel (bzImage or ELF vmlinux, with linux-loader), writes the
//! command line, places the initramfs at the top of low RAM, fills in the zero page
//! (`struct boot_params`, with the e820 map), and writes ACPI tables (RSDP, XSDT, FADT, DSDT,
//! MADT) that describe the vCPUs, the IO-APIC, COM1 and every virtio-mmio slot, then returns
//! where the vCPU starts. Everything here is a pure function over a `GuestMemoryMmap`, so it
//! is tested without /dev/kvm.
//!
//! Follows Documentation/arch/x86/boot.rst (64-bit boot protocol) and ACPI 6.5; the machine
//! shape is Firecracker's (hardware-reduced ACPI, virtio-mmio devices as `LNRO0005`).
//!
//! Not for: setting up vCPU registers or page tables (that is [`crate::vmm`]'s job: it starts
//! the vCPU in long mode at [`BootEntry::rip`] with `rsi` = [`BootEntry::zero_page`]).

mod acpi;
mod e820;
mod kernel;
mod params;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout;

pub use acpi::{write_acpi_tables, AcpiTables};
pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use kernel::{load_kernel, KernelFormat, LoadedKernel};

/// The guest physical memory a Linux boot needs, in MiB. Below this the kernel cannot even
/// decompress itself (the Debian cloud kernel asks for ~68 MiB from 16 MiB up).
pub const MIN_MEMORY_MIB: u32 = 32;

/// The most virtio-mmio slots the DSDT describes (device names V000..V03F).
pub const MAX_MMIO_SLOTS: usize = 64;

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct LinuxImage<'a> {
    /// A bzImage or an uncompressed ELF vmlinux.
    pub kernel: &'a [u8],
    /// An initramfs (cpio, optionally compressed).
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line, passed as is.
    pub cmdline: &'a str,
}

/// One virtio-mmio device as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// The device's register window (must lie below 4 GiB: ACPI `Memory32Fixed`).
    pub base: GuestAddress,
    pub size: u64,
    /// Its legacy interrupt line (an IO-APIC pin, edge-triggered, active high).
    pub irq: u32,
}

/// The machine the kernel is told about.
#[derive(Clone, Copy, Debug)]
pub struct Machine<'a> {
    pub memory_mib: u32,
    pub vcpus: u8,
    pub virtio_devices: &'a [MmioSlot],
}

/// Where the boot vCPU starts: Linux's 64-bit entry with `rsi` pointing at the zero page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub rip: GuestAddress,
    pub zero_page: GuestAddress,
    /// What was loaded, for reports ("bzImage, boot protocol 2.15").
    pub format: KernelFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the kernel image ({len} bytes) is not a Linux kernel: no bzImage header (\"HdrS\" at \
         0x202) and no x86-64 ELF header"
    )]
    NotAKernel { len: usize },
    #[error(
        "the bzImage speaks boot protocol {}.{:02}; vdr needs 2.12 or later (the 64-bit entry \
         point and xloadflags)", version >> 8, version & 0xff
    )]
    ProtocolTooOld { version: u16 },
    #[error("the bzImage has no 64-bit entry point (xloadflags XLF_KERNEL_64 is clear)")]
    No64BitEntry,
    #[error("the bzImage setup header is inconsistent: {0}")]
    BadSetupHeader(&'static str),
    #[error("loading the kernel into guest memory: {0}")]
    Load(#[source] linux_loader::loader::Error),
    #[error(
        "the kernel needs guest RAM up to {needed_end:#x} (image and decompression area), but \
         low RAM ends at {ram_end:#x}: give the VM more memory"
    )]
    KernelDoesNotFit { needed_end: u64, ram_end: u64 },
    #[error("the command line is {len} bytes; the limit is {max} ({limit})")]
    CmdlineTooLong {
        len: usize,
        max: usize,
        limit: &'static str,
    },
    #[error("the command line is not valid: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error(
        "the initramfs ({size} bytes) does not fit in guest RAM between the kernel's end \
         {lowest:#x} and {highest:#x}: give the VM more memory or use a smaller initramfs"
    )]
    InitrdTooBig {
        size: usize,
        lowest: u64,
        highest: u64,
    },
    #[error(
        "the machine has {0} vCPUs; it needs 1 to 254 (APIC ids are 8 bits, the IO-APIC \
         takes the next one)"
    )]
    VcpuCount(u8),
    #[error("the machine has {memory_mib} MiB of memory; Linux needs at least {min} MiB")]
    TooLittleMemory { memory_mib: u32, min: u32 },
    #[error("the machine has {0} virtio-mmio slots; vdr describes at most {MAX_MMIO_SLOTS}")]
    TooManySlots(usize),
    #[error(
        "virtio-mmio slot {index} at {base:#x} (+{size:#x}) is not below the 4 GiB the ACPI \
         tables can describe"
    )]
    SlotAbove4G { index: usize, base: u64, size: u64 },
    #[error("the ACPI tables ({len} bytes) do not fit between {start:#x} and {end:#x}")]
    AcpiTooBig { len: usize, start: u64, end: u64 },
    #[error("writing the {what} at {addr:#x} into guest memory: {source}")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// End of RAM below the MMIO gap for a machine with `memory_mib` MiB.
pub fn low_ram_end(memory_mib: u32) -> u64 {
    (u64::from(memory_mib) << 20).min(layout::MMIO_GAP_START)
}

/// Loads `image` into `mem` and writes everything Linux reads at boot for `machine`. `mem`
/// must be the guest memory the VM runs with (RAM laid out as [`e820_map`] says).
pub fn prepare_linux(
    mem: &GuestMemoryMmap,
    image: &LinuxImage<'_>,
    machine: &Machine<'_>,
) -> Result<BootEntry, Error> {
    check_machine(machine)?;
    let ram_end = low_ram_end(machine.memory_mib);
    let kernel = load_kernel(mem, image.kernel, ram_end)?;
    let cmdline_len = params::write_cmdline(mem, image.cmdline, kernel.cmdline_limit())?;
    let initrd = match image.initrd {
        Some(initrd) => Some(params::place_initrd(
            mem,
            initrd,
            kernel.reserved_end,
            ram_end.min(kernel.initrd_addr_max()),
        )?),
        None => None,
    };
    let tables = write_acpi_tables(mem, machine)?;
    let zero_page = params::boot_params(&params::ZeroPage {
        kernel: &kernel,
        cmdline_len,
        initrd,
        rsdp: tables.rsdp,
        e820: &e820_map(machine.memory_mib),
    });
    params::write_zero_page(mem, &zero_page)?;
    Ok(BootEntry {
        rip: kernel.entry,
        zero_page: layout::ZERO_PAGE_START,
        format: kernel.format,
    })
}

fn check_machine(machine: &Machine<'_>) -> Result<(), Error> {
    if machine.vcpus == 0 || machine.vcpus == u8::MAX {
        return Err(Error::VcpuCount(machine.vcpus));
    }
    if machine.memory_mib < MIN_MEMORY_MIB {
        return Err(Error::TooLittleMemory {
            memory_mib: machine.memory_mib,
            min: MIN_MEMORY_MIB,
        });
    }
    if machine.virtio_devices.len() > MAX_MMIO_SLOTS {
        return Err(Error::TooManySlots(machine.virtio_devices.len()));
    }
    for (index, slot) in machine.virtio_devices.iter().enumerate() {
        let fits = slot
            .base
            .0
            .checked_add(slot.size)
            .is_some_and(|end| end <= 1 << 32 && u32::try_from(slot.size).is_ok());
        if !fits {
            return Err(Error::SlotAbove4G {
                index,
                base: slot.base.0,
                size: slot.size,
            });
        }
    }
    Ok(())
}

/// Test helpers shared by the boot submodules' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use crate::layout::MMIO_GAP_END;

    /// Guest memory laid out the way the e820 map describes it: low RAM up to the MMIO gap,
    /// the rest above 4 GiB (mmap is lazy, so large sizes cost nothing until touched).
    pub fn guest_memory(memory_mib: u32) -> GuestMemoryMmap {
        let total = u64::from(memory_mib) << 20;
        let low = super::low_ram_end(memory_mib);
        let mut ranges = vec![(GuestAddress(0), low as usize)];
        if total > low {
            ranges.push((GuestAddress(MMIO_GAP_END), (total - low) as usize));
        }
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }
}

#[cfg(test)]
mod acpi_tests;
#[cfg(test)]
mod tests;
