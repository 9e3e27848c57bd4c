//! Partition tables written by sfdisk (util-linux) read by `partition::read_partitions`,
//! with sfdisk's own `--json` listing as the oracle: GPT, GPT with the primary header
//! zeroed (the backup is used and reported), and MBR with logical partitions.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use vdr_formats::partition::{read_partitions, Scheme};
use vdr_formats::raw::RawDisk;
use vdr_formats::FileSource;

fn sfdisk_available() -> bool {
    let ok = Command::new("sfdisk")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIP: sfdisk (util-linux fdisk) not found");
    }
    ok
}

fn sfdisk(disk: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run sfdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    assert!(child.wait().expect("wait").success(), "sfdisk {script}");
}

/// (index, start, len, type) as sfdisk lists them (bytes; type upper-case GUID or
/// "0x83").
fn sfdisk_listing(disk: &Path) -> Vec<(u32, u64, u64, String)> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .expect("sfdisk --json");
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let table = &json["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let gpt = table["label"] == "gpt";
    table["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits: String = node
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let kind = p["type"].as_str().unwrap();
            let kind = if gpt {
                kind.to_uppercase()
            } else {
                format!("{:#04x}", u8::from_str_radix(kind, 16).unwrap())
            };
            (
                digits.parse().unwrap(),
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
                kind,
            )
        })
        .collect()
}

/// The PARTUUIDs sfdisk gives (GPT: each entry's "uuid"; MBR: the label "id" and the
/// partition number, as Linux forms them), in lower case.
fn sfdisk_partuuids(disk: &Path) -> Vec<Option<String>> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .expect("sfdisk --json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let table = &json["partitiontable"];
    let id = table["id"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("0x")
        .to_lowercase();
    let listing = sfdisk_listing(disk);
    table["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .zip(listing)
        .map(|(p, (index, ..))| match p["uuid"].as_str() {
            Some(uuid) => Some(uuid.to_lowercase()),
            None => Some(format!("{id}-{index:02x}")),
        })
        .collect()
}

fn our_partuuids(disk: &Path) -> Vec<Option<String>> {
    let source = Arc::new(FileSource::open(disk).expect("open"));
    let table = read_partitions(&RawDisk::new(source))
        .expect("reads")
        .expect("a table");
    table.partitions.into_iter().map(|p| p.uuid).collect()
}

fn ours(disk: &Path) -> (Scheme, Vec<(u32, u64, u64, String)>) {
    let source = Arc::new(FileSource::open(disk).expect("open"));
    let table = read_partitions(&RawDisk::new(source))
        .expect("reads")
        .expect("a table");
    let parts = table
        .partitions
        .into_iter()
        .map(|p| (p.index, p.start, p.len, p.type_id))
        .collect();
    (table.scheme, parts)
}

fn blank(dir: &Path, size: u64) -> std::path::PathBuf {
    let path = dir.join("disk.raw");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("create");
    path
}

#[test]
fn sfdisk_gpt_matches_and_backup_replaces_a_zeroed_primary() {
    if !sfdisk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = blank(dir.path(), 64 << 20);
    sfdisk(
        &disk,
        "label: gpt\nsize=8MiB, type=U\nsize=20MiB, type=L\nsize=10MiB, type=S\n",
    );
    let want = sfdisk_listing(&disk);
    assert_eq!(want.len(), 3);
    assert_eq!(ours(&disk), (Scheme::GptPrimary, want.clone()));
    assert_eq!(our_partuuids(&disk), sfdisk_partuuids(&disk));

    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 512], 512).unwrap();
    drop(file);
    assert_eq!(ours(&disk), (Scheme::GptBackup, want));
}

#[test]
fn sfdisk_mbr_with_logical_partitions_matches() {
    if !sfdisk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = blank(dir.path(), 64 << 20);
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=81920, type=5\n\
         start=20480, size=20480, type=83\nstart=43008, size=24576, type=82\n",
    );
    let want = sfdisk_listing(&disk);
    assert_eq!(want.len(), 4, "{want:?}");
    assert_eq!(ours(&disk), (Scheme::Mbr, want));
    assert_eq!(our_partuuids(&disk), sfdisk_partuuids(&disk));
}
