//! VMFS datastores: opening one (a device or image, plus `--extent` devices of a spanned
//! volume) for `info`, `ls` and `extract`, and `vdr info`'s description of a datastore.
//! `--json` prints the object documented in docs/CLI.md.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use serde::Serialize;
use vdr_formats::vmfs::{self, FileDescriptor, FileType, Located, VmfsFile, Volume};
use vdr_formats::{
    detect_format, FileSource, Finding, Format, ParseMode, Severity, Source, SourceRef,
};

use super::Status;
use crate::cli::{usage_error, InfoArgs};
use crate::output::{binary_size, print_json, to_stdout, utc_date};

/// The longest symlink target read (Linux PATH_MAX); longer means a damaged FD.
const SYMLINK_TARGET_MAX: u64 = 4096;

/// Opens the devices (`datastore` first, then each `--extent`) read-only.
pub fn open_devices(datastore: &Path, extents: &[PathBuf]) -> Result<Vec<SourceRef>> {
    std::iter::once(datastore)
        .chain(extents.iter().map(PathBuf::as_path))
        .map(|path| {
            FileSource::open(path)
                .map(|source| Arc::new(source) as SourceRef)
                .map_err(|e| anyhow!("{}: {e}", path.display()))
        })
        .collect()
}

/// Recovery's search for the deleted and orphaned files of `volume`, with a progress bar
/// over the FD slots (on a terminal, never with `--json`).
pub fn find_lost(volume: &Arc<Volume>, json: bool) -> Result<vdr_recover::LostReport> {
    let progress = crate::progress::Progress::counting(json, "FD slots");
    let report = vdr_recover::find_lost(volume, &mut |done, total| {
        progress.set_total(total);
        progress.set(done);
    });
    progress.finish();
    Ok(report?)
}

/// Opens the VMFS volume on `datastore` (and `extents`): strict refuses a damaged
/// volume with the reader's error, salvage opens what it can.
pub fn open_volume(datastore: &Path, extents: &[PathBuf], salvage: bool) -> Result<Arc<Volume>> {
    let devices = open_devices(datastore, extents)?;
    let mode = if salvage {
        ParseMode::Salvage
    } else {
        ParseMode::Strict
    };
    let volume = vmfs::open(&devices, mode)?;
    if mode == ParseMode::Strict {
        // The reader leaves out a device of another volume with a warning; a device
        // the user named that is not read is a mistake worth stopping on.
        let used: Vec<&str> = volume.devices().iter().map(|d| d.file.as_str()).collect();
        if let Some(stray) = devices.iter().find(|d| !used.contains(&d.name())) {
            let why = volume
                .findings()
                .into_iter()
                .find(|f| f.file == stray.name())
                .map_or_else(|| "it is not part of the volume".to_string(), |f| f.what);
            return Err(anyhow!(
                "{}: not used: {why} (use --salvage to go on without it)",
                stray.name()
            ));
        }
    }
    Ok(volume)
}

/// Whether `vdr info` should describe `args.image` as a datastore: asked for (`--vmfs`,
/// `--extent`), or a raw-looking file whose partition table or 1 MiB LVM header says
/// VMFS (`--salvage` also scans for the signatures, for wiped partition tables).
pub fn info_wants_datastore(args: &InfoArgs) -> bool {
    if args.vmfs || !args.extent.is_empty() {
        return true;
    }
    let Ok(source) = FileSource::open(&args.image) else {
        return false;
    };
    if !matches!(detect_format(&source), Ok(Format::Raw)) {
        return false;
    }
    vmfs::looks_like_vmfs(&source)
        || (args.open.salvage && !vmfs::find_partitions(&source).is_empty())
}

/// The entry type as `ls` and the JSON reports name it.
pub fn type_name(fd: &FileDescriptor) -> &'static str {
    match fd.file_type {
        _ if fd.is_dir() => "dir",
        FileType::Regular => "file",
        FileType::Symlink => "symlink",
        FileType::System => "sysfile",
        FileType::RawDeviceMapping => "rdm",
        FileType::Directory => "dir",
        FileType::Volume => "volume",
        FileType::Unknown(_) => "unknown",
    }
}

/// A host holding an FD's on-disk lock.
#[derive(Clone, Debug, Serialize)]
pub struct LockHolder {
    /// The holder's host UUID.
    pub owner: String,
    /// The MAC address in the host UUID.
    pub mac: String,
    /// The lock mode (1 exclusive, 2 read-only, 3 multi-writer).
    pub mode: u32,
    /// Whether the holder's heartbeat slot is still live.
    pub heartbeat_live: bool,
}

/// The holder of `fd`'s lock, if a host holds it; `live_heartbeats` are the LV offsets
/// of the live heartbeat slots.
pub fn lock_holder(fd: &FileDescriptor, live_heartbeats: &[u64]) -> Option<LockHolder> {
    fd.lock.is_held().then(|| LockHolder {
        owner: fd.lock.owner.to_string(),
        mac: fd.lock.owner.mac(),
        mode: fd.lock.mode,
        heartbeat_live: live_heartbeats.contains(&fd.lock.heartbeat_addr),
    })
}

/// The LV offsets of the live heartbeat slots.
pub fn live_heartbeats(volume: &Volume) -> Vec<u64> {
    volume
        .heartbeats()
        .iter()
        .filter(|h| h.live)
        .map(|h| h.offset)
        .collect()
}

/// A symlink's target, read through its data (resident or in a sub-block).
pub fn symlink_target(volume: &Arc<Volume>, path: &str, fd: &FileDescriptor) -> Result<Vec<u8>> {
    if fd.length > SYMLINK_TARGET_MAX {
        return Err(anyhow!(
            "{}::{path}: the symlink claims a {}-byte target (more than {SYMLINK_TARGET_MAX})",
            volume.name(),
            fd.length
        ));
    }
    let file = VmfsFile::new(volume.clone(), fd.clone(), path);
    let mut target = vec![0u8; fd.length as usize];
    file.read_exact_at(&mut target, 0)
        .map_err(|e| anyhow!("{}::{path}: reading the symlink target: {e}", volume.name()))?;
    Ok(target)
}

/// Whether a salvage run met damage that affected content.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// Prints each finding on stderr (for commands whose stdout has no room for them).
pub fn print_findings(findings: &[Finding]) {
    for finding in findings {
        eprintln!("vdr: finding: {finding}");
    }
}

/// One device of the volume in the `info` object.
#[derive(Debug, Serialize)]
struct DeviceReport {
    file: String,
    partition_offset: u64,
    located: &'static str,
    partition_number: Option<u32>,
    lvm_version: Option<String>,
    device_uuid: Option<String>,
}

/// One run of the logical volume.
#[derive(Debug, Serialize)]
struct ExtentReport {
    logical_offset: u64,
    length: u64,
    device: Option<String>,
    device_offset: Option<u64>,
}

#[derive(Debug, Serialize)]
struct HeartbeatReport {
    offset: u64,
    live: bool,
    owner: String,
    mac: String,
    generation: u64,
}

#[derive(Debug, Serialize)]
struct LockReport {
    path: String,
    fd_address: u32,
    #[serde(flatten)]
    holder: LockHolder,
}

/// The `vdr info --json` object for a datastore.
#[derive(Debug, Serialize)]
struct DatastoreReport {
    file: String,
    kind: &'static str,
    format: &'static str,
    vmfs_version: u32,
    fs_version: String,
    local: bool,
    label: String,
    uuid: String,
    lv_uuid: String,
    block_size: u64,
    sub_block_size: u64,
    created: u32,
    capacity: u64,
    total_blocks: Option<u64>,
    free_blocks: Option<u64>,
    used_bytes: Option<u64>,
    free_bytes: Option<u64>,
    files: u64,
    directories: u64,
    system_files: u64,
    devices: Vec<DeviceReport>,
    extents: Vec<ExtentReport>,
    heartbeats: Vec<HeartbeatReport>,
    locks: Vec<LockReport>,
    findings: Vec<Finding>,
}

/// Runs `vdr info` on a datastore.
pub fn run_info(args: &InfoArgs) -> Result<Status> {
    if args.snapshot.is_some() {
        usage_error(
            "info",
            "--snapshot applies to disk images; this is a VMFS datastore",
        );
    }
    let volume = open_volume(&args.image, &args.extent, args.open.salvage)?;
    let report = describe(&volume, &args.image)?;
    if args.json {
        print_json(&report)?;
    } else {
        to_stdout(|out| write_text(out, &report))?;
    }
    Ok(Status::Ok)
}

fn located(located: &Located) -> (&'static str, Option<u32>) {
    match located {
        Located::Gpt(n) => ("gpt", Some(*n)),
        Located::Mbr(n) => ("mbr", Some(*n)),
        Located::Bare => ("partition_image", None),
        Located::ScanLvm => ("scan_lvm", None),
        Located::ScanFs => ("scan_fs", None),
    }
}

fn describe(volume: &Arc<Volume>, image: &Path) -> Result<DatastoreReport> {
    let fs = volume.fs();
    let walk = volume.walk("/")?;
    let live = live_heartbeats(volume);
    let (mut files, mut directories, mut system_files) = (0, 0, 0);
    let mut locks = Vec::new();
    for entry in &walk {
        if entry.fd.file_type == FileType::System {
            system_files += 1;
        } else if entry.fd.is_dir() {
            directories += 1;
        } else {
            files += 1;
        }
        if let Some(holder) = lock_holder(&entry.fd, &live) {
            locks.push(LockReport {
                path: entry.path.clone(),
                fd_address: entry.fd.address,
                holder,
            });
        }
    }
    let lv = volume.logical_volume();
    let device_names: Vec<String> = lv.devices().iter().map(|d| d.name().to_string()).collect();
    let counts = volume.block_counts();
    Ok(DatastoreReport {
        file: image.display().to_string(),
        kind: "vmfs",
        format: "vmfs",
        vmfs_version: fs.vmfs_version(),
        fs_version: format!("{}.{}", fs.major, fs.minor),
        local: fs.local,
        label: fs.label.clone(),
        uuid: fs.uuid.to_string(),
        lv_uuid: fs.lv_uuid.to_string(),
        block_size: fs.block_size,
        sub_block_size: fs.sub_block_size,
        created: fs.creation_time,
        capacity: lv.len(),
        total_blocks: counts.map(|c| c.0),
        free_blocks: counts.map(|c| c.1),
        used_bytes: counts.map(|(t, f)| t.saturating_sub(f).saturating_mul(fs.block_size)),
        free_bytes: counts.map(|(_, f)| f.saturating_mul(fs.block_size)),
        files,
        directories,
        system_files,
        devices: volume
            .devices()
            .iter()
            .map(|d| {
                let (how, number) = located(&d.located);
                DeviceReport {
                    file: d.file.clone(),
                    partition_offset: d.partition_offset,
                    located: how,
                    partition_number: number,
                    lvm_version: d
                        .header
                        .as_ref()
                        .map(|h| format!("{}.{}", h.major, h.minor)),
                    device_uuid: d.header.as_ref().map(|h| h.device_uuid.to_string()),
                }
            })
            .collect(),
        extents: lv
            .runs()
            .iter()
            .map(|r| ExtentReport {
                logical_offset: r.logical,
                length: r.length,
                device: r.target.and_then(|(d, _)| device_names.get(d).cloned()),
                device_offset: r.target.map(|(_, at)| at),
            })
            .collect(),
        heartbeats: volume
            .heartbeats()
            .iter()
            .map(|h| HeartbeatReport {
                offset: h.offset,
                live: h.live,
                owner: h.owner.to_string(),
                mac: h.owner.mac(),
                generation: h.generation,
            })
            .collect(),
        locks,
        findings: volume.findings(),
    })
}

fn write_text(out: &mut impl Write, r: &DatastoreReport) -> io::Result<()> {
    writeln!(out, "datastore: {}", r.file)?;
    writeln!(
        out,
        "file system: VMFS{} (FS {}{})",
        r.vmfs_version,
        r.fs_version,
        if r.local { ", VMFS-L" } else { "" }
    )?;
    writeln!(out, "label: {}", r.label)?;
    writeln!(out, "uuid: {}", r.uuid)?;
    writeln!(out, "lv uuid: {}", r.lv_uuid)?;
    writeln!(out, "created: {} UTC", utc_date(u64::from(r.created)))?;
    writeln!(
        out,
        "block size: {} (sub-block {})",
        binary_size(r.block_size),
        binary_size(r.sub_block_size)
    )?;
    writeln!(out, "capacity: {}", binary_size(r.capacity))?;
    match (r.total_blocks, r.free_blocks, r.used_bytes, r.free_bytes) {
        (Some(total), Some(free), Some(used), Some(free_bytes)) => writeln!(
            out,
            "blocks: {total} total, {} used ({}), {free} free ({})",
            total.saturating_sub(free),
            binary_size(used),
            binary_size(free_bytes)
        )?,
        _ => writeln!(out, "blocks: unknown (the block bitmap could not be read)")?,
    }
    writeln!(
        out,
        "entries: {} files, {} directories, {} system files",
        r.files, r.directories, r.system_files
    )?;
    writeln!(out, "devices:")?;
    for d in &r.devices {
        writeln!(
            out,
            "  {}: partition at {:#x} ({}{}), LVM {}, device {}",
            d.file,
            d.partition_offset,
            d.located,
            d.partition_number
                .map(|n| format!(" {n}"))
                .unwrap_or_default(),
            d.lvm_version.as_deref().unwrap_or("header missing"),
            d.device_uuid.as_deref().unwrap_or("unknown")
        )?;
    }
    writeln!(out, "extents (logical volume → device):")?;
    for e in &r.extents {
        match (&e.device, e.device_offset) {
            (Some(device), Some(at)) => writeln!(
                out,
                "  {:#x}..{:#x} → {device} at {at:#x}",
                e.logical_offset,
                e.logical_offset + e.length
            )?,
            _ => writeln!(
                out,
                "  {:#x}..{:#x} → MISSING (no given device holds it)",
                e.logical_offset,
                e.logical_offset + e.length
            )?,
        }
    }
    let live: Vec<&HeartbeatReport> = r.heartbeats.iter().filter(|h| h.live).collect();
    if live.is_empty() {
        writeln!(out, "heartbeats: no live host")?;
    } else {
        writeln!(out, "heartbeats (live hosts):")?;
        for h in live {
            writeln!(out, "  host {} (MAC {}) at {:#x}", h.owner, h.mac, h.offset)?;
        }
    }
    if r.locks.is_empty() {
        writeln!(out, "locks: none held")?;
    } else {
        writeln!(out, "locks held:")?;
        for l in &r.locks {
            writeln!(
                out,
                "  {} by host {} (MAC {}, mode {}, heartbeat {})",
                l.path,
                l.holder.owner,
                l.holder.mac,
                l.holder.mode,
                if l.holder.heartbeat_live {
                    "live"
                } else {
                    "not live"
                }
            )?;
        }
    }
    if r.findings.is_empty() {
        writeln!(out, "findings: none")?;
    } else {
        writeln!(out, "findings:")?;
        for finding in &r.findings {
            writeln!(out, "  {finding}")?;
        }
    }
    Ok(())
}
