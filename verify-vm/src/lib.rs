//! vdr-verify-vm: boot-tests a recovered disk in a small virtual machine and reports what
//! the guest saw.
//!
//! The disk is attached straight from its [`vdr_formats::VirtualDisk`] (a qcow2/vmdk chain,
//! a file inside a VMFS volume): there is no conversion step, and guest writes land in an
//! in-memory overlay, never in the evidence.
//!
//! - [`host`]: what this machine's `/dev/kvm` can do (absent, the software-only `kvm_pvm`,
//!   or hardware VMX/SVM).
//! - [`vmm`]: the microVM itself on kvm-ioctls and vm-memory, in Firecracker's shape:
//!   guest memory, vCPUs set up in long mode, a 16550 serial console (vm-superio) captured
//!   line by line, an exit port and the i8042 reset line for shutdown, and a bus of MMIO
//!   devices. Exit handling is a pure function tested without /dev/kvm.
//! - [`virtio`]: the virtio-mmio transport and the virtio-blk device (virtio-queue) that
//!   serves a `VirtualDisk`, read-only flag or copy-on-write [`virtio::Overlay`].
//! - [`boot`]: the Linux boot protocol (linux-loader: bzImage/ELF, boot params, e820,
//!   command line, initramfs) and the ACPI tables that describe the virtio-mmio device.
//! - [`probe`]: probe mode: a freestanding C guest (guest/probe, built by build.rs with the
//!   system gcc) reads the disk through virtio-blk and reports partitions, filesystems and
//!   sample-sector checksums that the host compares with its own reads.
//! - [`backend`]: how a Linux guest is started: [`backend::LinuxBackend`], implemented by
//!   the KVM microVM ([`kvm_linux`]) and by qemu-system-x86_64 under TCG ([`qemu`]) for
//!   machines without VMX/SVM.
//! - [`appliance`]: appliance mode: a kernel plus an initramfs vdr builds (busybox, e2fsck,
//!   the virtio modules) that checks every partition and prints a JSON report on serial.
//! - [`guest_kernel`]: guest-kernel mode: boots the image's own kernel and initrd from its
//!   /boot and reports how far the boot got.
//!
//! Not for: running workloads, networking, or writing to the evidence.

pub mod appliance;
pub mod backend;
pub mod boot;
pub mod console_lines;
pub mod devices;
pub mod guest_kernel;
pub mod host;
mod kernel_version;
pub mod kvm_linux;
pub mod layout;
pub mod probe;
pub mod qemu;
pub mod superblock;
pub mod virtio;
pub mod vmm;
