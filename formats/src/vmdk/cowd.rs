//! ESXi vmfsSparse deltas ("COWD"), as qemu's `vmdk_open_vmfs_sparse` reads them: after the
//! magic, little-endian u32 fields version, flags, capacity (sectors), grain size (sectors),
//! grain directory offset (sectors) and entry count; grain tables of 4096 32-bit sector
//! offsets (0: unallocated; COWD has no zeroed-grain entry).

use std::io::Cursor;
use std::sync::Arc;

use binrw::BinRead;

use crate::error::Error as CrateError;
use crate::source::SourceRef;

use super::grains::{read_entries, Geometry, GrainTables, TableKind, TableRef};
use super::sparse::{MAX_GD_ENTRIES, MAX_GRAIN_SECTORS};
use super::{Error, Log, SparseData};

pub const MAGIC: [u8; 4] = *b"COWD";
/// Entries per COWD grain table (fixed).
pub const GTES_PER_GT: u64 = 4096;

#[derive(BinRead, Debug, Clone, Default)]
#[br(little)]
pub struct RawHeader {
    pub magic: [u8; 4],
    pub version: u32,
    pub flags: u32,
    pub capacity: u32,
    pub grain_size: u32,
    pub gd_offset: u32,
    pub gd_entries: u32,
    pub free_sector: u32,
}

/// Opens a COWD extent.
pub fn open(source: SourceRef, log: Arc<Log>) -> Result<SparseData, CrateError> {
    let file = source.name().to_string();
    let bad = |offset: u64, what: String| -> CrateError {
        Error::Header {
            file: file.clone(),
            offset,
            what,
        }
        .into()
    };
    let mut head = [0u8; 32];
    source
        .read_exact_at(&mut head, 0)
        .map_err(|e| CrateError::io(&file, 0, "COWD header", e))?;
    let raw = RawHeader::read(&mut Cursor::new(&head[..]))
        .ok()
        .filter(|r| r.magic == MAGIC)
        .ok_or_else(|| bad(0, "no COWD header".into()))?;
    let gs = u64::from(raw.grain_size);
    if gs == 0 || gs > MAX_GRAIN_SECTORS || !gs.is_power_of_two() {
        return Err(bad(
            16,
            format!("grain size of {gs} sectors is not a power of two up to {MAX_GRAIN_SECTORS}"),
        ));
    }
    let entries = u64::from(raw.gd_entries);
    if entries > MAX_GD_ENTRIES {
        return Err(Error::TooLarge {
            file,
            what: "COWD grain directory entries",
            value: entries,
            limit: MAX_GD_ENTRIES,
        }
        .into());
    }
    let capacity = u64::from(raw.capacity) * 512;
    let span = GTES_PER_GT * gs * 512;
    if entries.saturating_mul(span) < capacity {
        let what = format!(
            "{entries} grain directory entries map less than the capacity of {capacity:#x} bytes"
        );
        log.damage(&file, "COWD header", 24, what)?;
    }
    let gd_at = u64::from(raw.gd_offset) * 512;
    let len = source.len();
    let want = entries * 4;
    let have = len.saturating_sub(gd_at).min(want);
    if have < want {
        let what = format!("is cut by the end of the file ({have} of {want} bytes)");
        log.damage(&file, "grain directory", gd_at, what)?;
    }
    let table_bytes = GTES_PER_GT * 4;
    let mut directory = Vec::new();
    for (i, sector) in read_entries(&source, gd_at, have - have % 4, 4, "grain directory")?
        .into_iter()
        .enumerate()
    {
        let at = sector * 512;
        directory.push(if sector == 0 {
            TableRef::Absent
        } else if at.checked_add(table_bytes).is_some_and(|e| e <= len) {
            TableRef::At(at)
        } else {
            let what = format!(
                "entry {i} points to a grain table at {at:#x} outside the file ({len:#x} bytes)"
            );
            TableRef::Damaged(log.damage(&file, "grain directory", gd_at, what)?)
        });
    }
    let geometry = Geometry {
        grain_size: gs * 512,
        gtes_per_gt: GTES_PER_GT,
        entry_bytes: 4,
        capacity,
    };
    let tables = GrainTables::new(
        source,
        TableKind::Cowd,
        geometry,
        directory,
        false,
        false,
        None,
        log,
    );
    Ok(SparseData {
        tables,
        kind: format!("COWD v{}", raw.version),
        header: None,
        metadata: vec![(0, 512, "COWD header"), (gd_at, want, "grain directory")],
    })
}
