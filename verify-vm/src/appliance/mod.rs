//! Appliance mode: boots a Linux kernel with an initramfs vdr builds (busybox, e2fsck,
//! the virtio and filesystem modules) that checks every partition read-only and prints a
//! JSON report on the serial console.
//!
//! - [`cpio`]: the initramfs archive writer.

pub mod cpio;
