//! Probe mode: a small freestanding C guest (guest/probe, built by build.rs with the system
//! gcc) runs in the microVM, reads the disk through the virtio-blk device and reports on
//! serial what it finds: the partition table (MBR/EBR chain, GPT with both CRC-32s and
//! the backup header), each partition's file system by superblock, boot signatures, the
//! CRC-32 of sample sectors the host chose, and optionally an overlay write test. The host
//! reads the same sectors from the same [`vdr_formats::VirtualDisk`] and compares: a
//! match proves the whole device path (format reader, chain, virtio-blk, guest memory).
//!
//! Runs wherever /dev/kvm exists, the software-only `kvm_pvm` included: the guest needs no
//! BIOS, no kernel and no interrupts.
//!
//! - [`params`]: the parameter block handed to the guest.
//! - [`protocol`]: the `VDRPROBE {json}` lines the guest prints, parsed defensively.
//! - [`samples`]: which sectors are compared, and the host's CRC-32s of them.
//! - [`report`]: the comparison and the [`ProbeReport`].
//! - `vm`: [`run`]: the host's reads, the VM, the guest, the comparison.
//!
//! Not for: booting an operating system (see [`crate::appliance`]).

pub mod params;
pub mod protocol;
pub mod report;
pub mod samples;
mod vm;

#[cfg(test)]
mod hosted_tests;

pub use vm::{run, Echo, Error, ProbeOptions};

pub use report::{
    Filesystem, OverlayCheck, PartitionReport, ProbeReport, SampleMismatch, SampleReport, Timings,
    NO_BOOT_NO_FS,
};

/// The guest's exit statuses (guest/probe/probe.h).
pub mod exit_status {
    pub const OK: u8 = 0;
    pub const BAD_PARAMS: u8 = 1;
    pub const NO_DEVICE: u8 = 2;
    pub const DEVICE_FAILED: u8 = 3;
}
