//! vCPU setup for the Linux x86_64 64-bit boot protocol (Documentation/arch/x86/boot.rst,
//! "64-bit boot protocol"), in the shape of Firecracker's arch/x86_64 regs.rs: a flat GDT,
//! identity page tables for the first 4 GiB with 2 MiB pages, long mode on, the boot CPU
//! at the entry point; CPUID passed through with the APIC ID per vCPU; boot MSRs; the FPU
//! reset; the LAPIC wired for the in-kernel PIC (LINT0 ExtINT, LINT1 NMI).

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::Error;
use crate::layout;

/// Where the boot vCPU starts and what it finds in its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// The first instruction, run in 64-bit mode.
    pub rip: GuestAddress,
    /// Linux: the zero page ([`layout::ZERO_PAGE_START`]).
    pub rsi: u64,
    /// The probe guest: its parameter block.
    pub rdi: u64,
}

/// GDT entries: null, 64-bit code, data, TSS (Firecracker's boot GDT).
const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_SEGMENT: usize = 1;
const DATA_SEGMENT: usize = 2;
const TSS_SEGMENT: usize = 3;

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable, page size (2 MiB).
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;

/// A GDT descriptor from the packed access/flags word, base and limit (Intel SDM vol. 3
/// §3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment register value for GDT entry `index`.
fn segment(entry: u64, index: usize) -> kvm_segment {
    let bit = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let granularity = bit(55, 1);
    let raw_limit = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47, 1);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: limit as u32,
        selector: (index * 8) as u16,
        type_: bit(40, 0xf),
        present,
        dpl: bit(45, 0x3),
        db: bit(54, 1),
        s: bit(44, 1),
        l: bit(53, 1),
        g: granularity,
        avl: bit(52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The identity map covers the first 4 GiB with 2 MiB pages: RAM below the gap and the
/// MMIO gap itself, so a guest that never builds its own page tables (the probe guest)
/// reaches its virtio-mmio registers. Firecracker maps 1 GiB; the extra page directories
/// take the three pages after [`layout::PDE_START`] (0xc000..0xf000), which nothing else
/// in the layout uses.
const IDENTITY_MAPPED_GIB: u64 = 4;
const PAGE_SIZE: u64 = 4096;
const ENTRIES_PER_TABLE: u64 = 512;

/// Writes the GDT, the empty IDT and the identity page tables into guest memory (once per
/// VM; every vCPU shares them).
pub fn write_boot_tables(memory: &GuestMemoryMmap) -> Result<(), Error> {
    let write = |value: u64, at: GuestAddress, what: &'static str| {
        memory
            .write_obj(value, at)
            .map_err(|source| Error::GuestMemory { what, source })
    };
    for (index, entry) in BOOT_GDT.iter().enumerate() {
        write(
            *entry,
            layout::BOOT_GDT_START.unchecked_add(index as u64 * 8),
            "boot GDT",
        )?;
    }
    write(0, layout::BOOT_IDT_START, "boot IDT")?;
    write(
        layout::PDPTE_START.0 | PTE_PRESENT_WRITABLE,
        layout::PML4_START,
        "PML4",
    )?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let directory = layout::PDE_START.unchecked_add(gib * PAGE_SIZE);
        write(
            directory.0 | PTE_PRESENT_WRITABLE,
            layout::PDPTE_START.unchecked_add(gib * 8),
            "PDPTE",
        )?;
        for index in 0..ENTRIES_PER_TABLE {
            let page = (gib * ENTRIES_PER_TABLE + index) << 21;
            write(
                page | PDE_HUGE_PAGE | PTE_PRESENT_WRITABLE,
                directory.unchecked_add(index * 8),
                "PDE",
            )?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `entry`.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: &EntryPoint) -> Result<(), Error> {
    let kvm = |what: &'static str| move |source| Error::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let data = segment(BOOT_GDT[DATA_SEGMENT], DATA_SEGMENT);
    sregs.cs = segment(BOOT_GDT[CODE_SEGMENT], CODE_SEGMENT);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_GDT[TSS_SEGMENT], TSS_SEGMENT);
    sregs.gdt.base = layout::BOOT_GDT_START.0;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START.0;
    sregs.idt.limit = 7;
    sregs.cr3 = layout::PML4_START.0;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip.0,
        rsp: layout::BOOT_STACK_POINTER.0,
        rbp: layout::BOOT_STACK_POINTER.0,
        rsi: entry.rsi,
        rdi: entry.rdi,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(kvm("KVM_SET_MP_STATE"))
}

/// Leaves an application processor waiting for INIT/SIPI from the boot CPU.
pub fn setup_application_cpu(vcpu: &VcpuFd) -> Result<(), Error> {
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_UNINITIALIZED,
    })
    .map_err(|source| Error::Kvm {
        what: "KVM_SET_MP_STATE",
        source,
    })
}

/// CPUID leaves.
const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_EXTENDED_TOPOLOGY_V2: u32 = 0x1f;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, HTT: EBX[23:16] is meaningful.
const EDX_HTT: u32 = 1 << 28;

/// The host's supported CPUID with this vCPU's APIC ID and the hypervisor bit (what
/// Firecracker's cpuid normalization does for these leaves).
pub fn cpuid_for(mut cpuid: CpuId, cpu_index: u8, cpu_count: u8) -> CpuId {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_index) << 24)
                    | (u32::from(cpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if cpu_count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXTENDED_TOPOLOGY | LEAF_EXTENDED_TOPOLOGY_V2 => {
                entry.edx = u32::from(cpu_index);
            }
            _ => {}
        }
    }
    cpuid
}

/// MSR numbers (Intel SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// Sets the MSRs Firecracker sets at boot; KVM must accept all of them (it does, on
/// kvm_pvm too).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Setup {
        what: "boot MSR list",
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| Error::Kvm {
        what: "KVM_SET_MSRS",
        source,
    })?;
    // KVM_SET_MSRS stops at the first MSR it refuses and returns how many it set.
    match entries.get(set) {
        Some(refused) => Err(Error::MsrRefused {
            index: refused.index,
        }),
        None => Ok(()),
    }
}

/// x87 control word and MXCSR after FNINIT / reset (Intel SDM vol. 1 §8.1.5, §10.2.3).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| Error::Kvm {
        what: "KVM_SET_FPU",
        source,
    })
}

/// LAPIC local vector table registers and delivery modes (Intel SDM vol. 3 §11.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_EXTINT: u32 = 0x7;
const DELIVERY_MODE_NMI: u32 = 0x4;

fn lapic_register(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = state.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_register(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(register: u32, mode: u32) -> u32 {
    (register & !0x700) | (mode << 8)
}

/// LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 is the NMI line, as a PC's
/// BIOS leaves them (the MP spec's virtual wire mode).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), Error> {
    let kvm = |what: &'static str| move |source| Error::Kvm { what, source };
    let mut state = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lint0 = lapic_register(&state, APIC_LVT0);
    set_lapic_register(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lint0, DELIVERY_MODE_EXTINT),
    );
    let lint1 = lapic_register(&state, APIC_LVT1);
    set_lapic_register(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lint1, DELIVERY_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_gdt_segments_are_flat_64_bit_code_and_data() {
        let code = segment(BOOT_GDT[CODE_SEGMENT], CODE_SEGMENT);
        assert_eq!((code.selector, code.l, code.db, code.present), (8, 1, 0, 1));
        assert_eq!(
            (code.type_, code.s, code.g, code.limit),
            (0xb, 1, 1, 0xffff_ffff)
        );
        let data = segment(BOOT_GDT[DATA_SEGMENT], DATA_SEGMENT);
        assert_eq!(
            (data.selector, data.l, data.db, data.type_),
            (0x10, 0, 1, 0x3)
        );
        let null = segment(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn gdt_entry_packs_base_and_limit() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        let entry = gdt_entry(0x808b, 0x1234_5678, 0xabcde);
        assert_eq!(segment(entry, 3).base, 0x1234_5678);
    }

    #[test]
    fn cpuid_carries_the_apic_id_count_and_hypervisor_bit() {
        let entry = |function, ebx, edx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            ebx,
            edx,
            ..Default::default()
        };
        let host = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0xff01_0800, 0),
            entry(LEAF_EXTENDED_TOPOLOGY, 0, 7),
            entry(0x8000_0001, 0x1234, 0x5678),
        ])
        .unwrap();
        let cpuid = cpuid_for(host, 1, 2);
        let leaves = cpuid.as_slice();
        assert_eq!(leaves[0].ebx, 0x0102_0800, "APIC ID 1, 2 logical CPUs");
        assert_ne!(leaves[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaves[0].edx & EDX_HTT, 0);
        assert_eq!(leaves[1].edx, 1, "x2APIC ID");
        assert_eq!((leaves[2].ebx, leaves[2].edx), (0x1234, 0x5678));
    }

    #[test]
    fn lapic_lint_delivery_modes_keep_the_other_bits() {
        let mut state = kvm_lapic_state::default();
        set_lapic_register(&mut state, APIC_LVT0, 0x0001_0700);
        let lint0 = with_delivery_mode(lapic_register(&state, APIC_LVT0), DELIVERY_MODE_NMI);
        assert_eq!(lint0, 0x0001_0400);
    }
}
