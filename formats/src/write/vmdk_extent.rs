//! The on-disk pieces of a hosted sparse extent that both VMDK sparse writers emit
//! (VMware "Virtual Disk Format 1.1", "Hosted Sparse Extents" and "Stream-Optimized
//! Compressed Sparse Extents"; field offsets checked against qemu's `VMDK4Header` in
//! block/vmdk.c and VMware's open-source `StreamVmdkWriter`):
//!
//! - the 512-byte `SparseExtentHeader` (little-endian, packed), also used as the footer of
//!   a stream-optimized extent;
//! - markers of a stream-optimized extent: a grain marker is the grain's LBA (u64), the
//!   compressed length (u32) and the data right after; a metadata marker is a whole sector
//!   holding the number of metadata sectors that follow (u64), a zero size (u32) and the
//!   marker type (u32);
//! - grain tables (512 entries of u32 sector numbers, 4 sectors) and the grain directory
//!   (u32 sector numbers of the grain tables, padded to a sector).
//!
//! Every offset in these structures is a 32-bit count of 512-byte sectors, so an extent
//! file cannot pass 2 TiB; [`to_sector_u32`] turns a byte position into such a number or
//! an error naming the file.

use crate::error::Error;

/// Bytes per sector: every offset and size in a sparse extent counts these.
pub(super) const SECTOR: u64 = 512;
/// Grain size used by every writer here: 128 sectors (64 KiB), what VMware and qemu use.
pub(super) const GRAIN_SECTORS: u64 = 128;
pub(super) const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Entries per grain table (the spec's `numGTEsPerGT`; VMware and qemu use 512).
pub(super) const GTES_PER_GT: u64 = 512;
/// Sectors of one grain table: 512 entries of 4 bytes.
pub(super) const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// Largest capacity of one sparse extent, in sectors (VMware's `SPARSE_MAX_EXTENTSIZE`,
/// 2^32 - 1; qemu's `VMDK_EXTENT_MAX_SECTORS` is 2^32).
pub(super) const MAX_CAPACITY_SECTORS: u64 = (1 << 32) - 1;

/// Header flags (spec: "flags"): bit 0 valid newline-detection test, bit 1 redundant
/// grain directory in use, bit 16 compressed grains, bit 17 markers.
pub(super) const FLAG_NEWLINE_TEST: u32 = 1 << 0;
pub(super) const FLAG_REDUNDANT_GD: u32 = 1 << 1;
pub(super) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(super) const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` 1: deflate.
pub(super) const COMPRESS_DEFLATE: u16 = 1;
/// `gdOffset` of a stream-optimized header whose grain directory follows the grains; the
/// footer then holds the real offset.
pub(super) const GD_AT_END: u64 = u64::MAX;

/// Metadata marker types (spec: `MARKER_EOS`, `MARKER_GT`, `MARKER_GD`, `MARKER_FOOTER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Marker {
    EndOfStream = 0,
    GrainTable = 1,
    GrainDirectory = 2,
    Footer = 3,
}

/// Bytes of a grain marker before its compressed data: `lba` (u64) and `size` (u32).
pub(super) const GRAIN_MARKER_LEN: usize = 12;

/// The fields of a `SparseExtentHeader`; offsets and sizes are in sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub descriptor_offset: u64,
    pub descriptor_sectors: u64,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    /// Sectors before the first grain (the spec's `overHead`).
    pub overhead: u64,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// The header sector: magic "KDMV", the fields, the newline-detection characters
    /// "\n \r\n" at byte 73 and zero padding.
    pub fn to_sector(&self) -> [u8; SECTOR as usize] {
        let mut s = [0u8; SECTOR as usize];
        s[0..4].copy_from_slice(b"KDMV");
        s[4..8].copy_from_slice(&self.version.to_le_bytes());
        s[8..12].copy_from_slice(&self.flags.to_le_bytes());
        s[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        s[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
        s[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        s[36..44].copy_from_slice(&self.descriptor_sectors.to_le_bytes());
        s[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
        s[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        s[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        s[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        s[72] = 0; // uncleanShutdown
        s[73..77].copy_from_slice(b"\n \r\n");
        s[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        s
    }
}

/// A metadata marker sector announcing `sectors` sectors of metadata of kind `marker`.
pub(super) fn metadata_marker(marker: Marker, sectors: u64) -> [u8; SECTOR as usize] {
    let mut s = [0u8; SECTOR as usize];
    s[0..8].copy_from_slice(&sectors.to_le_bytes());
    // bytes 8..12: size 0 tells a metadata marker from a grain marker
    s[12..16].copy_from_slice(&(marker as u32).to_le_bytes());
    s
}

/// The start of a grain marker: the grain's first sector and the compressed length.
pub(super) fn grain_marker(lba: u64, size: u32) -> [u8; GRAIN_MARKER_LEN] {
    let mut m = [0u8; GRAIN_MARKER_LEN];
    m[0..8].copy_from_slice(&lba.to_le_bytes());
    m[8..12].copy_from_slice(&size.to_le_bytes());
    m
}

/// Grain tables needed for `capacity` sectors.
pub(super) fn grain_tables(capacity: u64) -> u64 {
    capacity.div_ceil(GTES_PER_GT * GRAIN_SECTORS)
}

/// Sectors of a grain directory with `tables` entries.
pub(super) fn gd_sectors(tables: u64) -> u64 {
    (tables * 4).div_ceil(SECTOR)
}

/// u32 entries as little-endian bytes, padded with zeros to whole sectors.
pub(super) fn entries_to_sectors(entries: &[u32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    bytes.resize((bytes.len() as u64).next_multiple_of(SECTOR) as usize, 0);
    bytes
}

/// The sector number of byte position `pos` (a multiple of 512) as a 32-bit table entry.
pub(super) fn to_sector_u32(pos: u64, path: &str) -> Result<u32, Error> {
    u32::try_from(pos / SECTOR).map_err(|_| Error::Output {
        path: path.to_string(),
        what: format!(
            "the extent file passes 2 TiB at {pos:#x}: VMDK grain tables hold 32-bit sector \
             numbers"
        ),
    })
}

/// The grain table being filled: the one covering the grains written last.
pub(super) struct GrainTable {
    /// Index of the table in the grain directory.
    pub index: u64,
    entries: Vec<u32>,
    used: bool,
}

impl GrainTable {
    pub fn new() -> GrainTable {
        GrainTable {
            index: 0,
            entries: vec![0; GTES_PER_GT as usize],
            used: false,
        }
    }

    /// Index of the table that holds the entry of `grain`.
    pub fn table_of(grain: u64) -> u64 {
        grain / GTES_PER_GT
    }

    /// Points the entry of `grain` (which must lie in this table) at `sector`.
    pub fn set(&mut self, grain: u64, sector: u32) {
        self.entries[(grain % GTES_PER_GT) as usize] = sector;
        self.used = true;
    }

    /// Whether any grain of this table was stored.
    pub fn is_used(&self) -> bool {
        self.used
    }

    /// The table's 4 sectors.
    pub fn to_sectors(&self) -> Vec<u8> {
        entries_to_sectors(&self.entries)
    }

    /// Empties the table and moves it to directory entry `index`.
    pub fn reset(&mut self, index: u64) {
        self.entries.fill(0);
        self.used = false;
        self.index = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_at_the_spec_offsets() {
        let h = SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 0x1122,
            descriptor_offset: 1,
            descriptor_sectors: 2,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            compress_algorithm: COMPRESS_DEFLATE,
        };
        let s = h.to_sector();
        assert_eq!(&s[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(s[8..12].try_into().unwrap()), 0x30001);
        assert_eq!(u64::from_le_bytes(s[20..28].try_into().unwrap()), 128);
        assert_eq!(u32::from_le_bytes(s[44..48].try_into().unwrap()), 512);
        assert_eq!(&s[56..64], &[0xff; 8]);
        assert_eq!(&s[73..77], b"\n \r\n");
        assert_eq!(u16::from_le_bytes(s[77..79].try_into().unwrap()), 1);
        assert!(s[79..].iter().all(|&b| b == 0));
    }

    #[test]
    fn metadata_markers_carry_sectors_and_type() {
        let m = metadata_marker(Marker::GrainTable, GT_SECTORS);
        assert_eq!(u64::from_le_bytes(m[0..8].try_into().unwrap()), 4);
        assert_eq!(&m[8..12], &[0; 4]);
        assert_eq!(u32::from_le_bytes(m[12..16].try_into().unwrap()), 1);
        assert!(metadata_marker(Marker::EndOfStream, 0)
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn directory_sizes_round_up_to_sectors() {
        // 4 GiB: 8 Mi sectors, 128 tables of 32 MiB, one directory sector.
        assert_eq!(grain_tables(8 << 20), 128);
        assert_eq!(gd_sectors(128), 1);
        assert_eq!(gd_sectors(129), 2);
        assert_eq!(grain_tables(1), 1);
        assert_eq!(entries_to_sectors(&[1, 2]).len(), 512);
    }

    #[test]
    fn positions_past_2_tib_are_refused() {
        assert_eq!(to_sector_u32(1024, "x").unwrap(), 2);
        assert!(to_sector_u32(1 << 41, "x").is_err());
    }
}
