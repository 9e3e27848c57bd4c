//! Guest-kernel mode end to end: images made at test time with sfdisk and `mkfs.ext4 -d`
//! (vdr-fixtures' LinuxDisk), converted to qcow2 by qemu-img where a boot needs it.
//!
//! The search and command-line tests run `guest_kernel::run` over a recording backend that
//! returns a captured console; the boot tests run the Debian 6.1 cloud kernel
//! (/var/cache/vdr/linux-image, or VDR_GUEST_KERNEL_DIR) under qemu-system-x86_64 with an
//! initramfs built here: busybox, the virtio modules, and an /init in the style of
//! initramfs-tools (it waits for root=, prints initramfs-tools' messages when it is missing,
//! and `switch_root`s to it).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vdr_fixtures::linux_disk::{Filesystem, LinuxDisk, Partition, Scheme};
use vdr_formats::{open_disk, OpenOptions, VirtualDisk};
use vdr_verify_vm::backend::{DiskAccess, GuestExit};
use vdr_verify_vm::guest_kernel::{self, Error, GuestKernelOptions, Limits, ProblemKind, Stage};

#[path = "guest_kernel/support.rs"]
mod support;

use support::{make_disk, missing, one_ext4, qcow2_disk, write_tree, Recording};

const ALERT_CONSOLE: &str =
    include_str!("../src/guest_kernel/testdata/debian-6.1-initramfs-alert.console");

#[test]
fn grub_kernel_and_initrd_are_booted_with_vdr_console_args() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-6.1.0-9-amd64", b"older kernel"),
            ("boot/vmlinuz-6.1.0-13-amd64", b"newest kernel"),
            ("boot/vmlinuz-6.1.0-10-amd64", b"grub's kernel"),
            ("boot/initrd.img-6.1.0-10-amd64", b"grub's initrd"),
            (
                "boot/grub/grub.cfg",
                b"menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1.0-10-amd64 \
                  root=UUID=1234 ro quiet console=tty0\n}\n",
            ),
            ("etc/os-release", b"ID=debian\n"),
        ],
    );
    let disk = make_disk(dir.path(), &one_ext4(&root), true);
    let backend = Recording::new(ALERT_CONSOLE);

    let report = guest_kernel::run(disk, &backend, &GuestKernelOptions::default()).unwrap();

    let (kernel, initrd, cmdline, access, timeout) = backend.spec.take().unwrap();
    assert_eq!(kernel, b"grub's kernel");
    assert_eq!(initrd.as_deref(), Some(&b"grub's initrd"[..]));
    assert!(
        cmdline.starts_with("root=UUID=1234 ro console=ttyS0 panic=-1 reboot=k pci=off"),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains("quiet") && !cmdline.contains("tty0"),
        "{cmdline}"
    );
    assert_eq!(access, DiskAccess::Overlay);
    assert_eq!(timeout, Duration::from_secs(60));
    assert_eq!(report.kernel.partition, Some(1));
    assert_eq!(report.kernel.path, "/boot/vmlinuz-6.1.0-10-amd64");
    assert_eq!(report.kernel.bytes, 13);
    assert_eq!(
        report.initrd.as_ref().map(|f| f.path.as_str()),
        Some("/boot/initrd.img-6.1.0-10-amd64")
    );
    assert_eq!(report.cmdline_dropped, ["quiet", "console=tty0"]);
}

#[test]
fn console_failure_is_reported_with_stage_alert_and_panic() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(&root, &[("boot/vmlinuz-6.1.0-1-amd64", b"k")]);
    let disk = make_disk(dir.path(), &one_ext4(&root), false);

    let report =
        guest_kernel::run(disk, &Recording::new(ALERT_CONSOLE), &Default::default()).unwrap();

    assert!(!report.boot_ok);
    assert_eq!(report.furthest, Some(Stage::DiskFound));
    assert_eq!(
        report.panic.as_deref(),
        Some("Attempted to kill init! exitcode=0x00000100")
    );
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::InitramfsShell && p.line.contains("/dev/vda9")));
    assert_eq!(report.console_tail.len(), 40);
    assert_eq!(report.exit, GuestExit::Reset);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["furthest"], "disk-found");
    assert_eq!(json["initrd"], serde_json::Value::Null);
}

#[test]
fn root_failure_before_the_disk_appears_hints_at_missing_virtio_modules() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(&root, &[("boot/vmlinuz-6.1.0-1-amd64", b"k")]);
    let disk = make_disk(dir.path(), &one_ext4(&root), false);
    let console = include_str!("../src/guest_kernel/testdata/debian-6.1-no-initrd-panic.console");

    let report = guest_kernel::run(disk, &Recording::new(console), &Default::default()).unwrap();

    assert_eq!(
        report.panic.as_deref(),
        Some("VFS: Unable to mount root fs on unknown-block(0,0)")
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.contains("may lack the virtio_mmio or virtio_blk")),
        "{:?}",
        report.findings
    );
}

#[test]
fn newest_bls_entry_is_booted_with_kernelopts_from_grubenv() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-5.14.0-70.el9.x86_64", b"old"),
            ("boot/vmlinuz-5.14.0-362.el9.x86_64", b"new"),
            ("boot/initramfs-5.14.0-362.el9.x86_64.img", b"dracut"),
            ("boot/grub2/grub.cfg", b"insmod blscfg\nblscfg\n"),
            (
                "boot/grub2/grubenv",
                b"# GRUB Environment Block\nkernelopts=root=/dev/vda2 ro crashkernel=auto\n",
            ),
            (
                "boot/loader/entries/abc-5.14.0-70.el9.x86_64.conf",
                b"title old\nversion 5.14.0-70.el9.x86_64\nlinux /vmlinuz-5.14.0-70.el9.x86_64\n\
                  options $kernelopts\n",
            ),
            (
                "boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf",
                b"title new\nversion 5.14.0-362.el9.x86_64\nlinux /vmlinuz-5.14.0-362.el9.x86_64\n\
                  options $kernelopts rhgb quiet\n",
            ),
        ],
    );
    let disk = make_disk(dir.path(), &one_ext4(&root), false);

    let report = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap();

    assert_eq!(report.kernel.version, "5.14.0-362.el9.x86_64");
    assert_eq!(
        report.image_cmdline,
        "root=/dev/vda2 ro crashkernel=auto rhgb quiet"
    );
    assert!(report
        .cmdline
        .starts_with("root=/dev/vda2 ro crashkernel=auto console=ttyS0"));
    assert_eq!(
        report.image_cmdline_source,
        "BLS entry /boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf (the newest) on partition 1"
    );
}

#[test]
fn damaged_file_system_gives_an_error_or_a_report_never_a_panic() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-6.1.0-13-amd64", &[1u8; 100_000]),
            ("boot/initrd.img-6.1.0-13-amd64", &[2u8; 50_000]),
            (
                "boot/grub/grub.cfg",
                b"linux /boot/vmlinuz-6.1.0-13-amd64 root=/dev/vda1\n",
            ),
            ("etc/os-release", b"ID=x\n"),
        ],
    );
    let raw = dir.path().join("disk.raw");
    one_ext4(&root).build(&raw).unwrap();
    let pristine = fs::read(&raw).unwrap();
    // Damage the file system at pseudo-random places, 64 variants: half in its first 8 KiB
    // (superblock, group descriptors), half in its first 2 MiB (bitmaps, inode table, the
    // first directories).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for variant in 0..64 {
        let mut bytes = pristine.clone();
        let span = if variant % 2 == 0 { 8 << 10 } else { 2 << 20 };
        for _ in 0..8 {
            let at = (1 << 20) + (next() % span) as usize;
            bytes[at] ^= (next() as u8) | 1;
        }
        let image = dir.path().join("damaged.raw");
        fs::write(&image, &bytes).unwrap();
        let disk: Arc<dyn VirtualDisk> =
            Arc::new(open_disk(&image, &OpenOptions::default()).unwrap());

        match guest_kernel::run(disk, &Recording::new(""), &Default::default()) {
            Ok(report) => assert!(report.kernel.bytes <= 128 << 20),
            Err(err) => {
                assert!(!err.to_string().is_empty());
                refused += 1;
            }
        }
    }
    println!("{refused} of 64 damaged variants refused with an error");
}

#[test]
fn newest_kernel_and_uuid_root_are_used_without_grub_cfg() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-5.10.0-99-amd64", b"old"),
            ("boot/vmlinuz-5.10.0-100-amd64", b"new"),
            ("boot/initramfs-5.10.0-100-amd64.img", b"dracut initrd"),
            ("etc/os-release", b"ID=test\n"),
        ],
    );
    let disk = make_disk(dir.path(), &one_ext4(&root), false);
    let backend = Recording::new("");

    let report = guest_kernel::run(disk, &backend, &Default::default()).unwrap();

    assert_eq!(report.kernel.version, "5.10.0-100-amd64");
    assert_eq!(report.initrd.unwrap().bytes, 13);
    assert!(
        report.image_cmdline.starts_with("root=UUID="),
        "{}",
        report.image_cmdline
    );
    assert!(report.image_cmdline.ends_with(" ro"));
    assert_eq!(report.furthest, None);
    assert!(!report.boot_ok);
}

#[test]
fn separate_boot_partition_is_searched_at_its_top() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    let root = dir.path().join("root");
    write_tree(
        &boot,
        &[
            ("vmlinuz-6.1.0-13-amd64", b"kernel"),
            ("initrd.img-6.1.0-13-amd64", b"initrd"),
        ],
    );
    write_tree(
        &root,
        &[("etc/os-release", b"ID=test\n"), ("boot/.keep", b"")],
    );
    std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-13-amd64", root.join("vmlinuz")).unwrap();
    let ext4 = |label: &str, root: &Path| Partition {
        size_mib: 16,
        filesystem: Filesystem::Ext4 {
            label: label.to_string(),
            root: Some(root.to_path_buf()),
        },
    };
    let layout = LinuxDisk {
        scheme: Scheme::Mbr,
        partitions: vec![ext4("boot", &boot), ext4("root", &root)],
    };
    let disk = make_disk(dir.path(), &layout, false);
    let backend = Recording::new("");

    let report = guest_kernel::run(disk, &backend, &Default::default()).unwrap();

    assert_eq!(report.kernel.partition, Some(1));
    assert_eq!(report.kernel.path, "/vmlinuz-6.1.0-13-amd64");
    assert_eq!(report.initrd.unwrap().path, "/initrd.img-6.1.0-13-amd64");
    assert!(
        report
            .kernel_chosen_because
            .contains("/vmlinuz symlink on partition 2"),
        "{}",
        report.kernel_chosen_because
    );
    assert!(report.image_cmdline_source.contains("partition 2"));
}

#[test]
fn xfs_boot_partition_is_named_in_the_no_kernel_error() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(&root, &[("etc/os-release", b"ID=rhel\n")]);
    let layout = LinuxDisk {
        scheme: Scheme::Gpt,
        partitions: vec![
            Partition {
                size_mib: 4,
                filesystem: Filesystem::None,
            },
            Partition {
                size_mib: 16,
                filesystem: Filesystem::Ext4 {
                    label: "root".into(),
                    root: Some(root),
                },
            },
        ],
    };
    let raw = dir.path().join("disk.raw");
    layout.build(&raw).unwrap();
    // An XFS superblock's magic at the start of partition 1 (1 MiB into the disk).
    let mut file = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"XFSB", 1 << 20).unwrap();
    file.flush().unwrap();
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());

    let err = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, Error::NoKernel { .. }), "{text}");
    assert!(
        text.contains("partition 1: XFS (vdr has no XFS reader; a /boot on it cannot be searched)"),
        "{text}"
    );
    assert!(text.contains("partition 2: ext2/3/4"), "{text}");
}

#[test]
fn unpartitioned_ext4_disk_is_searched_whole_and_rooted_by_device_name() {
    if let Some(skip) = missing(&["mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-6.1.0-13-amd64", b"k"),
            ("sbin/init", b"#!/bin/sh\n"),
        ],
    );
    let raw = dir.path().join("fs.raw");
    fs::File::create(&raw).unwrap().set_len(16 << 20).unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success());
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());

    let report = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap();

    assert_eq!(report.kernel.partition, None);
    assert_eq!(report.initrd, None);
    // Without an initramfs nothing resolves UUID=, so the root is named by device.
    assert_eq!(report.image_cmdline, "root=/dev/vda ro");
    assert!(report
        .findings
        .iter()
        .any(|f| f.starts_with("no initrd for 6.1.0-13-amd64")));
}

#[test]
fn corpus_ext2_image_without_kernel_says_what_it_looked_at() {
    let image = Path::new("/work/shared/corpus/dfvfs/ext2.qcow2");
    if !image.is_file() {
        return println!("SKIP: {} not present", image.display());
    }
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(image, &OpenOptions::default()).unwrap());

    let err = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap_err();

    assert_eq!(
        err.to_string(),
        "no Linux kernel found in /boot of any ext2/3/4 partition \
         (looked at: the whole disk: ext2/3/4)"
    );
}

#[test]
fn zeroed_disk_gives_the_no_kernel_found_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zero.raw");
    fs::File::create(&raw).unwrap().set_len(8 << 20).unwrap();
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());

    let err = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap_err();

    let text = err.to_string();
    println!("{text}");
    assert_eq!(
        text,
        "no Linux kernel found in /boot of any ext2/3/4 partition \
         (looked at: the whole disk: no file system vdr recognises)"
    );
}

#[test]
fn oversized_kernel_is_refused_before_it_is_read() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(&root, &[("boot/vmlinuz-6.1", &[7u8; 5000])]);
    let disk = make_disk(dir.path(), &one_ext4(&root), false);
    let options = GuestKernelOptions {
        limits: Limits {
            max_kernel_bytes: 4096,
            max_initrd_bytes: 4096,
        },
        ..Default::default()
    };
    let backend = Recording::new("");

    let err = guest_kernel::run(disk, &backend, &options).unwrap_err();

    assert!(
        matches!(
            err,
            Error::TooLarge {
                len: 5000,
                cap: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(backend.spec.take().is_none());
}

// ---- Boots under qemu-system-x86_64 ----

use vdr_fixtures::boot_image::{boot_kit, BootKit, InitramfsEntry, USERSPACE_MARKER};
use vdr_verify_vm::appliance::cpio::CpioWriter;

/// The fixtures' bootable disk (grub.cfg naming `root_device`) as qcow2, its initramfs
/// packed with vdr's own cpio writer.
fn bootable_image(kit: &BootKit, dir: &Path, root_device: &str) -> Arc<dyn VirtualDisk> {
    let mut cpio = CpioWriter::new();
    for entry in kit.initramfs_entries().unwrap() {
        match entry {
            InitramfsEntry::Directory(path) => cpio.directory(path),
            InitramfsEntry::File { path, mode, data } => cpio.file(&path, mode, &data),
            InitramfsEntry::CharDevice { path, major, minor } => {
                cpio.char_device(path, major, minor)
            }
        }
        .unwrap();
    }
    let raw = kit
        .bootable_disk(dir, root_device, &cpio.finish().unwrap())
        .unwrap();
    qcow2_disk(dir, &raw)
}

fn qemu_options() -> GuestKernelOptions {
    GuestKernelOptions {
        timeout: Duration::from_secs(120),
        memory_mib: 256,
        userspace_markers: vec![USERSPACE_MARKER.to_string()],
        ..Default::default()
    }
}

fn print_timeline(report: &guest_kernel::GuestKernelReport) {
    println!("cmdline: {}", report.cmdline);
    for mark in &report.stages {
        println!("{:>7} ms  {:?}", mark.at_ms, mark.stage);
    }
    for problem in &report.problems {
        println!(
            "{:>7} ms  {:?}: {}",
            problem.at_ms, problem.kind, problem.line
        );
    }
    println!(
        "exit {:?} after {} ms; furthest {:?}; boot_ok {}",
        report.exit, report.elapsed_ms, report.furthest, report.boot_ok
    );
}

#[test]
fn image_kernel_boots_to_its_own_init_under_qemu() {
    let kit = match boot_kit() {
        Ok(kit) => kit,
        Err(skip) => return println!("{skip}"),
    };
    let backend = match vdr_verify_vm::qemu::QemuBackend::new() {
        Ok(backend) => backend,
        Err(err) => return println!("SKIP: {err}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = bootable_image(&kit, dir.path(), "/dev/vda1");

    let report = guest_kernel::run(disk, &backend, &qemu_options()).unwrap();

    print_timeline(&report);
    let mut json = serde_json::to_value(&report).unwrap();
    json["console_tail"] = serde_json::json!(["..."]);
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
    assert!(report.boot_ok, "{:#?}", report.console_tail);
    assert_eq!(report.furthest, Some(Stage::Userspace));
    let stages: Vec<Stage> = report.stages.iter().map(|m| m.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::KernelStarted,
            Stage::InitramfsUnpacked,
            Stage::InitramfsInit,
            Stage::DiskFound,
            Stage::RootMounted,
            Stage::Userspace
        ]
    );
    assert_eq!(report.exit, GuestExit::PowerOff);
    assert_eq!(report.kernel.version, kit.version);
    assert_eq!(report.cmdline_dropped, ["quiet"]);
}

#[test]
fn missing_root_device_is_reported_with_alert_and_panic_under_qemu() {
    let kit = match boot_kit() {
        Ok(kit) => kit,
        Err(skip) => return println!("{skip}"),
    };
    let backend = match vdr_verify_vm::qemu::QemuBackend::new() {
        Ok(backend) => backend,
        Err(err) => return println!("SKIP: {err}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = bootable_image(&kit, dir.path(), "/dev/vda9");

    let report = guest_kernel::run(disk, &backend, &qemu_options()).unwrap();

    print_timeline(&report);
    assert!(!report.boot_ok);
    assert_eq!(report.furthest, Some(Stage::DiskFound));
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProblemKind::RootWaitTimeout,
            ProblemKind::InitramfsShell,
            ProblemKind::Panic
        ]
    );
    assert!(report.problems[1]
        .line
        .contains("ALERT!  /dev/vda9 does not exist."));
    assert_eq!(
        report.panic.as_deref(),
        Some("Attempted to kill init! exitcode=0x00000100")
    );
    assert_ne!(report.exit, GuestExit::Timeout);
}
