//! Probe mode end to end on /dev/kvm (kvm_pvm included): disks made by sfdisk and
//! mkfs.ext4, converted by qemu-img to qcow2 and to a vmdk with a child snapshot written by
//! qemu-io, opened with vdr_formats and probed in the microVM. The oracles are the tools
//! that made the disks (partition start, label) and the host's own chain reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use vdr_formats::{open_disk, DiskInfo, Extent, OpenOptions, VirtualDisk};
use vdr_verify_vm::backend::DiskAccess;
use vdr_verify_vm::probe::{self, ProbeOptions, ProbeReport, NO_BOOT_NO_FS};

const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const LABEL: &str = "vdr-root";

fn missing(tools: &[&str]) -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm".into());
    }
    tools
        .iter()
        .find(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|tool| tool.to_string())
}

fn sh(dir: &Path, script: &str) {
    let status = Command::new("sh")
        .current_dir(dir)
        .args(["-ec", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// A 64 MiB GPT disk: a BIOS boot partition at 1 MiB (where qemu-io writes in the vmdk
/// child) and an ext4 partition from 2 MiB.
fn make_ext4_gpt(dir: &Path) -> PathBuf {
    sh(
        dir,
        &format!(
            "truncate -s 64M disk.raw
             printf 'label: gpt\\nstart=2048, size=2048, type={BIOS_BOOT}\\nstart=4096, type={LINUX_FS}, name=root\\n' | sfdisk -q disk.raw
             truncate -s $(( (131038 - 4096 + 1) * 512 )) part.img
             mkfs.ext4 -q -F -L {LABEL} part.img
             dd if=part.img of=disk.raw bs=512 seek=4096 conv=notrunc status=none
             rm part.img"
        ),
    );
    dir.join("disk.raw")
}

fn open(path: &Path) -> Arc<dyn VirtualDisk> {
    Arc::new(open_disk(path, &OpenOptions::default()).unwrap())
}

fn probe_timed(path: &Path, access: DiskAccess) -> ProbeReport {
    let started = Instant::now();
    let report = probe::run(
        open(path),
        &ProbeOptions {
            access,
            ..ProbeOptions::default()
        },
    )
    .unwrap();
    let wall = started.elapsed();
    println!(
        "probe {}: wall {:.1} ms (vm setup {} ms, first line {:?} ms, guest {} ms, total {} ms), {} samples",
        path.file_name().unwrap().to_string_lossy(),
        wall.as_secs_f64() * 1000.0,
        report.timings.vm_setup_ms,
        report.timings.first_line_ms,
        report.timings.guest_ms,
        report.timings.total_ms,
        report.samples.checked
    );
    if std::env::var_os("VDR_PROBE_TRACE").is_some() {
        for line in &report.console {
            println!("{:>8.2} ms {}", line.at.as_secs_f64() * 1000.0, line.text);
        }
    }
    report
}

fn assert_ext4_gpt(report: &ProbeReport) {
    let console: Vec<&str> = report.console.iter().map(|l| l.text.as_str()).collect();
    assert!(report.usable, "{:?}\n{console:#?}", report.problems);
    assert_eq!(report.partition_table.as_deref(), Some("gpt"));
    assert!(report.boot_signature);
    let root = report.partitions.iter().find(|p| p.index == 2).unwrap();
    assert_eq!((root.start_lba, root.type_id.as_str()), (4096, LINUX_FS));
    let fs = root.filesystem.as_ref().unwrap();
    assert_eq!(
        (fs.kind.as_str(), fs.label.as_deref()),
        ("ext4", Some(LABEL))
    );
    assert_eq!(report.samples.matched, report.samples.checked);
    assert!(report.samples.checked >= 16);
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ext4_gpt_disk_is_probed_through_raw_qcow2_and_a_vmdk_chain() {
    if let Some(what) = missing(&["sfdisk", "mkfs.ext4", "qemu-img", "qemu-io"]) {
        println!("SKIP: {what} is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_ext4_gpt(dir.path());
    sh(
        dir.path(),
        "qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
         qemu-img convert -f raw -O vmdk disk.raw base.vmdk
         qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
         qemu-io -f vmdk -c 'write -P 0x5a 1M 64k' child.vmdk >/dev/null",
    );

    let mut total_ms = Vec::new();
    for name in ["disk.raw", "disk.qcow2", "child.vmdk"] {
        let report = probe_timed(&dir.path().join(name), DiskAccess::ReadOnly);
        assert_ext4_gpt(&report);
        assert_eq!(report.read_only, Some(true));
        total_ms.push(report.timings.total_ms);
    }
    // The child's write is what the guest read at the BIOS boot partition (a sample of the
    // first 8 sectors of each partition), not the base's zeros.
    let child = open(&dir.path().join("child.vmdk"));
    let mut expected = vec![0u8; 4096];
    child.read_at(&mut expected, 1 << 20).unwrap();
    assert!(expected.iter().all(|&b| b == 0x5a));
    let best = total_ms.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("probe total (best of 3): {best} ms");
    // the < 1 s target is measured by bench/verify.sh; this bound only catches a probe
    // that hangs until its timeout on a busy CI machine
    assert!(best < 5000.0, "probe took {best} ms");
}

#[test]
fn overlay_mode_writes_reach_the_overlay_not_the_evidence() {
    if let Some(what) = missing(&["sfdisk", "mkfs.ext4", "qemu-img", "sha256sum"]) {
        println!("SKIP: {what} is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_ext4_gpt(dir.path());
    sh(
        dir.path(),
        "qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2",
    );
    let input = dir.path().join("disk.qcow2");
    let before = sha256(&input);

    let report = probe_timed(&input, DiskAccess::Overlay);

    assert_ext4_gpt(&report);
    assert_eq!(report.read_only, Some(false));
    let check = report.overlay_check.as_ref().unwrap();
    assert!(check.passed, "{check:?}");
    assert_eq!(sha256(&input), before);
}

#[test]
fn zeroed_disk_is_not_usable() {
    if let Some(what) = missing(&[]) {
        println!("SKIP: {what} is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.raw");
    std::fs::write(&path, vec![0u8; 16 << 20]).unwrap();

    let report = probe_timed(&path, DiskAccess::ReadOnly);

    assert!(!report.usable);
    assert_eq!(report.problems, [NO_BOOT_NO_FS]);
    assert_eq!(report.partition_table.as_deref(), Some("none"));
    assert_eq!(report.samples.matched, report.samples.checked);
}

/// A disk whose bytes in `bad` cannot be read (like a salvage-mode image with a lost
/// cluster): reads touching them fail.
struct Damaged {
    inner: Arc<dyn VirtualDisk>,
    bad: std::ops::Range<u64>,
}

impl VirtualDisk for Damaged {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, vdr_formats::Error> {
        self.inner.map(offset, len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), vdr_formats::Error> {
        let end = offset + buf.len() as u64;
        if offset < self.bad.end && self.bad.start < end {
            return Err(vdr_formats::Error::Unreadable {
                file: "damaged".into(),
                offset,
                len: buf.len() as u64,
                reason: "test damage".into(),
            });
        }
        self.inner.read_at(buf, offset)
    }
    fn info(&self) -> DiskInfo {
        self.inner.info()
    }
}

#[test]
fn unreadable_sectors_are_ioerr_in_the_guest_as_on_the_host() {
    if let Some(what) = missing(&["sfdisk", "mkfs.ext4"]) {
        println!("SKIP: {what} is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = make_ext4_gpt(dir.path());
    // The last MiB: the backup GPT and the last sector sample.
    let size = std::fs::metadata(&raw).unwrap().len();
    let disk = Arc::new(Damaged {
        inner: open(&raw),
        bad: size - (1 << 20)..size,
    });

    let report = probe::run(disk, &ProbeOptions::default()).unwrap();

    assert!(report.usable, "{:?}", report.problems);
    assert!(report.samples.unreadable >= 2, "{:?}", report.samples);
    assert_eq!(report.samples.matched, report.samples.checked);
    let fs = report.partitions.iter().find_map(|p| p.filesystem.as_ref());
    assert_eq!(fs.map(|f| f.kind.as_str()), Some("ext4"));
}
