//! What a vCPU exit means: a pure function from the exit and the device bus to "continue"
//! or "stop the VM because ...", tested without /dev/kvm. Only the vCPU run loop
//! (`vmm::run`) touches a real vCPU.
//!
//! The fixed ports handled here, not by bus devices, are the ones that stop the VM: vdr's
//! exit port (like qemu's isa-debug-exit), the i8042 reset line, and the ACPI
//! hardware-reduced sleep control register.

use kvm_ioctls::VcpuExit;

use super::bus::Bus;
use crate::backend::GuestExit;
use crate::layout;

/// The exits vdr distinguishes; data slices borrow the vCPU's `kvm_run` page.
#[derive(Debug)]
pub enum VmExit<'a> {
    IoIn {
        port: u16,
        data: &'a mut [u8],
    },
    IoOut {
        port: u16,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    /// A triple fault (or another shutdown condition) on this vCPU.
    Shutdown,
    /// KVM could not enter the guest; `reason` is the hardware's entry-failure reason.
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    /// KVM's emulator gave up (suberror 1 is an instruction it cannot emulate).
    InternalError {
        suberror: u32,
    },
    /// KVM_SYSTEM_EVENT_* (1 shutdown, 2 reset, 3 crash).
    SystemEvent {
        kind: u32,
    },
    /// Any other exit, by name.
    Other(&'static str),
}

impl<'a> From<VcpuExit<'a>> for VmExit<'a> {
    fn from(exit: VcpuExit<'a>) -> Self {
        match exit {
            VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
            VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
            VcpuExit::Hlt => VmExit::Hlt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
            // The suberror lives in kvm_run, which this borrow cannot reach; the run loop
            // reads it (see `run::internal_error_suberror`).
            VcpuExit::InternalError => VmExit::InternalError { suberror: 0 },
            VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent { kind },
            VcpuExit::Unknown => VmExit::Other("unknown"),
            VcpuExit::Exception => VmExit::Other("exception"),
            VcpuExit::Debug(_) => VmExit::Other("debug"),
            VcpuExit::IrqWindowOpen => VmExit::Other("irq-window-open"),
            VcpuExit::Intr => VmExit::Other("intr"),
            VcpuExit::Nmi => VmExit::Other("nmi"),
            VcpuExit::IoapicEoi(_) => VmExit::Other("ioapic-eoi"),
            VcpuExit::Hypercall(_) => VmExit::Other("hypercall"),
            VcpuExit::X86Rdmsr(_) => VmExit::Other("rdmsr"),
            VcpuExit::X86Wrmsr(_) => VmExit::Other("wrmsr"),
            VcpuExit::MemoryFault { .. } => VmExit::Other("memory-fault"),
            _ => VmExit::Other("unsupported"),
        }
    }
}

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    /// Stop every vCPU. `status` is the byte written to the exit port, if that stopped it.
    Stop {
        exit: GuestExit,
        status: Option<u8>,
    },
}

impl ExitAction {
    fn stop(exit: GuestExit) -> Self {
        ExitAction::Stop { exit, status: None }
    }
}

/// i8042 command: pulse the CPU reset line (Linux `reboot=k`).
const I8042_RESET: u8 = 0xfe;
/// i8042 status as read by the guest: output buffer full, input buffer empty. Linux's
/// i8042_flush() then reads 16 bytes, never sees the buffer drain and reports "No
/// controller found" within a millisecond, and kb_wait() before a reset never waits.
const I8042_STATUS: u8 = 0x01;
/// SLP_EN in the ACPI sleep control register (ACPI 6.4 §4.8.3.7).
const SLEEP_ENABLE: u8 = 1 << 5;
/// The SLP_TYP vdr's DSDT gives \_S5 (soft off).
const SLEEP_TYPE_S5: u8 = 5;
/// KVM_SYSTEM_EVENT_* from linux/kvm.h.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Serves one exit. Unclaimed port reads return 0xff (an empty ISA bus), unclaimed MMIO
/// reads return zeros; unclaimed writes are dropped.
pub fn handle(exit: VmExit<'_>, bus: &Bus) -> ExitAction {
    match exit {
        VmExit::IoOut { port, data } => io_out(port, data, bus),
        VmExit::IoIn { port, data } => {
            io_in(port, data, bus);
            ExitAction::Continue
        }
        VmExit::MmioRead { addr, data } => {
            if !bus.mmio.read(addr, data) {
                data.fill(0);
            }
            ExitAction::Continue
        }
        VmExit::MmioWrite { addr, data } => {
            bus.mmio.write(addr, data);
            ExitAction::Continue
        }
        // With the in-kernel irqchip KVM handles HLT itself; an exit here means nothing
        // will wake the vCPU, which is a stop, as in Firecracker.
        VmExit::Hlt => ExitAction::stop(GuestExit::Failed(
            "the guest halted with nothing to wake it (KVM_EXIT_HLT)".into(),
        )),
        VmExit::Shutdown => ExitAction::stop(GuestExit::Reset),
        VmExit::FailEntry { reason, cpu } => ExitAction::stop(GuestExit::Failed(format!(
            "KVM could not enter the guest (hardware entry failure reason {reason:#x} on \
             host CPU {cpu})"
        ))),
        VmExit::InternalError { suberror } => ExitAction::stop(GuestExit::Failed(format!(
            "KVM internal error, suberror {suberror}{}",
            if suberror == 1 {
                " (an instruction KVM cannot emulate)"
            } else {
                ""
            }
        ))),
        VmExit::SystemEvent { kind } => ExitAction::stop(match kind {
            SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
            SYSTEM_EVENT_RESET => GuestExit::Reset,
            SYSTEM_EVENT_CRASH => GuestExit::Failed("the guest crashed (system event)".into()),
            other => GuestExit::Failed(format!("unknown KVM system event {other}")),
        }),
        VmExit::Other(name) => {
            ExitAction::stop(GuestExit::Failed(format!("unexpected vCPU exit: {name}")))
        }
    }
}

fn io_out(port: u16, data: &[u8], bus: &Bus) -> ExitAction {
    let first = data.first().copied();
    match (port, first) {
        (layout::EXIT_PORT, Some(status)) => ExitAction::Stop {
            exit: GuestExit::PowerOff,
            status: Some(status),
        },
        (layout::I8042_COMMAND_PORT, Some(I8042_RESET)) => ExitAction::stop(GuestExit::Reset),
        (layout::ACPI_SLEEP_CONTROL_PORT, Some(value))
            if value & SLEEP_ENABLE != 0 && (value >> 2) & 0x7 == SLEEP_TYPE_S5 =>
        {
            ExitAction::stop(GuestExit::PowerOff)
        }
        _ => {
            bus.pio.write(u64::from(port), data);
            ExitAction::Continue
        }
    }
}

fn io_in(port: u16, data: &mut [u8], bus: &Bus) {
    match port {
        layout::I8042_COMMAND_PORT => data.fill(I8042_STATUS),
        layout::I8042_DATA_PORT | layout::ACPI_SLEEP_STATUS_PORT => data.fill(0),
        layout::ACPI_SLEEP_CONTROL_PORT => data.fill(0),
        _ => {
            if !bus.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::MmioDevice;

    /// One access: "read" or "write", the offset, the data.
    type Access = (&'static str, u64, Vec<u8>);

    /// Records accesses; reads return the low byte of the offset.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Access>>>);

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.0.lock().unwrap().push(("read", offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(("write", offset, data.to_vec()));
        }
    }

    fn bus_with_mmio_recorder() -> (Bus, Recorder) {
        let recorder = Recorder::default();
        let mut bus = Bus::default();
        bus.mmio
            .insert(
                layout::VIRTIO_MMIO_BASE.0,
                layout::MMIO_DEVICE_SIZE,
                Box::new(recorder.clone()),
            )
            .unwrap();
        (bus, recorder)
    }

    fn out(port: u16, value: u8, bus: &Bus) -> ExitAction {
        handle(
            VmExit::IoOut {
                port,
                data: &[value],
            },
            bus,
        )
    }

    fn stopped(exit: GuestExit) -> ExitAction {
        ExitAction::Stop { exit, status: None }
    }

    #[test]
    fn exit_port_write_powers_off_with_the_status_byte() {
        assert_eq!(
            out(layout::EXIT_PORT, 42, &Bus::default()),
            ExitAction::Stop {
                exit: GuestExit::PowerOff,
                status: Some(42)
            }
        );
    }

    #[test]
    fn i8042_reset_command_resets_and_other_commands_continue() {
        let bus = Bus::default();
        assert_eq!(
            out(layout::I8042_COMMAND_PORT, 0xfe, &bus),
            stopped(GuestExit::Reset)
        );
        assert_eq!(
            out(layout::I8042_COMMAND_PORT, 0x20, &bus),
            ExitAction::Continue
        );
    }

    #[test]
    fn i8042_status_reads_let_the_linux_probe_give_up_at_once() {
        let mut status = [0u8];
        handle(
            VmExit::IoIn {
                port: layout::I8042_COMMAND_PORT,
                data: &mut status,
            },
            &Bus::default(),
        );
        // Output buffer full (flush never drains), input buffer empty (no wait to write).
        assert_eq!(status[0] & 0x01, 0x01);
        assert_eq!(status[0] & 0x02, 0);
    }

    #[test]
    fn acpi_sleep_control_powers_off_only_for_s5_with_sleep_enable() {
        let bus = Bus::default();
        let port = layout::ACPI_SLEEP_CONTROL_PORT;
        assert_eq!(
            out(port, (5 << 2) | (1 << 5), &bus),
            stopped(GuestExit::PowerOff)
        );
        assert_eq!(out(port, 5 << 2, &bus), ExitAction::Continue);
        assert_eq!(out(port, (3 << 2) | (1 << 5), &bus), ExitAction::Continue);
        let mut status = [0xaau8];
        handle(
            VmExit::IoIn {
                port: layout::ACPI_SLEEP_STATUS_PORT,
                data: &mut status,
            },
            &bus,
        );
        assert_eq!(status, [0]);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_ignore_writes() {
        let bus = Bus::default();
        let mut data = [0u8; 2];
        let action = handle(
            VmExit::IoIn {
                port: 0x80,
                data: &mut data,
            },
            &bus,
        );
        assert_eq!(action, ExitAction::Continue);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(out(0x80, 0x12, &bus), ExitAction::Continue);
    }

    #[test]
    fn mmio_accesses_reach_the_device_at_their_offset() {
        let (bus, recorder) = bus_with_mmio_recorder();
        let base = layout::VIRTIO_MMIO_BASE.0;
        let mut data = [0u8; 4];
        handle(
            VmExit::MmioRead {
                addr: base + 0x70,
                data: &mut data,
            },
            &bus,
        );
        assert_eq!(data, [0x70; 4]);
        handle(
            VmExit::MmioWrite {
                addr: base + 0x30,
                data: &[1, 2],
            },
            &bus,
        );
        let log = recorder.0.lock().unwrap();
        assert_eq!(
            *log,
            vec![("read", 0x70, vec![0x70; 4]), ("write", 0x30, vec![1, 2])]
        );
    }

    #[test]
    fn mmio_outside_any_device_reads_zero_and_drops_writes() {
        let (bus, recorder) = bus_with_mmio_recorder();
        let mut data = [0xaau8; 4];
        let action = handle(
            VmExit::MmioRead {
                addr: layout::VIRTIO_MMIO_BASE.0 - 0x1000,
                data: &mut data,
            },
            &bus,
        );
        assert_eq!(action, ExitAction::Continue);
        assert_eq!(data, [0; 4]);
        handle(
            VmExit::MmioWrite {
                addr: layout::APIC_START,
                data: &[1],
            },
            &bus,
        );
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[test]
    fn mmio_access_straddling_a_device_end_is_not_routed_to_it() {
        let (bus, recorder) = bus_with_mmio_recorder();
        let end = layout::VIRTIO_MMIO_BASE.0 + layout::MMIO_DEVICE_SIZE;
        let mut data = [0xaau8; 4];
        handle(
            VmExit::MmioRead {
                addr: end - 2,
                data: &mut data,
            },
            &bus,
        );
        assert_eq!(data, [0; 4]);
        handle(
            VmExit::MmioWrite {
                addr: end - 2,
                data: &[1, 2, 3, 4],
            },
            &bus,
        );
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[test]
    fn port_io_reaches_a_pio_device_at_its_offset() {
        let recorder = Recorder::default();
        let mut bus = Bus::default();
        bus.pio
            .insert(
                u64::from(layout::SERIAL_PORT),
                u64::from(layout::SERIAL_PORT_LEN),
                Box::new(recorder.clone()),
            )
            .unwrap();
        assert_eq!(
            out(layout::SERIAL_PORT + 3, 0x80, &bus),
            ExitAction::Continue
        );
        let mut lsr = [0u8];
        handle(
            VmExit::IoIn {
                port: layout::SERIAL_PORT + 5,
                data: &mut lsr,
            },
            &bus,
        );
        assert_eq!(lsr, [5]);
        assert_eq!(recorder.0.lock().unwrap()[0], ("write", 3, vec![0x80]));
    }

    #[test]
    fn triple_fault_shutdown_is_a_reset() {
        assert_eq!(
            handle(VmExit::Shutdown, &Bus::default()),
            stopped(GuestExit::Reset)
        );
    }

    #[test]
    fn failed_entry_stops_with_the_hardware_reason() {
        let action = handle(
            VmExit::FailEntry {
                reason: 0x21,
                cpu: 3,
            },
            &Bus::default(),
        );
        match action {
            ExitAction::Stop {
                exit: GuestExit::Failed(why),
                status: None,
            } => assert!(why.contains("0x21") && why.contains("CPU 3"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn system_events_map_to_power_off_reset_and_failure() {
        let bus = Bus::default();
        let event = |kind| handle(VmExit::SystemEvent { kind }, &bus);
        assert_eq!(event(1), stopped(GuestExit::PowerOff));
        assert_eq!(event(2), stopped(GuestExit::Reset));
        assert!(matches!(
            event(3),
            ExitAction::Stop {
                exit: GuestExit::Failed(_),
                ..
            }
        ));
    }

    #[test]
    fn internal_error_names_the_suberror() {
        match handle(VmExit::InternalError { suberror: 1 }, &Bus::default()) {
            ExitAction::Stop {
                exit: GuestExit::Failed(why),
                ..
            } => assert!(why.contains("suberror 1") && why.contains("emulate")),
            other => panic!("{other:?}"),
        }
    }
}
