//! The probe's analysis code (analyze.c, fs.c, out.c) compiled for the host with
//! guest/probe/harness.c, which reads an image file with pread: checked on sfdisk/mkfs
//! made disks against the host's own reading (vdr_formats, crc32fast) through the same
//! parser and report the VM path uses. No VM needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use vdr_formats::partition::read_partitions;
use vdr_formats::{open_image, OpenOptions};

use super::protocol::{parse, Fact};
use super::report::{assemble, HostView, ProbeReport, RunEnd, Timings, NO_BOOT_NO_FS};
use super::samples::{choose, expect};

const EXT4_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// The harness, built once per test process.
fn harness() -> &'static Path {
    static HARNESS: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &HARNESS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/probe");
            let exe = dir.path().join("probe-harness");
            let status = Command::new("gcc")
                .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&exe)
                .args(
                    ["harness.c", "analyze.c", "fs.c", "out.c"]
                        .iter()
                        .map(|f| src.join(f)),
                )
                .status()
                .unwrap();
            assert!(status.success(), "gcc failed building the probe harness");
            (dir, exe)
        })
        .1
}

fn sh(script: &str) {
    let status = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(status.success(), "{script}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the harness on `image` with the samples the host would choose; returns the
/// report and the raw lines.
fn probe_hosted(image: &Path, overlay: Option<u64>) -> (ProbeReport, Vec<String>) {
    let disk = open_image(image, &OpenOptions::default()).unwrap();
    let table = read_partitions(disk.as_ref()).unwrap();
    let sectors = disk.size() / 512;
    let samples = choose(sectors, table.as_ref(), 8);
    let expected = expect(disk.as_ref(), &samples);
    let mut cmd = Command::new(harness());
    cmd.arg(image);
    for s in &samples {
        cmd.arg("--sample").arg(format!("{}:{}", s.lba, s.sectors));
    }
    match overlay {
        Some(lba) => cmd.arg("--overlay").arg(lba.to_string()),
        None => cmd.arg("--ro"),
    };
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let parsed = parse(lines.iter().map(String::as_str));
    assert_eq!(parsed.malformed, 0, "{text}");
    let host = HostView {
        disk_sectors: sectors,
        table: table.as_ref(),
        samples: &samples,
        expected: &expected,
        overlay: overlay.map(|lba| (lba, true)),
    };
    let end = RunEnd {
        exit_status: out.status.code().and_then(|c| u8::try_from(c).ok()),
        exit: "harness".into(),
        timings: Timings::default(),
        console: Vec::new(),
    };
    (assemble(&parsed, &host, end), lines)
}

#[test]
fn gpt_disk_with_ext4_is_found_and_every_sample_matches() {
    if !have("sfdisk") || !have("mkfs.ext4") {
        println!("SKIP: sfdisk or mkfs.ext4 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    sh(&format!(
        "cd {d}; truncate -s 64M gpt.img
         printf 'label: gpt\\nstart=2048, size=100000, type={EXT4_TYPE}, name=\"root fs\"\\n' | sfdisk -q gpt.img
         truncate -s {len} part.img; mkfs.ext4 -q -F -L 'root é' -U 6f1c0a57-3b1e-4d2f-9a3c-1234567890ab part.img
         dd if=part.img of=gpt.img bs=512 seek=2048 conv=notrunc status=none",
        d = dir.path().display(),
        len = 100_000 * 512
    ));

    let (report, lines) = probe_hosted(&img, None);

    assert!(report.usable, "{:?}\n{lines:#?}", report.problems);
    assert_eq!(report.partition_table.as_deref(), Some("gpt"));
    assert!(report.boot_signature);
    assert_eq!(report.partitions.len(), 1);
    let p = &report.partitions[0];
    assert_eq!((p.index, p.start_lba, p.sectors), (1, 2048, 100_000));
    assert_eq!(p.type_id, EXT4_TYPE);
    assert_eq!(p.name.as_deref(), Some("root fs"));
    let fs = p.filesystem.as_ref().unwrap();
    assert_eq!(fs.kind, "ext4");
    assert_eq!(fs.label.as_deref(), Some("root é"));
    assert_eq!(
        fs.uuid.as_deref(),
        Some("6f1c0a57-3b1e-4d2f-9a3c-1234567890ab")
    );
    assert_eq!(report.samples.matched, report.samples.checked);
    assert!(report.samples.checked >= 10);
}

#[test]
fn mbr_disk_with_fat_and_a_logical_partition() {
    if !have("mkfs.vfat") || !have("sfdisk") {
        println!("SKIP: mkfs.vfat or sfdisk is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mbr.img");
    sh(&format!(
        "cd {d}; truncate -s 32M mbr.img
         printf 'label: dos\\nstart=2048, size=20480, type=c\\nstart=22528, type=5\\nstart=24576, size=4096, type=83\\n' | sfdisk -q mbr.img
         truncate -s {len} fat.img; mkfs.vfat -n BOOTME -i 1234abcd fat.img >/dev/null
         dd if=fat.img of=mbr.img bs=512 seek=2048 conv=notrunc status=none",
        d = dir.path().display(),
        len = 20_480 * 512
    ));

    let (report, lines) = probe_hosted(&img, None);

    assert!(report.usable, "{:?}\n{lines:#?}", report.problems);
    assert_eq!(report.partition_table.as_deref(), Some("mbr"));
    let indexes: Vec<u32> = report.partitions.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [1, 5, 2], "{lines:#?}");
    let fat = &report.partitions[0];
    assert_eq!(fat.type_id, "0x0c");
    let fs = fat.filesystem.as_ref().unwrap();
    assert_eq!(fs.kind, "fat16");
    assert_eq!(fs.label.as_deref(), Some("BOOTME"));
    assert_eq!(fs.uuid.as_deref(), Some("1234-ABCD"));
    assert!(fat.vbr_signature && fat.boot_code);
    let logical = &report.partitions[1];
    assert_eq!((logical.start_lba, logical.sectors), (24_576, 4096));
}

#[test]
fn zeroed_disk_has_no_boot_signature_and_no_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zero.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();

    let (report, lines) = probe_hosted(&img, None);

    assert!(!report.usable);
    assert_eq!(report.problems, [NO_BOOT_NO_FS], "{lines:#?}");
    assert_eq!(report.partition_table.as_deref(), Some("none"));
    assert_eq!(report.samples.matched, report.samples.checked);
}

#[test]
fn damaged_primary_gpt_is_read_from_the_backup() {
    if !have("sfdisk") || !have("mkfs.ext4") {
        println!("SKIP: sfdisk or mkfs.ext4 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    sh(&format!(
        "cd {d}; truncate -s 16M gpt.img
         printf 'label: gpt\\nstart=2048, size=8192, type={EXT4_TYPE}\\n' | sfdisk -q gpt.img
         printf 'XXXX' | dd of=gpt.img bs=1 seek=600 conv=notrunc status=none",
        d = dir.path().display()
    ));

    let (report, lines) = probe_hosted(&img, None);

    assert_eq!(report.partition_table.as_deref(), Some("gpt-backup"));
    assert_eq!(report.partitions.len(), 1, "{lines:#?}");
    assert!(
        report.notes.iter().any(|n| n.contains("CRC32")),
        "{:?}",
        report.notes
    );
    // Only the missing file system is a problem: the table and samples agree.
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn overlay_test_writes_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("scratch.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();

    let (report, _) = probe_hosted(&img, Some(100));

    let check = report.overlay_check.unwrap();
    assert!(check.write_accepted && check.read_back_matched && check.passed);
}

/// Writes an MBR-style entry (type, start, length) into `slot` of the sector at `lba`,
/// with the 0x55AA signature.
fn put_entry(disk: &mut [u8], lba: usize, slot: usize, kind: u8, start: u32, len: u32) {
    let e = lba * 512 + 446 + 16 * slot;
    disk[e + 4] = kind;
    disk[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
    disk[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    disk[lba * 512 + 510] = 0x55;
    disk[lba * 512 + 511] = 0xaa;
}

#[test]
fn ebr_loop_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("loop.img");
    let mut disk = vec![0u8; 1 << 20];
    // An extended partition at LBA 100 whose EBRs at 101 and 102 point at each other.
    put_entry(&mut disk, 0, 0, 0x05, 100, 1000);
    put_entry(&mut disk, 100, 0, 0x83, 10, 10);
    put_entry(&mut disk, 100, 1, 0x05, 1, 10);
    put_entry(&mut disk, 101, 0, 0x83, 20, 10);
    put_entry(&mut disk, 101, 1, 0x05, 2, 10);
    put_entry(&mut disk, 102, 0, 0x83, 30, 10);
    put_entry(&mut disk, 102, 1, 0x05, 1, 10);
    std::fs::write(&img, &disk).unwrap();

    let out = Command::new(harness())
        .arg(&img)
        .arg("--ro")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = parse(text.lines());

    assert_eq!(parsed.facts.last(), Some(&Fact::Done), "{text}");
    let parts = parsed
        .facts
        .iter()
        .filter(|f| matches!(f, Fact::Part { .. }))
        .count();
    // 128 logical partitions at most, plus the extended one.
    assert_eq!(parts, 129);
    assert!(text.contains("EBR loop"), "{text}");
}

#[test]
fn garbage_disks_never_break_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("noise.img");
    let mut state = 0x1234_5678_9abc_def0u64;
    for round in 0..20 {
        let mut disk = vec![0u8; 256 << 10];
        for b in disk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        // Give some rounds an MBR or GPT signature so the table code runs on noise.
        if round % 2 == 0 {
            disk[510] = 0x55;
            disk[511] = 0xaa;
        }
        if round % 3 == 0 {
            disk[512..520].copy_from_slice(b"EFI PART");
        }
        std::fs::write(&img, &disk).unwrap();
        let out = Command::new(harness())
            .arg(&img)
            .args(["--ro", "--sample", "0:4"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let parsed = parse(text.lines());
        assert_eq!(parsed.malformed, 0, "{text}");
        assert_eq!(parsed.facts.last(), Some(&Fact::Done), "{text}");
    }
}
