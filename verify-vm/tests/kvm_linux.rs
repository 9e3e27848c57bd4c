//! The KVM Linux backend on this host: a refusal with the reason on kvm_pvm, and a real
//! boot of the Debian cloud kernel with a busybox initramfs (forced on kvm_pvm, where it is
//! a record of how far the kernel gets; asserted to power off where VMX/SVM exists).
//!
//! On kvm_pvm the bzImage's decompressor alone runs for minutes, so the record boots the
//! vmlinux ELF inside it (unpacked with the `lz4` tool when present): that also puts the
//! ELF loader through a real kernel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vdr_formats::raw::RawDisk;
use vdr_formats::{SliceSource, VirtualDisk};
use vdr_verify_vm::backend::{
    BackendError, BootOutcome, BootSpec, ConsoleLine, DiskAccess, GuestExit, LinuxBackend,
};
use vdr_verify_vm::host::{self, KvmSupport};
use vdr_verify_vm::kvm_linux::KvmBackend;

const MARKER: &str = "VDR-KVM-LINUX-INIT-REACHED";
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 pci=off";

/// The Debian cloud kernel: $VDR_GUEST_KERNEL_DIR or /var/cache/vdr/linux-image, boot/vmlinuz-*.
fn cloud_kernel() -> Option<PathBuf> {
    let dir = std::env::var_os("VDR_GUEST_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vdr/linux-image"));
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The ELF vmlinux inside a bzImage whose payload is LZ4-compressed (the Debian cloud
/// kernel's), unpacked with the `lz4` tool; `None` when either is missing.
fn unpack_vmlinux(bzimage: &[u8], work: &Path) -> Option<Vec<u8>> {
    let u32_at = |at: usize| {
        Some(u32::from_le_bytes(
            bzimage.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    // boot.rst: payload_offset (0x248) and payload_length (0x24c) count from the
    // protected-mode code, which follows the setup sectors.
    let setup = (usize::from(*bzimage.get(0x1f1)?) + 1) * 512;
    let start = setup + u32_at(0x248)? as usize;
    let payload = bzimage.get(start..start + u32_at(0x24c)? as usize)?;
    if !payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        return None; // not the LZ4 legacy frame
    }
    let packed = work.join("payload.lz4");
    std::fs::write(&packed, payload).unwrap();
    // lz4 exits 1 on the uncompressed-size word the kernel build appends; the ELF is whole.
    let out = Command::new("lz4").arg("-dc").arg(&packed).output().ok()?;
    out.stdout.starts_with(b"\x7fELF").then_some(out.stdout)
}

/// A 1 MiB zeroed disk: the guest gets a virtio-blk device even if it never reads it.
fn small_disk() -> Arc<dyn VirtualDisk> {
    let source = SliceSource::new(vec![0u8; 1 << 20], "zeros");
    Arc::new(RawDisk::new(Arc::new(source)))
}

/// A newc cpio with busybox and an /init that mounts devtmpfs (the archive has no
/// /dev/console node, so /init starts without a console), prints [`MARKER`] and powers off
/// through ACPI. `None` when cpio or a static busybox is missing.
fn busybox_initramfs(work: &Path) -> Option<Vec<u8>> {
    let busybox = Path::new("/usr/bin/busybox");
    if !busybox.exists() || Command::new("cpio").arg("--version").output().is_err() {
        return None;
    }
    let root = work.join("root");
    for dir in ["bin", "dev", "proc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         exec 0</dev/console 1>/dev/console 2>&1\n\
         echo {MARKER}\n\
         /bin/busybox poweroff -f\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    let status = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status()
        .unwrap();
    assert!(status.success());
    let archive = work.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | cpio --quiet -o -H newc > '{}'",
            archive.display()
        ))
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    Some(std::fs::read(archive).unwrap())
}

fn spec(kernel: Vec<u8>, initrd: Option<Vec<u8>>, timeout: Duration) -> BootSpec {
    BootSpec {
        kernel,
        initrd,
        cmdline: CMDLINE.to_string(),
        memory_mib: 256,
        vcpus: 1,
        timeout,
        disk: small_disk(),
        access: DiskAccess::ReadOnly,
        stop_when: None,
    }
}

fn print_record(outcome: &BootOutcome) {
    println!(
        "exit {:?} after {:.1} s, {} console lines",
        outcome.exit,
        outcome.elapsed.as_secs_f64(),
        outcome.console.len()
    );
    if let (Some(first), Some(last)) = (outcome.console.first(), outcome.console.last()) {
        println!("first [{:>8.3} s] {}", first.at.as_secs_f64(), first.text);
        println!("last  [{:>8.3} s] {}", last.at.as_secs_f64(), last.text);
    }
    for line in outcome.console.iter() {
        println!("  [{:>8.3} s] {}", line.at.as_secs_f64(), line.text);
    }
}

#[test]
fn kvm_pvm_host_refuses_linux_and_names_the_alternative() {
    let support = host::detect();
    if !matches!(support, KvmSupport::SoftwareOnly { .. }) {
        println!("SKIP: /dev/kvm here is not kvm_pvm ({support:?})");
        return;
    }
    let backend = KvmBackend::with_host(support, false);

    let err = backend
        .boot(&spec(
            b"never loaded".to_vec(),
            None,
            Duration::from_secs(1),
        ))
        .unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{text}");
    assert!(text.contains("kvm_pvm"), "{text}");
    assert!(text.contains("--backend qemu"), "{text}");
    println!("{text}");
}

#[test]
fn cloud_kernel_boots_to_init_or_records_how_far_it_got() {
    let support = host::detect();
    if !support.can_run_vm() {
        println!("SKIP: {}", support.explain());
        return;
    }
    let Some(kernel_path) = cloud_kernel() else {
        println!("SKIP: no kernel under $VDR_GUEST_KERNEL_DIR or /var/cache/vdr/linux-image/boot");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let Some(initrd) = busybox_initramfs(work.path()) else {
        println!("SKIP: cpio or /usr/bin/busybox is missing");
        return;
    };
    let bzimage = std::fs::read(&kernel_path).unwrap();
    let hardware = support.can_boot_linux();
    let (kernel, what) = match (hardware, unpack_vmlinux(&bzimage, work.path())) {
        (false, Some(vmlinux)) => (vmlinux, "the vmlinux ELF inside"),
        _ => (bzimage, "the bzImage"),
    };
    // kvm_pvm cannot finish the boot: give it long enough to show how far it gets, bounded
    // so the suite stays quick (VDR_KVM_PVM_TIMEOUT_S for longer experiments).
    let timeout = if hardware {
        Duration::from_secs(60)
    } else {
        let secs = std::env::var("VDR_KVM_PVM_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        Duration::from_secs(secs)
    };
    let echoed = Arc::new(Mutex::new(Vec::new()));
    let sink = echoed.clone();
    let backend = KvmBackend::with_host(support.clone(), true).with_echo(Arc::new(
        move |line: &ConsoleLine| sink.lock().unwrap().push(line.text.clone()),
    ));

    let outcome = backend.boot(&spec(kernel, Some(initrd), timeout));

    println!("{what} {}, on {support:?}", kernel_path.display());
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) if !hardware => {
            println!("kvm_pvm: the boot failed before the guest stopped: {err}");
            return;
        }
        Err(err) => panic!("{err}"),
    };
    print_record(&outcome);
    let texts: Vec<String> = outcome.console.iter().map(|l| l.text.clone()).collect();
    assert_eq!(*echoed.lock().unwrap(), texts, "--console saw other lines");
    assert!(
        outcome.elapsed < timeout + Duration::from_secs(15),
        "the run overran its timeout: {:?}",
        outcome.elapsed
    );
    if hardware {
        assert!(
            outcome
                .console
                .iter()
                .any(|line| line.text.contains(MARKER)),
            "no {MARKER} line"
        );
        assert_eq!(outcome.exit, GuestExit::PowerOff);
    }
}
