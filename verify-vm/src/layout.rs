//! The guest physical memory map and I/O ports every guest of vdr sees (Firecracker's x86_64
//! layout: low boot structures, the kernel at 1 MiB, RAM below a 32-bit MMIO gap).

use vm_memory::GuestAddress;

/// Boot GDT (long-mode code and data segments).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT (empty: the guest installs its own).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// Identity-mapping page tables set up before entering long mode: PML4, PDPTE, PDE.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// The kernel command line (Linux) or the probe's parameter block.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the ACPI tables; the RSDP sits here, inside the BIOS area Linux scans.
pub const ACPI_START: GuestAddress = GuestAddress(0x000e_0000);
/// End of the low BIOS area (EBDA and ROM): not RAM in the e820 map.
pub const EBDA_START: GuestAddress = GuestAddress(0x0009_fc00);
/// Where the kernel (or the probe guest) is loaded: 1 MiB.
pub const HIMEM_START: GuestAddress = GuestAddress(0x0010_0000);

/// RAM above this address is placed above 4 GiB; the gap holds the MMIO devices.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The first virtio-mmio device's registers; each device takes [`MMIO_DEVICE_SIZE`].
pub const VIRTIO_MMIO_BASE: GuestAddress = GuestAddress(0xd000_0000);
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// The legacy interrupt line of the first virtio-mmio device (the next ones count up).
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// COM1, a 16550 UART, on IRQ 4.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_LEN: u16 = 8;
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 controller's command port: writing 0xfe resets the machine (Linux `reboot=k`).
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_DATA_PORT: u16 = 0x60;
/// vdr's exit port (like qemu's isa-debug-exit): a guest writes a status byte to stop.
pub const EXIT_PORT: u16 = 0xf4;
/// The ACPI hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG, 8 bits): a
/// write with SLP_EN (bit 5) and SLP_TYP 5 (bits 2..4, the DSDT's \_S5) powers the VM off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// The ACPI sleep status register (FADT SLEEP_STATUS_REG): reads as 0.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// The IO-APIC's registers (described in the MADT).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_START: u64 = 0xfee0_0000;
