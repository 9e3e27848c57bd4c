//! Real qcow2 samples written by other tools (../shared/corpus, read in place, never
//! copied): the raw content must hash to the value in MANIFEST.tsv (made with
//! `qemu-img convert -O raw`). Skips when the corpus is absent.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod qcow2_support;

use sha2::{Digest, Sha256};
use vdr_formats::{open_disk, OpenOptions, ParseMode, VirtualDisk};

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    let dir = if dir.is_dir() {
        dir
    } else {
        PathBuf::from("/work/shared/corpus")
    };
    if dir.join("MANIFEST.tsv").is_file() {
        Some(dir)
    } else {
        println!("SKIP: corpus not found");
        None
    }
}

/// sha256 of the whole virtual disk, read in 1 MiB pieces.
fn disk_sha256(disk: &dyn VirtualDisk) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < disk.size() {
        let n = (disk.size() - offset).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], offset).unwrap();
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares the disk with qemu's raw conversion piece by piece (much faster than hashing
/// in a debug build). False when qemu-img is not available.
fn same_as_qemu(disk: &dyn VirtualDisk, image: &Path, snapshot: Option<&str>) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("oracle.raw");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-O", "raw"]);
    if let Some(s) = snapshot {
        cmd.args(["-l", &format!("snapshot.id={s}")]);
    }
    let Ok(status) = cmd.arg(image).arg(&raw).status() else {
        return false;
    };
    if !status.success() {
        return false;
    }
    let file = std::fs::File::open(&raw).unwrap();
    assert_eq!(file.metadata().unwrap().len(), disk.size());
    let mut ours = vec![0u8; 1 << 20];
    let mut theirs = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < disk.size() {
        let n = (disk.size() - offset).min(ours.len() as u64) as usize;
        disk.read_at(&mut ours[..n], offset).unwrap();
        file.read_exact_at(&mut theirs[..n], offset).unwrap();
        assert!(
            ours[..n] == theirs[..n],
            "{}: differs in the MiB at {offset:#x}",
            image.display()
        );
        offset += n as u64;
    }
    true
}

/// Checks the image's content against qemu-img's conversion (whose hash MANIFEST.tsv
/// records) or, without qemu-img, against the recorded hash itself.
fn expect(name: &str, snapshot: Option<&str>, sha: &str) {
    let Some(dir) = corpus() else { return };
    let options = OpenOptions {
        snapshot: snapshot.map(str::to_string),
        ..OpenOptions::default()
    };
    let path = dir.join(name);
    let disk = open_disk(&path, &options).unwrap();
    if !same_as_qemu(&disk, &path, snapshot) {
        assert_eq!(disk_sha256(&disk), sha, "{name} snapshot {snapshot:?}");
    }
    let report = disk.check().unwrap();
    assert!(report.is_clean(), "{name}: {:?}", report.errors);
}

#[test]
fn dfvfs_ext2_matches_qemu() {
    expect(
        "dfvfs/ext2.qcow2",
        None,
        "a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80",
    );
}

#[test]
fn dfvfs_windows_volume_matches_qemu() {
    expect(
        "dfvfs/windows_volume.qcow2",
        None,
        "44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2",
    );
}

#[test]
fn dissect_deflate_compressed_matches_qemu() {
    expect(
        "dissect-hypervisor/basic.qcow2",
        None,
        "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f",
    );
}

#[test]
fn dissect_zstd_compressed_matches_qemu() {
    expect(
        "dissect-hypervisor/basic-zstd.qcow2",
        None,
        "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f",
    );
}

#[test]
fn dissect_snapshots_match_qemu() {
    expect(
        "dissect-hypervisor/snapshot.qcow2",
        None,
        "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767",
    );
    expect(
        "dissect-hypervisor/snapshot.qcow2",
        Some("1"),
        "dcaa5c00cf9dd477e4f866cc492007d28800938c634db39710f6634afef69aee",
    );
    expect(
        "dissect-hypervisor/snapshot.qcow2",
        Some("2"),
        "0b3429b0a152c45d87f4e1068b9030c47490da4f29089bf8152d526944e771a7",
    );
}

#[test]
fn dissect_backing_chain_matches_qemu() {
    expect(
        "dissect-hypervisor/backing-chain-1.qcow2",
        None,
        "186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074",
    );
    expect(
        "dissect-hypervisor/backing-chain-2.qcow2",
        None,
        "8e2e850f2a31828f6f053f70f1fbfa71a42ce0571c6d8cd2a7ca0e21e1db8341",
    );
}

#[test]
fn qcow2_rs_sample_matches_qemu() {
    expect(
        "qcow2-rs/test.qcow2",
        None,
        "a3ffecd2207bd29b9d1b4c59fc4ff68f24c9242b62b3a813417cb7d0c670e3fc",
    );
}

#[test]
fn binwalk_header_only_file_is_rejected_in_strict_mode() {
    let Some(dir) = corpus() else { return };
    let path = dir.join("binwalk/qcow.bin");
    let options = OpenOptions {
        format: Some(vdr_formats::Format::Qcow2),
        ..OpenOptions::default()
    };
    let err = open_disk(&path, &options).err().unwrap().to_string();
    assert!(err.contains("L1 table at 0x30000"), "{err}");
}

#[test]
fn binwalk_header_only_file_reads_unreadable_in_salvage_mode() {
    let Some(dir) = corpus() else { return };
    let options = OpenOptions {
        mode: ParseMode::Salvage,
        ..OpenOptions::default()
    };
    let disk = open_disk(&dir.join("binwalk/qcow.bin"), &options).unwrap();
    let map = disk.map(0, disk.size()).unwrap();
    assert!(map.iter().all(|e| e.kind.name() == "unreadable"), "{map:?}");
    assert!(!disk.findings().is_empty());
    let mut buf = [0u8; 512];
    assert!(disk.read_at(&mut buf, 0).is_err());
}

#[test]
fn corpus_maps_and_checks_agree_with_qemu() {
    let Some(dir) = corpus() else { return };
    if !qcow2_support::have_qemu() {
        return;
    }
    for name in [
        "dfvfs/ext2.qcow2",
        "dfvfs/windows_volume.qcow2",
        "dissect-hypervisor/basic.qcow2",
        "dissect-hypervisor/basic-zstd.qcow2",
        "dissect-hypervisor/snapshot.qcow2",
        "dissect-hypervisor/backing-chain-3.qcow2",
        "qcow2-rs/test.qcow2",
    ] {
        let path = dir.join(name);
        qcow2_support::assert_same_map(&path);
        qcow2_support::assert_same_check(&path);
    }
    // The header-only file: its tables lie past the end; qemu counts 3 corruptions.
    qcow2_support::assert_same_check(&dir.join("binwalk/qcow.bin"));
}
