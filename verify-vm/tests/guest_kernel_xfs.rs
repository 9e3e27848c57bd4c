//! Guest-kernel mode on images whose /boot is XFS (RHEL, CentOS, Rocky and Alma install
//! /boot on XFS by default): file systems made at test time by `mkfs.xfs -p` (a protofile,
//! no mount), searched through vdr-formats' XFS reader, booted on a recording backend.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vdr_fixtures::linux_disk::{Filesystem, LinuxDisk, Partition, Scheme};
use vdr_formats::{open_disk, OpenOptions, VirtualDisk};
use vdr_verify_vm::guest_kernel::{self, Error};

#[path = "guest_kernel/support.rs"]
#[allow(dead_code)]
mod support;

use support::{missing, write_tree, Recording};

const EL9: &str = "5.14.0-362.el9.x86_64";
const UUID: &str = "6a1f0c2e-4b7d-4e0a-9c3b-2d5e8f901234";

/// A kernel-sized file: several MiB, so it is read through an extent map.
fn kernel_bytes() -> Vec<u8> {
    (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A protofile (mkfs.xfs(8) "-p") for the tree at `root`: directories, files, symlinks.
fn protofile(root: &Path) -> String {
    fn dir(path: &Path, out: &mut String) {
        let mut names: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let p = path.join(&name);
            let name = name.to_str().unwrap();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.push_str(&format!("{name} d--755 0 0\n"));
                dir(&p, out);
                out.push_str("$\n");
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&p).unwrap();
                out.push_str(&format!("{name} l--777 0 0 {}\n", target.display()));
            } else {
                out.push_str(&format!("{name} ---644 0 0 {}\n", p.display()));
            }
        }
    }
    let mut out = String::from("vdr-test\n0 0\nd--755 0 0\n");
    dir(root, &mut out);
    out.push_str("$\n");
    out
}

/// An XFS file system of `mib` MiB filled from `root`, as bytes. TEST_DIR lets mkfs.xfs
/// go below its 300 MB floor (xfsprogs allows that for test setups).
fn mkfs_xfs(dir: &Path, name: &str, root: &Path, mib: u64) -> Vec<u8> {
    let image = dir.join(name);
    fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let proto = dir.join(format!("{name}.proto"));
    fs::write(&proto, protofile(root)).unwrap();
    let out = Command::new("mkfs.xfs")
        .env("TEST_DIR", dir)
        .env("TEST_DEV", &image)
        .env("QA_CHECK_FS", "1")
        .args(["-q", "-f", "-m", &format!("uuid={UUID}"), "-p"])
        .arg(&proto)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&image).unwrap()
}

#[test]
fn rhel_style_xfs_boot_partition_gives_the_bls_kernel_and_initramfs() {
    if let Some(skip) = missing(&["sfdisk", "mkfs.ext4", "mkfs.xfs"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    let root = dir.path().join("root");
    let kernel = kernel_bytes();
    write_tree(
        &boot,
        &[
            ("vmlinuz-5.14.0-70.el9.x86_64", b"old kernel"),
            (&format!("vmlinuz-{EL9}"), &kernel),
            (&format!("initramfs-{EL9}.img"), b"dracut initramfs"),
            ("vmlinuz-0-rescue-abc", b"rescue"),
            ("grub2/grub.cfg", b"insmod blscfg\nblscfg\n"),
            (
                "grub2/grubenv",
                b"# GRUB Environment Block\nkernelopts=root=/dev/mapper/rl-root ro rd.lvm.lv=rl/root\n",
            ),
            (
                "loader/entries/abc-5.14.0-70.el9.x86_64.conf",
                b"title old\nversion 5.14.0-70.el9.x86_64\nlinux /vmlinuz-5.14.0-70.el9.x86_64\n\
                  options $kernelopts\n",
            ),
            (
                &format!("loader/entries/abc-{EL9}.conf"),
                format!(
                    "title Rocky Linux ({EL9})\nversion {EL9}\nlinux /vmlinuz-{EL9}\n\
                     initrd /initramfs-{EL9}.img $tuned_initrd\noptions $kernelopts rhgb quiet\n"
                )
                .as_bytes(),
            ),
        ],
    );
    write_tree(
        &root,
        &[("etc/os-release", b"ID=rocky\n"), ("boot/.keep", b"")],
    );
    let layout = LinuxDisk {
        scheme: Scheme::Gpt,
        partitions: vec![
            Partition {
                size_mib: 32,
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
    let xfs = mkfs_xfs(dir.path(), "boot.xfs", &boot, 32);
    // Partition 1 starts 1 MiB into the disk (LinuxDisk's layout).
    let file = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    file.write_all_at(&xfs, 1 << 20).unwrap();
    drop(file);
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());
    let backend = Recording::new("");

    let report = guest_kernel::run(disk, &backend, &Default::default()).unwrap();

    let (kernel_image, initrd, cmdline, _, _) = backend.spec.take().unwrap();
    assert!(kernel_image == kernel, "kernel bytes differ");
    assert_eq!(initrd.as_deref(), Some(&b"dracut initramfs"[..]));
    assert_eq!(report.kernel.partition, Some(1));
    assert_eq!(report.kernel.path, format!("/vmlinuz-{EL9}"));
    assert_eq!(report.kernel.bytes, 5 << 20);
    assert_eq!(
        report.initrd.map(|f| f.path),
        Some(format!("/initramfs-{EL9}.img"))
    );
    assert_eq!(
        report.image_cmdline,
        "root=/dev/mapper/rl-root ro rd.lvm.lv=rl/root rhgb quiet"
    );
    assert_eq!(
        report.image_cmdline_source,
        format!("BLS entry /loader/entries/abc-{EL9}.conf (the newest) on partition 1")
    );
    assert!(cmdline.starts_with("root=/dev/mapper/rl-root ro rd.lvm.lv=rl/root console=ttyS0"));
}

#[test]
fn xfs_root_without_boot_entry_follows_the_vmlinuz_symlink_and_roots_by_uuid() {
    if let Some(skip) = missing(&["mkfs.xfs"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[
            ("boot/vmlinuz-6.1.0-13-amd64", b"newest kernel"),
            ("boot/vmlinuz-6.1.0-10-amd64", b"linked kernel"),
            ("boot/initrd.img-6.1.0-10-amd64", b"linked initrd"),
            ("etc/os-release", b"ID=debian\n"),
        ],
    );
    std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-10-amd64", root.join("vmlinuz")).unwrap();
    let bytes = mkfs_xfs(dir.path(), "root.xfs", &root, 32);
    let raw = dir.path().join("root.raw");
    fs::write(&raw, bytes).unwrap();
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());
    let backend = Recording::new("");

    let report = guest_kernel::run(disk, &backend, &Default::default()).unwrap();

    let (kernel, initrd, _, _, _) = backend.spec.take().unwrap();
    assert_eq!(kernel, b"linked kernel");
    assert_eq!(initrd.as_deref(), Some(&b"linked initrd"[..]));
    assert_eq!(report.kernel.partition, None);
    assert_eq!(
        report.kernel_chosen_because,
        "the /vmlinuz symlink on the whole disk points at it"
    );
    assert_eq!(report.image_cmdline, format!("root=UUID={UUID} ro"));
}

#[test]
fn xfs_without_a_kernel_is_named_as_searched_in_the_error() {
    if let Some(skip) = missing(&["mkfs.xfs"]) {
        return println!("{skip}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(
        &root,
        &[("etc/os-release", b"ID=rhel\n"), ("boot/README", b"")],
    );
    let raw = dir.path().join("root.raw");
    fs::write(&raw, mkfs_xfs(dir.path(), "root.xfs", &root, 32)).unwrap();
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());

    let err = guest_kernel::run(disk, &Recording::new(""), &Default::default()).unwrap_err();

    assert!(matches!(err, Error::NoKernel { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with("(looked at: the whole disk: XFS)"),
        "{err}"
    );
}

// ---- A boot under qemu-system-x86_64 ----

use std::time::Duration;

use vdr_fixtures::boot_image::{boot_kit, InitramfsEntry, USERSPACE_MARKER};
use vdr_verify_vm::appliance::cpio::CpioWriter;
use vdr_verify_vm::guest_kernel::{GuestKernelOptions, Stage};

/// The Debian cloud kernel and the fixtures' initramfs on an XFS /boot partition (the
/// kernel needs no XFS to boot: only its ext4 root on partition 2 is mounted).
#[test]
fn kernel_on_an_xfs_boot_partition_boots_to_its_own_init_under_qemu() {
    let kit = match boot_kit() {
        Ok(kit) => kit,
        Err(skip) => return println!("{skip}"),
    };
    if let Some(skip) = missing(&["mkfs.xfs"]) {
        return println!("{skip}");
    }
    let backend = match vdr_verify_vm::qemu::QemuBackend::new() {
        Ok(backend) => backend,
        Err(err) => return println!("SKIP: {err}"),
    };
    let dir = tempfile::tempdir().unwrap();
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
    // The fixtures' root tree (dir/root, with /boot in it); its /boot moves to partition 1.
    kit.bootable_disk(dir.path(), "/dev/vda2", &cpio.finish().unwrap())
        .unwrap();
    let root = dir.path().join("root");
    let boot = dir.path().join("boot");
    fs::rename(root.join("boot"), &boot).unwrap();
    fs::create_dir(root.join("boot")).unwrap();
    let v = &kit.version;
    fs::write(
        boot.join("grub/grub.cfg"),
        format!(
            "menuentry 'vdr test' {{\n\tlinux\t/vmlinuz-{v} root=/dev/vda2 ro quiet\n\
             \tinitrd\t/initrd.img-{v}\n}}\n"
        ),
    )
    .unwrap();
    let layout = LinuxDisk {
        scheme: Scheme::Gpt,
        partitions: vec![
            Partition {
                size_mib: 48,
                filesystem: Filesystem::None,
            },
            Partition {
                size_mib: 48,
                filesystem: Filesystem::Ext4 {
                    label: "root".into(),
                    root: Some(root),
                },
            },
        ],
    };
    let raw = dir.path().join("xfs-boot.raw");
    layout.build(&raw).unwrap();
    let xfs = mkfs_xfs(dir.path(), "boot.xfs", &boot, 48);
    let file = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    file.write_all_at(&xfs, 1 << 20).unwrap();
    drop(file);
    let disk: Arc<dyn VirtualDisk> = Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap());
    let options = GuestKernelOptions {
        timeout: Duration::from_secs(120),
        memory_mib: 256,
        userspace_markers: vec![USERSPACE_MARKER.to_string()],
        ..Default::default()
    };

    let report = guest_kernel::run(disk, &backend, &options).unwrap();

    for mark in &report.stages {
        println!("{:>7} ms  {:?}", mark.at_ms, mark.stage);
    }
    assert_eq!(report.kernel.partition, Some(1));
    assert_eq!(report.kernel.path, format!("/vmlinuz-{v}"));
    assert_eq!(
        report.image_cmdline_source,
        "the first linux line of /grub/grub.cfg on partition 1"
    );
    assert!(report.boot_ok, "{:#?}", report.console_tail);
    assert_eq!(report.furthest, Some(Stage::Userspace));
}
