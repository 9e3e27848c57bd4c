//! Salvage-mode reconstruction of damaged volume metadata from what survives:
//! - a zeroed or corrupt FS descriptor: the root directory's FD is found by its lock
//!   block (type 0x10C00001 whose `addr` field is its own LV offset, metadata naming
//!   address 0x4), the metadata block size follows from where that metadata sits, and
//!   the file block size from the `.fdc.sf` FD beside it; the rest is taken from the
//!   system files' own headers once they are open;
//! - a damaged `.fdc.sf` header: rebuilt from the FS descriptor's FD cluster-group
//!   fields, assuming the resource file is contiguous from where cluster 0 lies.
//!
//! Every reconstruction is reported as a finding: these are the best honest guesses, and
//! names (label, UUID) that only the descriptor held stay unknown.

use super::bytes::{u32_at, u64_at, Uuid};
use super::fd::FD_LOCK_TYPE;
use super::fs::{FsInfo, VMFS6_MAJOR};
use super::resource::{ResourceFile, ResourceHeader};
use super::volume::Volume;
use super::Error;
use crate::source::Source;

/// How far into the LV the root FD is looked for (it sits at 4–8 MiB on every layout
/// seen; larger file blocks push it further).
const ROOT_SCAN_LIMIT: u64 = 64 << 20;
const ROOT_FD_ADDRESS: u32 = 0x4;

/// Rebuilds the FS parameters of a volume whose descriptor is unreadable. `lvm_major`
/// (3, 5 or 6) is the LVM header's version when there is one.
pub(super) fn infer_fs(lv: &dyn Source, lvm_major: Option<u32>) -> Result<(FsInfo, String), Error> {
    let file = lv.name();
    let limit = lv.len().min(ROOT_SCAN_LIMIT);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < limit {
        let n = ((limit - at) as usize).min(buf.len());
        if lv.read_exact_at(&mut buf[..n], at).is_err() {
            at += n as u64;
            continue;
        }
        for off in (0..n.saturating_sub(12)).step_by(512) {
            let pos = at + off as u64;
            if u32_at(&buf, off) != FD_LOCK_TYPE || u64_at(&buf, off + 4) != pos {
                continue;
            }
            for md in [512u64, 4096, 8192, 16384, 65536] {
                if let Some(fs) = try_root(lv, pos, md, lvm_major) {
                    let how = format!(
                        "the FS descriptor is unreadable: the root directory's FD was found at LV {pos:#x}; file block size {:#x} and the FD cluster layout were read from .fdc.sf; label and UUID are unknown",
                        fs.block_size
                    );
                    return Ok((fs, how));
                }
            }
        }
        at += n as u64;
    }
    Err(Error::bad(
        file,
        super::fs::FS_DESCRIPTOR_OFFSET,
        "FS descriptor",
        "unreadable, and no root directory FD was found in the first 64 MiB of the volume to rebuild it from",
    ))
}

/// Checks whether an FD lock at `pos` with metadata `md` bytes further is the root, and
/// builds the FS parameters from it and `.fdc.sf`.
fn try_root(lv: &dyn Source, pos: u64, md: u64, lvm_major: Option<u32>) -> Option<FsInfo> {
    let vmfs6 = md != 512;
    let fd_size = if vmfs6 { 2 * md } else { 0x800 };
    let mut meta = [0u8; 0x90];
    lv.read_exact_at(&mut meta, pos + md).ok()?;
    if u32_at(&meta, 0) != ROOT_FD_ADDRESS {
        return None;
    }
    // .fdc.sf is system FD resource 2, two FDs after the root.
    let fdc = pos + 2 * fd_size;
    let mut fdc_buf = vec![0u8; fd_size as usize];
    lv.read_exact_at(&mut fdc_buf, fdc).ok()?;
    if u32_at(&fdc_buf, 0) != FD_LOCK_TYPE || u32_at(&fdc_buf, md as usize) != 0x0080_0004 {
        return None;
    }
    let block_size = u64_at(&fdc_buf, md as usize + 0x1C);
    if !block_size.is_power_of_two() || !(0x1_0000..=0x1000_0000).contains(&block_size) {
        return None;
    }
    // The first block of .fdc.sf holds its resource header (FB/SFB address in slot 0).
    let first = if vmfs6 {
        let arr = fd_size as usize - if md <= 0x1000 { 2560 } else { md as usize / 2 };
        let a = u64_at(&fdc_buf, arr);
        let cluster = (a >> 15) & 0x7FFF_FFFF;
        let resource = (a >> 51) & 0x1FFF;
        // SFBs per cluster are not known yet; the sample's 512 holds for 1 MiB blocks.
        (cluster * (0x2000u64).min(0x2000_0000 / block_size) + resource) * block_size
    } else {
        u64::from(u32_at(&fdc_buf, 0x400) >> 6) * block_size
    };
    let mut head = [0u8; 0x40];
    lv.read_exact_at(&mut head, first).ok()?;
    let cgo = u64::from(u32_at(&head, 8));
    let cpg = u64::from(u32_at(&head, 4));
    if cpg == 0
        || cpg > 0x1_0000
        || cgo == 0
        || cgo > 0x100_0000
        || u64::from(u32_at(&head, 0x0C)) != fd_size
    {
        return None;
    }
    let (major, minor) = if vmfs6 {
        (VMFS6_MAJOR, 82)
    } else if lvm_major == Some(3) {
        (4, 31)
    } else {
        (14, 81)
    };
    Some(FsInfo {
        major,
        minor,
        local: false,
        uuid: Uuid::default(),
        // DENSE_SBPC is decided once .sbc.sf's header is read (see `settle`).
        config: 0,
        label: String::new(),
        block_size,
        creation_time: 0,
        lv_uuid: Uuid::default(),
        fdc_cluster_group_offset: cgo,
        fdc_clusters_per_group: cpg,
        sub_block_size: if vmfs6 || lvm_major == Some(3) {
            0x1_0000
        } else {
            0x2000
        },
        host_uuid: Uuid::default(),
        md_block: md,
        sfb_to_lfb_shift: if vmfs6 { 9 } else { 0 },
    })
}

/// After an inferred descriptor, takes the sub-block size and the dense-sub-block flag
/// from `.sbc.sf`'s own header: 16 sub-blocks per cluster fit the plain address layout,
/// more need DENSE_SBPC's two extra resource bits.
pub(super) fn settle(fs: &mut FsInfo, sbc: Option<&ResourceFile>) {
    if let Some(sbc) = sbc {
        if sbc.header.resource_size.is_power_of_two() {
            fs.sub_block_size = sbc.header.resource_size;
        }
        if sbc.header.resources_per_cluster > 16 {
            fs.config |= 0x4;
        }
    }
}

impl Volume {
    /// A `.fdc.sf` whose header is damaged, rebuilt from the FS descriptor: contiguous
    /// from the LV offset where cluster group 0 starts (what the system-FD formula
    /// assumes), 32 FDs per cluster (VMFS3/5) or 256 (VMFS6), as every sample has.
    pub(super) fn rebuilt_fdc(&self) -> Option<(ResourceFile, Option<u64>)> {
        let fs = &self.fs;
        let fd_size = fs.fd_size();
        let header_size = 2 * fs.md_block;
        let root = fs.system_fd_offset(0)?;
        let base = root
            .checked_sub(fs.fdc_cluster_group_offset)?
            .checked_sub(fs.fdc_clusters_per_group.checked_mul(header_size)?)?;
        let rpc: u64 = if fs.is_vmfs6() { 256 } else { 32 };
        let cluster_group_size =
            fs.fdc_clusters_per_group * header_size + fs.fdc_clusters_per_group * rpc * fd_size;
        // With the FD intact its own map is used; without it, a stand-in sized to one
        // cluster group gives the offsets and reads go straight to the LV from `base`.
        let (mut fd, linear) = match self.system_fd(".fdc.sf") {
            Ok(fd) => (fd, None),
            Err(_) => (self.system_fd(".fbb.sf").ok()?, Some(base)),
        };
        fd.length = fd
            .length
            .max(fs.fdc_cluster_group_offset + cluster_group_size);
        Some((
            ResourceFile {
                name: ".fdc.sf",
                fd,
                header: ResourceHeader {
                    resources_per_cluster: rpc,
                    clusters_per_group: fs.fdc_clusters_per_group,
                    cluster_group_offset: fs.fdc_cluster_group_offset,
                    resource_size: fd_size,
                    cluster_group_size,
                    num_resources: rpc * fs.fdc_clusters_per_group,
                    flags: 0,
                    child_meta_offset: 0,
                    parent_resources_per_cluster: 0,
                    parent_clusters_per_group: 0,
                    parent_cluster_group_size: 0,
                },
                cluster_header_size: header_size,
            },
            linear,
        ))
    }
}
