//! ESXi seSparse deltas, as qemu's `vmdk_open_se_sparse` reads them: a 512-byte constant
//! header (magic 0xcafebabe, version 0x200000001, 8-sector grains, 64-sector grain tables,
//! area offsets and sizes in sectors) and a volatile header (magic 0xcafecafe) whose
//! `replay_journal` must be clear. Grain directory entries are 0 (no table) or
//! 0x10000000_nnnnnnnn (table number n in the grain table area); grain table entries carry
//! their type in the top nibble (see [`super::grains::GrainTables::decode`]).

use std::io::Cursor;
use std::sync::Arc;

use binrw::BinRead;

use crate::error::Error as CrateError;
use crate::source::SourceRef;

use super::grains::{read_entries, Geometry, GrainTables, TableKind, TableRef};
use super::sparse::MAX_GD_ENTRIES;
use super::{Error, Log, SparseData};

pub const CONST_MAGIC: u64 = 0xcafe_babe;
pub const VOLATILE_MAGIC: u64 = 0xcafe_cafe;
pub const VERSION: u64 = 0x2_0000_0001;

#[derive(BinRead, Debug, Clone, Default)]
#[br(little)]
pub struct ConstHeader {
    pub magic: u64,
    pub version: u64,
    pub capacity: u64,
    pub grain_size: u64,
    pub grain_table_size: u64,
    pub flags: u64,
    pub reserved: [u64; 4],
    pub volatile_header_offset: u64,
    pub volatile_header_size: u64,
    pub journal_header_offset: u64,
    pub journal_header_size: u64,
    pub journal_offset: u64,
    pub journal_size: u64,
    pub grain_dir_offset: u64,
    pub grain_dir_size: u64,
    pub grain_tables_offset: u64,
    pub grain_tables_size: u64,
    pub free_bitmap_offset: u64,
    pub free_bitmap_size: u64,
    pub backmap_offset: u64,
    pub backmap_size: u64,
    pub grains_offset: u64,
    pub grains_size: u64,
}

/// Opens a seSparse extent.
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
    let mut sector = [0u8; 512];
    source
        .read_exact_at(&mut sector, 0)
        .map_err(|e| CrateError::io(&file, 0, "seSparse constant header", e))?;
    let h = ConstHeader::read(&mut Cursor::new(&sector[..]))
        .map_err(|e| bad(0, format!("unreadable seSparse constant header: {e}")))?;
    if h.magic != CONST_MAGIC {
        return Err(bad(
            0,
            format!("constant header magic {:#018x}, not 0xcafebabe", h.magic),
        ));
    }
    if h.version != VERSION {
        return Err(bad(
            8,
            format!("version {:#018x} is not 0x200000001", h.version),
        ));
    }
    if h.grain_size != 8 || h.grain_table_size != 64 {
        return Err(bad(
            24,
            format!(
                "grain size {} and grain table size {} sectors (only 8 and 64 exist)",
                h.grain_size, h.grain_table_size
            ),
        ));
    }
    if h.flags != 0 || h.reserved != [0; 4] {
        let what = format!(
            "flags {:#x} or reserved fields {:x?} are set",
            h.flags, h.reserved
        );
        log.damage(&file, "seSparse constant header", 40, what)?;
    }
    let sectors = |v: u64, at: u64, name: &str| -> Result<u64, CrateError> {
        v.checked_mul(512)
            .ok_or_else(|| bad(at, format!("{name} {v:#x} overflows")))
    };
    let volatile_at = sectors(h.volatile_header_offset, 80, "volatile header offset")?;
    let mut vol = [0u8; 32];
    source
        .read_exact_at(&mut vol, volatile_at)
        .map_err(|e| CrateError::io(&file, volatile_at, "seSparse volatile header", e))?;
    let word = |i: usize| -> u64 {
        let mut w = [0u8; 8];
        if let Some(src) = vol.get(i * 8..i * 8 + 8) {
            w.copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    };
    if word(0) != VOLATILE_MAGIC {
        return Err(bad(
            volatile_at,
            format!("volatile header magic {:#018x}, not 0xcafecafe", word(0)),
        ));
    }
    if word(3) != 0 {
        let what =
            "the journal was not replayed (the image is dirty): its newest writes may be missing"
                .to_string();
        log.damage(&file, "seSparse volatile header", volatile_at, what)?;
    }
    let capacity = sectors(h.capacity, 16, "capacity")?;
    let grain_size = 8 * 512;
    let geometry = Geometry {
        grain_size,
        gtes_per_gt: 4096,
        entry_bytes: 8,
        capacity,
    };
    let entries = h.grain_dir_size.saturating_mul(512) / 8;
    if entries > MAX_GD_ENTRIES {
        return Err(Error::TooLarge {
            file,
            what: "seSparse grain directory entries",
            value: entries,
            limit: MAX_GD_ENTRIES,
        }
        .into());
    }
    if entries.saturating_mul(geometry.table_span()) < capacity {
        let what = format!(
            "{entries} grain directory entries map less than the capacity of {capacity:#x} bytes"
        );
        log.damage(&file, "seSparse constant header", 136, what)?;
    }
    let gd_at = sectors(h.grain_dir_offset, 128, "grain directory offset")?;
    let tables_at = sectors(h.grain_tables_offset, 144, "grain tables offset")?;
    let grains_at = sectors(h.grains_offset, 192, "grains offset")?;
    let len = source.len();
    let want = entries * 8;
    let have = len.saturating_sub(gd_at).min(want);
    if have < want {
        let what = format!("is cut by the end of the file ({have} of {want} bytes)");
        log.damage(&file, "grain directory", gd_at, what)?;
    }
    let table_bytes = geometry.table_bytes();
    let mut directory = Vec::new();
    for (i, entry) in read_entries(&source, gd_at, have - have % 8, 8, "grain directory")?
        .into_iter()
        .enumerate()
    {
        let slot = if entry == 0 {
            TableRef::Absent
        } else if entry & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
            let what = format!("entry {i} is {entry:#018x}, not 0x10000000_nnnnnnnn");
            TableRef::Damaged(log.damage(&file, "grain directory", gd_at, what)?)
        } else {
            let at = ((entry & 0xffff_ffff) * table_bytes).checked_add(tables_at);
            if let Some(at) = at.filter(|at| at.checked_add(table_bytes).is_some_and(|e| e <= len))
            {
                TableRef::At(at)
            } else {
                let what = format!("entry {i} ({entry:#018x}) points to a grain table outside the file ({len:#x} bytes)");
                TableRef::Damaged(log.damage(&file, "grain directory", gd_at, what)?)
            }
        };
        directory.push(slot);
    }
    let kind = TableKind::SeSparse {
        tables_at,
        grains_at,
    };
    let tables = GrainTables::new(source, kind, geometry, directory, false, false, None, log);
    let vol_len = h.volatile_header_size.saturating_mul(512).max(512);
    Ok(SparseData {
        tables,
        kind: "seSparse".into(),
        header: None,
        metadata: vec![
            (0, 512, "seSparse constant header"),
            (volatile_at, vol_len, "seSparse volatile header"),
            (gd_at, want, "grain directory"),
        ],
    })
}
