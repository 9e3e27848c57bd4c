//! Appliance mode and the qemu backend end to end: real qemu-system-x86_64 (TCG), the
//! Debian cloud kernel, busybox-static and e2fsck-static; disks made by sfdisk and
//! mkfs.ext4 and converted by qemu-img, opened through vdr_formats. Each test prints
//! `SKIP:` and passes when a tool it needs is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdr_formats::{open_disk, OpenOptions, SliceSource, VirtualDisk};
use vdr_verify_vm::appliance::cpio::CpioWriter;
use vdr_verify_vm::appliance::{self, ApplianceOptions, ApplianceReport};
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
    cpio.finish().unwrap()
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
        stop_when: None,
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
        stop_when: None,
    };
    let started = Instant::now();
    let outcome = qemu.boot(&spec).unwrap();
    assert_eq!(outcome.exit, GuestExit::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The partition's filesystem UUID (mkfs.ext4 -U), named by the image's fstab.
const ROOT_UUID: &str = "5b0e7c52-1f0a-4d6e-9a51-0c7d2e3f4a5b";
/// A UUID no device on the disk has.
const MISSING_UUID: &str = "deadbeef-0000-4000-8000-000000000001";
/// The partition starts at 1 MiB and is 32 MiB of 4 KiB blocks (one block group).
const PART_START: u64 = 1 << 20;
const PART_SIZE: u64 = 32 << 20;

/// Everything an appliance run needs, or None after a SKIP line.
fn appliance_ready() -> Option<QemuBackend> {
    let qemu = qemu()?;
    if let Err(e) = appliance::kernel::find_kernel(None) {
        println!("SKIP: {e}");
        return None;
    }
    for (tool, package) in [
        ("/usr/sbin/e2fsck.static", "e2fsck-static"),
        ("/usr/bin/busybox", "busybox-static"),
    ] {
        if !Path::new(tool).exists() {
            println!("SKIP: {tool} is missing (Debian: {package})");
            return None;
        }
    }
    for tool in ["sfdisk", "mkfs.ext4", "qemu-img"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("SKIP: {tool} is not installed");
            return None;
        }
    }
    Some(qemu)
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw GPT disk with one ext4 partition whose root holds etc/os-release and an
/// etc/fstab naming the partition by UUID and one device that does not exist.
fn ext4_gpt_disk(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"vdr test root 1.0\"\nNAME=\"vdrtest\"\nVERSION_ID=\"1.0\"\nID=vdrtest\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/fstab"),
        format!(
            "# test fstab\nUUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n\
             UUID={MISSING_UUID} /data ext4 defaults 0 2\nproc /proc proc defaults 0 0\n"
        ),
    )
    .unwrap();
    let part = dir.join("part.img");
    std::fs::File::create(&part)
        .unwrap()
        .set_len(PART_SIZE)
        .unwrap();
    let (part_s, root_s) = (part.to_str().unwrap(), root.to_str().unwrap());
    run(
        "mkfs.ext4",
        &[
            "-q", "-F", "-b", "4096", "-U", ROOT_UUID, "-L", "vdrroot", "-d", root_s, part_s,
        ],
    );
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(PART_START + PART_SIZE + (1 << 20))
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let script = format!(
        "label: gpt\nstart={}, size={}, type=L\n",
        PART_START / 512,
        PART_SIZE / 512
    );
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    write_at(&disk, PART_START, &std::fs::read(&part).unwrap());
    disk
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn convert(raw: &Path, format: &str, options: &[&str]) -> PathBuf {
    let out = raw.with_extension(format);
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    args.extend_from_slice(options);
    args.extend_from_slice(&[raw.to_str().unwrap(), out.to_str().unwrap()]);
    run("qemu-img", &args);
    out
}

fn open(path: &Path) -> Arc<dyn VirtualDisk> {
    Arc::new(open_disk(path, &OpenOptions::default()).unwrap())
}

fn check(qemu: &QemuBackend, disk: Arc<dyn VirtualDisk>, what: &str) -> ApplianceReport {
    let options = ApplianceOptions::default();
    let started = Instant::now();
    let report = appliance::run(disk, qemu, &options).unwrap();
    println!(
        "appliance wall time ({what}): {:.2} s (boot {} ms, exit {:?})",
        started.elapsed().as_secs_f64(),
        report.elapsed_ms,
        report.exit
    );
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    report
}

fn assert_clean_debian_like(report: &ApplianceReport) {
    assert_eq!(report.exit, GuestExit::PowerOff);
    assert_eq!(report.partition_table.as_deref(), Some("gpt"));
    assert_eq!(report.partitions.len(), 1);
    let part = &report.partitions[0];
    assert_eq!(part.device, "vda1");
    assert_eq!(part.fs.as_deref(), Some("ext4"));
    assert_eq!(part.uuid.as_deref(), Some(ROOT_UUID));
    assert_eq!(part.label.as_deref(), Some("vdrroot"));
    assert!(part.fsck.ran);
    assert_eq!(part.fsck.clean, Some(true), "{}", part.fsck.output_tail);
    assert!(part.mounted, "{:?}", part.mount_error);
    let os = part.os_release.as_ref().expect("os-release read");
    assert_eq!(os["PRETTY_NAME"], "vdr test root 1.0");
    assert_eq!(os["VERSION_ID"], "1.0");
    let fstab: Vec<_> = part
        .fstab
        .iter()
        .map(|e| (e.mountpoint.as_str(), e.found))
        .collect();
    assert_eq!(
        fstab,
        [("/", Some(true)), ("/data", Some(false)), ("/proc", None)]
    );
    assert!(report.usable, "{:?}", report.problems);
    let stages: Vec<&str> = report.timeline.iter().map(|s| s.stage.as_str()).collect();
    for stage in [
        "kernel start",
        "modules",
        "disk",
        "fsck vda1",
        "checked vda1",
        "report",
        "exit",
    ] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
}

#[test]
fn appliance_checks_ext4_in_gpt_from_qcow2() {
    let Some(qemu) = appliance_ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = convert(&ext4_gpt_disk(dir.path()), "qcow2", &[]);
    let report = check(&qemu, open(&qcow2), "qcow2, clean ext4");
    assert_clean_debian_like(&report);
}

#[test]
fn appliance_checks_ext4_in_gpt_from_vmdk() {
    let Some(qemu) = appliance_ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vmdk = convert(
        &ext4_gpt_disk(dir.path()),
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let report = check(&qemu, open(&vmdk), "vmdk, clean ext4");
    assert_clean_debian_like(&report);
}

#[test]
fn appliance_reports_damaged_ext4_as_not_clean() {
    let Some(qemu) = appliance_ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = ext4_gpt_disk(dir.path());
    // the first group descriptor (block 1 with 4 KiB blocks) names the block bitmap
    // (bg_block_bitmap_lo, ext4 disk layout); zeroing it frees every block in use
    let mut descriptor = [0u8; 4];
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&raw).unwrap();
        file.read_exact_at(&mut descriptor, PART_START + 4096)
            .unwrap();
    }
    let bitmap_block = u64::from(u32::from_le_bytes(descriptor));
    assert!(bitmap_block > 1 && bitmap_block < PART_SIZE / 4096);
    write_at(&raw, PART_START + bitmap_block * 4096, &[0u8; 4096]);
    let qcow2 = convert(&raw, "qcow2", &[]);
    let report = check(&qemu, open(&qcow2), "qcow2, damaged ext4");
    let part = &report.partitions[0];
    assert!(part.fsck.ran);
    assert_eq!(part.fsck.clean, Some(false), "{}", part.fsck.output_tail);
    assert!(!report.usable);
    assert!(report
        .problems
        .iter()
        .any(|p| p.contains("e2fsck found problems")));
}

#[test]
fn appliance_finds_no_filesystem_on_a_zeroed_disk() {
    let Some(qemu) = appliance_ready() else {
        return;
    };
    let report = check(&qemu, raw_disk(vec![0u8; 16 << 20]), "zeroed raw");
    assert_eq!(report.exit, GuestExit::PowerOff);
    assert_eq!(report.partition_table, None);
    assert_eq!(report.partitions.len(), 1);
    assert_eq!(report.partitions[0].device, "vda");
    assert_eq!(report.partitions[0].fs, None);
    assert!(report.partitions[0].present);
    assert!(!report.partitions[0].mounted);
    assert!(!report.usable);
    assert!(report.problems.iter().any(|p| p.contains("no filesystem")));
}

/// Boots a guest that writes the disk's first sector and reads it back, and returns the
/// console; the image file must be unchanged afterwards whatever the access.
fn guest_writes_first_sector(access: DiskAccess) -> Option<Vec<String>> {
    let qemu = appliance_ready()?;
    let busybox = static_busybox()?;
    let kernel = appliance::kernel::find_kernel(None).unwrap();
    let modules = appliance::modules::ModuleIndex::load(&kernel.modules_dir)
        .unwrap()
        .resolve(appliance::modules::DISK_MODULES)
        .unwrap();
    let mut cpio = CpioWriter::new();
    for dir in ["bin", "dev", "proc", "m"] {
        cpio.directory(dir).unwrap();
    }
    cpio.file("bin/busybox", 0o755, &busybox).unwrap();
    let mut list = String::new();
    for (i, module) in modules.iter().enumerate() {
        let name = format!("m/{i}.ko");
        cpio.file(&name, 0o644, &std::fs::read(&module.path).unwrap())
            .unwrap();
        list.push_str(&format!("/{name}\n"));
    }
    cpio.file("modules", 0o644, list.as_bytes()).unwrap();
    let script = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod $m; done < /modules
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
if echo VDR-WRITTEN | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; then
  echo WRITE-OK; else echo WRITE-FAILED; fi
echo 3 > /proc/sys/vm/drop_caches
echo READ:$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 11)
poweroff -f
";
    cpio.file("init", 0o755, script.as_bytes()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![0x5Au8; 4 << 20]).unwrap();
    let qcow2 = convert(&raw, "qcow2", &[]);
    let before = std::fs::read(&qcow2).unwrap();
    let spec = BootSpec {
        kernel: std::fs::read(&kernel.path).unwrap(),
        initrd: Some(cpio.finish().unwrap()),
        cmdline: cmdline(),
        memory_mib: 256,
        vcpus: 1,
        timeout: Duration::from_secs(120),
        disk: open(&qcow2),
        access,
        stop_when: None,
    };
    let outcome = qemu.boot(&spec).unwrap();
    assert_eq!(outcome.exit, GuestExit::PowerOff, "{:#?}", outcome.console);
    assert_eq!(std::fs::read(&qcow2).unwrap(), before, "the image changed");
    Some(outcome.console.into_iter().map(|l| l.text).collect())
}

#[test]
fn overlay_keeps_guest_writes_away_from_the_image() {
    let Some(console) = guest_writes_first_sector(DiskAccess::Overlay) else {
        return;
    };
    assert!(console.iter().any(|l| l == "WRITE-OK"), "{console:#?}");
    assert!(
        console.iter().any(|l| l == "READ:VDR-WRITTEN"),
        "{console:#?}"
    );
}

#[test]
fn read_only_disk_refuses_guest_writes() {
    let Some(console) = guest_writes_first_sector(DiskAccess::ReadOnly) else {
        return;
    };
    assert!(console.iter().any(|l| l == "WRITE-FAILED"), "{console:#?}");
    assert!(
        console.iter().any(|l| l == "READ:ZZZZZZZZZZZ"),
        "{console:#?}"
    );
}

/// Writes `image` into `disk` at `offset` without holding either in memory.
fn copy_into(disk: &Path, offset: u64, image: &Path) {
    use std::io::{Seek, SeekFrom};
    let mut out = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    out.seek(SeekFrom::Start(offset)).unwrap();
    std::io::copy(&mut std::fs::File::open(image).unwrap(), &mut out).unwrap();
}

#[test]
fn appliance_mounts_vfat_and_btrfs_and_skips_swap() {
    let Some(qemu) = appliance_ready() else {
        return;
    };
    let tools = [
        ("mkfs.vfat", "dosfstools"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("mkswap", "util-linux"),
    ];
    for (tool, package) in tools {
        if Command::new(tool).arg("--help").output().is_err() {
            println!("SKIP: {tool} is not installed (Debian: {package})");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, mib: u64| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        path
    };
    let (vfat, btrfs, swap) = (image("v.img", 16), image("b.img", 48), image("s.img", 8));
    run("mkfs.vfat", &["-n", "EFI", vfat.to_str().unwrap()]);
    run(
        "mkfs.btrfs",
        &["-q", "--mixed", "-L", "data", btrfs.to_str().unwrap()],
    );
    run("mkswap", &["-q", "-L", "swap0", swap.to_str().unwrap()]);
    let disk = image("disk.raw", 1 + 16 + 48 + 8 + 1);
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let script =
        "label: gpt\nstart=2048, size=32768, type=U\nsize=98304, type=L\nsize=16384, type=S\n";
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    copy_into(&disk, 1 << 20, &vfat);
    copy_into(&disk, 17 << 20, &btrfs);
    copy_into(&disk, 65 << 20, &swap);

    let report = check(&qemu, open(&disk), "raw, vfat + btrfs + swap");
    let summary: Vec<_> = report
        .partitions
        .iter()
        .map(|p| (p.device.as_str(), p.fs.as_deref(), p.mounted, p.fsck.ran))
        .collect();
    assert_eq!(
        summary,
        [
            ("vda1", Some("vfat"), true, false),
            ("vda2", Some("btrfs"), true, false),
            ("vda3", Some("swap"), false, false),
        ],
        "{:?}",
        report.problems
    );
    assert_eq!(report.partitions[1].label.as_deref(), Some("data"));
    assert!(report.usable, "{:?}", report.problems);
}
