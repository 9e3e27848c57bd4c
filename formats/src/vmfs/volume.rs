//! An opened VMFS volume: the file-system descriptor, the system (resource) files, and
//! FD lookup. Bootstrapping follows ESXi's order as dissect.vmfs reconstructs it: the
//! system FDs are found by formula in cluster 0 of `.fdc.sf`, then `.pb2.sf`, `.pbc.sf`,
//! `.fbb.sf`, `.fdc.sf` and `.sbc.sf` are opened through their own FDs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::address::Addr;
use super::fd::FileDescriptor;
use super::fs::FsInfo;
use super::lvm::{DeviceHeader, LogicalVolume};
use super::resource::{cluster_counts, ResourceFile, ResourceHeader};
use super::Error;
use crate::disk::{Finding, ParseMode, Severity};
use crate::source::Source;

/// System FD resource numbers in cluster 0 of `.fdc.sf` (dissect `c_vmfs.py`).
pub const ROOT_FD: u32 = 0x0000_0004;
pub const SYSTEM_FILES: [(&str, u64); 8] = [
    (".fbb.sf", 1),
    (".fdc.sf", 2),
    (".pbc.sf", 3),
    (".sbc.sf", 4),
    (".vh.sf", 5),
    (".pb2.sf", 6),
    (".sdd.sf", 7),
    (".jbc.sf", 8),
];

/// How the volume was found on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// Through a GPT entry with the VMFS type GUID (entry number, 1-based).
    Gpt(u32),
    /// Through an MBR entry of type 0xFB (entry number, 1-based).
    Mbr(u32),
    /// An LVM header at 1 MiB of the input (a bare partition image).
    Bare,
    /// By scanning for the LVM signature.
    ScanLvm,
    /// By scanning for the FS descriptor signature (the LVM header is gone).
    ScanFs,
}

impl Located {
    pub fn describe(&self) -> String {
        match self {
            Located::Gpt(n) => format!("GPT partition {n} (VMFS type GUID)"),
            Located::Mbr(n) => format!("MBR partition {n} (type 0xfb)"),
            Located::Bare => "partition image (LVM header at 1 MiB)".to_string(),
            Located::ScanLvm => "signature scan (LVM header)".to_string(),
            Located::ScanFs => "signature scan (FS descriptor; LVM header missing)".to_string(),
        }
    }
}

/// One device (input file) of the volume.
#[derive(Clone, Debug)]
pub struct Device {
    pub file: String,
    pub partition_offset: u64,
    pub located: Located,
    pub header: Option<DeviceHeader>,
}

pub(super) struct Resources {
    pub fdc: OnceLock<ResourceFile>,
    pub sbc: OnceLock<ResourceFile>,
    pub pbc: OnceLock<ResourceFile>,
    pub pb2: OnceLock<ResourceFile>,
    /// VMFS3/5: the file-block bitmap; VMFS6: the SFB level (child of the LFB level).
    pub fbb: OnceLock<ResourceFile>,
    /// Salvage: `.fdc.sf`'s FD is gone; its resources are read linearly from here.
    pub fdc_linear: OnceLock<u64>,
}

/// An opened VMFS volume.
pub struct Volume {
    pub(super) name: String,
    pub(super) lv: Arc<LogicalVolume>,
    pub(super) fs: FsInfo,
    pub(super) devices: Vec<Device>,
    pub(super) mode: ParseMode,
    pub(super) res: Resources,
    pub(super) pb_cache: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    pub(super) findings: Mutex<Vec<Finding>>,
}

impl Volume {
    /// Builds the volume over an assembled LV and opens its system files.
    pub(super) fn bootstrap(
        name: String,
        lv: Arc<LogicalVolume>,
        devices: Vec<Device>,
        mode: ParseMode,
        findings: Vec<Finding>,
    ) -> Result<Volume, Error> {
        let lvm = devices.first().and_then(|d| d.header.clone());
        let (fs, inferred) = match FsInfo::read(lv.as_ref()) {
            Ok(fs) => (fs, None),
            Err(e) if mode == ParseMode::Salvage => {
                let Ok((mut fs, how)) =
                    super::salvage::infer_fs(lv.as_ref(), lvm.as_ref().map(|h| h.major))
                else {
                    return Err(e);
                };
                if let Some(v) = lvm.as_ref().and_then(|h| h.volume.as_ref()) {
                    fs.lv_uuid = v.lv_uuid;
                }
                (fs, Some(format!("{e}; {how}")))
            }
            Err(e) => return Err(e),
        };
        let mut vol = Volume {
            name,
            lv,
            fs,
            devices,
            mode,
            res: Resources {
                fdc: OnceLock::new(),
                sbc: OnceLock::new(),
                pbc: OnceLock::new(),
                pb2: OnceLock::new(),
                fbb: OnceLock::new(),
                fdc_linear: OnceLock::new(),
            },
            pb_cache: Mutex::new(HashMap::new()),
            findings: Mutex::new(findings),
        };
        if let Some(how) = &inferred {
            vol.finding(
                Severity::Error,
                "FS descriptor",
                super::fs::FS_DESCRIPTOR_OFFSET,
                how.clone(),
            );
        }
        if let Some(lvm_uuid) = vol
            .devices
            .first()
            .and_then(|d| d.header.as_ref())
            .and_then(|h| h.volume.as_ref())
            .map(|v| v.lv_uuid)
        {
            if lvm_uuid != vol.fs.lv_uuid {
                vol.finding(
                    Severity::Warning,
                    "FS descriptor",
                    super::fs::FS_DESCRIPTOR_OFFSET + 0xB1,
                    format!(
                        "the FS descriptor names LV {} but the LVM header's LV is {lvm_uuid}",
                        vol.fs.lv_uuid
                    ),
                );
            }
        }
        // Order matters: .sbc.sf may be mapped through .pb2.sf (the VMFS6 sample does),
        // and every FD beyond cluster 0 is found through .fdc.sf.
        for (name, slot, needed) in [
            (".pb2.sf", &vol.res.pb2, false),
            (".pbc.sf", &vol.res.pbc, false),
            (".fbb.sf", &vol.res.fbb, false),
            (".fdc.sf", &vol.res.fdc, true),
            (".sbc.sf", &vol.res.sbc, true),
        ] {
            match vol.open_resource(name) {
                Ok(Some(r)) => {
                    let _ = slot.set(r);
                }
                Ok(None) => {}
                Err(e) if needed && mode == ParseMode::Strict => return Err(e),
                Err(e) if name == ".fdc.sf" => match vol.rebuilt_fdc() {
                    Some((fdc, linear)) => {
                        vol.finding(
                            Severity::Error,
                            name,
                            fdc.fd.lv_offset,
                            format!("{e}; the FD cluster layout was rebuilt from the FS descriptor ({} FDs per cluster, {} clusters per group)", fdc.header.resources_per_cluster, fdc.header.clusters_per_group),
                        );
                        let _ = vol.res.fdc.set(fdc);
                        if let Some(base) = linear {
                            let _ = vol.res.fdc_linear.set(base);
                        }
                    }
                    None => vol.finding(
                        Severity::Error,
                        name,
                        0,
                        format!("cannot open the system file, nor rebuild it: {e}; only the system FDs can be read"),
                    ),
                },
                Err(e) => vol.finding(
                    Severity::Error,
                    name,
                    0,
                    format!("cannot open the system file: {e}"),
                ),
            }
        }
        if inferred.is_some() {
            super::salvage::settle(&mut vol.fs, vol.res.sbc.get());
        }
        Ok(vol)
    }

    fn system_resource_number(name: &str) -> Option<u64> {
        SYSTEM_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
    }

    /// Reads the system FD `name` straight from cluster 0 of `.fdc.sf`.
    pub fn system_fd(&self, name: &str) -> Result<FileDescriptor, Error> {
        let r = Self::system_resource_number(name).ok_or_else(|| Error::NotFound {
            volume: self.name.clone(),
            path: name.to_string(),
        })?;
        let at = self.fs.system_fd_offset(r).ok_or_else(|| {
            Error::bad(&self.name, 0, "FS descriptor", "system FD offset overflows")
        })?;
        self.fd_at(Addr::fd_address(0, r), at)
    }

    fn open_resource(&self, name: &'static str) -> Result<Option<ResourceFile>, Error> {
        let fd = match self.system_fd(name) {
            Ok(fd) => fd,
            // VMFS3 has no .pb2.sf; a blank slot is not an error there.
            Err(_) if name == ".pb2.sf" && self.fs.vmfs_version() == 3 => return Ok(None),
            Err(e) => return Err(e),
        };
        if fd.length == 0 {
            return Ok(None);
        }
        let vmfs6 = self.fs.is_vmfs6();
        let mut head = vec![0u8; 0x80];
        self.read_fd_data(&fd, &mut head, 0, 1)
            .map_err(|e| Error::io(&self.name, fd.lv_offset, name, e))?;
        let mut header = ResourceHeader::parse(&head, vmfs6, &self.name, fd.lv_offset, name)?;
        if vmfs6 && name == ".fbb.sf" {
            // The LFB level comes first; the SFB level is its child at childMetaOffset.
            let child = header.child_meta_offset;
            self.read_fd_data(&fd, &mut head, child, 1)
                .map_err(|e| Error::io(&self.name, fd.lv_offset + child, name, e))?;
            header = ResourceHeader::parse(&head, vmfs6, &self.name, fd.lv_offset + child, name)?;
        }
        Ok(Some(ResourceFile {
            name,
            fd,
            header,
            cluster_header_size: 2 * self.fs.md_block,
        }))
    }

    /// Parses the FD at LV offset `at`, expected to have address `address`.
    pub(super) fn fd_at(&self, address: u32, at: u64) -> Result<FileDescriptor, Error> {
        let size = self.fs.fd_size() as usize;
        let mut b = vec![0u8; size];
        self.lv
            .read_exact_at(&mut b, at)
            .map_err(|e| Error::io(&self.name, at, "file descriptor", e))?;
        let mut fd = FileDescriptor::parse(&self.fs, &self.name, address, at, &b)?;
        let most = self.mappable(&fd);
        if fd.length > most {
            let what = format!(
                "FD {address:#x} claims {} bytes, but its address type ({}) maps at most {most}",
                fd.length,
                fd.zla_name()
            );
            if self.mode == ParseMode::Strict {
                return Err(Error::bad(&self.name, at, "file descriptor", what));
            }
            self.finding(
                Severity::Error,
                "file descriptor",
                at,
                format!("{what}; the length is cut to {most}"),
            );
            fd.length = most;
        }
        Ok(fd)
    }

    /// The most bytes `fd`'s address type can map: a length beyond it is damage.
    fn mappable(&self, fd: &FileDescriptor) -> u64 {
        use super::fd::{ZLA_DOUBLE_INDIRECT, ZLA_POINTER_BLOCK, ZLA_POINTER_BLOCK2, ZLA_RESIDENT};
        if fd.zla == ZLA_RESIDENT {
            return fd.resident.len() as u64;
        }
        let entries = fd.blocks.len() as u64;
        let ppb = self.pointers_per_block();
        let slots = match fd.zla {
            ZLA_POINTER_BLOCK | ZLA_POINTER_BLOCK2 => entries.saturating_mul(ppb),
            ZLA_DOUBLE_INDIRECT => entries.saturating_mul(ppb).saturating_mul(ppb),
            _ => entries,
        };
        slots.saturating_mul(1u64 << fd.block_shift)
    }

    /// Where the FD with `address` lies in the LV.
    pub fn fd_offset(&self, address: u32) -> Result<u64, Error> {
        let Addr::FileDescriptor { cluster, resource } = Addr::decode_fd(address) else {
            return Err(Error::bad(
                &self.name,
                0,
                "directory entry",
                format!("{address:#x} is not an FD address"),
            ));
        };
        if cluster == 0 {
            if let Some(at) = self.fs.system_fd_offset(resource) {
                return Ok(at);
            }
        }
        let fdc = self.res.fdc.get().ok_or_else(|| {
            Error::bad(
                &self.name,
                0,
                ".fdc.sf",
                "the FD system file could not be opened",
            )
        })?;
        let in_file = fdc.resource_offset(cluster, resource).ok_or_else(|| {
            Error::bad(
                &self.name,
                fdc.fd.lv_offset,
                ".fdc.sf",
                format!(
                    "FD {address:#x} (cluster {cluster}, resource {resource}) lies outside .fdc.sf"
                ),
            )
        })?;
        if let Some(base) = self.res.fdc_linear.get() {
            return Ok(base + in_file);
        }
        match self.locate(&fdc.fd, in_file, 1)? {
            super::file::Piece {
                kind: super::file::PieceKind::Data(lv),
                ..
            } => Ok(lv),
            p => Err(Error::bad(
                &self.name,
                fdc.fd.lv_offset,
                ".fdc.sf",
                format!("FD {address:#x} maps to no data in .fdc.sf ({p:?})"),
            )),
        }
    }

    /// Reads and validates the FD with `address`.
    pub fn fd(&self, address: u32) -> Result<FileDescriptor, Error> {
        let at = self.fd_offset(address)?;
        self.fd_at(address, at)
    }

    pub fn fs(&self) -> &FsInfo {
        &self.fs
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn logical_volume(&self) -> &Arc<LogicalVolume> {
        &self.lv
    }

    pub fn mode(&self) -> ParseMode {
        self.mode
    }

    /// Damage found so far (salvage mode keeps reading past it).
    pub fn findings(&self) -> Vec<Finding> {
        self.findings.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub(super) fn finding(
        &self,
        severity: Severity,
        structure: &str,
        offset: u64,
        message: String,
    ) {
        if let Ok(mut f) = self.findings.lock() {
            let finding = Finding {
                severity,
                file: self.name.clone(),
                offset,
                structure: structure.to_string(),
                what: message,
            };
            if !f.contains(&finding) && f.len() < 10_000 {
                f.push(finding);
            }
        }
    }

    /// Total and free file blocks from the `.fbb.sf` cluster metadata.
    pub fn block_counts(&self) -> Option<(u64, u64)> {
        let fbb = self.res.fbb.get()?;
        let vmfs6 = self.fs.is_vmfs6();
        let h = &fbb.header;
        let (mut total, mut free) = (0u64, 0u64);
        let mut meta = vec![0u8; 0x40];
        for c in 0..fbb.num_clusters().min(1 << 20) {
            let at = if vmfs6 && h.has_parent() {
                self.sfb_cluster_header_offset(fbb, c)?
            } else {
                fbb.cluster_header_offset(c)?
            };
            self.read_fd_data(&fbb.fd, &mut meta, at + self.fs.md_block, 1)
                .ok()?;
            let (t, f) = cluster_counts(&meta, vmfs6)?;
            total += t;
            free += f;
        }
        Some((total, free))
    }

    /// VMFS6: the SFB clusters live inside the LFB level's resources; each LFB
    /// resource (cluster group of the child) starts with the child's cluster headers.
    fn sfb_cluster_header_offset(&self, fbb: &ResourceFile, cluster: u64) -> Option<u64> {
        let h = &fbb.header;
        let per_parent_group = h
            .parent_clusters_per_group
            .checked_mul(h.parent_resources_per_cluster)?;
        if per_parent_group == 0 || h.clusters_per_group == 0 {
            return None;
        }
        let group = cluster / h.clusters_per_group;
        let in_group = cluster % h.clusters_per_group;
        let parent_group = group / per_parent_group;
        let in_parent = group % per_parent_group;
        h.cluster_group_offset
            .checked_add(parent_group.checked_mul(h.parent_cluster_group_size)?)?
            .checked_add(
                h.parent_clusters_per_group
                    .checked_mul(fbb.cluster_header_size)?,
            )?
            .checked_add(in_parent.checked_mul(h.cluster_group_size)?)?
            .checked_add(in_group.checked_mul(fbb.cluster_header_size)?)
    }
}
