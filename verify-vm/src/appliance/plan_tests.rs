//! Superblock probing against util-linux blkid on images the real mkfs tools made, and
//! on damaged input.

use std::path::Path;
use std::process::Command;

use super::*;

/// Makes a `size_mib` file with `mkfs` and returns its first bytes, or None (SKIP) when
/// the tool is missing.
fn made_by(mkfs: &str, args: &[&str], size_mib: u64, dir: &Path) -> Option<Vec<u8>> {
    let image = dir.join(format!("{mkfs}.img"));
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(size_mib << 20).unwrap();
    let status = Command::new(mkfs).args(args).arg(&image).output();
    match status {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{mkfs}: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => {
            println!("SKIP: {mkfs} is not installed");
            return None;
        }
    }
    let bytes = std::fs::read(&image).unwrap();
    let head = bytes[..PROBE_BYTES as usize].to_vec();
    blkid_check(&image, &head);
    Some(head)
}

/// Compares the probe with blkid's TYPE, UUID and LABEL.
fn blkid_check(image: &Path, head: &[u8]) {
    let Ok(out) = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(image)
        .output()
    else {
        println!("SKIP: blkid is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let probed = probe(head).expect("recognised");
    assert_eq!(Some(probed.fs.to_string()), value("TYPE"), "{text}");
    assert_eq!(probed.uuid, value("UUID"), "{text}");
    assert_eq!(probed.label, value("LABEL"), "{text}");
}

#[test]
fn ext4_made_by_mkfs_matches_blkid() {
    let dir = tempfile::tempdir().unwrap();
    let Some(head) = made_by("mkfs.ext4", &["-q", "-F", "-L", "root-fs"], 16, dir.path()) else {
        return;
    };
    assert_eq!(probe(&head).unwrap().fs, "ext4");
}

#[test]
fn ext2_made_by_mkfs_is_ext2() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(head) = made_by("mkfs.ext2", &["-q", "-F"], 8, dir.path()) {
        assert_eq!(probe(&head).unwrap().fs, "ext2");
    }
}

#[test]
fn vfat_made_by_mkfs_matches_blkid() {
    let dir = tempfile::tempdir().unwrap();
    made_by("mkfs.vfat", &["-n", "EFI"], 40, dir.path());
}

#[test]
fn btrfs_made_by_mkfs_matches_blkid() {
    let dir = tempfile::tempdir().unwrap();
    made_by("mkfs.btrfs", &["-q", "-L", "data"], 128, dir.path());
}

#[test]
fn swap_made_by_mkswap_matches_blkid() {
    let dir = tempfile::tempdir().unwrap();
    made_by("mkswap", &["-L", "swap0"], 8, dir.path());
}

#[test]
fn ntfs_made_by_mkfs_matches_blkid_type_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    // the label lives in the MFT, which the probe does not read
    made_by("mkfs.ntfs", &["-q", "-F", "-f"], 16, dir.path());
}

#[test]
fn zeroes_are_no_filesystem() {
    assert_eq!(probe(&vec![0u8; PROBE_BYTES as usize]), None);
}

#[test]
fn short_or_garbage_input_never_panics() {
    for len in [0usize, 3, 511, 1024 + 57, 4095, 0x10047] {
        let mut head = vec![0xA5u8; len];
        if len > 1024 + 57 {
            head[1024 + 56] = 0x53;
            head[1024 + 57] = 0xEF;
        }
        let _ = probe(&head);
    }
}

#[test]
fn guest_plan_text_uses_dashes_and_safe_labels() {
    let plan = Plan {
        scheme: Some("gpt".into()),
        entries: vec![
            PlanEntry {
                device: "vda1".into(),
                offset: 1 << 20,
                len: 1 << 30,
                fs: Some("ext4".into()),
                uuid: Some("0123".into()),
                label: Some("my root; rm -rf".into()),
                partuuid: None,
                partlabel: None,
            },
            PlanEntry {
                device: "vda2".into(),
                offset: 0,
                len: 0,
                fs: None,
                uuid: None,
                label: None,
                partuuid: None,
                partlabel: None,
            },
        ],
        findings: Vec::new(),
    };
    assert_eq!(
        plan.to_guest_text(),
        "vda1 ext4 0123 my_root__rm_-rf\nvda2 - - -\n"
    );
    assert_eq!(plan.filesystems(), ["ext4"]);
}

#[test]
fn gpt_guid_is_mixed_endian_lower_case() {
    let raw: Vec<u8> = (0u8..16).collect();
    assert_eq!(
        guid_at(&raw, 0).unwrap(),
        "03020100-0504-0706-0809-0a0b0c0d0e0f"
    );
}
