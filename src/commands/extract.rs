//! `vdr extract`: copies a file, a directory's tree, or (`--all`) the whole tree out of a
//! VMFS datastore, as the volume holds it: holes and to-be-zeroed blocks stay holes
//! (thin files are written sparse), symlinks are written as symlinks (never followed),
//! modification and access times come from the FDs. System files (`/.fbb.sf`, ...) are
//! written only with `--system-files` (or when named as PATH).
//!
//! Safety rules (DESIGN.md): no output is an input (device and inode, canonical path),
//! even with `--force`; existing outputs are replaced only with `--force`, and only
//! regular files and symlinks (never a directory, device, FIFO or socket); every output
//! is checked before the first byte is written; the file being
//! written when an error or a signal stops vdr is removed. Names from the volume that
//! could leave the output tree (`..`) are refused.
//!
//! Unreadable ranges stop the extraction (exit 2) unless `--salvage`: then they are left
//! as zeros, listed, and vdr exits 1.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use vdr_formats::vmfs::{self, FileDescriptor, FileType, PieceKind, VmfsFile, Volume};
use vdr_formats::{Finding, ParseMode, Severity, Source};

use super::datastore::{
    has_errors, live_heartbeats, lock_holder, open_volume, print_findings, symlink_target,
    type_name, LockHolder,
};
use super::Status;
use crate::cli::{usage_error, ExtractArgs};
use crate::interrupt;
use crate::output::{binary_size, print_json, print_line};
use crate::progress::Progress;
use vdr_formats::vmfs::normalise;

/// Bytes read per request: large reads keep the copy at the device's streaming speed.
const CHUNK: usize = 8 << 20;
/// How far ahead of the chunk being copied reads are requested (a readahead hint).
const READ_AHEAD: u64 = 32 << 20;
/// How much of a file one `map` call covers (bounds the piece list of a huge thin file).
const MAP_WINDOW: u64 = 1 << 30;

/// A range of a file written as zeros because it could not be read (`--salvage`).
#[derive(Debug, Serialize)]
struct UnreadableRange {
    path: String,
    offset: u64,
    len: u64,
    reason: String,
}

/// An entry not written, and why.
#[derive(Debug, Serialize)]
struct Skipped {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    reason: String,
}

/// A file written while a host held its lock (a running VM's disk may change under the
/// copy).
#[derive(Debug, Serialize)]
struct Locked {
    path: String,
    #[serde(flatten)]
    holder: LockHolder,
}

/// The `vdr extract --json` report.
#[derive(Debug, Default, Serialize)]
struct ExtractReport {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    data_bytes: u64,
    skipped: Vec<Skipped>,
    locked: Vec<Locked>,
    unreadable: Vec<UnreadableRange>,
    findings: Vec<Finding>,
}

/// One thing to write: the entry's volume path, its FD, and where it goes.
pub(super) struct Planned {
    pub(super) path: String,
    pub(super) fd: FileDescriptor,
    pub(super) out: PathBuf,
    /// A lost file (`--deleted`): the ranges recovery does not trust. They are left as
    /// holes and listed in every mode: finding them is the point of recovery.
    pub(super) distrust: Option<Vec<vdr_recover::vmfs_lost::Unreadable>>,
}

/// Runs `vdr extract`.
pub fn run(args: &ExtractArgs) -> Result<Status> {
    let (path, out) = match (&args.all, &args.deleted, &args.path, &args.out) {
        (Some(dir), _, _, _) => ("/".to_string(), dir.clone()),
        (None, Some(dir), _, _) => (".recovered".to_string(), dir.clone()),
        (None, None, Some(path), Some(out)) => (normalise(path), out.clone()),
        _ => usage_error(
            "extract",
            "give PATH and OUT, --all OUT_DIR or --deleted OUT_DIR",
        ),
    };
    let mut input_paths = vec![args.datastore.clone()];
    input_paths.extend(args.datastore_args.extent.iter().cloned());
    let inputs = Inputs::of(&input_paths);
    let volume = open_volume(
        &args.datastore,
        &args.datastore_args.extent,
        args.datastore_args.salvage,
    )?;
    let mut report = ExtractReport::default();
    let top = volume.lookup(if args.deleted.is_some() { "/" } else { &path })?;
    let plan = if args.deleted.is_some() {
        super::extract_deleted::plan_lost(&volume, &top, &out, args.json)?
    } else if top.is_dir() {
        // A user-given OUT that is a symlink to a directory is followed (only OUT: links
        // inside the tree never are).
        let out = match fs::canonicalize(&out) {
            Ok(real) if real.is_dir() => real,
            _ => out.clone(),
        };
        plan_tree(&volume, &path, &out, args.system_files, &mut report)?
    } else {
        let out = match fs::metadata(&out) {
            Ok(meta) if meta.is_dir() => out.join(path.rsplit('/').next().unwrap_or("file")),
            _ => out.clone(),
        };
        vec![Planned {
            path: path.clone(),
            fd: top,
            out,
            distrust: None,
        }]
    };
    check_outputs(&plan, &inputs, args.force)?;
    let written_to = plan.first().map_or_else(|| out.clone(), |p| p.out.clone());

    let total: u64 = plan
        .iter()
        .filter(|p| !p.fd.is_dir() && p.fd.file_type != FileType::Symlink)
        .map(|p| p.fd.length)
        .sum();
    let progress = Progress::new(total, args.json);
    let guard = interrupt::Guard::arm(&[]);
    let mut writer = Writer {
        volume: &volume,
        inputs: &inputs,
        force: args.force,
        live_heartbeats: live_heartbeats(&volume),
        progress: &progress,
        done: 0,
        buffer: vec![0u8; CHUNK],
        zeros: vec![0u8; CHUNK],
        written: HashSet::new(),
        dirs: Vec::new(),
        report,
    };
    let result = plan
        .iter()
        .try_for_each(|entry| writer.write(entry, &guard));
    drop(guard);
    progress.finish();
    result?;
    writer.set_directory_times();
    let mut report = writer.report;
    report.findings.extend(volume.findings());

    for range in &report.unreadable {
        eprintln!(
            "vdr: {}: unreadable bytes {:#x}..{:#x} ({}) written as zeros: {}",
            range.path,
            range.offset,
            range.offset.saturating_add(range.len),
            binary_size(range.len),
            range.reason
        );
    }
    for locked in &report.locked {
        eprintln!(
            "vdr: {}: locked by host {} (MAC {}, heartbeat {}): a running VM may have changed it during the copy",
            locked.path,
            locked.holder.owner,
            locked.holder.mac,
            if locked.holder.heartbeat_live { "live" } else { "not live" }
        );
    }
    for skipped in &report.skipped {
        eprintln!("vdr: {}: not written: {}", skipped.path, skipped.reason);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print_findings(&report.findings);
        print_line(&format!(
            "Extracted {}::{path} to {}: {} files ({}), {} directories, {} symlinks{}{}.",
            args.datastore.display(),
            written_to.display(),
            report.files,
            binary_size(report.bytes),
            report.dirs,
            report.symlinks,
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} entries not written", report.skipped.len())
            },
            if report.unreadable.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} unreadable ranges written as zeros",
                    report.unreadable.len()
                )
            }
        ))?;
    }
    Ok(
        if report.unreadable.is_empty() && !has_errors(&report.findings) {
            Status::Ok
        } else {
            Status::ProblemsFound
        },
    )
}

/// The directory `path` and everything under it, mapped under `out`.
fn plan_tree(
    volume: &Volume,
    path: &str,
    out: &Path,
    system_files: bool,
    report: &mut ExtractReport,
) -> Result<Vec<Planned>> {
    let top = volume.lookup(path)?;
    let mut plan = vec![Planned {
        path: path.to_string(),
        fd: top,
        out: out.to_path_buf(),
        distrust: None,
    }];
    let mut skipped_dirs: Vec<String> = Vec::new();
    for entry in volume.walk(path)? {
        if skipped_dirs
            .iter()
            .any(|d| entry.path.starts_with(d.as_str()))
        {
            continue;
        }
        if entry.fd.file_type == FileType::System && !system_files {
            if entry.fd.is_dir() {
                skipped_dirs.push(format!("{}/", entry.path));
            }
            continue;
        }
        let relative = entry
            .path
            .strip_prefix(path)
            .unwrap_or(&entry.path)
            .trim_start_matches('/');
        let mut target = out.to_path_buf();
        let mut bad = None;
        for part in relative.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                bad = Some(part);
                break;
            }
            target.push(part);
        }
        if let Some(part) = bad {
            let why =
                format!("the name component '{part}' would leave the output directory or is empty");
            if volume.mode() == ParseMode::Strict {
                bail!("{}::{}: {why}", volume.name(), entry.path);
            }
            report.skipped.push(Skipped {
                path: entry.path.clone(),
                kind: type_name(&entry.fd),
                reason: why,
            });
            continue;
        }
        plan.push(Planned {
            path: entry.path,
            fd: entry.fd,
            out: target,
            distrust: None,
        });
    }
    Ok(plan)
}

/// Refuses, before anything is written, outputs that are inputs (even with `--force`),
/// existing outputs without `--force`, and existing directories in a file's place.
fn check_outputs(plan: &[Planned], inputs: &Inputs, force: bool) -> Result<()> {
    for entry in plan {
        let Ok(meta) = fs::symlink_metadata(&entry.out) else {
            continue;
        };
        inputs.refuse_if_input(&entry.out)?;
        let out = entry.out.display();
        if entry.fd.is_dir() {
            if !meta.is_dir() {
                bail!("{out} exists and is not a directory; refusing to replace it");
            }
        } else if !(meta.is_file() || meta.file_type().is_symlink()) {
            bail!("{out} exists and is not a regular file; refusing to replace it");
        } else if !force {
            bail!("{out} already exists; use --force to replace it");
        }
    }
    Ok(())
}

/// The input files, by device and inode and by canonical path.
struct Inputs {
    identities: Vec<(u64, u64, PathBuf)>,
    canonical: Vec<PathBuf>,
}

impl Inputs {
    fn of(paths: &[PathBuf]) -> Inputs {
        Inputs {
            identities: paths
                .iter()
                .filter_map(|p| fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), p.clone())))
                .collect(),
            canonical: paths
                .iter()
                .filter_map(|p| fs::canonicalize(p).ok())
                .collect(),
        }
    }

    fn refuse_if_input(&self, out: &Path) -> Result<()> {
        let same_inode = fs::metadata(out).ok().and_then(|meta| {
            self.identities
                .iter()
                .find(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino())
                .map(|(_, _, p)| p.clone())
        });
        let same_path = fs::canonicalize(out)
            .ok()
            .and_then(|c| self.canonical.iter().find(|p| **p == c).cloned());
        match same_inode.or(same_path) {
            Some(input) => bail!(
                "refusing to write {}: it is the input file {} (vdr never writes to its inputs, even with --force)",
                out.display(),
                input.display()
            ),
            None => Ok(()),
        }
    }
}

/// Writes planned entries one by one.
struct Writer<'a> {
    volume: &'a Arc<Volume>,
    inputs: &'a Inputs,
    force: bool,
    /// LV offsets of the live heartbeat slots (to tell live lock holders).
    live_heartbeats: Vec<u64>,
    progress: &'a Progress,
    done: u64,
    buffer: Vec<u8>,
    zeros: Vec<u8>,
    /// Outputs written so far: a second entry with the same name is damage.
    written: HashSet<PathBuf>,
    /// Directories made, with their FD times (set once their content is written).
    dirs: Vec<(PathBuf, u32, u32)>,
    report: ExtractReport,
}

impl Writer<'_> {
    fn write(&mut self, entry: &Planned, guard: &interrupt::Guard) -> Result<()> {
        if !self.written.insert(entry.out.clone()) {
            return self.skip_or_fail(entry, "a second entry with this name in its directory");
        }
        let fd = &entry.fd;
        if fd.is_dir() {
            match fs::symlink_metadata(&entry.out) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => bail!(
                    "{} exists and is not a directory; refusing to replace it",
                    entry.out.display()
                ),
                Err(_) => fs::create_dir(&entry.out)
                    .map_err(|e| anyhow!("{}: cannot create: {e}", entry.out.display()))?,
            }
            self.dirs.push((entry.out.clone(), fd.atime, fd.mtime));
            self.report.dirs += 1;
            return Ok(());
        }
        match fd.file_type {
            FileType::Regular | FileType::System => {}
            FileType::Symlink => return self.write_symlink(entry),
            _ => {
                let why = format!(
                    "a {} entry: its data is not in the datastore",
                    type_name(fd)
                );
                self.report.skipped.push(Skipped {
                    path: entry.path.clone(),
                    kind: type_name(fd),
                    reason: why,
                });
                return Ok(());
            }
        }
        if let Some(holder) = lock_holder(fd, &self.live_heartbeats) {
            self.report.locked.push(Locked {
                path: entry.path.clone(),
                holder,
            });
        }
        self.make_room(&entry.out)?;
        guard.watch(Some(&entry.out));
        let result = self.write_file(entry);
        guard.watch(None);
        if result.is_err() {
            let _ = fs::remove_file(&entry.out);
        }
        result
    }

    /// With `--force`, removes an existing output file (checked not to be an input).
    fn make_room(&self, out: &Path) -> Result<()> {
        let Ok(meta) = fs::symlink_metadata(out) else {
            return Ok(());
        };
        self.inputs.refuse_if_input(out)?;
        // Never a device, FIFO or socket: --force replaces files, not system objects.
        if !(meta.is_file() || meta.file_type().is_symlink()) {
            bail!(
                "{} exists and is not a regular file; refusing to replace it",
                out.display()
            );
        }
        if !self.force {
            bail!(
                "{} already exists; use --force to replace it",
                out.display()
            );
        }
        fs::remove_file(out)
            .map_err(|e| anyhow!("{}: cannot remove the old file: {e}", out.display()))
    }

    fn skip_or_fail(&mut self, entry: &Planned, why: &str) -> Result<()> {
        if self.volume.mode() == ParseMode::Strict {
            bail!("{}::{}: {why}", self.volume.name(), entry.path);
        }
        self.report.findings.push(Finding {
            file: self.volume.name().to_string(),
            offset: entry.fd.lv_offset,
            severity: Severity::Error,
            structure: "directory".into(),
            what: format!("{}: {why}; not written", entry.path),
        });
        self.report.skipped.push(Skipped {
            path: entry.path.clone(),
            kind: type_name(&entry.fd),
            reason: why.to_string(),
        });
        Ok(())
    }

    fn write_symlink(&mut self, entry: &Planned) -> Result<()> {
        let target = match symlink_target(self.volume, &entry.path, &entry.fd) {
            Ok(target) if !target.contains(&0) && !target.is_empty() => target,
            Ok(_) => return self.skip_or_fail(entry, "the symlink target is empty or holds NUL"),
            Err(e) if self.volume.mode() == ParseMode::Salvage => {
                return self.skip_or_fail(entry, &e.to_string())
            }
            Err(e) => return Err(e),
        };
        self.make_room(&entry.out)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &entry.out)
            .map_err(|e| anyhow!("{}: cannot create the symlink: {e}", entry.out.display()))?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn write_file(&mut self, entry: &Planned) -> Result<()> {
        let out_name = entry.out.display();
        let out = File::options()
            .write(true)
            .create_new(true)
            .open(&entry.out)
            .map_err(|e| anyhow!("{out_name}: cannot create: {e}"))?;
        let file = VmfsFile::new(self.volume.clone(), entry.fd.clone(), &entry.path);
        let lv = self.volume.logical_volume().clone();
        let length = entry.fd.length;
        let mut at = 0u64;
        while at < length {
            let window = MAP_WINDOW.min(length - at);
            let start = at;
            let pieces = file.map(at, window)?;
            let mut prefetch = Prefetch::new(&pieces, at);
            for piece in
                super::extract_deleted::split_distrusted(pieces, at, entry.distrust.as_deref())
            {
                match piece.kind {
                    PieceKind::Data(lv_at) => {
                        let mut copied = 0u64;
                        while copied < piece.len {
                            let n = (piece.len - copied).min(CHUNK as u64) as usize;
                            // Keep the next data in flight while this chunk is written.
                            prefetch.upto(&lv, at + copied + READ_AHEAD);
                            let buf = &mut self.buffer[..n];
                            if let Err(e) = lv.read_exact_at(buf, lv_at + copied) {
                                self.unreadable(entry, at + copied, n as u64, e.to_string())?;
                            } else if buf[..] != self.zeros[..n] {
                                out.write_all_at(buf, at + copied)
                                    .map_err(|e| anyhow!("{out_name}: write error: {e}"))?;
                                self.report.data_bytes += n as u64;
                            }
                            copied += n as u64;
                            self.done += n as u64;
                            self.progress.set(self.done);
                        }
                    }
                    PieceKind::Zero { .. } => {
                        self.done += piece.len;
                        self.progress.set(self.done);
                    }
                    PieceKind::Unreadable(reason) => {
                        self.unreadable(entry, at, piece.len, reason)?;
                        self.done += piece.len;
                    }
                }
                at += piece.len;
            }
            if at == start {
                break; // the map ends before the FD's length: the rest stays a hole
            }
        }
        out.set_len(length)
            .map_err(|e| anyhow!("{out_name}: cannot set its length: {e}"))?;
        let _ = out.set_times(times(entry.fd.atime, entry.fd.mtime));
        self.report.files += 1;
        self.report.bytes += length;
        Ok(())
    }

    /// Strict: the error that stops the extraction. Salvage: records the range (left as
    /// zeros in the sparse output).
    fn unreadable(&mut self, entry: &Planned, offset: u64, len: u64, reason: String) -> Result<()> {
        if self.volume.mode() == ParseMode::Strict && entry.distrust.is_none() {
            return Err(vmfs::Error::Unreadable {
                volume: self.volume.name().to_string(),
                path: entry.path.clone(),
                offset,
                len,
                reason,
            }
            .into());
        }
        match self.report.unreadable.last_mut() {
            Some(last)
                if last.path == entry.path
                    && last.offset + last.len == offset
                    && last.reason == reason =>
            {
                last.len += len
            }
            _ => self.report.unreadable.push(UnreadableRange {
                path: entry.path.clone(),
                offset,
                len,
                reason,
            }),
        }
        Ok(())
    }

    /// Sets the directories' times, deepest first (writing into a directory changes its
    /// mtime).
    fn set_directory_times(&self) {
        for (dir, atime, mtime) in self.dirs.iter().rev() {
            if let Ok(handle) = File::open(dir) {
                let _ = handle.set_times(times(*atime, *mtime));
            }
        }
    }
}

fn times(atime: u32, mtime: u32) -> FileTimes {
    let at = |s: u32| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(s));
    FileTimes::new()
        .set_accessed(at(atime))
        .set_modified(at(mtime))
}

/// Readahead hints across a map window's data pieces: keeps `READ_AHEAD` bytes of the
/// data still to copy requested from the kernel while the current chunk is written, also
/// when the file's blocks are scattered over the volume (one piece per block), where a
/// hint within one piece would never reach ahead.
struct Prefetch {
    /// (file offset, LV offset, length) of each data piece, in file order.
    runs: Vec<(u64, u64, u64)>,
    /// File offset up to which hints have been given.
    issued: u64,
}

impl Prefetch {
    fn new(pieces: &[vdr_formats::vmfs::Piece], at: u64) -> Prefetch {
        let mut runs = Vec::new();
        let mut file_at = at;
        for p in pieces {
            if let PieceKind::Data(lv_at) = p.kind {
                runs.push((file_at, lv_at, p.len));
            }
            file_at += p.len;
        }
        Prefetch { runs, issued: at }
    }

    /// Requests every data byte before file offset `end` not requested yet.
    fn upto(&mut self, lv: &vdr_formats::vmfs::LogicalVolume, end: u64) {
        if end <= self.issued {
            return;
        }
        let first = self.runs.partition_point(|&(f, _, n)| f + n <= self.issued);
        for &(f, l, n) in &self.runs[first..] {
            if f >= end {
                break;
            }
            let lo = f.max(self.issued);
            let hi = (f + n).min(end);
            if lo < hi {
                lv.will_need(l + (lo - f), hi - lo);
            }
        }
        self.issued = end;
    }
}
