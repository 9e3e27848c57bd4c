//! The monolithicSparse writer: one hosted sparse extent with its descriptor embedded
//! (VMware "Virtual Disk Format 1.1", "Hosted Sparse Extents": header, embedded
//! descriptor, redundant and primary grain directories with their grain tables, grains).
//!
//! Layout, all in sectors, as qemu's `vmdk_init_extent` lays it out (the capacity is
//! known before the first grain, so every grain table gets its place up front):
//!
//! ```text
//! 0                    header: version 1, flags "valid newline test" + "redundant GD"
//! 1..21                descriptor (20 sectors reserved, as qemu)
//! 21                   redundant grain directory, then its grain tables (4 sectors each)
//! gdOffset             grain directory, then its grain tables
//! overHead             (rounded up to a grain) the grains, in virtual order
//! ```
//!
//! Grains that read as all zeros get grain table entry 0 ("unallocated", reads as zeros
//! without a parent), as qemu-img convert leaves them; stored grains are appended in
//! virtual order, straight from the worker's buffer. A grain table is written (both
//! copies) once the cursor has left its 32 MiB of the disk, so memory holds one table;
//! tables that map nothing stay holes that read as zeros, which is what a table without
//! entries is. The header, descriptor and directories are written last, so an interrupted
//! run never leaves a file that looks like a finished image.
//!
//! A disk whose size is not a grain multiple ends in a partial grain; its grain is
//! stored whole, padded with zeros, as qemu does.

use std::fs::File;

use crate::error::Error;

use super::appender::Appender;
use super::clusters::{ClusterOut, ClusterUnit};
use super::gather::push_unreadable;
use super::vmdk_extent::{
    entries_to_sectors, gd_sectors, grain_tables, to_sector_u32, GrainTable, SparseHeader,
    FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GD, GRAIN_BYTES, GRAIN_SECTORS, GTES_PER_GT, GT_SECTORS,
    SECTOR,
};
use super::ConvertReport;

/// Sectors reserved for the embedded descriptor (qemu's `desc_size`).
const DESCRIPTOR_SECTORS: u64 = 20;

/// Where the metadata of a monolithicSparse extent lies, in sectors.
#[derive(Clone, Copy, Debug)]
struct Layout {
    tables: u64,
    rgd: u64,
    gd: u64,
    gd_sectors: u64,
    overhead: u64,
}

impl Layout {
    fn new(capacity: u64) -> Layout {
        let tables = grain_tables(capacity);
        let gd_sectors = gd_sectors(tables);
        let rgd = 1 + DESCRIPTOR_SECTORS;
        let gd = rgd + gd_sectors + tables * GT_SECTORS;
        let end = gd + gd_sectors + tables * GT_SECTORS;
        Layout {
            tables,
            rgd,
            gd,
            gd_sectors,
            overhead: end.next_multiple_of(GRAIN_SECTORS),
        }
    }

    /// Sector of grain table `index` of the directory starting at `directory`.
    fn table(&self, directory: u64, index: u64) -> u64 {
        directory + self.gd_sectors + index * GT_SECTORS
    }
}

/// Writer side: places grains and tables in the file, in order.
pub(super) struct SparseWriter<'a> {
    out: Appender<'a>,
    path: &'a str,
    size: u64,
    capacity: u64,
    layout: Layout,
    table: GrainTable,
    descriptor: String,
    report: ConvertReport,
}

impl<'a> SparseWriter<'a> {
    /// Prepares a new, empty `file` for a disk of `size` bytes (`capacity` sectors, at
    /// most `MAX_CAPACITY_SECTORS`) whose embedded descriptor is `descriptor`.
    pub fn new(
        file: File,
        path: &'a str,
        size: u64,
        capacity: u64,
        descriptor: String,
    ) -> Result<SparseWriter<'a>, Error> {
        let layout = Layout::new(capacity);
        if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
            return Err(Error::Output {
                path: path.to_string(),
                what: "internal error: the descriptor does not fit its 20 sectors".into(),
            });
        }
        // The metadata area exists even when no grain follows it.
        file.set_len(layout.overhead * SECTOR)
            .map_err(|source| Error::Write {
                path: path.to_string(),
                source,
            })?;
        Ok(SparseWriter {
            out: Appender::new(file, path, layout.overhead * SECTOR),
            path,
            size,
            capacity,
            layout,
            table: GrainTable::new(),
            descriptor,
            report: ConvertReport {
                virtual_size: size,
                ..ConvertReport::default()
            },
        })
    }

    /// Writes the grains of the unit at virtual `offset`; gives back the unit's buffer.
    pub fn write_unit(&mut self, offset: u64, unit: ClusterUnit) -> Result<Vec<u8>, Error> {
        let first = offset / GRAIN_BYTES;
        let mut i = 0;
        while i < unit.clusters.len() {
            let grain = first + i as u64;
            self.enter_table(GrainTable::table_of(grain))?;
            match &unit.clusters[i] {
                ClusterOut::Zero => {
                    self.report.zero_bytes += self.virtual_len(grain, 1);
                    i += 1;
                }
                ClusterOut::Plain(range) => {
                    // Neighbouring stored grains of one grain table go out in one write.
                    let table_end = (self.table.index + 1) * GTES_PER_GT;
                    let mut end = range.end;
                    let mut n = 1;
                    while let Some(ClusterOut::Plain(next)) = unit.clusters.get(i + n) {
                        if next.start != end || grain + n as u64 >= table_end {
                            break;
                        }
                        end = next.end;
                        n += 1;
                    }
                    let host = self.out.pos();
                    self.out.append_direct(&unit.bytes[range.start..end])?;
                    for k in 0..n as u64 {
                        let sector = to_sector_u32(host + k * GRAIN_BYTES, self.path)?;
                        self.table.set(grain + k, sector);
                    }
                    self.report.data_bytes += self.virtual_len(grain, n as u64);
                    i += n;
                }
                ClusterOut::Compressed(_) => {
                    return Err(self
                        .out
                        .error("internal error: a compressed grain for a monolithicSparse extent"))
                }
            }
        }
        for range in unit.unreadable {
            push_unreadable(&mut self.report.unreadable, range);
        }
        Ok(unit.bytes)
    }

    /// Virtual bytes of `n` grains from `grain` (the last grain may be short).
    fn virtual_len(&self, grain: u64, n: u64) -> u64 {
        let start = grain * GRAIN_BYTES;
        (n * GRAIN_BYTES).min(self.size - start)
    }

    /// Stores the table being filled when `index` is another one.
    fn enter_table(&mut self, index: u64) -> Result<(), Error> {
        if index != self.table.index {
            self.store_table()?;
            self.table.reset(index);
        }
        Ok(())
    }

    /// Writes both copies of the current grain table, if it maps anything.
    fn store_table(&mut self) -> Result<(), Error> {
        if !self.table.is_used() {
            return Ok(());
        }
        let bytes = self.table.to_sectors();
        for directory in [self.layout.rgd, self.layout.gd] {
            let at = self.layout.table(directory, self.table.index) * SECTOR;
            self.out.write_at(&bytes, at)?;
        }
        Ok(())
    }

    /// Writes the last grain table, both directories, the descriptor and the header.
    pub fn finish(mut self) -> Result<ConvertReport, Error> {
        self.store_table()?;
        self.out.flush()?;
        self.report.output_size = self.out.pos();
        for directory in [self.layout.rgd, self.layout.gd] {
            let entries = (0..self.layout.tables)
                .map(|i| to_sector_u32(self.layout.table(directory, i) * SECTOR, self.path))
                .collect::<Result<Vec<u32>, Error>>()?;
            self.out
                .write_at(&entries_to_sectors(&entries), directory * SECTOR)?;
        }
        self.out.write_at(self.descriptor.as_bytes(), SECTOR)?;
        let header = SparseHeader {
            version: 1,
            flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD,
            capacity: self.capacity,
            descriptor_offset: 1,
            descriptor_sectors: DESCRIPTOR_SECTORS,
            rgd_offset: self.layout.rgd,
            gd_offset: self.layout.gd,
            overhead: self.layout.overhead,
            compress_algorithm: 0,
        };
        self.out.write_at(&header.to_sector(), 0)?;
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_qemus_for_a_4_gib_disk() {
        // qemu-img create -f vmdk x 4G: rgdOffset 21, gdOffset 534, overHead 1152.
        let l = Layout::new(8 << 20);
        assert_eq!((l.rgd, l.gd, l.overhead), (21, 534, 1152));
        assert_eq!(l.table(l.gd, 1), 534 + 1 + 4);
    }
}
