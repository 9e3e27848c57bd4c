//! The command line, the initramfs and the zero page (`struct boot_params`): what a boot
//! loader hands a 64-bit Linux kernel (Documentation/arch/x86/boot.rst, "64-bit BOOT
//! PROTOCOL", and zero-page.rst).

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_params, E820_MAX_ENTRIES_ZEROPAGE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel::{LoadedKernel, HDRS_MAGIC, LOADED_HIGH};
use super::{E820Entry, Error};
use crate::layout;

/// `type_of_loader` 0xff: "undefined" boot loader (boot.rst: loaders without an assigned id).
const LOADER_UNDEFINED: u8 = 0xff;
/// The boot sector signature Linux checks in `boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// The alignment an ELF vmlinux is told it runs at (CONFIG_PHYSICAL_ALIGN's largest value,
/// as Firecracker uses); a bzImage keeps the value from its own header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Initramfs placement granularity: boot.rst asks for page alignment.
const PAGE_SIZE: u64 = 0x1000;

/// Writes `cmdline` (checked by linux-loader's [`Cmdline`]: printable ASCII, bounded) at
/// [`layout::CMDLINE_START`]. `limit` is the longest line allowed and who sets it. Returns
/// the bytes written including the NUL.
pub(super) fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    (max, limit): (usize, &'static str),
) -> Result<usize, Error> {
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
            limit,
        });
    }
    // insert_str checks every character is printable ASCII (try_from does not).
    let mut checked = Cmdline::new(max + 1).map_err(Error::Cmdline)?;
    checked.insert_str(cmdline).map_err(Error::Cmdline)?;
    let bytes = checked.as_cstring().map_err(Error::Cmdline)?;
    let bytes = bytes.as_bytes_with_nul();
    mem.write_slice(bytes, layout::CMDLINE_START)
        .map_err(|source| Error::GuestMemory {
            what: "command line",
            addr: layout::CMDLINE_START.0,
            source,
        })?;
    Ok(bytes.len())
}

/// An initramfs in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Initrd {
    pub addr: GuestAddress,
    pub size: u32,
}

/// Copies `initrd` to the highest page-aligned address where it ends at or below `highest`
/// and starts at or above `lowest` (the kernel's end), as boot loaders do so the kernel's
/// early allocations below it stay free.
pub(super) fn place_initrd(
    mem: &GuestMemoryMmap,
    initrd: &[u8],
    lowest: u64,
    highest: u64,
) -> Result<Initrd, Error> {
    let too_big = || Error::InitrdTooBig {
        size: initrd.len(),
        lowest,
        highest,
    };
    let size = u32::try_from(initrd.len()).map_err(|_| too_big())?;
    let start = highest
        .checked_sub(u64::from(size))
        .map(|start| start & !(PAGE_SIZE - 1))
        .filter(|&start| start >= lowest)
        .ok_or_else(too_big)?;
    let addr = GuestAddress(start);
    mem.write_slice(initrd, addr)
        .map_err(|source| Error::GuestMemory {
            what: "initramfs",
            addr: start,
            source,
        })?;
    Ok(Initrd { addr, size })
}

/// What goes into the zero page.
pub(super) struct ZeroPage<'a> {
    pub kernel: &'a LoadedKernel,
    /// Command line length including its NUL.
    pub cmdline_len: usize,
    pub initrd: Option<Initrd>,
    pub rsdp: GuestAddress,
    pub e820: &'a [E820Entry],
}

/// Builds `struct boot_params`: the bzImage's own setup header (boot.rst: the loader copies
/// it and fills in its fields), or a minimal header for an ELF vmlinux.
pub(super) fn boot_params(page: &ZeroPage<'_>) -> boot_params {
    let mut params = boot_params::default();
    if let Some(header) = page.kernel.setup_header {
        params.hdr = header;
    } else {
        params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    // The command line sits below 1 MiB, so the 32-bit pointer is enough.
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.0 as u32;
    params.hdr.cmdline_size = u32::try_from(page.cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = page.initrd {
        // place_initrd keeps it below the MMIO gap, hence below 4 GiB.
        params.hdr.ramdisk_image = u32::try_from(initrd.addr.0).unwrap_or(0);
        params.hdr.ramdisk_size = initrd.size;
    }
    // boot protocol 2.14: the RSDP address, so Linux need not scan the BIOS area.
    params.acpi_rsdp_addr = page.rsdp.0;
    let mut entries = 0u8;
    for (slot, entry) in params.e820_table.iter_mut().zip(page.e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
        entries += 1;
    }
    debug_assert!(usize::from(entries) <= E820_MAX_ENTRIES_ZEROPAGE);
    params.e820_entries = entries;
    params
}

/// Writes the zero page at [`layout::ZERO_PAGE_START`].
pub(super) fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), Error> {
    mem.write_obj(*params, layout::ZERO_PAGE_START)
        .map_err(|source| Error::GuestMemory {
            what: "zero page",
            addr: layout::ZERO_PAGE_START.0,
            source,
        })
}
