//! The ACPI tables that describe vdr's microVM to Linux (ACPI 6.5, built with the
//! acpi_tables crate): RSDP → XSDT → FADT (→ DSDT) and MADT, in the BIOS area from
//! [`layout::ACPI_START`], which the e820 map reserves.
//!
//! The machine is hardware-reduced ACPI, as Firecracker's: no PM1 blocks or SCI, power-off
//! through the FADT sleep control register (SLP_TYP from the DSDT's `\_S5_`), reset through
//! the FADT reset register (the i8042 port, as `reboot=k` would). The DSDT lists COM1 and one
//! `LNRO0005` device per virtio-mmio slot: the Debian cloud kernel is built without
//! VIRTIO_MMIO_CMDLINE_DEVICES, so ACPI is how its virtio_mmio driver finds the disk. The MADT
//! gives one local APIC per vCPU and the IO-APIC (the cloud kernel has no MP-table support).

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope,
    IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{check_machine, Error, Machine, MmioSlot};
use crate::layout;

const OEM_ID: [u8; 6] = *b"VDR   ";
const OEM_REVISION: u32 = 1;
/// FADT "Hypervisor Vendor Identity" (ACPI 6.5 table 5.9).
const HYPERVISOR_VENDOR: [u8; 8] = *b"VDRMICRO";
/// DSDT revision 2 or later: AML integers are 64 bits wide (ACPI 6.5 §5.2.11.1).
const DSDT_REVISION: u8 = 6;
/// IA-PC boot architecture flags (ACPI 6.5 table 5.11): bit 2 VGA not present, bit 3 MSI
/// not supported (no PCI), bit 5 CMOS RTC not present. Bit 1 (8042) stays clear so Linux
/// does not probe a keyboard controller vdr only emulates for reset.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// The value that resets the machine when written to the i8042 command port.
const I8042_RESET: u8 = 0xfe;
/// The sleep type of S5 (soft off) that the guest writes into SLP_TYP.
pub(super) const S5_SLEEP_TYPE: u8 = 5;
/// Where the tables may go: the BIOS area up to 1 MiB.
const ACPI_END: u64 = layout::HIMEM_START.0;
/// Tables are placed on 16-byte boundaries (the RSDP's alignment; harmless for the rest).
const TABLE_ALIGN: u64 = 16;

/// Where each table was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    pub rsdp: GuestAddress,
    pub xsdt: GuestAddress,
    pub fadt: GuestAddress,
    pub dsdt: GuestAddress,
    pub madt: GuestAddress,
}

/// Builds the tables for `machine` and writes them into `mem` from [`layout::ACPI_START`].
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    machine: &Machine<'_>,
) -> Result<AcpiTables, Error> {
    // The AML below relies on what this checks (32-bit windows, four-character names).
    check_machine(machine)?;
    let mut place = Placer {
        next: layout::ACPI_START.0,
    };
    let rsdp = place.reserve(Rsdp::len())?;
    let dsdt_bytes = dsdt(machine.virtio_devices);
    let dsdt = place.reserve(dsdt_bytes.len())?;
    let fadt_bytes = fadt(dsdt);
    let fadt = place.reserve(fadt_bytes.len())?;
    let madt_bytes = madt(machine.vcpus);
    let madt = place.reserve(madt_bytes.len())?;
    let mut xsdt_table = XSDT::new(OEM_ID, *b"VDRXSDT ", OEM_REVISION);
    xsdt_table.add_entry(fadt.0);
    xsdt_table.add_entry(madt.0);
    let xsdt_bytes = to_bytes(&xsdt_table);
    let xsdt = place.reserve(xsdt_bytes.len())?;
    let rsdp_bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt.0));

    for (what, addr, bytes) in [
        ("ACPI RSDP", rsdp, &rsdp_bytes),
        ("ACPI DSDT", dsdt, &dsdt_bytes),
        ("ACPI FADT", fadt, &fadt_bytes),
        ("ACPI MADT", madt, &madt_bytes),
        ("ACPI XSDT", xsdt, &xsdt_bytes),
    ] {
        mem.write_slice(bytes, addr)
            .map_err(|source| Error::GuestMemory {
                what,
                addr: addr.0,
                source,
            })?;
    }
    Ok(AcpiTables {
        rsdp,
        xsdt,
        fadt,
        dsdt,
        madt,
    })
}

/// Hands out consecutive, aligned addresses in the ACPI area.
struct Placer {
    next: u64,
}

impl Placer {
    fn reserve(&mut self, len: usize) -> Result<GuestAddress, Error> {
        let at = self.next;
        let end = u64::try_from(len).ok().and_then(|len| at.checked_add(len));
        match end {
            Some(end) if end <= ACPI_END => {
                self.next = end.next_multiple_of(TABLE_ALIGN);
                Ok(GuestAddress(at))
            }
            _ => Err(Error::AcpiTooBig {
                len: usize::try_from(at - layout::ACPI_START.0)
                    .unwrap_or(usize::MAX)
                    .saturating_add(len),
                start: layout::ACPI_START.0,
                end: ACPI_END,
            }),
        }
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT: `\_S5_` and, under `\_SB_`, COM1 and the virtio-mmio devices.
fn dsdt(slots: &[MmioSlot]) -> Vec<u8> {
    let mut aml_code = Vec::new();
    // One element: SLP_TYPa (ACPICA reads SLP_TYPb from the next byte when alone).
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut aml_code);
    let mut devices = com1();
    for (index, slot) in slots.iter().enumerate() {
        virtio_mmio_device(index, slot, &mut devices);
    }
    aml_code.extend(Scope::raw("\\_SB_".into(), devices));

    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"VDRDSDT ",
        OEM_REVISION,
    );
    table.append_slice(&aml_code);
    table.as_slice().to_vec()
}

/// COM1 as a PNP0501 16550 on ports 0x3f8..0x3ff and IRQ 4 (edge, active high).
fn com1() -> Vec<u8> {
    let irq = Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let port = layout::SERIAL_PORT;
    let io = IO::new(port, port, 1, layout::SERIAL_PORT_LEN as u8);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let crs = Name::new("_CRS".into(), &crs);
    to_bytes(&Device::new("COM1".into(), vec![&hid, &uid, &crs]))
}

/// One virtio-mmio transport: `_HID "LNRO0005"` (what Linux's virtio_mmio matches in
/// `virtio_mmio_acpi_match`), its register window and its interrupt.
fn virtio_mmio_device(index: usize, slot: &MmioSlot, sink: &mut Vec<u8>) {
    // check_machine keeps base + size below 4 GiB and the slot count at MAX_MMIO_SLOTS, so the
    // casts and the four-character name are exact.
    let window = Memory32Fixed::new(true, slot.base.0 as u32, slot.size as u32);
    let irq = Interrupt::new(true, true, false, false, slot.irq);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u32;
    let hid = Name::new("_HID".into(), &"LNRO0005");
    let uid = Name::new("_UID".into(), &uid);
    let crs = Name::new("_CRS".into(), &crs);
    let name = format!("V{index:03X}");
    Device::new(Path::new(&name), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// An 8-bit system-I/O register.
fn io_port(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt: GuestAddress) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VDRFACP ", OEM_REVISION)
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        // "Power/sleep button is a control method device, or absent": there is no fixed one.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port(layout::I8042_COMMAND_PORT);
    fadt.reset_value = I8042_RESET;
    fadt.sleep_control_reg = io_port(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    to_bytes(&fadt.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"VDRAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The IO-APIC takes the first id after the local APICs; its pins are GSIs 0..23.
    madt.add_structure(IoApic::new(vcpus, layout::IOAPIC_START as u32, 0));
    to_bytes(&madt)
}
