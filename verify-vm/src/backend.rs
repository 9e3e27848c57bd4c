//! How a Linux guest is started: the KVM microVM ([`crate::kvm_linux`]) or
//! qemu-system-x86_64 under TCG ([`crate::qemu`]). Appliance and guest-kernel mode build a
//! [`BootSpec`] and parse the [`BootOutcome`]; they never know which backend ran it.
//!
//! Both backends present the same machine to the guest: one or two vCPUs, a 16550 on
//! ttyS0, and the disk as a virtio-mmio virtio-blk device described in the ACPI DSDT
//! (_HID LNRO0005), so one initramfs (virtio_ring, virtio, virtio_mmio, virtio_blk loaded in
//! that order) works on both.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use vdr_formats::VirtualDisk;

/// Which backend runs a Linux guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// vdr's own microVM on /dev/kvm (needs VMX/SVM to boot Linux).
    Kvm,
    /// qemu-system-x86_64 with TCG software emulation.
    Qemu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Kvm => "kvm",
            BackendKind::Qemu => "qemu",
        })
    }
}

/// What the guest may do with the disk. The evidence is never written in either case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskAccess {
    /// The device says it is read-only (VIRTIO_BLK_F_RO); writes fail.
    ReadOnly,
    /// The device is writable; writes go to an in-memory overlay that is dropped after.
    Overlay,
}

/// One Linux boot.
pub struct BootSpec {
    /// A bzImage or an uncompressed ELF vmlinux.
    pub kernel: Vec<u8>,
    /// An initramfs (cpio, optionally compressed), if any.
    pub initrd: Option<Vec<u8>>,
    /// The full kernel command line; backends add nothing to it.
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The boot is stopped (and reported as [`GuestExit::Timeout`]) after this long.
    pub timeout: Duration,
    pub disk: Arc<dyn VirtualDisk>,
    pub access: DiskAccess,
    /// Called with every console line: `Some(grace)` stops the guest (reported as
    /// [`GuestExit::Stopped`]) `grace` later, unless it stops by itself first. A mode that
    /// has seen what it needs (a login prompt; a rescue shell that will wait for input
    /// forever) does not wait for the timeout.
    pub stop_when: Option<StopWhen>,
}

/// Called with every console line as it arrives (`vdr verify --console`).
pub type ConsoleEcho = Arc<dyn Fn(&ConsoleLine) + Send + Sync>;

/// See [`BootSpec::stop_when`].
pub type StopWhen = Arc<dyn Fn(&ConsoleLine) -> Option<Duration> + Send + Sync>;

/// A line the guest wrote to its serial console, with the time since the VM started
/// (serialized as `{"at_ms": 12.5, "text": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsoleLine {
    #[serde(rename = "at_ms", serialize_with = "serialize_millis")]
    pub at: Duration,
    pub text: String,
}

/// A duration as milliseconds with microsecond precision.
fn serialize_millis<S: serde::Serializer>(at: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(at.as_micros() as f64 / 1000.0)
}

/// How the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum GuestExit {
    /// ACPI power-off / `poweroff -f`, or the exit port.
    PowerOff,
    /// A reset (i8042 0xfe, triple fault, `reboot`).
    Reset,
    /// The timeout passed; the VM was stopped.
    Timeout,
    /// vdr stopped the VM once the console showed what it needed
    /// ([`BootSpec::stop_when`]).
    Stopped,
    /// The VMM or emulator failed (a vCPU error, qemu exiting with an error).
    Failed(String),
}

/// What a boot produced.
#[derive(Clone, Debug, Serialize)]
pub struct BootOutcome {
    pub backend: BackendKind,
    pub console: Vec<ConsoleLine>,
    pub exit: GuestExit,
    #[serde(rename = "elapsed_ms", serialize_with = "serialize_millis")]
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run on this machine (no VMX/SVM, qemu not installed, ...).
    #[error("the {backend} backend is not available here: {why}")]
    Unavailable { backend: BackendKind, why: String },
    #[error("{backend} backend: {what}: {source}")]
    Io {
        backend: BackendKind,
        what: String,
        source: std::io::Error,
    },
    #[error("{backend} backend: {what}")]
    Setup { backend: BackendKind, what: String },
}

/// Starts Linux guests.
pub trait LinuxBackend {
    fn kind(&self) -> BackendKind;
    /// Boots `spec` and waits until the guest powers off, resets, or times out.
    fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, BackendError>;
}
