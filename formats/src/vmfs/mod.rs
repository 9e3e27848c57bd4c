//! VMFS3, VMFS5 and VMFS6 datastores, read-only: finding the volume on its device(s),
//! the LVM layer (spanned volumes included), the file-system descriptor, the system
//! resource files, file descriptors, directories and file data through every address
//! type. A file inside the volume is a [`VmfsFile`], itself a [`Source`], so VMDKs and
//! their snapshot chains open in place.
//!
//! What it is not for: writing (never), journals (no open implementation understands
//! them; live heartbeats are reported instead), recovery of deleted files (vdr-recover; `remnant` only reads what deletion leaves).
//!
//! No VMware documentation exists: every layout fact comes from the open readers
//! (vmfs-tools, vmfs6-tools, dissect.vmfs) and the ESXi-made samples, as collected in
//! research/vmfs.md; each module cites its part.

mod address;
mod bytes;
mod dir;
mod discover;
mod error;
mod fd;
mod file;
mod fs;
mod lvm;
mod remnant;
mod resource;
mod salvage;
mod volume;

use std::collections::HashSet;
use std::sync::Arc;

pub use address::Addr;
pub use bytes::Uuid;
pub use dir::DirEntry;
pub use discover::{find_partitions, Candidate, SCAN_LIMIT};
pub use error::Error;
pub use fd::{DiskLock, FileDescriptor, FileType};
pub use file::{Piece, PieceKind, VmfsFile};
pub use fs::FsInfo;
pub use lvm::{DeviceHeader, LogicalVolume, PhysicalExtent};
pub use remnant::{PointerBlockUse, MAX_FD_SLOTS};
pub use volume::{Device, Located, Volume, ROOT_FD, SYSTEM_FILES};

use crate::disk::{Finding, ParseMode, Severity};
use crate::source::{FileSystem, Source, SourceRef};

/// True when `src` looks like a VMFS device: a partition table naming a VMFS partition,
/// or an LVM header at 1 MiB. (No scan: detection must stay cheap.)
pub fn looks_like_vmfs(src: &dyn Source) -> bool {
    lvm::has_device_header(src, 0) || discover::find_partitions_quick(src)
}

/// Opens the VMFS volume on `devices` (one device, or every device of a spanned volume
/// in any order). Strict mode refuses missing devices and damaged system files; salvage
/// mode opens what it can, reports the rest as findings and unreadable ranges.
pub fn open(devices: &[SourceRef], mode: ParseMode) -> Result<Arc<Volume>, Error> {
    let first = devices.first().ok_or_else(|| Error::NoVolume {
        file: String::new(),
        why: "no device given".into(),
    })?;
    let name = first.name().to_string();
    let mut findings: Vec<Finding> = Vec::new();
    let mut members: Vec<Member> = Vec::new();
    for dev in devices {
        let candidates = find_partitions(dev.as_ref());
        let Some(c) = candidates.into_iter().next() else {
            if devices.len() == 1 {
                return Err(Error::NoVolume {
                    file: dev.name().to_string(),
                    why: "no VMFS partition in the partition table, no LVM header at 1 MiB, and no LVM or FS signature in the first 4 GiB".into(),
                });
            }
            findings.push(finding(
                dev.name(),
                0,
                "device",
                Severity::Error,
                "no VMFS partition or LVM header found on this device; it is left out".into(),
            ));
            continue;
        };
        let header = if c.lv_only {
            None
        } else {
            match DeviceHeader::read(dev.as_ref(), c.partition_offset) {
                Ok(h) => Some(h),
                Err(e) if mode == ParseMode::Salvage => {
                    findings.push(finding(
                        dev.name(),
                        c.partition_offset.saturating_add(lvm::DEVICE_HEADER_OFFSET),
                        "LVM device header",
                        Severity::Error,
                        format!(
                            "{e}; assuming the LV starts at partition + {:#x}",
                            lvm::DEFAULT_DATA_OFFSET
                        ),
                    ));
                    None
                }
                Err(e) => return Err(e),
            }
        };
        members.push((dev.clone(), c, header));
    }
    if members.is_empty() {
        return Err(Error::NoVolume {
            file: name,
            why: "none of the given devices holds a VMFS partition".into(),
        });
    }
    // The head device (first PE 0) decides which LV this is.
    let head = members
        .iter()
        .position(|m| {
            m.2.as_ref()
                .and_then(|h| h.volume.as_ref())
                .is_some_and(|v| v.first_pe == 0)
        })
        .unwrap_or(0);
    members.swap(0, head);
    let head_volume = members[0].2.as_ref().and_then(|h| h.volume.clone());
    let (lv, devs) = match &head_volume {
        Some(v) if members[0].2.as_ref().is_some_and(|h| !h.extents.is_empty()) => {
            assemble_spanned(&name, v, &members, mode, &mut findings)?
        }
        _ => assemble_linear(&name, &members[0], &mut findings),
    };
    Volume::bootstrap(name, Arc::new(lv), devs, mode, findings).map(Arc::new)
}

/// One given device: its source, where its VMFS partition is, its LVM header if readable.
type Member = (SourceRef, Candidate, Option<DeviceHeader>);

fn device_of(m: &Member) -> Device {
    Device {
        file: m.0.name().to_string(),
        partition_offset: m.1.partition_offset,
        located: m.1.located.clone(),
        header: m.2.clone(),
    }
}

/// The LV of volume `v` from the PE tables of the members that belong to it (the head
/// first). Missing devices: strict mode refuses naming what is missing; salvage keeps
/// their ranges as missing runs with a finding. Without the head nothing opens.
fn assemble_spanned(
    name: &str,
    v: &lvm::VolumeDescriptor,
    members: &[Member],
    mode: ParseMode,
    findings: &mut Vec<Finding>,
) -> Result<(LogicalVolume, Vec<Device>), Error> {
    let mut parts = Vec::new();
    let mut used = Vec::new();
    for m in members {
        let header =
            m.2.as_ref()
                .filter(|h| h.volume.as_ref().is_some_and(|mv| mv.lv_uuid == v.lv_uuid));
        if let Some(header) = header {
            parts.push((m.0.clone(), m.1.partition_offset, header.clone()));
            used.push(device_of(m));
        } else {
            findings.push(finding(
                m.0.name(),
                m.1.partition_offset,
                "LVM device header",
                Severity::Warning,
                format!(
                    "this device belongs to another volume than {}; it is left out",
                    v.lv_uuid
                ),
            ));
        }
    }
    let given = parts.len();
    let expected = v.num_devices.max(1);
    let names = members[0]
        .2
        .as_ref()
        .map(|h| h.device_names.clone())
        .unwrap_or_default();
    let mut lv = LogicalVolume::assemble(name.to_string(), v.logical_size, parts);
    lv.name_missing(expected, &names);
    // Only the head device (first PE 0, dissect's "devZero") has the volume's start, where
    // the FS descriptor and every system file live (research/vmfs-recovery.md §5):
    // without it there is nothing to open, in any mode.
    let head_missing = v.first_pe != 0;
    if lv.missing().next().is_some() || (given as u32) < expected || head_missing {
        let mut missing: Vec<String> = lv
            .missing()
            .map(|r| lv.missing_description(r.logical))
            .collect();
        if missing.is_empty() {
            missing.push("no LV range (the PE tables cover the volume)".into());
        }
        let mut missing = missing.join("; ");
        if !names.is_empty() {
            missing.push_str(&format!(
                "; the head device's SD table names the volume's devices: {}",
                names.join(", ")
            ));
        }
        if head_missing {
            missing.push_str(
                "; without the head device nothing can be read (carve the given devices instead)",
            );
        }
        if mode == ParseMode::Strict || head_missing {
            return Err(Error::MissingExtents {
                volume: name.to_string(),
                expected,
                given,
                missing,
            });
        }
        findings.push(finding(
            name,
            0,
            "LVM volume",
            Severity::Error,
            format!("the volume spans {expected} devices, {given} given; unreadable: {missing}"),
        ));
    }
    Ok((lv, used))
}

/// The LV read straight from one device when there is no usable PE table: from the LVM
/// data offset (or vmfs-tools' fixed 0x1100000), or, with no LVM header at all, from where
/// the scan found the FS descriptor. Both are reported as findings.
fn assemble_linear(
    name: &str,
    m: &Member,
    findings: &mut Vec<Finding>,
) -> (LogicalVolume, Vec<Device>) {
    let start = if m.1.lv_only {
        m.1.partition_offset
    } else {
        let data =
            m.2.as_ref()
                .map(|h| h.data_offset)
                .filter(|d| *d != 0)
                .unwrap_or(lvm::DEFAULT_DATA_OFFSET);
        if m.2.is_some() {
            findings.push(finding(
                m.0.name(),
                m.1.partition_offset.saturating_add(lvm::DEVICE_HEADER_OFFSET),
                "LVM PE table",
                Severity::Warning,
                format!("no physical extents recorded; reading the LV linearly from partition + {data:#x}"),
            ));
        }
        m.1.partition_offset.saturating_add(data)
    };
    let size =
        m.2.as_ref()
            .and_then(|h| h.volume.as_ref())
            .map(|v| v.logical_size)
            .filter(|s| *s > 0)
            .unwrap_or_else(|| m.0.len().saturating_sub(start));
    let size = size.min(m.0.len().saturating_sub(start));
    if m.1.lv_only {
        findings.push(finding(
            m.0.name(),
            start + fs::FS_DESCRIPTOR_OFFSET,
            "LVM device header",
            Severity::Error,
            format!("no LVM header; the FS descriptor found by scanning puts the LV at {start:#x}"),
        ));
    }
    (
        LogicalVolume::linear(name.to_string(), m.0.clone(), start, size),
        vec![device_of(m)],
    )
}

fn finding(file: &str, offset: u64, structure: &str, severity: Severity, what: String) -> Finding {
    Finding {
        file: file.to_string(),
        offset,
        severity,
        structure: structure.to_string(),
        what,
    }
}

/// A heartbeat slot in use.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// LV offset of the slot.
    pub offset: u64,
    pub live: bool,
    pub owner: Uuid,
    pub generation: u64,
    pub journal: u32,
}

/// One entry found while walking the tree.
#[derive(Clone, Debug)]
pub struct WalkEntry {
    pub path: String,
    pub fd: FileDescriptor,
}

impl Volume {
    /// The root directory's FD.
    pub fn root(&self) -> Result<FileDescriptor, Error> {
        self.fd(ROOT_FD)
    }

    /// The FD at `path` ("/" is the root; components separated by '/').
    pub fn lookup(&self, path: &str) -> Result<FileDescriptor, Error> {
        let mut fd = self.root()?;
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            walked.push('/');
            walked.push_str(part);
            if !fd.is_dir() {
                return Err(Error::NotADirectory {
                    volume: self.name.clone(),
                    path: walked,
                });
            }
            let entries = self.read_dir(&fd)?;
            let Some(e) = entries.iter().find(|e| e.name == part) else {
                return Err(Error::NotFound {
                    volume: self.name.clone(),
                    path: walked,
                });
            };
            fd = self.fd(e.fd_address)?;
        }
        Ok(fd)
    }

    /// Opens the regular file at `path` as a [`Source`].
    pub fn open_file(self: &Arc<Self>, path: &str) -> Result<VmfsFile, Error> {
        let fd = self.lookup(path)?;
        if fd.is_dir() {
            return Err(Error::IsADirectory {
                volume: self.name.clone(),
                path: path.to_string(),
            });
        }
        if fd.file_type == FileType::RawDeviceMapping {
            return Err(Error::RawDeviceMapping {
                volume: self.name.clone(),
                path: path.to_string(),
                lun: String::from_utf8_lossy(&fd.resident[..fd.resident.len().min(64)])
                    .trim_matches(char::from(0))
                    .to_string(),
            });
        }
        Ok(VmfsFile::new(self.clone(), fd, &normalise(path)))
    }

    /// Every entry under `path` (depth first, names sorted), `path` itself excluded.
    /// Directory loops and unreadable directories end that branch: strict mode returns
    /// the error, salvage mode records a finding and goes on.
    pub fn walk(&self, path: &str) -> Result<Vec<WalkEntry>, Error> {
        let top = self.lookup(path)?;
        let mut out = Vec::new();
        let mut ancestors = HashSet::new();
        ancestors.insert(top.address);
        self.walk_into(&normalise(path), &top, &mut ancestors, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        path: &str,
        dir: &FileDescriptor,
        ancestors: &mut HashSet<u32>,
        out: &mut Vec<WalkEntry>,
    ) -> Result<(), Error> {
        let mut entries = match self.read_dir(dir) {
            Ok(e) => e,
            Err(e) if self.mode == ParseMode::Salvage => {
                self.finding(
                    Severity::Error,
                    "directory",
                    dir.lv_offset,
                    format!("{path}: {e}"),
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let child = join(path, &e.name);
            if ancestors.contains(&e.fd_address) {
                let err = Error::DirectoryLoop {
                    volume: self.name.clone(),
                    path: child,
                    fd: e.fd_address,
                };
                if self.mode == ParseMode::Salvage {
                    self.finding(Severity::Error, "directory", dir.lv_offset, err.to_string());
                    continue;
                }
                return Err(err);
            }
            let fd = match self.fd(e.fd_address) {
                Ok(fd) => fd,
                Err(err) if self.mode == ParseMode::Salvage => {
                    self.finding(
                        Severity::Error,
                        "file descriptor",
                        dir.lv_offset,
                        format!("{child}: {err}"),
                    );
                    continue;
                }
                Err(err) => return Err(err),
            };
            let is_dir = fd.is_dir();
            out.push(WalkEntry {
                path: child.clone(),
                fd: fd.clone(),
            });
            if is_dir {
                ancestors.insert(fd.address);
                self.walk_into(&child, &fd, ancestors, out)?;
                ancestors.remove(&fd.address);
            }
        }
        Ok(())
    }

    /// The heartbeat slots in use (VMFS5: 2048 × 512 B, VMFS6: 1024 × 4 KiB at LV
    /// 0x300000; magic 0xABCDEF02 = a host is live, 0xABCDEF01 = released).
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        const REGION: u64 = 0x30_0000;
        let (count, size) = if self.fs.is_vmfs6() {
            (1024u64, self.fs.md_block)
        } else {
            (2048, 512)
        };
        let mut region = vec![0u8; (count * size) as usize];
        if self.lv.read_exact_at(&mut region, REGION).is_err() {
            return Vec::new();
        }
        region
            .chunks_exact(size as usize)
            .enumerate()
            .filter_map(|(i, s)| {
                let magic = bytes::u32_at(s, 0);
                let live = magic == 0xABCD_EF02;
                (live || (magic == 0xABCD_EF01 && !Uuid::at(s, 0x1C).is_nil())).then(|| Heartbeat {
                    offset: REGION + i as u64 * size,
                    live,
                    owner: Uuid::at(s, 0x1C),
                    generation: bytes::u64_at(s, 0x0C),
                    journal: bytes::u32_at(s, 0x2C),
                })
            })
            .collect()
    }
}

/// The files of a volume as a [`FileSystem`]: a VMDK opened inside the datastore finds
/// its extents and parents there.
pub struct VolumeFileSystem(pub Arc<Volume>);

impl FileSystem for VolumeFileSystem {
    fn open(&self, path: &std::path::Path) -> std::io::Result<SourceRef> {
        let p = path.to_str().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8")
        })?;
        match self.0.open_file(p) {
            Ok(f) => Ok(Arc::new(f)),
            Err(e @ Error::NotFound { .. }) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                e.to_string(),
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    fn identity(&self, path: &std::path::Path) -> String {
        format!("{}::{}", self.0.name(), normalise(&path.to_string_lossy()))
    }
}

/// Splits `DATASTORE::/path/in/volume` into the datastore and the path inside it.
pub fn split_datastore_path(arg: &str) -> Option<(&str, &str)> {
    let (ds, path) = arg.split_once("::")?;
    (!ds.is_empty()).then_some((ds, if path.is_empty() { "/" } else { path }))
}

/// `"a//b/./"` → `"/a/b"`: a path as the volume names it.
pub fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// The path of `name` inside directory `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}
