//! `vdr verify` from the command line: probe mode in vdr's microVM on /dev/kvm (any KVM,
//! the software-only kvm_pvm included), the KVM backend's refusal to boot Linux where
//! there is no VMX/SVM, and appliance / guest-kernel mode through the qemu backend. Disks
//! are made by the real tools (sfdisk, mkfs.ext4, qemu-img); every input's sha256 is
//! the same after the run as before.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use vdr_fixtures::linux_disk::LinuxDisk;

/// True (after a SKIP line) when /dev/kvm is missing.
fn skip_without_kvm() -> bool {
    let missing = !Path::new("/dev/kvm").exists();
    if missing {
        println!("SKIP: no /dev/kvm");
    }
    missing
}

/// True on a host whose KVM cannot boot Linux (no /dev/kvm, or the software kvm_pvm).
fn kvm_cannot_boot_linux() -> bool {
    !Path::new("/dev/kvm").exists() || Path::new("/sys/module/kvm_pvm").exists()
}

/// A GPT disk with one ext4 partition (label "vdrroot") holding /etc/os-release and an
/// /etc/fstab, as raw; None (after a SKIP line) when a tool is missing.
fn ext4_disk(dir: &Path) -> Option<PathBuf> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"vdr test root\"\nNAME=\"vdrtest\"\nVERSION_ID=\"7\"\nID=vdrtest\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/fstab"),
        "LABEL=vdrroot / ext4 defaults 0 1\nUUID=0bad-cafe /srv ext4 defaults 0 2\n/dev/sdb1 /backup ext4 defaults 0 2\n",
    )
    .unwrap();
    let disk = LinuxDisk::ext4_gpt(48, "vdrroot", Some(&root));
    let missing = disk.missing_tools();
    if !missing.is_empty() {
        println!("SKIP: missing {}", missing.join(", "));
        return None;
    }
    let raw = dir.join("disk.raw");
    disk.build(&raw).unwrap();
    Some(raw)
}

fn qcow2_of(dir: &Path, raw: &Path) -> PathBuf {
    let out = dir.join("disk.qcow2");
    vdr_fixtures::qemu::qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

/// [`ext4_disk`] as `dir/disk.qcow2`, with its sha256; None (after a SKIP line) when a
/// tool is missing.
fn ext4_qcow2(dir: &Path) -> Option<(PathBuf, String)> {
    if skip_without_qemu() {
        return None;
    }
    let raw = ext4_disk(dir)?;
    let image = qcow2_of(dir, &raw);
    let hash = sha256_file(&image);
    Some((image, hash))
}

fn partitions(report: &Value) -> &Vec<Value> {
    report["probe"]["partitions"]
        .as_array()
        .expect("partitions")
}

#[test]
fn probe_finds_gpt_and_ext4_in_a_qcow2_and_every_sample_matches() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((image, before)) = ext4_qcow2(dir.path()) else {
        return;
    };

    let run = vdr(dir.path(), &["verify", "disk.qcow2", "--json"]);

    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["mode"], "probe");
    assert_eq!(report["format"], "qcow2");
    assert_eq!(report["usable"], true);
    assert_eq!(report["probe"]["partition_table"], "gpt");
    assert_eq!(report["probe"]["boot_signature"], true, "protective MBR");
    let parts = partitions(&report);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0]["start_lba"], 2048);
    assert_eq!(parts[0]["filesystem"]["kind"], "ext4");
    assert_eq!(parts[0]["filesystem"]["label"], "vdrroot");
    let samples = &report["probe"]["samples"];
    assert!(samples["checked"].as_u64().unwrap() >= 8, "{samples}");
    assert_eq!(samples["checked"], samples["matched"], "{samples}");
    assert_eq!(sha256_file(&image), before, "the evidence is unchanged");
    let total = report["probe"]["timings"]["total_ms"].as_f64().unwrap();
    println!(
        "probe of a 50 MiB qcow2: {total:.1} ms inside vdr, report {} ms",
        report["elapsed_ms"]
    );

    let text = vdr(dir.path(), &["verify", "disk.qcow2"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("ext4 label \"vdrroot\""),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("verdict: usable"), "{}", text.stdout);
}

#[test]
fn probe_of_a_zeroed_disk_reports_no_boot_signature_no_filesystem_and_exits_1() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("zero.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();

    let run = vdr(dir.path(), &["verify", "zero.raw", "--json"]);

    run.expect_code(1);
    let report = run.json();
    assert_eq!(report["usable"], false);
    assert_eq!(
        report["problems"],
        serde_json::json!(["no boot signature, no filesystem"])
    );
    let text = vdr(dir.path(), &["verify", "zero.raw"]);
    text.expect_code(1);
    assert!(
        text.stdout.contains("verdict: NOT usable"),
        "{}",
        text.stdout
    );
}

#[test]
fn probe_with_an_overlay_writes_in_memory_only() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((image, before)) = ext4_qcow2(dir.path()) else {
        return;
    };

    let run = vdr(dir.path(), &["verify", "disk.qcow2", "--overlay", "--json"]);

    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["probe"]["read_only"], false);
    assert_eq!(report["probe"]["overlay_check"]["passed"], true, "{report}");
    assert_eq!(sha256_file(&image), before, "the evidence is unchanged");
}

#[test]
fn probe_reads_a_disk_inside_a_vmfs_datastore_in_place() {
    use vdr_fixtures::vmfs::{build, Data, FileSpec, Spec, Version};
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(raw) = ext4_disk(dir.path()) else {
        return;
    };
    let bytes = std::fs::read(&raw).unwrap();
    let sectors = bytes.len() / 512;
    let mut spec = Spec::new(Version::V5, "evidence", 192 << 20);
    spec.files.push(FileSpec::file(
        "/vm/disk.vmdk",
        Data::Bytes(
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"vmfs\"\n\n# Extent description\nRW {sectors} VMFS \"disk-flat.vmdk\"\n"
            )
            .into_bytes(),
        ),
    ));
    spec.files
        .push(FileSpec::file("/vm/disk-flat.vmdk", Data::Bytes(bytes)));
    let datastore = dir.path().join("ds.img");
    build(&spec, &datastore).unwrap();
    let before = sha256_file(&datastore);

    let run = vdr(dir.path(), &["verify", "ds.img::/vm/disk.vmdk", "--json"]);

    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["format"], "vmdk");
    assert_eq!(partitions(&report)[0]["filesystem"]["kind"], "ext4");
    let samples = &report["probe"]["samples"];
    assert_eq!(samples["checked"], samples["matched"], "{samples}");
    assert_eq!(
        sha256_file(&datastore),
        before,
        "the datastore is unchanged"
    );
}

#[test]
fn probe_mode_with_the_qemu_backend_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.raw"), vec![0u8; 1 << 20]).unwrap();

    let run = vdr(dir.path(), &["verify", "d.raw", "--backend", "qemu"]);

    run.expect_code(2);
    assert!(
        run.stderr.contains("--backend qemu is for"),
        "{}",
        run.stderr
    );
}

#[test]
fn kvm_backend_without_vmx_or_svm_refuses_to_boot_linux_and_names_the_qemu_backend() {
    if !kvm_cannot_boot_linux() {
        println!("SKIP: this host's KVM has VMX/SVM: the refusal does not apply");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.raw"), vec![0u8; 1 << 20]).unwrap();

    for mode in ["appliance", "guest-kernel"] {
        let run = vdr(dir.path(), &["verify", "d.raw", "--mode", mode]);

        run.expect_code(2);
        assert!(run.stderr.contains("VMX/SVM"), "{mode}: {}", run.stderr);
        assert!(
            run.stderr.contains("--backend qemu"),
            "{mode}: {}",
            run.stderr
        );
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(run.stderr.contains("kvm_pvm"), "{mode}: {}", run.stderr);
        }
    }
}

/// The SKIP reason when the qemu backend's pieces are missing: qemu-system-x86_64, the
/// kernel scripts/guest-kernel unpacks, a static busybox, e2fsck.static.
fn qemu_appliance_missing() -> Option<String> {
    let kit = vdr_fixtures::boot_image::boot_kit().err();
    if let Some(skip) = kit {
        return Some(skip.trim_start_matches("SKIP: ").to_string());
    }
    (!Path::new("/usr/sbin/e2fsck.static").exists() && !Path::new("/sbin/e2fsck.static").exists())
        .then(|| "e2fsck.static (e2fsck-static) not installed".to_string())
}

#[test]
fn appliance_through_qemu_checks_ext4_reads_os_release_and_resolves_fstab() {
    if let Some(why) = qemu_appliance_missing() {
        println!("SKIP: {why}");
        return;
    }
    appliance_checks_ext4_reads_os_release_and_resolves_fstab("qemu");
}

#[test]
fn appliance_through_kvm_checks_ext4_where_the_host_has_vmx_or_svm() {
    if kvm_cannot_boot_linux() {
        println!("SKIP: this host's KVM cannot boot Linux (no VMX/SVM): the KVM appliance runs only on hardware virtualization");
        return;
    }
    if let Some(why) = qemu_appliance_missing() {
        println!("SKIP: {why}");
        return;
    }
    appliance_checks_ext4_reads_os_release_and_resolves_fstab("kvm");
}

/// The shared appliance check: both backends must give the same report.
fn appliance_checks_ext4_reads_os_release_and_resolves_fstab(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((image, before)) = ext4_qcow2(dir.path()) else {
        return;
    };

    let run = vdr(
        dir.path(),
        &[
            "verify",
            "disk.qcow2",
            "--mode",
            "appliance",
            "--backend",
            backend,
            "--json",
        ],
    );

    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["backend"], backend);
    let appliance = &report["appliance"];
    let part = &appliance["partitions"][0];
    assert_eq!(part["device"], "vda1");
    assert_eq!(part["fs"], "ext4");
    assert_eq!(part["fsck"]["clean"], true, "{part}");
    assert_eq!(part["mounted"], true);
    assert_eq!(part["os_release"]["PRETTY_NAME"], "vdr test root");
    let fstab = part["fstab"].as_array().unwrap();
    assert_eq!(fstab[0]["spec"], "LABEL=vdrroot");
    assert_eq!(fstab[0]["found"], true);
    assert_eq!(fstab[1]["spec"], "UUID=0bad-cafe");
    assert_eq!(fstab[1]["found"], false, "no such filesystem on the disk");
    assert_eq!(fstab[2]["spec"], "/dev/sdb1");
    assert_eq!(
        fstab[2]["found"],
        Value::Null,
        "another disk of the VM: unknown"
    );
    assert_eq!(sha256_file(&image), before, "the evidence is unchanged");
    println!("appliance report in {} ms", report["elapsed_ms"]);
}

#[test]
fn appliance_through_qemu_reports_a_damaged_ext4_as_not_clean() {
    if let Some(why) = qemu_appliance_missing() {
        println!("SKIP: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(raw) = ext4_disk(dir.path()) else {
        return;
    };
    // Zero the first group's block bitmap, found through the first group descriptor
    // (bg_block_bitmap, its first field; the descriptor table starts in the block after
    // the superblock's).
    let part_offset = 1u64 << 20;
    let mut bytes = std::fs::read(&raw).unwrap();
    let block_size = 1024u64
        << u32::from_le_bytes(
            bytes[(part_offset + 1024 + 24) as usize..][..4]
                .try_into()
                .unwrap(),
        );
    let gdt = part_offset + if block_size == 1024 { 2048 } else { block_size };
    let bitmap_block = u32::from_le_bytes(bytes[gdt as usize..][..4].try_into().unwrap());
    let bitmap = (part_offset + u64::from(bitmap_block) * block_size) as usize;
    bytes[bitmap..bitmap + block_size as usize].fill(0);
    std::fs::write(&raw, &bytes).unwrap();

    let run = vdr(
        dir.path(),
        &[
            "verify",
            "disk.raw",
            "--mode",
            "appliance",
            "--backend",
            "qemu",
            "--json",
        ],
    );

    run.expect_code(1);
    let report = run.json();
    let part = &report["appliance"]["partitions"][0];
    assert_eq!(part["fsck"]["ran"], true);
    assert_eq!(part["fsck"]["clean"], false, "{part}");
    assert_eq!(report["usable"], false);
}

/// The fixtures' bootable disk, its initramfs packed with vdr's cpio writer.
fn bootable_disk(dir: &Path, root_device: &str) -> Option<PathBuf> {
    use vdr_fixtures::boot_image::{boot_kit, InitramfsEntry};
    use vdr_verify_vm::appliance::cpio::CpioWriter;
    let kit = match boot_kit() {
        Ok(kit) => kit,
        Err(skip) => {
            println!("{skip}");
            return None;
        }
    };
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
    Some(qcow2_of(dir, &raw))
}

#[test]
fn guest_kernel_through_qemu_boots_the_images_own_kernel_to_its_init() {
    let dir = tempfile::tempdir().unwrap();
    let Some(image) = bootable_disk(dir.path(), "/dev/vda1") else {
        return;
    };
    let before = sha256_file(&image);

    let run = vdr(
        dir.path(),
        &[
            "verify",
            "disk.qcow2",
            "--mode",
            "guest-kernel",
            "--backend",
            "qemu",
            "--json",
        ],
    );

    run.expect_code(0);
    let report = run.json();
    let booted = &report["guest_kernel"];
    assert_eq!(booted["boot_ok"], true, "{booted}");
    let kernel = booted["kernel"]["path"].as_str().unwrap();
    assert!(kernel.starts_with("/boot/vmlinuz-"), "{kernel}");
    let stages: Vec<&str> = booted["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"root-mounted"), "{stages:?}");
    assert_eq!(sha256_file(&image), before, "the evidence is unchanged");
    println!(
        "guest-kernel boot report in {} ms: {stages:?}",
        report["elapsed_ms"]
    );
}

#[test]
fn guest_kernel_through_qemu_reports_a_missing_root_device_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_image) = bootable_disk(dir.path(), "/dev/vda9") else {
        return;
    };

    let run = vdr(
        dir.path(),
        &[
            "verify",
            "disk.qcow2",
            "--mode",
            "guest-kernel",
            "--backend",
            "qemu",
        ],
    );

    run.expect_code(1);
    assert!(
        run.stdout.contains("ALERT!  /dev/vda9 does not exist"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("panic: Attempted to kill init!"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("verdict: NOT usable"), "{}", run.stdout);
}

#[test]
fn probe_of_a_whole_disk_fat_reads_it_as_a_file_system_not_an_mbr() {
    if skip_without_kvm() {
        return;
    }
    if !vdr_fixtures::linux_disk::on_path("mkfs.vfat") {
        println!("SKIP: mkfs.vfat (dosfstools) not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fat.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let made = std::process::Command::new("mkfs.vfat")
        .args(["-n", "WHOLEDISK"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let run = vdr(dir.path(), &["verify", "fat.raw", "--json"]);

    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["probe"]["partition_table"], "none", "{report}");
    let parts = partitions(&report);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["index"], 0, "the whole disk");
    assert_eq!(parts[0]["filesystem"]["kind"], "fat16");
    assert_eq!(parts[0]["filesystem"]["label"], "WHOLEDISK");
}

#[test]
fn guest_kernel_of_a_disk_without_a_kernel_is_not_usable_and_says_what_it_searched() {
    if qemu_appliance_missing().is_some() {
        println!("SKIP: qemu backend pieces missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((_image, before)) = ext4_qcow2(dir.path()) else {
        return;
    };

    let run = vdr(
        dir.path(),
        &[
            "verify",
            "disk.qcow2",
            "--mode",
            "guest-kernel",
            "--backend",
            "qemu",
            "--json",
        ],
    );

    run.expect_code(1);
    let report = run.json();
    assert_eq!(report["usable"], false);
    let problem = report["problems"][0].as_str().unwrap();
    assert!(problem.contains("no Linux kernel found"), "{problem}");
    assert!(problem.contains("partition 1: ext2/3/4"), "{problem}");
    assert_eq!(sha256_file(&dir.path().join("disk.qcow2")), before);
}
