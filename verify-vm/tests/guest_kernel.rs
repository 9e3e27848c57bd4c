//! Guest-kernel mode end to end: images made at test time with sfdisk and `mkfs.ext4 -d`
//! (vdr-fixtures' LinuxDisk), converted to qcow2 by qemu-img where a boot needs it.
//!
//! The search and command-line tests run `guest_kernel::run` over a recording backend that
//! returns a captured console; the boot tests run the Debian 6.1 cloud kernel
//! (/var/cache/vdr/linux-image, or VDR_GUEST_KERNEL_DIR) under qemu-system-x86_64 with an
//! initramfs built here: busybox, the virtio modules, and an /init in the style of
//! initramfs-tools (it waits for root=, prints initramfs-tools' messages when it is missing,
//! and `switch_root`s to it).

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vdr_fixtures::linux_disk::{self, Filesystem, LinuxDisk, Partition, Scheme};
use vdr_formats::{open_disk, OpenOptions, VirtualDisk};
use vdr_verify_vm::backend::{
    BackendError, BackendKind, BootOutcome, BootSpec, ConsoleLine, DiskAccess, GuestExit,
    LinuxBackend,
};
use vdr_verify_vm::guest_kernel::{self, Error, GuestKernelOptions, Limits, ProblemKind, Stage};

const ALERT_CONSOLE: &str =
    include_str!("../src/guest_kernel/testdata/debian-6.1-initramfs-alert.console");

/// What a [`Recording`] backend was asked to boot: kernel, initrd, command line, disk
/// access, timeout.
type RecordedBoot = (Vec<u8>, Option<Vec<u8>>, String, DiskAccess, Duration);

/// A backend that records the boot it was asked for and answers with a fixed console.
struct Recording {
    console: &'static str,
    spec: RefCell<Option<RecordedBoot>>,
}

impl Recording {
    fn new(console: &'static str) -> Self {
        Recording {
            console,
            spec: RefCell::new(None),
        }
    }
}

impl LinuxBackend for Recording {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, BackendError> {
        *self.spec.borrow_mut() = Some((
            spec.kernel.clone(),
            spec.initrd.clone(),
            spec.cmdline.clone(),
            spec.access,
            spec.timeout,
        ));
        let console = self
            .console
            .lines()
            .zip(0u64..)
            .map(|(text, i)| ConsoleLine {
                at: Duration::from_millis(i),
                text: text.to_string(),
            })
            .collect();
        Ok(BootOutcome {
            backend: BackendKind::Qemu,
            console,
            exit: GuestExit::Reset,
            elapsed: Duration::from_millis(1234),
        })
    }
}

/// The tools the image builders need, or a SKIP line naming the missing ones.
fn missing(tools: &[&str]) -> Option<String> {
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !linux_disk::on_path(t))
        .collect();
    (!absent.is_empty()).then(|| format!("SKIP: {} not installed", absent.join(", ")))
}

/// Writes `files` (path → content) under `root`, making directories as needed.
fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

/// Builds `disk` as raw, converts it to qcow2 when `qcow2`, and opens it with vdr.
fn make_disk(dir: &Path, disk: &LinuxDisk, qcow2: bool) -> Arc<dyn VirtualDisk> {
    let raw = dir.join("disk.raw");
    disk.build(&raw).unwrap();
    let path = if qcow2 {
        let out = dir.join("disk.qcow2");
        let status = Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        out
    } else {
        raw
    };
    Arc::new(open_disk(&path, &OpenOptions::default()).unwrap())
}

fn one_ext4(root: &Path) -> LinuxDisk {
    LinuxDisk::ext4_gpt(32, "root", Some(root))
}

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
        text.contains("partition 1: XFS (vdr has no XFS reader"),
        "{text}"
    );
    assert!(text.contains("partition 2: ext2/3/4"), "{text}");
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
    assert!(text.starts_with(
        "no Linux kernel found in /boot of any ext2/3/4 partition (looked at: the whole disk: not ext2/3/4"
    ), "{text}");
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

/// The kernel package, its version, and busybox, or a SKIP line.
struct BootKit {
    kernel_dir: PathBuf,
    version: String,
    busybox: PathBuf,
}

/// The virtio modules in load order (backend.rs: one initramfs works on both backends).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
];

const USERSPACE_MARKER: &str = "vdr-test-init reached";

fn boot_kit() -> Result<BootKit, String> {
    if let Some(skip) = missing(&["qemu-system-x86_64", "qemu-img", "sfdisk", "mkfs.ext4"]) {
        return Err(skip);
    }
    let kernel_dir = std::env::var_os("VDR_GUEST_KERNEL_DIR").map_or_else(
        || PathBuf::from("/var/cache/vdr/linux-image"),
        PathBuf::from,
    );
    let version = fs::read_dir(kernel_dir.join("boot"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| name.strip_prefix("vmlinuz-").map(str::to_string))
        .ok_or_else(|| format!("SKIP: no boot/vmlinuz-* in {}", kernel_dir.display()))?;
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("SKIP: busybox (busybox-static) not installed")?;
    Ok(BootKit {
        kernel_dir,
        version,
        busybox,
    })
}

/// A newc cpio archive (the initramfs format, Documentation/driver-api/early-userspace/
/// buffer-format.rst), gzip-compressed. Written here rather than with cpio(1) so that
/// /dev/console can be a device node without mknod on the host.
#[derive(Default)]
struct Cpio(Vec<u8>, u32);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.1 += 1;
        let fields = [
            self.1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.0.extend_from_slice(b"070701");
        for field in fields {
            self.0.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish_gzip(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.0).unwrap();
        gz.finish().unwrap()
    }
}

/// /init of the test initramfs: loads the virtio modules, waits up to 5 s for `root=`,
/// mounts it read-only and switches to it; a missing root gets initramfs-tools' messages
/// and an exit (the kernel then panics, and panic=-1 ends the VM).
const INITRAMFS_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do /bin/busybox insmod /lib/modules/$m.ko; done
root=
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in root=*) root="${arg#root=}";; esac
done
echo "vdr-test-initramfs: waiting for $root"
i=0
while [ ! -b "$root" ] && [ $i -lt 50 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
if [ ! -b "$root" ]; then
  echo "Gave up waiting for root file system device."
  echo "ALERT!  $root does not exist.  Dropping to a shell!"
  exit 1
fi
/bin/busybox mount -o ro -t ext4 "$root" /newroot
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
"#;

fn build_initramfs(kit: &BootKit) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.entry(dir, 0o040755, (0, 0), b"");
    }
    cpio.entry("dev/console", 0o020600, (5, 1), b"");
    cpio.entry(
        "bin/busybox",
        0o100755,
        (0, 0),
        &fs::read(&kit.busybox).unwrap(),
    );
    cpio.entry("init", 0o100755, (0, 0), INITRAMFS_INIT.as_bytes());
    let modules = kit
        .kernel_dir
        .join("lib/modules")
        .join(&kit.version)
        .join("kernel");
    for module in MODULES {
        let name = Path::new(module).file_name().unwrap().to_str().unwrap();
        let data = fs::read(modules.join(module)).unwrap();
        cpio.entry(&format!("lib/modules/{name}"), 0o100644, (0, 0), &data);
    }
    cpio.finish_gzip()
}

/// A bootable single-partition GPT image as qcow2 whose grub.cfg names `root_device`.
fn bootable_image(kit: &BootKit, dir: &Path, root_device: &str) -> Arc<dyn VirtualDisk> {
    let v = &kit.version;
    let root = dir.join("root");
    let kernel = fs::read(kit.kernel_dir.join(format!("boot/vmlinuz-{v}"))).unwrap();
    let init =
        format!("#!/bin/busybox sh\necho \"{USERSPACE_MARKER}\"\n/bin/busybox poweroff -f\n");
    let grub = format!(
        "menuentry 'vdr test' {{\n\tlinux\t/boot/vmlinuz-{v} root={root_device} ro quiet\n\
         \tinitrd\t/boot/initrd.img-{v}\n}}\n"
    );
    write_tree(
        &root,
        &[
            (&format!("boot/vmlinuz-{v}"), &kernel),
            (&format!("boot/initrd.img-{v}"), &build_initramfs(kit)),
            ("boot/grub/grub.cfg", grub.as_bytes()),
            ("bin/busybox", &fs::read(&kit.busybox).unwrap()),
            ("sbin/init", init.as_bytes()),
            ("etc/os-release", b"PRETTY_NAME=\"vdr test\"\nID=vdrtest\n"),
        ],
    );
    for dir in ["dev", "proc", "sys"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for exe in ["bin/busybox", "sbin/init"] {
        fs::set_permissions(root.join(exe), fs::Permissions::from_mode(0o755)).unwrap();
    }
    make_disk(dir, &LinuxDisk::ext4_gpt(64, "vdrroot", Some(&root)), true)
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
