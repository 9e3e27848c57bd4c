//! What deletion and lost links leave in a volume, read without judging it: every FD
//! slot `.fdc.sf` has room for, the FD allocation bitmap, directory-entry remnants, the
//! LV ranges a file's pointer blocks occupy and the number of data blocks its map still
//! names. vdr-recover decides from these what was deleted or orphaned.
//!
//! What ESXi clears on delete is not documented anywhere open (research/vmfs-recovery.md
//! §1); these readers assume nothing about it: a remnant is only reported, and a bitmap
//! that cannot be read is `None`, not "free".

use super::address::Addr;
use super::bytes::{cstr_at, u32_at, u64_at};
use super::dir::DirEntry;
use super::fd::{
    FileDescriptor, ZLA_DOUBLE_INDIRECT, ZLA_POINTER_BLOCK, ZLA_POINTER_BLOCK2, ZLA_RESIDENT,
};
use super::file::PieceKind;
use super::resource::{ResourceFile, RCMD};
use super::volume::Volume;
use crate::source::Source;

/// At most this many FD slots are listed (65,536 clusters × 1,024 is the address space;
/// ESXi volumes hold a few hundred thousand FDs).
pub const MAX_FD_SLOTS: usize = 4 << 20;
/// VMFS3/5 directory entry size.
const V5_ENTRY: u64 = 0x8C;
/// The longest stale tail read past a VMFS3/5 directory's end.
const V5_TAIL_MAX: u64 = 8 << 20;

impl Volume {
    /// Every FD address `.fdc.sf` has room for, in cluster order (at most
    /// [`MAX_FD_SLOTS`]); empty when `.fdc.sf` could not be opened.
    pub fn fd_slots(&self) -> Vec<u32> {
        let Some(fdc) = self.res.fdc.get() else {
            return Vec::new();
        };
        let per = fdc.header.resources_per_cluster.min(1024);
        let clusters = fdc.num_clusters().min(1 << 16);
        let mut out = Vec::new();
        'clusters: for c in 0..clusters {
            for r in 0..per {
                if out.len() >= MAX_FD_SLOTS {
                    break 'clusters;
                }
                out.push(Addr::fd_address(c, r));
            }
        }
        out
    }

    /// Whether `.fdc.sf`'s cluster bitmap marks FD `address` free (`Some(true)`) or in
    /// use (`Some(false)`); `None` when the cluster metadata cannot be read or does not
    /// name its own cluster. VMFS3/5: one bit per FD at metadata + 0x10, 1 = free;
    /// VMFS6: 'rcmd' metadata, one bit per FD at + 0x80, 1 = free (research/vmfs.md §6.3).
    pub fn fd_free(&self, address: u32) -> Option<bool> {
        let Addr::FileDescriptor { cluster, resource } = Addr::decode_fd(address) else {
            return None;
        };
        let fdc = self.res.fdc.get()?;
        if resource >= fdc.header.resources_per_cluster {
            return None;
        }
        let header = fdc.cluster_header_offset(cluster)?;
        let mut meta = vec![0u8; 0x80 + 0x100];
        self.read_resource_file(fdc, header + self.fs.md_block, &mut meta)?;
        let bitmap = if self.fs.is_vmfs6() {
            if u32_at(&meta, 0x10) != RCMD || u64_at(&meta, 0x18) != cluster {
                return None;
            }
            0x80
        } else {
            if u64::from(u32_at(&meta, 0)) != cluster {
                return None;
            }
            0x10
        };
        let byte = *meta.get(bitmap + (resource / 8) as usize)?;
        Some(byte >> (resource % 8) & 1 == 1)
    }

    /// Reads `buf.len()` bytes at `at` inside resource file `res` (its linear copy when
    /// salvage rebuilt `.fdc.sf`).
    fn read_resource_file(&self, res: &ResourceFile, at: u64, buf: &mut [u8]) -> Option<()> {
        if res.name == ".fdc.sf" {
            if let Some(base) = self.res.fdc_linear.get() {
                return self.lv.read_exact_at(buf, base.checked_add(at)?).ok();
            }
        }
        let n = self.read_fd_data(&res.fd, buf, at, 1).ok()?;
        (n == buf.len()).then_some(())
    }

    /// Entries a directory's storage still holds that its listing does not show.
    /// VMFS3/5: whole entries in the stale tail past the directory's length (an unlink
    /// that moves the last entry into the hole and shrinks the directory leaves the old
    /// last entry there). VMFS6: freed slots of dirent blocks that still carry a name.
    /// Remnants may name FDs that are live elsewhere; callers match them to FDs.
    pub fn dir_remnants(&self, dir: &FileDescriptor) -> Vec<DirEntry> {
        let mut out = if self.fs.is_vmfs6() {
            self.read_dir_v6_slots(dir, true).unwrap_or_default()
        } else {
            self.v5_stale_tail(dir)
        };
        out.retain(|e| !e.name.is_empty() && e.name != "." && e.name != "..");
        out
    }

    fn v5_stale_tail(&self, dir: &FileDescriptor) -> Vec<DirEntry> {
        let storage_end = if dir.zla == ZLA_RESIDENT {
            dir.resident.len() as u64
        } else {
            let span = 1u64 << dir.block_shift;
            dir.length.div_ceil(span).saturating_mul(span)
        };
        let start = dir.length.div_ceil(V5_ENTRY) * V5_ENTRY;
        let end = storage_end.min(start.saturating_add(V5_TAIL_MAX));
        if end <= start {
            return Vec::new();
        }
        let mut whole = dir.clone();
        whole.length = end;
        let mut buf = vec![0u8; (end - start) as usize];
        let Ok(n) = self.read_fd_data(&whole, &mut buf, start, 0) else {
            return Vec::new();
        };
        buf[..n]
            .chunks_exact(V5_ENTRY as usize)
            .map(|e| DirEntry {
                entry_type: u32_at(e, 0),
                fd_address: u32_at(e, 4),
                generation: u32_at(e, 8),
                name: cstr_at(e, 0x0C, 128),
            })
            .filter(|e| {
                (1..=6).contains(&e.entry_type)
                    && matches!(Addr::decode_fd(e.fd_address), Addr::FileDescriptor { .. })
                    && e.name.chars().all(|c| !c.is_control())
            })
            .collect()
    }

    /// The pointer blocks `fd` maps its data through, each with the LV range it
    /// occupies and the file range it maps: none for direct and resident files. A pointer
    /// block that cannot be located is left out (its file range reads as unreadable
    /// anyway).
    pub fn pointer_blocks(&self, fd: &FileDescriptor) -> Vec<PointerBlockUse> {
        let mut out = Vec::new();
        let ppb = self.pointers_per_block();
        let span = 1u64 << fd.block_shift.min(40);
        let mut push = |raw: u64, first_block: u64, blocks: u64| {
            if let Some((lv, len)) = self.pointer_block_lv(raw) {
                out.push(PointerBlockUse {
                    lv,
                    len,
                    file_offset: first_block.saturating_mul(span),
                    file_len: blocks.saturating_mul(span),
                });
            }
        };
        let top = fd.blocks.iter().enumerate().filter(|(_, b)| **b != 0);
        match fd.zla {
            ZLA_POINTER_BLOCK | ZLA_POINTER_BLOCK2 => {
                for (i, pb) in top {
                    push(*pb, i as u64 * ppb, ppb);
                }
            }
            ZLA_DOUBLE_INDIRECT => {
                for (i, pb) in top {
                    let first = i as u64 * ppb * ppb;
                    push(*pb, first, ppb * ppb);
                    let Ok(buf) = self.pointer_block(*pb, 0) else {
                        continue;
                    };
                    for j in 0..ppb {
                        let mid = self.pointer(&buf, j);
                        if mid != 0 {
                            push(mid, first + j * ppb, ppb);
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// Where the pointer block with raw address `raw` lies in the LV.
    fn pointer_block_lv(&self, raw: u64) -> Option<(u64, u64)> {
        let (res, cluster, resource) = match self.decode(raw) {
            Addr::PointerBlock { cluster, resource } => (self.res.pbc.get()?, cluster, resource),
            Addr::PointerBlock2 { cluster, resource } => (self.res.pb2.get()?, cluster, resource),
            Addr::SubBlock { cluster, resource } if self.fs.is_vmfs6() => {
                (self.res.sbc.get()?, cluster, resource)
            }
            _ => return None,
        };
        let at = res.resource_offset(cluster, resource)?;
        let piece = self.locate(&res.fd, at, 1).ok()?;
        match piece.kind {
            PieceKind::Data(lv) => Some((lv, piece.len.min(res.header.resource_size))),
            _ => None,
        }
    }

    /// How many data blocks (in units of the FD's block size, to-be-zeroed ones
    /// included) `fd`'s map still names, for comparison with the FD's own block count:
    /// fewer means pointers were cleared, so its holes are not known to be holes.
    /// `None` when a pointer block cannot be read.
    pub fn mapped_blocks(&self, fd: &FileDescriptor) -> Option<u64> {
        let ppb = self.pointers_per_block();
        let count_pb = |raw: u64| -> Option<u64> {
            let buf = self.pointer_block(raw, 0).ok()?;
            Some((0..ppb).filter(|i| self.pointer(&buf, *i) != 0).count() as u64)
        };
        let top = fd.blocks.iter().copied().filter(|b| *b != 0);
        match fd.zla {
            ZLA_RESIDENT => Some(0),
            ZLA_POINTER_BLOCK | ZLA_POINTER_BLOCK2 => top.map(count_pb).sum(),
            ZLA_DOUBLE_INDIRECT => {
                let mut n = 0;
                for pb in top {
                    let buf = self.pointer_block(pb, 0).ok()?;
                    for i in 0..ppb {
                        let mid = self.pointer(&buf, i);
                        if mid != 0 {
                            n += count_pb(mid)?;
                        }
                    }
                }
                Some(n)
            }
            _ => Some(top.count() as u64),
        }
    }
}

/// One pointer block of a file: where it lies and which bytes of the file it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerBlockUse {
    /// LV offset and length of the pointer block itself.
    pub lv: u64,
    pub len: u64,
    /// The file range whose block addresses it holds.
    pub file_offset: u64,
    pub file_len: u64,
}
