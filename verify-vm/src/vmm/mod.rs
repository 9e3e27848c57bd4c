//! The microVM, in Firecracker's shape: guest RAM below the 32-bit MMIO gap and the rest
//! above 4 GiB, the in-kernel PIC, IO-APIC and PIT, a 16550 console on COM1, fixed ports
//! that stop the VM (vdr's exit port, the i8042 reset, ACPI sleep), and a bus of MMIO
//! devices. Callers load a guest into [`Vm::memory`], add their devices, and [`Vm::run`]
//! it from an [`EntryPoint`] in 64-bit mode.
//!
//! Not for: guests that need a BIOS, real-mode boot, PCI, or more than one run per VM.

mod bus;
mod console;
pub mod exit;
mod run;
mod vcpu;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use bus::{AddressSpace, Bus, InsertError};
pub use console::{MAX_CONSOLE_BYTES, MAX_LINE_BYTES};
pub use vcpu::EntryPoint;

use crate::backend::{ConsoleLine, GuestExit};
use crate::devices::{IrqLine, MmioDevice};
use crate::layout;
use console::{ConsoleLog, SerialDevice};

/// Where KVM keeps the TSS for real-mode emulation: three pages below the 4 GiB BIOS ROM,
/// inside the MMIO gap where no RAM is (Firecracker's KVM_TSS_ADDRESS).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Smallest RAM that holds the boot structures and a guest at 1 MiB.
const MIN_MEMORY_MIB: u32 = 16;
/// Largest RAM vdr asks for; the guests it runs need far less.
const MAX_MEMORY_MIB: u32 = 64 * 1024;
/// vCPU ids double as APIC ids; keep well inside xAPIC range.
const MAX_VCPUS: u8 = 32;

/// How big the VM is and how long it may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The run is stopped and reported as [`GuestExit::Timeout`] after this long.
    pub timeout: Duration,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub console: Vec<ConsoleLine>,
    pub exit: GuestExit,
    /// The byte the guest wrote to [`layout::EXIT_PORT`], when that stopped it.
    pub exit_status: Option<u8>,
    pub elapsed: Duration,
    /// When the first console line started, counted from the start of the run.
    pub first_console_line: Option<Duration>,
    /// Console bytes of the oldest lines dropped to keep the last [`MAX_CONSOLE_BYTES`].
    pub console_dropped_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u32,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot create the eventfd for IRQ {irq}: {source}")]
    EventFd { irq: u32, source: io::Error },
    #[error("cannot place the device at {base:#x}: {source}")]
    Bus { base: u64, source: InsertError },
    #[error("the device at {base:#x}+{len:#x} overlaps guest RAM")]
    DeviceOverRam { base: u64, len: u64 },
    #[error("{what}")]
    Setup { what: &'static str },
    #[error("KVM refused to set boot MSR {index:#x}")]
    MsrRefused { index: u32 },
    #[error("the VM has already run; create a new one")]
    AlreadyRan,
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Thread { index: usize, source: io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickSignal(String),
}

/// An interrupt line wired to the in-kernel irqchip through an irqfd.
struct EventFdIrq {
    event: EventFd,
}

impl IrqLine for EventFdIrq {
    fn trigger(&self) -> io::Result<()> {
        self.event.write(1)
    }
}

/// A microVM, ready to run once.
///
/// Fields drop in declaration order: vCPUs and devices before the VM, the VM before the
/// RAM it maps.
pub struct Vm {
    /// Emptied by [`Vm::run`].
    vcpus: Vec<VcpuFd>,
    bus: Bus,
    vm_fd: VmFd,
    memory: GuestMemoryMmap,
    console: Arc<Mutex<ConsoleLog>>,
    config: VmConfig,
}

impl Vm {
    /// Creates the VM, its memory, irqchip, PIT, serial console and vCPUs.
    pub fn new(config: &VmConfig) -> Result<Vm, Error> {
        validate(config)?;
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let kvm_err = |what: &'static str| move |source| Error::Kvm { what, source };
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let memory = guest_memory(config.memory_mib)?;
        register_memory(&vm_fd, &memory)?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let supported_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = vcpu::cpuid_for(supported_cpuid.clone(), index, config.vcpus);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            vcpu::setup_msrs(&vcpu)?;
            vcpu::setup_fpu(&vcpu)?;
            vcpu::setup_lapic(&vcpu)?;
            vcpus.push(vcpu);
        }

        let mut vm = Vm {
            config: config.clone(),
            vm_fd,
            memory,
            vcpus,
            bus: Bus::default(),
            console: Arc::new(Mutex::new(ConsoleLog::default())),
        };
        let serial_irq = vm.irq_line(layout::SERIAL_IRQ)?;
        let serial = SerialDevice::new(serial_irq, vm.console.clone());
        let base = u64::from(layout::SERIAL_PORT);
        vm.bus
            .pio
            .insert(base, u64::from(layout::SERIAL_PORT_LEN), Box::new(serial))
            .map_err(|source| Error::Bus { base, source })?;
        Ok(vm)
    }

    /// Guest RAM; load the guest and its boot data here before [`Vm::run`].
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// An edge-triggered line into the in-kernel PIC/IO-APIC at `irq` (a GSI).
    pub fn irq_line(&self, irq: u32) -> Result<Arc<dyn IrqLine>, Error> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd { irq, source })?;
        self.vm_fd
            .register_irqfd(&event, irq)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD",
                source,
            })?;
        Ok(Arc::new(EventFdIrq { event }))
    }

    /// Places `device` at `[base, base + len)` in the MMIO space (normally in the gap,
    /// [`layout::MMIO_GAP_START`]..[`layout::MMIO_GAP_END`]). Overlaps with another device
    /// or with RAM (where KVM would never exit to it) are refused.
    pub fn add_mmio_device(
        &mut self,
        base: GuestAddress,
        len: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), Error> {
        let end = base.0.saturating_add(len);
        if self.memory.iter().any(|ram| {
            base.0 < ram.start_addr().0.saturating_add(ram.len()) && ram.start_addr().0 < end
        }) {
            return Err(Error::DeviceOverRam { base: base.0, len });
        }
        self.bus
            .mmio
            .insert(base.0, len, device)
            .map_err(|source| Error::Bus {
                base: base.0,
                source,
            })
    }

    /// Calls `echo` with each console line as the guest finishes it (live streaming).
    pub fn set_console_echo(&mut self, echo: crate::backend::ConsoleEcho) {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_echo(echo);
    }

    /// Stops the run (as [`GuestExit::Stopped`]) the grace `stop_when` returns after a
    /// console line for which it returns one.
    pub fn set_stop_when(&mut self, stop_when: crate::backend::StopWhen) {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_stop_when(stop_when);
    }

    /// Runs the guest from `entry` on vCPU 0 (the others wait for INIT/SIPI) until it
    /// powers off, resets, fails, or the configured timeout passes.
    ///
    /// First writes the boot GDT ([`layout::BOOT_GDT_START`]), the empty IDT and the
    /// identity page tables ([`layout::PML4_START`] up to 0xf000) over guest memory.
    pub fn run(&mut self, entry: EntryPoint) -> Result<RunOutcome, Error> {
        let (boot, application) = self.vcpus.split_first().ok_or(Error::AlreadyRan)?;
        vcpu::write_boot_tables(&self.memory)?;
        vcpu::setup_boot_cpu(boot, &entry)?;
        for vcpu in application {
            vcpu::setup_application_cpu(vcpu)?;
        }
        let vcpus = std::mem::take(&mut self.vcpus);

        let start = Instant::now();
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart(start);
        let bus = Arc::new(std::mem::take(&mut self.bus));
        let stop_at = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_at();
        let result = run::run_vcpus(vcpus, bus.clone(), self.config.timeout, &stop_at);
        let elapsed = start.elapsed();
        // Every vCPU thread has been joined (or detached after a failed kick, in which
        // case its devices stay with it), so this is normally the only reference.
        if let Ok(bus) = Arc::try_unwrap(bus) {
            self.bus = bus;
        }
        let (exit, exit_status) = result?;
        let (console, console_dropped_bytes) = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(RunOutcome {
            first_console_line: console.first().map(|line| line.at),
            console,
            exit,
            exit_status,
            elapsed,
            console_dropped_bytes,
        })
    }
}

fn validate(config: &VmConfig) -> Result<(), Error> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&config.memory_mib) {
        return Err(Error::Config(format!(
            "memory {} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB",
            config.memory_mib
        )));
    }
    if !(1..=MAX_VCPUS).contains(&config.vcpus) {
        return Err(Error::Config(format!(
            "{} vCPUs is outside 1..={MAX_VCPUS}",
            config.vcpus
        )));
    }
    if config.timeout.is_zero() {
        return Err(Error::Config("the timeout is zero".into()));
    }
    Ok(())
}

/// The guest RAM ranges: up to the MMIO gap, then the rest from 4 GiB.
fn memory_ranges(memory_mib: u32) -> Vec<(GuestAddress, usize)> {
    let total = u64::from(memory_mib) << 20;
    let low = total.min(layout::MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if total > low {
        ranges.push((GuestAddress(layout::MMIO_GAP_END), (total - low) as usize));
    }
    ranges
}

fn guest_memory(memory_mib: u32) -> Result<GuestMemoryMmap, Error> {
    GuestMemoryMmap::from_ranges(&memory_ranges(memory_mib)).map_err(|source| Error::Memory {
        mib: memory_mib,
        source,
    })
}

fn register_memory(vm_fd: &VmFd, memory: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|source| Error::GuestMemory {
                what: "host address of a RAM region",
                source,
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `memory`,
        // which the Vm keeps for as long as the VmFd (see the field order of `Vm`).
        unsafe { vm_fd.set_user_memory_region(region) }.map_err(|source| Error::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_below_the_gap_is_one_range() {
        assert_eq!(memory_ranges(256), [(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn memory_beyond_the_gap_continues_at_4_gib() {
        let ranges = memory_ranges(4096);
        assert_eq!(ranges[0], (GuestAddress(0), 0xc000_0000));
        assert_eq!(ranges[1], (GuestAddress(1 << 32), 0x4000_0000));
    }

    #[test]
    fn configurations_outside_the_limits_are_refused() {
        let good = VmConfig {
            memory_mib: 64,
            vcpus: 1,
            timeout: Duration::from_secs(1),
        };
        assert!(validate(&good).is_ok());
        for bad in [
            VmConfig {
                memory_mib: 1,
                ..good.clone()
            },
            VmConfig {
                vcpus: 0,
                ..good.clone()
            },
            VmConfig {
                timeout: Duration::ZERO,
                ..good.clone()
            },
        ] {
            assert!(matches!(validate(&bad), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
