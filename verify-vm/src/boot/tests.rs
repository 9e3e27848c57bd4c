//! prepare_linux end to end over plain guest memory: the zero page, command line and
//! initramfs are read back the way Linux reads them; the Debian cloud kernel loads.

use std::path::PathBuf;

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel::tests::{fake_bzimage, tiny_elf, with_header};
use super::test_support::guest_memory;
use super::*;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";

fn one_disk() -> [MmioSlot; 1] {
    [MmioSlot {
        base: layout::VIRTIO_MMIO_BASE,
        size: layout::MMIO_DEVICE_SIZE,
        irq: layout::VIRTIO_IRQ_BASE,
    }]
}

fn machine(memory_mib: u32, vcpus: u8, slots: &[MmioSlot]) -> Machine<'_> {
    Machine {
        memory_mib,
        vcpus,
        virtio_devices: slots,
    }
}

fn read_params(mem: &GuestMemoryMmap) -> boot_params {
    mem.read_obj(layout::ZERO_PAGE_START).unwrap()
}

#[test]
fn zero_page_holds_header_cmdline_initrd_rsdp_and_e820() {
    let mem = guest_memory(256);
    let slots = one_disk();
    let initrd = vec![0x5a; 300_000];
    let image = LinuxImage {
        kernel: &fake_bzimage(8192),
        initrd: Some(&initrd),
        cmdline: CMDLINE,
    };

    let entry = prepare_linux(&mem, &image, &machine(256, 1, &slots)).unwrap();

    assert_eq!(entry.rip, GuestAddress(0x10_0200));
    assert_eq!(entry.zero_page, layout::ZERO_PAGE_START);
    let params = read_params(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags & 1, 1);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START.0 as u32);
    assert_eq!({ hdr.cmdline_size } as usize, CMDLINE.len() + 1);
    assert_eq!({ params.acpi_rsdp_addr }, layout::ACPI_START.0);

    let mut cmdline = vec![0u8; CMDLINE.len() + 1];
    mem.read_slice(&mut cmdline, layout::CMDLINE_START).unwrap();
    assert_eq!(&cmdline[..CMDLINE.len()], CMDLINE.as_bytes());
    assert_eq!(cmdline[CMDLINE.len()], 0);

    let (start, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as usize);
    assert_eq!(size, initrd.len());
    assert_eq!(start % 4096, 0);
    assert!(start + size as u64 <= 256 << 20);
    assert!(
        start + 4096 + size as u64 > 256 << 20,
        "not at the top: {start:#x}"
    );
    let mut copied = vec![0u8; size];
    mem.read_slice(&mut copied, GuestAddress(start)).unwrap();
    assert_eq!(copied, initrd);

    let entries = usize::from(params.e820_entries);
    let e820: Vec<E820Entry> = params.e820_table[..entries]
        .iter()
        .map(|e| E820Entry {
            addr: e.addr,
            size: e.size,
            kind: e.r#type,
        })
        .collect();
    assert_eq!(e820, e820_map(256));
}

#[test]
fn memory_above_the_gap_is_in_the_zero_page_and_the_initrd_stays_below_it() {
    let mem = guest_memory(4096);
    let initrd = vec![1u8; 4096];
    let kernel = with_header(fake_bzimage(4096), |h| h.initrd_addr_max = 0xffff_ffff);
    let image = LinuxImage {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: CMDLINE,
    };

    prepare_linux(&mem, &image, &machine(4096, 2, &one_disk())).unwrap();

    let params = read_params(&mem);
    assert_eq!(params.e820_entries, 4);
    let high = params.e820_table[3];
    assert_eq!(({ high.addr }, { high.size }), (1 << 32, 1 << 30));
    let start = u64::from(params.hdr.ramdisk_image);
    assert_eq!(start, layout::MMIO_GAP_START - 4096);
}

#[test]
fn initrd_stays_below_the_kernels_initrd_addr_max() {
    let mem = guest_memory(3072);
    let initrd = vec![1u8; 5000];
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: Some(&initrd),
        cmdline: CMDLINE,
    };

    prepare_linux(&mem, &image, &machine(3072, 1, &[])).unwrap();

    // initrd_addr_max 0x7fffffff is the last byte it may occupy.
    let start = u64::from(read_params(&mem).hdr.ramdisk_image);
    assert_eq!(start, 0x8000_0000 - 2 * 4096);
}

#[test]
fn elf_vmlinux_gets_a_minimal_header() {
    let mem = guest_memory(64);
    let image = LinuxImage {
        kernel: &tiny_elf(0x100_0000, &[0xf4; 16]),
        initrd: None,
        cmdline: CMDLINE,
    };

    let entry = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap();

    assert_eq!(entry.rip, GuestAddress(0x100_0000));
    let hdr = read_params(&mem).hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
    assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START.0 as u32);
}

#[test]
fn position_independent_program_is_not_a_kernel() {
    let mem = guest_memory(64);
    // The test binary itself: an x86-64 ELF, but ET_DYN (PIE), not a vmlinux.
    let program = std::fs::read("/proc/self/exe").unwrap();
    let image = LinuxImage {
        kernel: &program,
        initrd: None,
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(matches!(err, Error::NotAKernel { .. }), "{err}");
}

#[test]
fn elf_entry_below_1_mib_is_refused_by_the_loader() {
    let mem = guest_memory(64);
    let image = LinuxImage {
        kernel: &tiny_elf(0x8000, &[0xf4; 16]),
        initrd: None,
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(matches!(err, Error::Load(_)), "{err}");
}

#[test]
fn command_line_longer_than_the_kernel_accepts_is_refused() {
    let mem = guest_memory(64);
    let long = "x".repeat(2048);
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: None,
        cmdline: &long,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(
        matches!(
            err,
            Error::CmdlineTooLong {
                len: 2048,
                max: 2047,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn command_line_with_a_control_character_is_refused() {
    let mem = guest_memory(64);
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: None,
        cmdline: "console=ttyS0\nquiet",
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(matches!(err, Error::Cmdline(_)), "{err}");
}

#[test]
fn initrd_that_would_overlap_the_kernel_is_refused() {
    let mem = guest_memory(64);
    let initrd = vec![0u8; 48 << 20];
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: Some(&initrd),
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(
        matches!(
            err,
            Error::InitrdTooBig {
                lowest: 0x180_0000,
                highest: 0x400_0000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("more memory"));
}

#[test]
fn garbage_kernel_is_refused_before_anything_is_written() {
    let mem = guest_memory(64);
    let image = LinuxImage {
        kernel: b"#!/bin/sh\necho not a kernel\n",
        initrd: None,
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &[])).unwrap_err();

    assert!(matches!(err, Error::NotAKernel { len: 28 }), "{err}");
    assert_eq!({ read_params(&mem).hdr.boot_flag }, 0);
}

#[test]
fn machine_without_vcpus_or_with_too_little_memory_is_refused() {
    let mem = guest_memory(64);
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: None,
        cmdline: CMDLINE,
    };

    let no_vcpu = prepare_linux(&mem, &image, &machine(64, 0, &[])).unwrap_err();
    let tiny = prepare_linux(&mem, &image, &machine(16, 1, &[])).unwrap_err();

    assert!(matches!(no_vcpu, Error::VcpuCount(0)));
    assert!(matches!(
        tiny,
        Error::TooLittleMemory { memory_mib: 16, .. }
    ));
}

#[test]
fn mmio_slot_above_4_gib_is_refused() {
    let mem = guest_memory(64);
    let slots = [MmioSlot {
        base: GuestAddress(0xffff_f800),
        size: 0x1000,
        irq: 5,
    }];
    let image = LinuxImage {
        kernel: &fake_bzimage(4096),
        initrd: None,
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(64, 1, &slots)).unwrap_err();

    assert!(matches!(err, Error::SlotAbove4G { index: 0, .. }), "{err}");
}

/// The Debian cloud kernel (scripts unpack it to /var/cache/vdr/linux-image).
fn cloud_kernel() -> Option<(PathBuf, Vec<u8>)> {
    let dir = std::env::var_os("VDR_GUEST_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vdr/linux-image"));
    let path = std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
    let bytes = std::fs::read(&path).ok()?;
    Some((path, bytes))
}

#[test]
fn debian_cloud_kernel_loads_with_its_64_bit_entry() {
    let Some((path, kernel)) = cloud_kernel() else {
        println!("SKIP: no kernel under $VDR_GUEST_KERNEL_DIR or /var/cache/vdr/linux-image/boot");
        return;
    };
    let mem = guest_memory(256);
    let image = LinuxImage {
        kernel: &kernel,
        initrd: Some(&[0u8; 512]),
        cmdline: CMDLINE,
    };

    let entry = prepare_linux(&mem, &image, &machine(256, 2, &one_disk())).unwrap();

    assert_eq!(entry.rip, GuestAddress(0x10_0200), "{}", path.display());
    let KernelFormat::BzImage { protocol } = entry.format else {
        panic!("{} is not a bzImage", path.display());
    };
    assert!(protocol >= 0x020c, "protocol {protocol:#x}");
    println!(
        "{}: boot protocol {}.{:02}, entry {:#x}",
        path.display(),
        protocol >> 8,
        protocol & 0xff,
        entry.rip.0
    );
    let params = read_params(&mem);
    assert_eq!({ params.hdr.version }, protocol);
    // The payload's first bytes (startup_32) are now at 1 MiB.
    let setup = (usize::from(kernel[0x1f1]) + 1) * 512;
    let mut first = [0u8; 16];
    mem.read_slice(&mut first, layout::HIMEM_START).unwrap();
    assert_eq!(&first, &kernel[setup..setup + 16]);
}

#[test]
fn debian_cloud_kernel_does_not_fit_in_48_mib() {
    let Some((_, kernel)) = cloud_kernel() else {
        println!("SKIP: no kernel under $VDR_GUEST_KERNEL_DIR or /var/cache/vdr/linux-image/boot");
        return;
    };
    let mem = guest_memory(48);
    let image = LinuxImage {
        kernel: &kernel,
        initrd: None,
        cmdline: CMDLINE,
    };

    let err = prepare_linux(&mem, &image, &machine(48, 1, &[])).unwrap_err();

    assert!(matches!(err, Error::KernelDoesNotFit { .. }), "{err}");
}
