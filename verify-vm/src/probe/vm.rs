//! Running the probe: the host's reading of the disk (its partition table, the samples'
//! CRC-32s), the microVM with the probe guest at [`layout::HIMEM_START`], its parameter
//! block at [`layout::CMDLINE_START`] and the disk as a virtio-mmio virtio-blk device at
//! [`layout::VIRTIO_MMIO_BASE`], then the comparison.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdr_formats::partition::read_partitions;
use vdr_formats::VirtualDisk;
use vm_memory::Bytes;

use super::params::Params;
use super::protocol::parse;
use super::report::{assemble, millis, HostView, ProbeReport, RunEnd, Timings};
use super::samples::{choose, expect, SECTOR};
use crate::backend::{ConsoleLine, DiskAccess, GuestExit};
use crate::layout;
use crate::virtio::{VirtioBlk, VirtioMmio};
use crate::vmm::{EntryPoint, Vm, VmConfig};

/// The probe guest, built by build.rs (guest/probe).
const PROBE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.bin"));
include!(concat!(env!("OUT_DIR"), "/probe_layout.rs"));

/// Guest RAM: the guest, its .bss and stack end near 1.2 MiB; the VMM's minimum is 16.
const MEMORY_MIB: u32 = 16;

// The guest (code, data, .bss, stack) must fit in RAM, and the parameter block below it.
const _: () = assert!(PROBE_IMAGE_END < (MEMORY_MIB as u64) << 20);
const _: () = assert!(
    layout::CMDLINE_START.0 + super::params::SIZE as u64 <= layout::HIMEM_START.0
        && super::params::SIZE <= layout::CMDLINE_MAX_SIZE
);

/// Called with each console line as the guest prints it.
pub type Echo = Arc<dyn Fn(&str) + Send + Sync>;

/// How to probe.
#[derive(Clone)]
pub struct ProbeOptions {
    /// The VM is stopped after this long (the probe normally needs well under a second).
    pub timeout: Duration,
    /// Read-only, or writable through an in-memory overlay (then the overlay write test
    /// runs too).
    pub access: DiskAccess,
    /// How many evenly spread samples besides the boot structures.
    pub samples: usize,
    pub echo: Option<Echo>,
}

impl Default for ProbeOptions {
    fn default() -> ProbeOptions {
        ProbeOptions {
            timeout: Duration::from_secs(10),
            access: DiskAccess::ReadOnly,
            samples: 16,
            echo: None,
        }
    }
}

impl fmt::Debug for ProbeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeOptions")
            .field("timeout", &self.timeout)
            .field("access", &self.access)
            .field("samples", &self.samples)
            .field("echo", &self.echo.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("probe: the VM: {0}")]
    Vm(#[from] crate::vmm::Error),
    #[error("probe: cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("probe: the disk is {size} bytes, less than one sector")]
    EmptyDisk { size: u64 },
}

/// Probes `disk` in the microVM and compares what the guest saw with the host's reading.
pub fn run(disk: Arc<dyn VirtualDisk>, options: &ProbeOptions) -> Result<ProbeReport, Error> {
    let started = Instant::now();
    let sectors = disk.size() / SECTOR;
    if sectors == 0 {
        return Err(Error::EmptyDisk { size: disk.size() });
    }
    let (table, table_error) = match read_partitions(disk.as_ref()) {
        Ok(table) => (table, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let samples = choose(sectors, table.as_ref(), options.samples);
    let expected = expect(disk.as_ref(), &samples);
    let overlay_lba = (options.access == DiskAccess::Overlay).then_some(sectors / 2);
    let overlay_before = overlay_lba.map(|lba| sector_crc(disk.as_ref(), lba));
    let params = Params::for_vm(samples.clone(), overlay_lba);

    let setup = Instant::now();
    let mut vm = Vm::new(&VmConfig {
        memory_mib: MEMORY_MIB,
        vcpus: 1,
        timeout: options.timeout,
    })?;
    vm.memory()
        .write_slice(PROBE_GUEST, layout::HIMEM_START)
        .map_err(|source| Error::GuestMemory {
            what: "probe guest",
            source,
        })?;
    vm.memory()
        .write_slice(&params.to_bytes(), layout::CMDLINE_START)
        .map_err(|source| Error::GuestMemory {
            what: "probe parameter block",
            source,
        })?;
    let irq = vm.irq_line(layout::VIRTIO_IRQ_BASE)?;
    let blk = VirtioBlk::new(disk.clone(), options.access);
    let device = VirtioMmio::new(blk, vm.memory().clone(), irq);
    vm.add_mmio_device(
        layout::VIRTIO_MMIO_BASE,
        layout::MMIO_DEVICE_SIZE,
        Box::new(device),
    )?;
    if let Some(echo) = &options.echo {
        let echo = echo.clone();
        vm.set_console_echo(Arc::new(move |line: &ConsoleLine| echo(&line.text)));
    }
    let vm_setup = setup.elapsed();

    let outcome = vm.run(EntryPoint {
        rip: layout::HIMEM_START,
        rsi: 0,
        rdi: layout::CMDLINE_START.0,
    })?;
    drop(vm);

    let overlay = overlay_lba.zip(overlay_before).map(|(lba, before)| {
        (
            lba,
            before.is_some() && sector_crc(disk.as_ref(), lba) == before,
        )
    });
    let parsed = parse(outcome.console.iter().map(|line| line.text.as_str()));
    let host = HostView {
        disk_sectors: sectors,
        table: table.as_ref(),
        samples: &samples,
        expected: &expected,
        overlay,
    };
    let end = RunEnd {
        exit_status: outcome.exit_status,
        exit: describe(&outcome.exit),
        timings: Timings {
            vm_setup_ms: millis(vm_setup),
            first_line_ms: outcome.first_console_line.map(millis),
            guest_ms: millis(outcome.elapsed),
            total_ms: 0.0,
        },
        console: outcome.console,
    };
    let mut report = assemble(&parsed, &host, end);
    if let Some(e) = table_error {
        report
            .notes
            .push(format!("the host cannot read the partition table: {e}"));
    }
    report.timings.total_ms = millis(started.elapsed());
    Ok(report)
}

/// The CRC-32 of one sector as the host reads it, `None` when unreadable.
fn sector_crc(disk: &dyn VirtualDisk, lba: u64) -> Option<u32> {
    let mut buf = [0u8; SECTOR as usize];
    let offset = lba.checked_mul(SECTOR)?;
    disk.read_at(&mut buf, offset).ok()?;
    Some(crc32fast::hash(&buf))
}

fn describe(exit: &GuestExit) -> String {
    match exit {
        GuestExit::PowerOff => "stopped through the exit port".into(),
        GuestExit::Reset => "the guest reset".into(),
        GuestExit::Timeout => "timed out".into(),
        GuestExit::Stopped => "stopped by vdr".into(),
        GuestExit::Failed(why) => format!("the VM failed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_guest_starts_with_the_entry_stub() {
        // entry.S begins with `cli; cld`: the linker script put the entry first.
        assert!(PROBE_GUEST.starts_with(&[0xfa, 0xfc]));
        assert!(PROBE_GUEST.len() < 64 << 10, "{}", PROBE_GUEST.len());
        assert!(PROBE_IMAGE_END > layout::HIMEM_START.0 + PROBE_GUEST.len() as u64);
    }
}
