//! The plan: which block devices the guest will see and what filesystem each holds,
//! decided on the host so the guest needs no blkid (busybox-static has none).
//!
//! The partition table is read with [`vdr_formats::partition`]; each partition (or the
//! whole disk when there is no table) is identified by [`crate::superblock::probe`], with
//! the UUID and label its superblock holds. PARTUUIDs
//! are the GPT unique GUID or the MBR `<disk signature>-<nn>`, the names Linux gives them.

use serde::Serialize;
use vdr_formats::partition::read_partitions;
use vdr_formats::VirtualDisk;

use super::Error;
use crate::superblock::{probe, PROBE_BYTES};

/// The guest's name for the virtio disk (the only one the appliance has).
pub const DISK_DEVICE: &str = "vda";
/// At most this many partitions are planned (a damaged table may declare thousands).
const MAX_PLANNED: usize = 128;

/// One device the guest will look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanEntry {
    /// "vda1", or "vda" when the disk has no partition table.
    pub device: String,
    pub offset: u64,
    pub len: u64,
    /// "ext4", "xfs", "btrfs", "vfat", "ntfs", "swap", "ext2", "ext3"; None: not recognised.
    pub fs: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    /// The GPT partition name.
    pub partlabel: Option<String>,
}

/// What the guest is told to check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// "gpt", "gpt-backup", "mbr"; None when the disk has no table.
    pub scheme: Option<String>,
    pub entries: Vec<PlanEntry>,
    /// Damage met in the table, and partitions left out.
    pub findings: Vec<String>,
}

impl Plan {
    /// Reads the table and probes every partition.
    pub fn of_disk(disk: &dyn VirtualDisk) -> Result<Plan, Error> {
        let table = read_partitions(disk).map_err(Error::Disk)?;
        let Some(table) = table else {
            let mut entry = PlanEntry {
                device: DISK_DEVICE.to_string(),
                offset: 0,
                len: disk.size(),
                fs: None,
                uuid: None,
                label: None,
                partuuid: None,
                partlabel: None,
            };
            probe_into(disk, &mut entry);
            return Ok(Plan {
                scheme: None,
                entries: vec![entry],
                findings: Vec::new(),
            });
        };
        let mut findings = table.findings.clone();
        let mut entries = Vec::new();
        for partition in table.partitions.iter() {
            if entries.len() == MAX_PLANNED {
                findings.push(format!(
                    "{} partitions; only the first {MAX_PLANNED} are checked",
                    table.partitions.len()
                ));
                break;
            }
            let mut entry = PlanEntry {
                device: format!("{DISK_DEVICE}{}", partition.index),
                offset: partition.start,
                len: partition.len,
                fs: None,
                uuid: None,
                label: None,
                partuuid: partition.uuid.clone(),
                partlabel: Some(partition.name.clone()).filter(|n| !n.is_empty()),
            };
            probe_into(disk, &mut entry);
            entries.push(entry);
        }
        Ok(Plan {
            scheme: Some(table.scheme.name().to_string()),
            entries,
            findings,
        })
    }

    /// The /plan file: `DEVICE FS UUID LABEL` per line, "-" for what is unknown, the
    /// label reduced to characters the guest's shell reads safely.
    pub fn to_guest_text(&self) -> String {
        let mut text = String::new();
        for entry in &self.entries {
            let field = |value: &Option<String>| match value {
                Some(v) if !v.is_empty() => shell_safe(v),
                _ => "-".to_string(),
            };
            text.push_str(&format!(
                "{} {} {} {}\n",
                entry.device,
                field(&entry.fs),
                field(&entry.uuid),
                field(&entry.label)
            ));
        }
        text
    }

    /// The filesystem types planned, each once.
    pub fn filesystems(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self
            .entries
            .iter()
            .filter_map(|e| e.fs.as_deref())
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

fn shell_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the start of the entry's range and fills in what its superblock says.
fn probe_into(disk: &dyn VirtualDisk, entry: &mut PlanEntry) {
    let len = entry.len.min(PROBE_BYTES);
    let Ok(len_usize) = usize::try_from(len) else {
        return;
    };
    let mut head = vec![0u8; len_usize];
    // an unreadable start leaves the entry unrecognised; the guest reports what it sees
    if disk.read_at(&mut head, entry.offset).is_err() {
        return;
    }
    if let Some(found) = probe(&head) {
        entry.fs = Some(found.fs.to_string());
        entry.uuid = found.uuid;
        entry.label = found.label;
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
