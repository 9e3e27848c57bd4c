//! The FS3 descriptor ("superblock") at LV + 0x200000, validated into [`FsInfo`].
//!
//! Fields from dissect.vmfs `FS3_Descriptor` and vmfs-tools `vmfs_fs.h`
//! (research/vmfs.md §4). The structure is packed: the odd offsets are real.

use super::bytes::{cstr_at, u16_at, u32_at, u64_at, u8_at, Uuid};
use super::Error;
use crate::source::Source;

pub const FS_DESCRIPTOR_OFFSET: u64 = 0x20_0000;
pub const FS_MAGIC: u32 = 0x2FAB_F15E;
/// VMFS-L (ESXi's local OSDATA flavour) shares the layout.
pub const FS_MAGIC_LOCAL: u32 = 0x2FAB_F15F;
/// FS major versions from 24 on are VMFS6.
pub const VMFS6_MAJOR: u32 = 24;
const CONFIG_DENSE_SBPC: u32 = 0x4;

/// The validated file-system descriptor.
#[derive(Clone, Debug)]
pub struct FsInfo {
    pub major: u32,
    pub minor: u8,
    pub local: bool,
    pub uuid: Uuid,
    pub config: u32,
    pub label: String,
    pub block_size: u64,
    pub creation_time: u32,
    /// The LV UUID the FS belongs to (first 16 bytes of volInfo).
    pub lv_uuid: Uuid,
    pub fdc_cluster_group_offset: u64,
    pub fdc_clusters_per_group: u64,
    pub sub_block_size: u64,
    pub host_uuid: Uuid,
    /// Metadata block size: 512 on VMFS3/5, mdAlignment (4 KiB) on VMFS6.
    pub md_block: u64,
    pub sfb_to_lfb_shift: u32,
}

impl FsInfo {
    pub fn is_vmfs6(&self) -> bool {
        self.major >= VMFS6_MAJOR
    }

    /// The VMFS generation as users name it (3, 5 or 6).
    pub fn vmfs_version(&self) -> u32 {
        match self.major {
            m if m >= VMFS6_MAJOR => 6,
            m if m >= 14 => 5,
            _ => 3,
        }
    }

    pub fn dense_sub_blocks(&self) -> bool {
        self.config & CONFIG_DENSE_SBPC != 0
    }

    /// Size of a large file block (VMFS6).
    pub fn lfb_size(&self) -> Option<u64> {
        self.block_size.checked_shl(self.sfb_to_lfb_shift)
    }

    /// Size of an FD.
    pub fn fd_size(&self) -> u64 {
        if self.is_vmfs6() {
            2 * self.md_block
        } else {
            0x800
        }
    }

    /// LV offset of the FD with resource number `resource` in cluster 0 of `.fdc.sf`,
    /// computed without `.fdc.sf` itself (ESXi `Res3_GetSFDOffset`, via dissect): how
    /// the root and the system files are found.
    pub fn system_fd_offset(&self, resource: u64) -> Option<u64> {
        let fd = self.fd_size();
        if self.is_vmfs6() {
            let base = (self.md_block.checked_mul(1024)?.checked_add(0x3F_FFFF)?) & !0xF_FFFF;
            base.checked_add(self.fdc_cluster_group_offset)?
                .checked_add(self.fdc_clusters_per_group.checked_mul(fd)?)?
                .checked_add(resource.checked_mul(fd)?)
        } else {
            let bs = self.block_size;
            let base = bs.checked_mul((bs.checked_add(0x3F_FFFF)?) / bs)?;
            base.checked_add(self.fdc_cluster_group_offset)?
                .checked_add(self.fdc_clusters_per_group.checked_mul(1024)?)?
                .checked_add(resource.checked_mul(fd)?)
        }
    }

    /// Reads and validates the descriptor at `FS_DESCRIPTOR_OFFSET` of the volume.
    pub fn read(volume: &dyn Source) -> Result<FsInfo, Error> {
        let file = volume.name();
        let at = FS_DESCRIPTOR_OFFSET;
        let mut d = vec![0u8; 0x200];
        volume
            .read_exact_at(&mut d, at)
            .map_err(|e| Error::io(file, at, "FS descriptor", e))?;
        let bad = |off: u64, what: String| Error::bad(file, at + off, "FS descriptor", what);
        let magic = u32_at(&d, 0);
        if magic != FS_MAGIC && magic != FS_MAGIC_LOCAL {
            return Err(bad(
                0,
                format!("magic {magic:#010x}, expected {FS_MAGIC:#010x}"),
            ));
        }
        let major = u32_at(&d, 4);
        if !(3..=40).contains(&major) {
            return Err(bad(
                4,
                format!("major version {major} is not a VMFS version vdr knows"),
            ));
        }
        let block_size = u64_at(&d, 0xA1);
        if !block_size.is_power_of_two() || !(0x1_0000..=0x1000_0000).contains(&block_size) {
            return Err(bad(
                0xA1,
                format!("file block size {block_size:#x} is not a power of two in 64 KiB..256 MiB"),
            ));
        }
        let sub_block_size = u64::from(u32_at(&d, 0xD9));
        if !sub_block_size.is_power_of_two() || !(512..=block_size).contains(&sub_block_size) {
            return Err(bad(
                0xD9,
                format!(
                    "sub-block size {sub_block_size:#x} is not a power of two up to the block size"
                ),
            ));
        }
        let vmfs6 = major >= VMFS6_MAJOR;
        let md_alignment = u64::from(u32_at(&d, 0x134));
        let md_block = if vmfs6 {
            if !md_alignment.is_power_of_two() || !(512..=0x10_0000).contains(&md_alignment) {
                return Err(bad(
                    0x134,
                    format!("mdAlignment {md_alignment:#x} is not a power of two in 512..1 MiB"),
                ));
            }
            md_alignment
        } else {
            512
        };
        let sfb_to_lfb_shift = u32::from(u16_at(&d, 0x138));
        if vmfs6 && sfb_to_lfb_shift > 16 {
            return Err(bad(
                0x138,
                format!("sfbToLfbShift {sfb_to_lfb_shift} is implausible"),
            ));
        }
        let fdc_cgo = u64::from(u32_at(&d, 0xD1));
        let fdc_cpg = u64::from(u32_at(&d, 0xD5));
        if fdc_cpg == 0 || fdc_cpg > 0x1_0000 || fdc_cgo > 0x100_0000 {
            return Err(bad(
                0xD1,
                format!("FD cluster group offset {fdc_cgo:#x} / clusters per group {fdc_cpg} are implausible"),
            ));
        }
        Ok(FsInfo {
            major,
            minor: u8_at(&d, 8),
            local: magic == FS_MAGIC_LOCAL,
            uuid: Uuid::at(&d, 9),
            config: u32_at(&d, 0x19),
            label: cstr_at(&d, 0x1D, 128),
            block_size,
            creation_time: u32_at(&d, 0xA9),
            lv_uuid: Uuid::at(&d, 0xB1),
            fdc_cluster_group_offset: fdc_cgo,
            fdc_clusters_per_group: fdc_cpg,
            sub_block_size,
            host_uuid: Uuid::at(&d, 0xED),
            md_block,
            sfb_to_lfb_shift,
        })
    }
}
