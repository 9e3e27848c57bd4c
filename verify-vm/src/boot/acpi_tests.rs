//! The ACPI tables read back from guest memory the way Linux finds them (RSDP → XSDT →
//! FADT/MADT, FADT → DSDT), checked field by field and by ACPICA's disassembler.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::test_support::guest_memory;
use super::*;

fn one_disk() -> MmioSlot {
    MmioSlot {
        base: layout::VIRTIO_MMIO_BASE,
        size: layout::MMIO_DEVICE_SIZE,
        irq: layout::VIRTIO_IRQ_BASE,
    }
}

fn machine(memory_mib: u32, vcpus: u8, slots: &[MmioSlot]) -> Machine<'_> {
    Machine {
        memory_mib,
        vcpus,
        virtio_devices: slots,
    }
}

/// A whole ACPI table (header length says how long) read from guest memory.
fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
    let mut table = vec![0u8; len as usize];
    mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
    table
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The tables of a 3-vCPU machine with two disks, as Linux's ACPI code finds them.
struct Found {
    rsdp: Vec<u8>,
    xsdt: Vec<u8>,
    fadt: Vec<u8>,
    dsdt: Vec<u8>,
    madt: Vec<u8>,
}

fn tables_of_three_vcpus_two_disks() -> Found {
    let mem = guest_memory(128);
    let slots = [
        one_disk(),
        MmioSlot {
            base: GuestAddress(layout::VIRTIO_MMIO_BASE.0 + layout::MMIO_DEVICE_SIZE),
            size: layout::MMIO_DEVICE_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + 1,
        },
    ];
    write_acpi_tables(&mem, &machine(128, 3, &slots)).unwrap();
    let mut rsdp = vec![0u8; 36];
    mem.read_slice(&mut rsdp, layout::ACPI_START).unwrap();
    let xsdt = read_table(&mem, u64_at(&rsdp, 24));
    let pointed: Vec<Vec<u8>> = (36..xsdt.len())
        .step_by(8)
        .map(|at| read_table(&mem, u64_at(&xsdt, at)))
        .collect();
    let find = |sig: &[u8]| pointed.iter().find(|t| &t[..4] == sig).unwrap().clone();
    let fadt = find(b"FACP");
    let madt = find(b"APIC");
    let dsdt = read_table(&mem, u64_at(&fadt, 140));
    Found {
        rsdp,
        xsdt,
        fadt,
        dsdt,
        madt,
    }
}

#[test]
fn every_acpi_table_checksums_to_zero() {
    let t = tables_of_three_vcpus_two_disks();

    assert_eq!(&t.rsdp[..8], b"RSD PTR ");
    assert!(sums_to_zero(&t.rsdp[..20]), "RSDP v1 checksum");
    assert!(sums_to_zero(&t.rsdp), "RSDP extended checksum");
    for table in [&t.xsdt, &t.fadt, &t.dsdt, &t.madt] {
        assert!(
            sums_to_zero(table),
            "{}",
            String::from_utf8_lossy(&table[..4])
        );
    }
}

#[test]
fn rsdp_leads_through_the_xsdt_to_fadt_madt_and_dsdt() {
    let t = tables_of_three_vcpus_two_disks();

    assert_eq!(t.rsdp[15], 2, "ACPI 2.0+ RSDP");
    assert_eq!(&t.xsdt[..4], b"XSDT");
    assert_eq!(t.xsdt.len(), 36 + 2 * 8);
    assert_eq!(&t.dsdt[..4], b"DSDT");
    assert_eq!(t.fadt.len(), 276, "ACPI 6 FADT length");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = tables_of_three_vcpus_two_disks();

    let flags = u32_at(&t.fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let iapc = u16::from_le_bytes([t.fadt[109], t.fadt[110]]);
    assert_eq!(
        iapc & 0b10_1110,
        0b10_1100,
        "no VGA, no MSI, no CMOS, no 8042"
    );
    // Reset register GAS at 116: system I/O, 8 bits, byte access, port 0x64; value 0xfe.
    assert_eq!(&t.fadt[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&t.fadt, 120), 0x64);
    assert_eq!(t.fadt[128], 0xfe);
    // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
    assert_eq!(&t.fadt[244..248], &[1, 8, 0, 1]);
    assert_eq!(
        u64_at(&t.fadt, 248),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT)
    );
    assert_eq!(
        u64_at(&t.fadt, 260),
        u64::from(layout::ACPI_SLEEP_STATUS_PORT)
    );
}

#[test]
fn dsdt_describes_s5_com1_and_each_virtio_mmio_slot() {
    let t = tables_of_three_vcpus_two_disks();

    // Name(_S5_, Package(1) { 5 }): NameOp "_S5_" PackageOp len 1 BytePrefix 5.
    assert!(contains(&t.dsdt, b"\x08_S5_\x12\x04\x01\x0a\x05"));
    assert!(contains(&t.dsdt, b"COM1"));
    assert_eq!(t.dsdt.windows(8).filter(|w| w == b"LNRO0005").count(), 2);
    for (n, base) in [(0u32, 0xd000_0000u32), (1, 0xd000_1000)] {
        let mut window = vec![0x86, 0x09, 0x00, 0x01];
        window.extend_from_slice(&base.to_le_bytes());
        window.extend_from_slice(&0x1000u32.to_le_bytes());
        assert!(contains(&t.dsdt, &window), "Memory32Fixed of slot {n}");
        // Extended interrupt: consumer, edge, active high, exclusive; one GSI.
        let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        irq.extend_from_slice(&(5 + n).to_le_bytes());
        assert!(contains(&t.dsdt, &irq), "interrupt of slot {n}");
    }
}

#[test]
fn madt_lists_one_enabled_local_apic_per_vcpu_and_the_io_apic() {
    let t = tables_of_three_vcpus_two_disks();

    assert_eq!(u32_at(&t.madt, 36), layout::APIC_START as u32);
    let mut apic_ids = Vec::new();
    let mut io_apic = None;
    let mut at = 44;
    while at < t.madt.len() {
        let (kind, len) = (t.madt[at], usize::from(t.madt[at + 1]));
        match kind {
            0 => {
                assert_eq!(u32_at(&t.madt, at + 4), 1, "enabled");
                apic_ids.push(t.madt[at + 3]);
            }
            1 => {
                io_apic = Some((
                    t.madt[at + 2],
                    u32_at(&t.madt, at + 4),
                    u32_at(&t.madt, at + 8),
                ))
            }
            other => panic!("unexpected MADT structure {other}"),
        }
        at += len;
    }
    assert_eq!(apic_ids, [0, 1, 2]);
    assert_eq!(io_apic, Some((3, layout::IOAPIC_START as u32, 0)));
}

/// ACPICA's own disassembler is the oracle: it must decode every table without errors and
/// see the devices and registers as Linux's ACPICA will.
#[test]
fn acpica_disassembles_the_tables_vdr_writes() {
    if std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .is_err()
    {
        println!("SKIP: iasl (acpica-tools) is not installed");
        return;
    }
    let t = tables_of_three_vcpus_two_disks();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (name, bytes) in [
        ("facp", &t.fadt),
        ("dsdt", &t.dsdt),
        ("apic", &t.madt),
        ("xsdt", &t.xsdt),
    ] {
        let path = dir.path().join(format!("{name}.dat"));
        std::fs::write(&path, bytes).unwrap();

        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&path)
            .output()
            .unwrap();

        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {name}: {log}");
        assert!(
            !log.contains("Error") && !log.contains("Warning"),
            "{name}: {log}"
        );
        text += &std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
    }

    for expected in [
        "Hardware Reduced (V5) : 1",
        "Name (_S5, Package",
        "\"LNRO0005\"",
        "0xD0001000",
        "EisaId (\"PNP0501\")",
        "Local Apic ID : 02",
        "I/O Apic ID : 03",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
}

#[test]
fn acpi_tables_alone_refuse_a_slot_the_dsdt_cannot_describe() {
    let mem = guest_memory(64);
    let slots = vec![one_disk(); MAX_MMIO_SLOTS + 1];

    let err = write_acpi_tables(&mem, &machine(64, 1, &slots)).unwrap_err();

    assert!(matches!(err, Error::TooManySlots(65)), "{err}");
}
