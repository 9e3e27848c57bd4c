//! Resource ("system") files: `.fdc.sf`, `.sbc.sf`, `.pbc.sf`, `.pb2.sf`, `.fbb.sf`.
//! Each starts with an `FS3_ResFileMetadata` header; resources are grouped in clusters,
//! clusters in cluster groups, and each group starts with one header (a lock block and
//! a cluster-metadata block) per cluster.
//!
//! Layout from dissect.vmfs `resource.py` and vmfs-tools `vmfs_bitmap.c`
//! (research/vmfs.md §6). The resource (c, r) lies at
//! `cgo + (c / cpg)·cgsz + cpg·header + (c % cpg)·rpc·rsz + r·rsz` inside the file.

use super::bytes::{u16_at, u32_at};
use super::fd::FileDescriptor;
use super::Error;

/// VMFS6 resource headers carry 'rfmd'; cluster metadata 'rcmd'.
pub const RFMD: u32 = 0x7266_6D64;
pub const RCMD: u32 = 0x7263_6D64;
const FLAG_HAS_PARENT: u32 = 0x2;

/// A validated resource-file header.
#[derive(Clone, Debug)]
pub struct ResourceHeader {
    pub resources_per_cluster: u64,
    pub clusters_per_group: u64,
    pub cluster_group_offset: u64,
    pub resource_size: u64,
    pub cluster_group_size: u64,
    pub num_resources: u64,
    pub flags: u32,
    pub child_meta_offset: u64,
    pub parent_resources_per_cluster: u64,
    pub parent_clusters_per_group: u64,
    pub parent_cluster_group_size: u64,
}

/// One opened resource file.
#[derive(Clone, Debug)]
pub struct ResourceFile {
    pub name: &'static str,
    pub fd: FileDescriptor,
    pub header: ResourceHeader,
    /// Bytes of one cluster header (lock + metadata): 2 × the metadata block size.
    pub cluster_header_size: u64,
}

impl ResourceHeader {
    /// Validates the header bytes `b` read at `at` (the LV offset, for errors).
    pub fn parse(
        b: &[u8],
        vmfs6: bool,
        file: &str,
        at: u64,
        name: &'static str,
    ) -> Result<ResourceHeader, Error> {
        let bad = |off: u64, what: String| Error::bad(file, at + off, name, what);
        let h = ResourceHeader {
            resources_per_cluster: u64::from(u32_at(b, 0)),
            clusters_per_group: u64::from(u32_at(b, 4)),
            cluster_group_offset: u64::from(u32_at(b, 8)),
            resource_size: u64::from(u32_at(b, 0x0C)),
            cluster_group_size: u64::from(u32_at(b, 0x10)),
            num_resources: u64::from(u32_at(b, 0x14)) | (u64::from(u32_at(b, 0x1C)) << 32),
            flags: u32_at(b, 0x28),
            child_meta_offset: u64::from(u32_at(b, 0x34)),
            parent_resources_per_cluster: u64::from(u32_at(b, 0x38)),
            parent_clusters_per_group: u64::from(u32_at(b, 0x3C)),
            parent_cluster_group_size: u64::from(u32_at(b, 0x40)),
        };
        if vmfs6 && u32_at(b, 0x20) != RFMD {
            return Err(bad(
                0x20,
                format!("signature {:#010x}, expected 'rfmd'", u32_at(b, 0x20)),
            ));
        }
        // Zero counts are real in some files: VMFS6's .pbc.sf is empty, and .fbb.sf has a
        // bitmap but no resource data (resource size 0); lookups there find nothing. The
        // FD and sub-block files always hold resources.
        if matches!(name, ".fdc.sf" | ".sbc.sf")
            && (h.resources_per_cluster == 0 || h.clusters_per_group == 0 || h.resource_size == 0)
        {
            return Err(bad(
                0,
                format!(
                    "{} resources of {:#x} bytes per cluster, {} clusters per group: the header is blank or damaged",
                    h.resources_per_cluster, h.resource_size, h.clusters_per_group
                ),
            ));
        }
        if h.resources_per_cluster > 0x1_0000 {
            return Err(bad(
                0,
                format!("{} resources per cluster", h.resources_per_cluster),
            ));
        }
        if h.clusters_per_group > 0x1_0000 {
            return Err(bad(
                4,
                format!("{} clusters per group", h.clusters_per_group),
            ));
        }
        if h.resource_size > 0x4000_0000 {
            return Err(bad(0x0C, format!("resource size {:#x}", h.resource_size)));
        }
        Ok(h)
    }

    pub fn has_parent(&self) -> bool {
        self.flags & FLAG_HAS_PARENT != 0
    }
}

impl ResourceFile {
    /// Offset inside the resource file of resource `resource` of cluster `cluster`, or
    /// None when the pair is outside the file's geometry.
    pub fn resource_offset(&self, cluster: u64, resource: u64) -> Option<u64> {
        let h = &self.header;
        if resource >= h.resources_per_cluster || h.clusters_per_group == 0 || h.resource_size == 0
        {
            return None;
        }
        let group = cluster / h.clusters_per_group;
        let in_group = cluster % h.clusters_per_group;
        let at = h
            .cluster_group_offset
            .checked_add(group.checked_mul(h.cluster_group_size)?)?
            .checked_add(h.clusters_per_group.checked_mul(self.cluster_header_size)?)?
            .checked_add(
                in_group.checked_mul(h.resources_per_cluster.checked_mul(h.resource_size)?)?,
            )?
            .checked_add(resource.checked_mul(h.resource_size)?)?;
        let end = at.checked_add(h.resource_size)?;
        (end <= self.fd.length).then_some(at)
    }

    /// Offset inside the resource file of cluster `cluster`'s header (lock block; the
    /// metadata block follows it), for files without a parent level.
    pub fn cluster_header_offset(&self, cluster: u64) -> Option<u64> {
        let h = &self.header;
        let group = cluster.checked_div(h.clusters_per_group)?;
        let in_group = cluster % h.clusters_per_group;
        h.cluster_group_offset
            .checked_add(group.checked_mul(h.cluster_group_size)?)?
            .checked_add(in_group.checked_mul(self.cluster_header_size)?)
    }

    /// Number of clusters the header's resource count implies.
    pub fn num_clusters(&self) -> u64 {
        self.header
            .num_resources
            .div_ceil(self.header.resources_per_cluster.max(1))
    }
}

/// Totals read from one cluster's metadata block: (total, free) resources.
pub fn cluster_counts(meta: &[u8], vmfs6: bool) -> Option<(u64, u64)> {
    if vmfs6 {
        (u32_at(meta, 0x10) == RCMD)
            .then(|| (u64::from(u16_at(meta, 0x20)), u64::from(u16_at(meta, 0x22))))
    } else {
        Some((u64::from(u32_at(meta, 4)), u64::from(u32_at(meta, 8))))
    }
}
