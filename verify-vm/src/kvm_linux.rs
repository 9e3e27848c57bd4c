//! The KVM backend for Linux guests: vdr's own microVM ([`crate::vmm`]) with the disk as a
//! virtio-mmio virtio-blk device ([`crate::virtio`]), booted through the Linux boot protocol
//! and ACPI tables of [`crate::boot`].
//!
//! Stock Linux kernels need hardware virtualization (VMX/SVM). On a host whose /dev/kvm is
//! the software `kvm_pvm` module the backend refuses with an explanation, unless
//! `VDR_KVM_FORCE=1` asks it to try anyway (for experiments: the boot then runs until the
//! timeout and the console shows how far the kernel got).
//!
//! Not for: the probe guest (see [`crate::probe`]), which runs on kvm_pvm too.

use std::time::Instant;

use crate::backend::ConsoleEcho;
use crate::backend::{BackendError, BackendKind, BootOutcome, BootSpec, LinuxBackend};
use crate::boot::{self, LinuxImage, Machine, MmioSlot};
use crate::host::{self, KvmSupport};
use crate::layout;
use crate::virtio::{VirtioBlk, VirtioMmio};
use crate::vmm::{EntryPoint, Vm, VmConfig};

/// The environment variable that makes the backend try where the host cannot boot Linux.
pub const FORCE_ENV: &str = "VDR_KVM_FORCE";

/// The one disk every Linux guest gets: the first virtio-mmio slot, described in the DSDT.
const DISK_SLOT: MmioSlot = MmioSlot {
    base: layout::VIRTIO_MMIO_BASE,
    size: layout::MMIO_DEVICE_SIZE,
    irq: layout::VIRTIO_IRQ_BASE,
};

/// Boots Linux guests in vdr's microVM.
#[derive(Clone)]
pub struct KvmBackend {
    host: KvmSupport,
    force: bool,
    echo: Option<ConsoleEcho>,
}

impl Default for KvmBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl KvmBackend {
    /// Detects what this host's /dev/kvm can do; `VDR_KVM_FORCE=1` forces a try.
    pub fn new() -> KvmBackend {
        let force = std::env::var_os(FORCE_ENV).is_some_and(|v| v == "1");
        KvmBackend::with_host(host::detect(), force)
    }

    /// A backend for a host known to have `host`; `force` tries to boot even when the host
    /// cannot boot Linux (but not without a usable /dev/kvm).
    pub fn with_host(host: KvmSupport, force: bool) -> KvmBackend {
        KvmBackend {
            host,
            force,
            echo: None,
        }
    }

    /// Also hands each console line to `echo` as the guest finishes it (`--console`), the
    /// same callback the qemu backend takes.
    pub fn with_echo(mut self, echo: ConsoleEcho) -> KvmBackend {
        self.echo = Some(echo);
        self
    }

    /// What the backend believes the host can do.
    pub fn host(&self) -> &KvmSupport {
        &self.host
    }

    /// `Ok` when a boot will be attempted; otherwise why not, in words for the user.
    pub fn check_host(&self) -> Result<(), BackendError> {
        let attempt = self.host.can_boot_linux() || (self.force && self.host.can_run_vm());
        if attempt {
            return Ok(());
        }
        let mut why = self.host.explain();
        if self.host.can_run_vm() {
            why.push_str(&format!(" ({FORCE_ENV}=1 tries anyway)"));
        }
        Err(BackendError::Unavailable {
            backend: BackendKind::Kvm,
            why,
        })
    }
}

impl LinuxBackend for KvmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kvm
    }

    /// Builds the VM, attaches the disk, loads the kernel and runs it. `elapsed` counts from
    /// the start of this call (VM creation and kernel loading included), like the qemu
    /// backend's, which includes starting qemu; console times count from the first vCPU run.
    fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, BackendError> {
        self.check_host()?;
        let started = Instant::now();
        let mut vm = Vm::new(&VmConfig {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            timeout: spec.timeout,
        })
        .map_err(|e| setup("creating the microVM", &e))?;

        let irq = vm
            .irq_line(DISK_SLOT.irq)
            .map_err(|e| setup("wiring the disk's interrupt", &e))?;
        let blk = VirtioBlk::new(spec.disk.clone(), spec.access);
        let transport = VirtioMmio::new(blk, vm.memory().clone(), irq);
        vm.add_mmio_device(DISK_SLOT.base, DISK_SLOT.size, Box::new(transport))
            .map_err(|e| setup("attaching the virtio-blk disk", &e))?;

        let image = LinuxImage {
            kernel: &spec.kernel,
            initrd: spec.initrd.as_deref(),
            cmdline: &spec.cmdline,
        };
        let machine = Machine {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            virtio_devices: &[DISK_SLOT],
        };
        let entry = boot::prepare_linux(vm.memory(), &image, &machine)
            .map_err(|e| setup("preparing the Linux boot", &e))?;

        if let Some(stop_when) = spec.stop_when.clone() {
            vm.set_stop_when(stop_when);
        }
        if let Some(echo) = self.echo.clone() {
            vm.set_console_echo(echo);
        }
        let run = vm
            .run(EntryPoint {
                rip: entry.rip,
                rsi: entry.zero_page.0,
                rdi: 0,
            })
            .map_err(|e| setup("running the microVM", &e))?;
        Ok(BootOutcome {
            backend: BackendKind::Kvm,
            console: run.console,
            exit: run.exit,
            elapsed: started.elapsed(),
        })
    }
}

fn setup(what: &str, error: &dyn std::error::Error) -> BackendError {
    BackendError::Setup {
        backend: BackendKind::Kvm,
        what: format!("{what}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_pvm() -> KvmSupport {
        KvmSupport::SoftwareOnly {
            module: "kvm_pvm".to_string(),
        }
    }

    #[test]
    fn kvm_pvm_is_refused_with_the_reason_and_the_alternative() {
        let backend = KvmBackend::with_host(kvm_pvm(), false);

        let err = backend.check_host().unwrap_err();

        let BackendError::Unavailable { backend, why } = &err else {
            panic!("{err}");
        };
        assert_eq!(*backend, BackendKind::Kvm);
        for expected in ["kvm_pvm", "VMX/SVM", "--backend qemu", "VDR_KVM_FORCE=1"] {
            assert!(why.contains(expected), "{expected:?} missing from {why:?}");
        }
    }

    #[test]
    fn forcing_tries_on_kvm_pvm() {
        let backend = KvmBackend::with_host(kvm_pvm(), true);

        assert!(backend.check_host().is_ok());
    }

    #[test]
    fn forcing_does_not_help_without_dev_kvm() {
        let absent = KvmSupport::Absent {
            why: "cannot open /dev/kvm: No such file or directory".to_string(),
        };
        let backend = KvmBackend::with_host(absent, true);

        let err = backend.check_host().unwrap_err();

        assert!(matches!(err, BackendError::Unavailable { .. }));
        assert!(!err.to_string().contains(FORCE_ENV), "{err}");
    }

    #[test]
    fn hardware_kvm_is_attempted_without_forcing() {
        let hardware = KvmSupport::Hardware {
            vendor: "intel (vmx)".to_string(),
        };

        assert!(KvmBackend::with_host(hardware, false).check_host().is_ok());
    }
}
