//! The internal snapshot table (qcow2.txt "Snapshots"): variable-length entries naming an
//! L1 table, with extra data carrying the 64-bit VM state size, the disk size and the
//! instruction count.

use crate::disk::SnapshotInfo;
use crate::source::Source;

use super::Error;

/// qemu's limit on the number of snapshots (QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// qemu's limit on a snapshot's extra data (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
const MAX_EXTRA_DATA: u32 = 1024;
/// Fixed part of an entry.
const FIXED_LEN: usize = 40;

/// One snapshot table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of this entry in the file.
    pub entry_offset: u64,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// Virtual disk size at the time of the snapshot, when the extra data records it.
    pub disk_size: Option<u64>,
    /// Instruction count for record/replay, when recorded (extra data bytes 56-63).
    pub icount: Option<u64>,
}

impl Snapshot {
    /// The model's view, with `default_size` when the entry does not record a disk size.
    pub fn info(&self, default_size: u64) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            disk_size: self.disk_size.unwrap_or(default_size),
        }
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .unwrap_or(0)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Reads `count` entries starting at `offset`. Returns the entries and the table's size in
/// bytes (what qemu counts as the snapshot table's extent for refcounts).
pub fn read_table(
    source: &dyn Source,
    offset: u64,
    count: u32,
) -> Result<(Vec<Snapshot>, u64), Error> {
    let file = source.name();
    let bad = |at: u64, what: String| Error::Structure {
        file: file.to_string(),
        structure: "snapshot table".into(),
        offset: at,
        what,
    };
    if count > MAX_SNAPSHOTS {
        return Err(bad(
            offset,
            format!("{count} snapshots exceed the limit of {MAX_SNAPSHOTS}"),
        ));
    }
    // Each entry takes at least 40 bytes: the count must fit in the file.
    let min_bytes = u64::from(count) * FIXED_LEN as u64;
    if offset
        .checked_add(min_bytes)
        .is_none_or(|e| e > source.len())
    {
        return Err(bad(
            offset,
            format!(
                "{count} snapshots do not fit before the end of the file ({:#x})",
                source.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut at = offset;
    for index in 0..count {
        let mut fixed = [0u8; FIXED_LEN];
        source
            .read_exact_at(&mut fixed, at)
            .map_err(|e| bad(at, format!("entry {index}: {e}")))?;
        let l1_table_offset = be_u64(&fixed, 0).unwrap_or(0);
        let l1_size = be_u32(&fixed, 8);
        let id_len = usize::from(be_u16(&fixed, 12));
        let name_len = usize::from(be_u16(&fixed, 14));
        let extra_len = be_u32(&fixed, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(bad(
                at,
                format!("entry {index}: {extra_len} bytes of extra data exceed {MAX_EXTRA_DATA}"),
            ));
        }
        let var_len = extra_len as usize + id_len + name_len;
        let mut var = vec![0u8; var_len];
        let var_at = at + FIXED_LEN as u64;
        source
            .read_exact_at(&mut var, var_at)
            .map_err(|e| bad(at, format!("entry {index}: {e}")))?;
        let extra = var.get(..extra_len as usize).unwrap_or_default();
        let id_end = extra_len as usize + id_len;
        let id = String::from_utf8_lossy(var.get(extra_len as usize..id_end).unwrap_or_default())
            .into_owned();
        let name = String::from_utf8_lossy(var.get(id_end..).unwrap_or_default()).into_owned();
        let vm_state_size = be_u64(extra, 0).unwrap_or(u64::from(be_u32(&fixed, 32)));
        out.push(Snapshot {
            entry_offset: at,
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec: be_u32(&fixed, 16),
            date_nsec: be_u32(&fixed, 20),
            vm_clock_nsec: be_u64(&fixed, 24).unwrap_or(0),
            vm_state_size,
            disk_size: be_u64(extra, 8),
            icount: be_u64(extra, 16).filter(|c| *c != u64::MAX),
        });
        // Entries are padded to a multiple of 8 bytes.
        let entry_len = (FIXED_LEN + var_len).next_multiple_of(8) as u64;
        at = at
            .checked_add(entry_len)
            .ok_or_else(|| bad(at, "snapshot table offset overflows".into()))?;
    }
    Ok((out, at - offset))
}

/// Finds the snapshot `wanted` names: by ID first, then by name (qemu's order).
pub fn select<'a>(snapshots: &'a [Snapshot], wanted: &str) -> Option<(usize, &'a Snapshot)> {
    snapshots
        .iter()
        .enumerate()
        .find(|(_, s)| s.id == wanted)
        .or_else(|| snapshots.iter().enumerate().find(|(_, s)| s.name == wanted))
}
