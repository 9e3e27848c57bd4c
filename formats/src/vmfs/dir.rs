//! Directories. VMFS3/5: the directory's data is a flat array of 0x8C-byte entries
//! (type, FD address, generation, name[128]), `.` and `..` included. VMFS6: a 64 KiB
//! header block (self and parent entries, allocation-map block list, name hash table),
//! then metadata-block-sized blocks whose types the allocation map records; dirent
//! blocks hold 0x120-byte entries, a slot bitmap bit of 0 meaning "allocated".
//!
//! Layouts from vmfs-tools `vmfs_dirent.h` and dissect.vmfs `FileDescriptor5/6._iterdir`
//! (research/vmfs.md §8). Listing walks the allocation map, so the name hash is not
//! needed to read.

use super::bytes::{cstr_at, u16_at, u32_at};
use super::fd::FileDescriptor;
use super::volume::Volume;
use super::Error;

const V5_ENTRY: usize = 0x8C;
const V6_HEADER_BLOCK: u64 = 0x1_0000;
const V6_HEADER_VERSIONS: [u32; 2] = [0x00F5_0001, 0x00FD_C001];
const V6_ENTRY: usize = 0x120;
const V6_BLOCK_HEADER: usize = 0x40;
const V6_DIRENT_BLOCK: u8 = 1;
/// A directory larger than this is damage, not data (ESXi directories stay far below).
const MAX_DIR_BYTES: u64 = 512 << 20;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub fd_address: u32,
    pub entry_type: u32,
    pub generation: u32,
}

impl Volume {
    /// The entries of directory `dir`, without `.` and `..`.
    pub fn read_dir(&self, dir: &FileDescriptor) -> Result<Vec<DirEntry>, Error> {
        if dir.length > MAX_DIR_BYTES {
            return Err(Error::bad(
                &self.name,
                dir.lv_offset,
                "directory",
                format!(
                    "FD {:#x} claims a {}-byte directory",
                    dir.address, dir.length
                ),
            ));
        }
        let mut entries = if self.fs.is_vmfs6() {
            self.read_dir_v6_slots(dir, false)?
        } else {
            self.read_dir_v5(dir)?
        };
        entries
            .retain(|e| e.fd_address != 0 && e.name != "." && e.name != ".." && !e.name.is_empty());
        Ok(entries)
    }

    fn read_all(&self, dir: &FileDescriptor, at: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len as usize];
        let n = self
            .read_fd_data(dir, &mut buf, at, 0)
            .map_err(|e| Error::io(&self.name, dir.lv_offset, "directory", e))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn read_dir_v5(&self, dir: &FileDescriptor) -> Result<Vec<DirEntry>, Error> {
        let data = self.read_all(dir, 0, dir.length)?;
        Ok(data
            .chunks_exact(V5_ENTRY)
            .map(|e| DirEntry {
                entry_type: u32_at(e, 0),
                fd_address: u32_at(e, 4),
                generation: u32_at(e, 8),
                name: cstr_at(e, 0x0C, 128),
            })
            .collect())
    }

    /// The entries of a VMFS6 directory's allocated slots, or with `freed` the remnants
    /// in its freed slots.
    pub(super) fn read_dir_v6_slots(
        &self,
        dir: &FileDescriptor,
        freed: bool,
    ) -> Result<Vec<DirEntry>, Error> {
        let bad = |what: String| Error::bad(&self.name, dir.lv_offset, "VMFS6 directory", what);
        let header = self.read_all(dir, 0, V6_HEADER_BLOCK.min(dir.length))?;
        let version = u32_at(&header, 0);
        if !V6_HEADER_VERSIONS.contains(&version) {
            return Err(bad(format!(
                "FD {:#x}: directory header version {version:#x}",
                dir.address
            )));
        }
        let md = self.fs.md_block;
        let num_maps = (u32_at(&header, 0x0C) as usize).min(128);
        let per_map = 2 * (md as usize) - 2 * V6_BLOCK_HEADER;
        let mut out = Vec::new();
        for m in 0..num_maps {
            let map_block = u64::from(u32_at(&header, 0x10 + 4 * m));
            let at = V6_HEADER_BLOCK + map_block * md;
            if at + md > dir.length {
                return Err(bad(format!(
                    "FD {:#x}: allocation map block {map_block} lies past the directory's end",
                    dir.address
                )));
            }
            let map = self.read_all(dir, at, md)?;
            let nibbles = map[V6_BLOCK_HEADER.min(map.len())..]
                .iter()
                .flat_map(|b| [b >> 4, b & 0xF]);
            for (i, nib) in nibbles.enumerate() {
                if nib & 0b11 != V6_DIRENT_BLOCK {
                    continue;
                }
                let block = (m * per_map + i) as u64;
                let at = V6_HEADER_BLOCK + block * md;
                if at + md > dir.length {
                    continue;
                }
                let b = self.read_all(dir, at, md)?;
                let slots = v6_slot_count(&b).min((md as usize - V6_BLOCK_HEADER) / V6_ENTRY);
                for s in 0..slots {
                    let free = b
                        .get(8 + s / 8)
                        .is_none_or(|byte| (byte >> (s % 8)) & 1 == 1);
                    if free != freed {
                        continue;
                    }
                    out.push(v6_slot_entry(&b[V6_BLOCK_HEADER + s * V6_ENTRY..]));
                }
            }
        }
        Ok(out)
    }
}

/// A VMFS6 dirent slot's entry.
fn v6_slot_entry(e: &[u8]) -> DirEntry {
    DirEntry {
        entry_type: u32_at(e, 0),
        fd_address: u32_at(e, 4),
        generation: u32_at(e, 8),
        name: cstr_at(e, 0x18, 256),
    }
}

/// The number of slots a VMFS6 dirent block says it has.
fn v6_slot_count(b: &[u8]) -> usize {
    usize::from(u16_at(b, 4))
}
