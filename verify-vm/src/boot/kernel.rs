//! Loading the kernel image: a bzImage (Documentation/arch/x86/boot.rst, protocol 2.12 or
//! later so it has a 64-bit entry point) or an uncompressed x86-64 ELF vmlinux. The setup
//! header is read and checked here, before linux-loader copies anything, so that a file that
//! is not a kernel, or a kernel vdr cannot start, gets an error that says why.

use std::io::Cursor;
use std::mem::size_of;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::Error;
use crate::layout;

/// Where the setup header starts in a bzImage (boot.rst, "THE REAL-MODE KERNEL HEADER").
pub(super) const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS" at 0x202.
pub(super) const HDRS_MAGIC: u32 = 0x5372_6448;
/// 2.12 introduced xloadflags, which says whether the 64-bit entry point exists.
const MIN_PROTOCOL: u16 = 0x020c;
/// loadflags bit 0: the protected-mode code is loaded at 0x100000 (a bzImage, not a zImage).
pub(super) const LOADED_HIGH: u8 = 0x01;
/// xloadflags bit 0: the kernel has the legacy 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x01;
/// The 64-bit entry point's offset from the protected-mode code (boot.rst, "64-bit BOOT
/// PROTOCOL").
const ENTRY_64_OFFSET: u64 = 0x200;

/// What kind of image was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage; `protocol` is the setup header's version (0x020f = 2.15).
    BzImage { protocol: u16 },
    /// An uncompressed ELF vmlinux.
    Elf,
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// The bzImage's setup header as the loader filled it in (`code32_start` = load address).
    pub setup_header: Option<setup_header>,
    /// The end of the memory the kernel uses while booting (its image, and for a bzImage the
    /// area it decompresses into): the initramfs must lie above it.
    pub reserved_end: u64,
}

impl LoadedKernel {
    /// The longest command line (without its NUL) the kernel accepts, and who sets that limit.
    pub(super) fn cmdline_limit(&self) -> (usize, &'static str) {
        let vdr_max = layout::CMDLINE_MAX_SIZE - 1;
        match self.setup_header {
            Some(header) => {
                let kernel_max = usize::try_from(header.cmdline_size).unwrap_or(usize::MAX);
                if kernel_max < vdr_max {
                    (kernel_max, "the kernel's setup header cmdline_size")
                } else {
                    (vdr_max, "vdr's command line area")
                }
            }
            None => (vdr_max, "vdr's command line area"),
        }
    }

    /// The exclusive upper bound the kernel allows for the initramfs (the header's inclusive
    /// `initrd_addr_max` + 1; no limit for an ELF vmlinux, which has no header).
    pub(super) fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(header) => u64::from(header.initrd_addr_max) + 1,
            None => u64::MAX,
        }
    }
}

/// Loads `kernel` at [`layout::HIMEM_START`] (a bzImage) or at its physical addresses (an
/// ELF vmlinux), checking that it fits below `ram_end` (the end of RAM under the MMIO gap).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    ram_end: u64,
) -> Result<LoadedKernel, Error> {
    if let Some(header) = read_setup_header(kernel) {
        load_bzimage(mem, kernel, &header, ram_end)
    } else if is_x86_64_elf(kernel) {
        load_elf(mem, kernel, ram_end)
    } else {
        Err(Error::NotAKernel { len: kernel.len() })
    }
}

/// The setup header of a bzImage, or `None` when there is no "HdrS" at 0x202.
pub(super) fn read_setup_header(kernel: &[u8]) -> Option<setup_header> {
    let end = SETUP_HEADER_OFFSET.checked_add(size_of::<setup_header>())?;
    let bytes = kernel.get(SETUP_HEADER_OFFSET..end)?;
    let mut header = setup_header::default();
    header.as_mut_slice().copy_from_slice(bytes);
    (header.header == HDRS_MAGIC).then_some(header)
}

/// Where a bzImage's parts go, derived from a header that passed [`check_setup_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BzImageLayout {
    /// Bytes of protected-mode code after the real-mode setup sectors.
    payload_len: u64,
    /// The end of what the kernel touches before it reads the e820 map: the payload at
    /// 1 MiB, and the decompression area from its run address for `init_size` bytes.
    reserved_end: u64,
}

/// Checks what vdr relies on in a bzImage setup header: boot protocol 2.12+, loaded high,
/// a 64-bit entry point, setup sectors inside the file, a sane alignment.
fn check_setup_header(header: &setup_header, file_len: usize) -> Result<BzImageLayout, Error> {
    let version = header.version;
    if version < MIN_PROTOCOL {
        return Err(Error::ProtocolTooOld { version });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(Error::BadSetupHeader(
            "loadflags LOADED_HIGH is clear (a zImage, which loads at 0x10000)",
        ));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::No64BitEntry);
    }
    // boot.rst: "If this field is 0, the real value is 4"; the boot sector adds one.
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let file_len = u64::try_from(file_len).unwrap_or(u64::MAX);
    let payload_len = file_len
        .checked_sub(setup_size)
        .filter(|&len| len > 0)
        .ok_or(Error::BadSetupHeader(
            "the setup sectors reach past the end of the file",
        ))?;
    let load = layout::HIMEM_START.0;
    let run_start = if header.relocatable_kernel != 0 {
        // head_64.S startup_64: the load address rounded up to kernel_alignment, but never
        // below LOAD_PHYSICAL_ADDR (pref_address).
        let align = u64::from(header.kernel_alignment);
        if !align.is_power_of_two() {
            return Err(Error::BadSetupHeader(
                "kernel_alignment is not a power of two",
            ));
        }
        load.next_multiple_of(align).max(header.pref_address)
    } else {
        if header.code32_start != 0x10_0000 {
            return Err(Error::BadSetupHeader(
                "the kernel is not relocatable and does not run at 1 MiB (code32_start)",
            ));
        }
        load.max(header.pref_address)
    };
    let image_end = load.checked_add(payload_len);
    let run_end = run_start.checked_add(u64::from(header.init_size));
    let reserved_end = image_end
        .zip(run_end)
        .map(|(a, b)| a.max(b))
        .ok_or(Error::BadSetupHeader("pref_address + init_size overflows"))?;
    Ok(BzImageLayout {
        payload_len,
        reserved_end,
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    header: &setup_header,
    ram_end: u64,
) -> Result<LoadedKernel, Error> {
    let layout = check_setup_header(header, kernel.len())?;
    if layout.reserved_end > ram_end {
        return Err(Error::KernelDoesNotFit {
            needed_end: layout.reserved_end,
            ram_end,
        });
    }
    let loaded = BzImage::load(
        mem,
        Some(layout::HIMEM_START),
        &mut Cursor::new(kernel),
        Some(layout::HIMEM_START),
    )
    .map_err(Error::Load)?;
    let entry = loaded
        .kernel_load
        .0
        .checked_add(ENTRY_64_OFFSET)
        .map(GuestAddress)
        .ok_or(Error::BadSetupHeader("the load address overflows"))?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage {
            protocol: header.version,
        },
        entry,
        setup_header: loaded.setup_header,
        reserved_end: layout.reserved_end,
    })
}

/// An ELF64 little-endian x86-64 executable (e_ident class 2, data 1; e_type 2 = ET_EXEC,
/// as vmlinux is; e_machine 62 = EM_X86_64). Position-independent programs (ET_DYN) are
/// not kernels.
fn is_x86_64_elf(kernel: &[u8]) -> bool {
    kernel.get(0..4) == Some(b"\x7fELF".as_slice())
        && kernel.get(4) == Some(&2)
        && kernel.get(5) == Some(&1)
        && kernel.get(16..18) == Some(2u16.to_le_bytes().as_slice())
        && kernel.get(18..20) == Some(62u16.to_le_bytes().as_slice())
}

fn load_elf(mem: &GuestMemoryMmap, kernel: &[u8], ram_end: u64) -> Result<LoadedKernel, Error> {
    // No offset: the segments go to their physical addresses (p_paddr), and the entry is
    // e_entry, vmlinux's phys_startup_64.
    let loaded = Elf::load(
        mem,
        None,
        &mut Cursor::new(kernel),
        Some(layout::HIMEM_START),
    )
    .map_err(Error::Load)?;
    if loaded.kernel_end > ram_end {
        return Err(Error::KernelDoesNotFit {
            needed_end: loaded.kernel_end,
            ram_end,
        });
    }
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry: loaded.kernel_load,
        setup_header: None,
        reserved_end: loaded.kernel_end,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::boot::test_support::guest_memory;

    /// A minimal bzImage the loader accepts: one setup sector plus the boot sector, then
    /// `payload_len` bytes of "protected-mode code".
    pub fn fake_bzimage(payload_len: usize) -> Vec<u8> {
        let mut header = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: 0x7f,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            ..Default::default()
        };
        let mut image = vec![0u8; 1024 + payload_len];
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size_of::<setup_header>()]
            .copy_from_slice(header.as_mut_slice());
        image[1024..].fill(0x90);
        image
    }

    pub fn with_header(mut image: Vec<u8>, edit: impl FnOnce(&mut setup_header)) -> Vec<u8> {
        let mut header = read_setup_header(&image).unwrap();
        edit(&mut header);
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size_of::<setup_header>()]
            .copy_from_slice(header.as_mut_slice());
        image
    }

    #[test]
    fn bzimage_enters_at_load_address_plus_0x200() {
        let mem = guest_memory(64);

        let kernel = load_kernel(&mem, &fake_bzimage(4096), 64 << 20).unwrap();

        assert_eq!(kernel.entry, GuestAddress(0x10_0200));
        assert_eq!(kernel.format, KernelFormat::BzImage { protocol: 0x020f });
        // Decompression runs from pref_address (16 MiB) for init_size (8 MiB).
        assert_eq!(kernel.reserved_end, 0x180_0000);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = guest_memory(64);

        let err = load_kernel(&mem, &[0x42; 8192], 64 << 20).unwrap_err();

        assert!(matches!(err, Error::NotAKernel { len: 8192 }), "{err}");
        assert!(err.to_string().contains("not a Linux kernel"));
    }

    #[test]
    fn empty_file_is_not_a_kernel() {
        let mem = guest_memory(64);

        let err = load_kernel(&mem, &[], 64 << 20).unwrap_err();

        assert!(matches!(err, Error::NotAKernel { len: 0 }));
    }

    #[test]
    fn old_boot_protocol_is_refused_with_its_version() {
        let mem = guest_memory(64);
        let image = with_header(fake_bzimage(4096), |h| h.version = 0x020a);

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(matches!(err, Error::ProtocolTooOld { version: 0x020a }));
        assert!(err.to_string().contains("2.10"), "{err}");
    }

    #[test]
    fn kernel_without_64_bit_entry_is_refused() {
        let mem = guest_memory(64);
        let image = with_header(fake_bzimage(4096), |h| h.xloadflags = 0);

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(matches!(err, Error::No64BitEntry));
    }

    #[test]
    fn setup_sectors_past_the_end_are_refused() {
        let mem = guest_memory(64);
        let image = with_header(fake_bzimage(16), |h| h.setup_sects = 200);

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(matches!(err, Error::BadSetupHeader(_)), "{err}");
    }

    #[test]
    fn bad_alignment_is_refused() {
        let mem = guest_memory(64);
        let image = with_header(fake_bzimage(4096), |h| h.kernel_alignment = 0x3000);

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(matches!(err, Error::BadSetupHeader(_)), "{err}");
    }

    #[test]
    fn kernel_that_cannot_decompress_in_ram_is_refused() {
        let mem = guest_memory(64);
        let image = with_header(fake_bzimage(4096), |h| h.init_size = 0x400_0000);

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(
            matches!(
                err,
                Error::KernelDoesNotFit {
                    needed_end: 0x500_0000,
                    ram_end: 0x400_0000
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn elf_of_another_machine_is_not_a_kernel() {
        let mem = guest_memory(64);
        let mut image = vec![0u8; 4096];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        image[5] = 1;
        image[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64

        let err = load_kernel(&mem, &image, 64 << 20).unwrap_err();

        assert!(matches!(err, Error::NotAKernel { .. }));
    }

    #[test]
    fn elf_vmlinux_enters_at_e_entry() {
        let mem = guest_memory(64);
        let image = tiny_elf(0x100_0000, &[0xf4; 64]);

        let kernel = load_kernel(&mem, &image, 64 << 20).unwrap();

        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(kernel.entry, GuestAddress(0x100_0000));
        assert!(kernel.setup_header.is_none());
        assert_eq!(kernel.reserved_end, 0x100_0000 + 64);
    }

    /// An ELF64 x86-64 executable with one PT_LOAD segment at `paddr` holding `code`.
    pub fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 0x78];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little-endian
        elf[6] = 1; // EV_CURRENT
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        elf[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        elf[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
        elf[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
        elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
        let len = code.len() as u64;
        elf[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes()); // p_filesz
        elf[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes()); // p_memsz
        elf[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
        elf.extend_from_slice(code);
        elf
    }
}
