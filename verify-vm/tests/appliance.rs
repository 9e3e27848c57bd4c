//! Appliance mode and the qemu backend end to end: real qemu-system-x86_64 (TCG), the
//! Debian cloud kernel, busybox-static. Each test prints `SKIP:` and passes when a tool
//! it needs is missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdr_formats::{SliceSource, VirtualDisk};
use vdr_verify_vm::appliance::cpio::CpioWriter;
use vdr_verify_vm::backend::{BootSpec, DiskAccess, GuestExit, LinuxBackend};
use vdr_verify_vm::qemu::QemuBackend;

fn cmdline() -> String {
    format!(
        "console=ttyS0 quiet loglevel=1 panic=-1 reboot=k pci=off rdinit=/init {}",
        vdr_verify_vm::qemu::tsc_cmdline()
    )
}

fn qemu() -> Option<QemuBackend> {
    match QemuBackend::new() {
        Ok(q) => Some(q),
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

/// The cloud kernel `scripts/guest-kernel` unpacks.
fn cloud_kernel() -> Option<PathBuf> {
    let dir = std::env::var_os("VDR_GUEST_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vdr/linux-image"));
    let found = std::fs::read_dir(dir.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .max();
    if found.is_none() {
        println!(
            "SKIP: no kernel under {}/boot (run scripts/guest-kernel)",
            dir.display()
        );
    }
    found
}

fn static_busybox() -> Option<Vec<u8>> {
    let found = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
    if found.is_none() {
        println!("SKIP: busybox is missing (Debian: busybox-static)");
    }
    found
}

fn raw_disk(bytes: Vec<u8>) -> Arc<dyn VirtualDisk> {
    let source = SliceSource::new(bytes, "test-disk");
    Arc::new(vdr_formats::raw::RawDisk::new(Arc::new(source)))
}

fn tiny_initramfs(busybox: &[u8], script: &str) -> Vec<u8> {
    let mut cpio = CpioWriter::new();
    cpio.directory("bin").unwrap();
    cpio.file("bin/busybox", 0o755, busybox).unwrap();
    cpio.file("init", 0o755, script.as_bytes()).unwrap();
    cpio.finish_gzip().unwrap()
}

fn boot_tiny(access: DiskAccess) {
    let (Some(qemu), Some(kernel), Some(busybox)) = (qemu(), cloud_kernel(), static_busybox())
    else {
        return;
    };
    let script = "#!/bin/busybox sh\n/bin/busybox echo VDR-TINY-MARKER\n/bin/busybox poweroff -f\n";
    let spec = BootSpec {
        kernel: std::fs::read(&kernel).unwrap(),
        initrd: Some(tiny_initramfs(&busybox, script)),
        cmdline: cmdline(),
        memory_mib: 256,
        vcpus: 1,
        timeout: Duration::from_secs(120),
        disk: raw_disk(vec![0u8; 1 << 20]),
        access,
    };
    let started = Instant::now();
    let outcome = qemu.boot(&spec).unwrap();
    println!("qemu tiny boot ({access:?}): {:?} wall", started.elapsed());
    let console: Vec<&str> = outcome.console.iter().map(|l| l.text.as_str()).collect();
    assert!(
        console.contains(&"VDR-TINY-MARKER"),
        "marker missing: {console:#?}"
    );
    assert_eq!(outcome.exit, GuestExit::PowerOff, "{console:#?}");
}

#[test]
fn qemu_boots_the_cloud_kernel_with_a_tiny_initramfs_read_only() {
    boot_tiny(DiskAccess::ReadOnly);
}

#[test]
fn qemu_boots_the_cloud_kernel_with_a_tiny_initramfs_overlay() {
    boot_tiny(DiskAccess::Overlay);
}

#[test]
fn qemu_boot_times_out_when_the_guest_hangs() {
    let (Some(qemu), Some(kernel), Some(busybox)) = (qemu(), cloud_kernel(), static_busybox())
    else {
        return;
    };
    let script = "#!/bin/busybox sh\nwhile :; do /bin/busybox sleep 1; done\n";
    let spec = BootSpec {
        kernel: std::fs::read(&kernel).unwrap(),
        initrd: Some(tiny_initramfs(&busybox, script)),
        cmdline: cmdline(),
        memory_mib: 256,
        vcpus: 1,
        timeout: Duration::from_secs(3),
        disk: raw_disk(vec![0u8; 1 << 20]),
        access: DiskAccess::ReadOnly,
    };
    let started = Instant::now();
    let outcome = qemu.boot(&spec).unwrap();
    assert_eq!(outcome.exit, GuestExit::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
}
