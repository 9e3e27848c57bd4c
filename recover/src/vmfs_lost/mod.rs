//! Deleted and orphaned files of a VMFS volume: every FD slot of `.fdc.sf` is read, and
//! a valid FD that no directory of the live tree reaches is a lost file. It is
//! *deleted* when the FD bitmap marks it free or its link count is 0, *orphaned*
//! (VOMA's lost+found case: in use, but no path leads to it) otherwise.
//!
//! Names come from what the directories still hold (research/vmfs-recovery.md §1):
//! VMFS3/5 entries in the stale tail past a directory's end, VMFS6 freed dirent slots
//! that kept their name (matched by parent directory and generation), and the
//! directories of lost directories. A file without a name is `fd-0xADDRESS`.
//!
//! The promise is the same as everywhere in vdr: a recovered byte is the file's byte or
//! it is reported unreadable. A lost file's map is trusted only where nothing contradicts
//! it, so these ranges are unreadable, each with its reason:
//! - a data block or pointer block that a live file now uses (reused after deletion);
//! - a data block in a system file's area, except sub-blocks in `.sbc.sf` and resident
//!   data in the FD itself;
//! - a block two lost files both claim (which one it holds is unknown);
//! - holes, when the FD counts more blocks than its map still names (cleared pointers
//!   and holes look the same, so neither is returned as zeros).
//!
//! Not done here: carving FDs or pointer-block chains out of free space, or files whose
//! FD slot was reused (their map is gone with it).

mod source;
mod trust;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use vdr_formats::vmfs::{
    self, normalise, FileDescriptor, FileType, PieceKind, VmfsFile, Volume, ROOT_FD,
};
use vdr_formats::{detect_bytes, Finding, Severity, Source};

pub use source::{RecoveredFile, RecoveredFileSystem};
use trust::{claim_file, file_pieces, shared_ranges, unreadable_ranges, Claim, Claims};

/// FD slots read per progress report.
const SLOT_BATCH: usize = 4096;
/// The most candidate names listed for a file whose name is ambiguous.
const MAX_NAME_CANDIDATES: usize = 16;

/// Why a lost file is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LostStatus {
    /// Freed (FD bitmap bit free, or link count 0) and unlinked.
    Deleted,
    /// In use, but no directory of the live tree leads to it.
    Orphaned,
}

impl LostStatus {
    pub fn name(&self) -> &'static str {
        match self {
            LostStatus::Deleted => "deleted",
            LostStatus::Orphaned => "orphaned",
        }
    }
}

/// A file range a lost file cannot be read in, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub offset: u64,
    pub len: u64,
    pub why: String,
}

/// One deleted or orphaned file, directory or symlink.
#[derive(Clone, Debug, Serialize)]
pub struct LostFile {
    pub status: LostStatus,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its path in the recovered tree: `deleted/…` or `orphaned/…` (the original
    /// directories when known, else `fd-0xADDRESS`).
    pub path: String,
    /// Where it lived, when a directory remnant or its parent says so.
    pub original_path: Option<String>,
    /// The name a directory entry (or remnant) gave it.
    pub name: Option<String>,
    /// What the name came from: "stale directory entry", "freed directory slot",
    /// "lost directory" or none.
    pub name_from: Option<&'static str>,
    /// Without a name: the names freed slots of its directory hold for its generation,
    /// when more than one file could own them (at most 16, sorted).
    pub name_candidates: Vec<String>,
    pub size: u64,
    pub fd_address: u32,
    /// LV offset of the FD.
    pub fd_offset: u64,
    pub generation: u32,
    pub links: u32,
    pub mtime: u32,
    pub ctime: u32,
    pub atime: u32,
    pub address_type: &'static str,
    /// `Some(true)`: the FD bitmap marks it free; `None`: the bitmap could not be read.
    pub fd_bitmap_free: Option<bool>,
    /// Why it was judged lost.
    pub evidence: Vec<String>,
    /// File ranges that cannot be returned, sorted.
    pub unreadable: Vec<Unreadable>,
    /// Bytes of the file that can be returned (size minus unreadable).
    pub recoverable_bytes: u64,
    #[serde(skip)]
    pub fd: FileDescriptor,
}

/// What [`find_lost`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LostReport {
    /// FD slots read.
    pub fd_slots: u64,
    /// Slots holding a valid FD.
    pub valid_fds: u64,
    /// Valid FDs the live tree reaches.
    pub live_fds: u64,
    pub files: Vec<LostFile>,
    pub findings: Vec<Finding>,
}

/// Finds the deleted and orphaned files of `volume`. `progress` is told how many FD
/// slots of how many were read.
pub fn find_lost(
    volume: &Arc<Volume>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<LostReport, vmfs::Error> {
    let mut report = LostReport::default();
    let root = volume.root()?;
    let walked = volume.walk("/")?;

    // The live tree: what it reaches, its directories, and the LV ranges it uses.
    let mut reachable: HashSet<u32> = HashSet::from([ROOT_FD]);
    let mut dirs: Vec<(String, FileDescriptor)> = vec![("/".to_string(), root.clone())];
    let mut live_claims = Vec::new();
    let mut system_claims = Vec::new();
    claim_file(volume, &root, "/", &mut live_claims);
    for e in &walked {
        reachable.insert(e.fd.address);
        if e.fd.file_type == FileType::System {
            claim_file(volume, &e.fd, &e.path, &mut system_claims);
            if e.fd.is_dir() {
                dirs.push((e.path.clone(), e.fd.clone()));
            }
            continue;
        }
        claim_file(volume, &e.fd, &e.path, &mut live_claims);
        if e.fd.is_dir() {
            dirs.push((e.path.clone(), e.fd.clone()));
        }
    }
    let live_claims = Claims::new(live_claims);
    let system_claims = Claims::new(system_claims);
    let dir_paths: HashMap<u32, String> =
        dirs.iter().map(|(p, d)| (d.address, p.clone())).collect();

    // Every FD slot: the valid FDs the tree does not reach.
    let slots = volume.fd_slots();
    report.fd_slots = slots.len() as u64;
    let mut lost: Vec<FileDescriptor> = Vec::new();
    for (i, address) in slots.iter().enumerate() {
        if i % SLOT_BATCH == 0 {
            progress(i as u64, slots.len() as u64);
        }
        let Ok(fd) = volume.fd(*address) else {
            continue;
        };
        report.valid_fds += 1;
        if reachable.contains(address) {
            report.live_fds += 1;
            continue;
        }
        if matches!(
            fd.file_type,
            FileType::Volume | FileType::System | FileType::Unknown(_)
        ) {
            continue;
        }
        lost.push(fd);
    }
    progress(slots.len() as u64, slots.len() as u64);

    // Names: remnants in live directories, then the listings of lost directories.
    let mut by_address: HashMap<(u32, u32), (String, String, &'static str)> = HashMap::new();
    let mut by_parent: HashMap<(u32, u32), Vec<String>> = HashMap::new();
    for (path, dir) in &dirs {
        for r in volume.dir_remnants(dir) {
            if r.fd_address != 0 {
                let from = if volume.fs().is_vmfs6() {
                    "freed directory slot"
                } else {
                    "stale directory entry"
                };
                by_address.entry((r.fd_address, r.generation)).or_insert((
                    path.clone(),
                    r.name.clone(),
                    from,
                ));
            } else {
                by_parent
                    .entry((dir.address, r.generation))
                    .or_default()
                    .push(r.name);
            }
        }
    }
    let lost_addresses: HashSet<u32> = lost.iter().map(|fd| fd.address).collect();
    // (child address) → (lost parent address, name)
    let mut in_lost_dir: HashMap<u32, (u32, String)> = HashMap::new();
    for dir in lost.iter().filter(|fd| fd.is_dir()) {
        match volume.read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    if lost_addresses.contains(&e.fd_address) && e.fd_address != dir.address {
                        in_lost_dir
                            .entry(e.fd_address)
                            .or_insert((dir.address, e.name));
                    }
                }
            }
            Err(e) => report.findings.push(finding(
                volume,
                dir.lv_offset,
                "directory",
                Severity::Warning,
                format!("lost directory FD {:#x}: {e}", dir.address),
            )),
        }
    }

    // Where each lost FD goes: (parent: live path or lost dir, name, source).
    enum Parent {
        Live(String),
        Lost(u32),
        Unknown,
    }
    let mut lost_per_parent: HashMap<(u32, u32), usize> = HashMap::new();
    for fd in lost.iter().filter(|fd| fd.parent_fd != 0) {
        *lost_per_parent
            .entry((fd.parent_fd, fd.generation))
            .or_default() += 1;
    }
    let mut candidates: HashMap<u32, Vec<String>> = HashMap::new();
    let mut placed: HashMap<u32, (Parent, Option<String>, Option<&'static str>)> = HashMap::new();
    for fd in &lost {
        let generation_match = |(dir, name, from): &(String, String, &'static str)| {
            (Parent::Live(dir.clone()), Some(name.clone()), Some(*from))
        };
        let entry = if let Some((parent, name)) = in_lost_dir.get(&fd.address) {
            (
                Parent::Lost(*parent),
                Some(name.clone()),
                Some("lost directory"),
            )
        } else if let Some(hit) = by_address.get(&(fd.address, fd.generation)) {
            generation_match(hit)
        } else if fd.parent_fd != 0 {
            // A freed slot names one FD only when it is the one name and the one lost
            // FD of that directory and generation; otherwise the names are candidates.
            let key = (fd.parent_fd, fd.generation);
            let names = by_parent.get(&key).map_or(&[][..], |n| n.as_slice());
            let fds = lost_per_parent.get(&key).copied().unwrap_or(0);
            let name = (names.len() == 1 && fds == 1).then(|| names[0].clone());
            if name.is_none() && !names.is_empty() {
                let mut c: Vec<String> = names.to_vec();
                c.sort();
                c.dedup();
                c.truncate(MAX_NAME_CANDIDATES);
                candidates.insert(fd.address, c);
            }
            let from = name.as_ref().map(|_| "freed directory slot");
            match dir_paths.get(&fd.parent_fd) {
                Some(p) => (Parent::Live(p.clone()), name, from),
                None if lost_addresses.contains(&fd.parent_fd) => {
                    (Parent::Lost(fd.parent_fd), name, from)
                }
                None => (Parent::Unknown, name, from),
            }
        } else {
            (Parent::Unknown, None, None)
        };
        placed.insert(fd.address, entry);
    }

    // Original paths, following lost parents (a loop or an unnamed parent ends it).
    let original_path = |address: u32| -> Option<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut at = address;
        let mut seen = HashSet::new();
        loop {
            if !seen.insert(at) {
                return None;
            }
            let (parent, name, _) = placed.get(&at)?;
            parts.push(name.clone()?);
            match parent {
                Parent::Live(p) => {
                    parts.push(p.trim_end_matches('/').to_string());
                    break;
                }
                Parent::Lost(d) => at = *d,
                Parent::Unknown => return None,
            }
        }
        parts.reverse();
        Some(normalise(&parts.join("/")))
    };

    // Paths in the recovered tree: the original directories where known, a lost
    // directory's own recovered path for what it holds, `fd-0xADDRESS` for no name.
    let display_name = |fd: &FileDescriptor, name: &Option<String>| match name {
        Some(n) => n.clone(),
        None => {
            let mut n = format!("fd-{:#010x}", fd.address);
            if let Some(ext) = sniff_extension(volume, fd) {
                n.push_str(ext);
            }
            n
        }
    };
    let by_address_fd: HashMap<u32, &FileDescriptor> =
        lost.iter().map(|fd| (fd.address, fd)).collect();
    let relative = |address: u32| -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut at = address;
        let mut seen = HashSet::new();
        while seen.insert(at) {
            let (Some(fd), Some((parent, name, _))) = (by_address_fd.get(&at), placed.get(&at))
            else {
                break;
            };
            parts.push(display_name(fd, name));
            match parent {
                Parent::Live(p) => {
                    parts.push(p.trim_end_matches('/').to_string());
                    break;
                }
                Parent::Lost(d) => at = *d,
                Parent::Unknown => break,
            }
        }
        parts.reverse();
        normalise(&parts.join("/"))
    };

    // Claims of the lost files among themselves.
    let mut lost_claims: Vec<Claim> = Vec::new();
    let mut pieces_of: HashMap<u32, Vec<(u64, u64, PieceKind)>> = HashMap::new();
    for fd in lost.iter().filter(|fd| !fd.is_dir()) {
        let pieces = file_pieces(volume, fd);
        for (_, len, kind) in &pieces {
            if let PieceKind::Data(lv) = kind {
                lost_claims.push(Claim {
                    start: *lv,
                    end: lv + len,
                    owner: format!("{:#x}", fd.address),
                });
            }
        }
        pieces_of.insert(fd.address, pieces);
    }
    let shared = match shared_ranges(lost_claims) {
        Some(shared) => shared,
        None => {
            report.findings.push(finding(
                volume,
                0,
                "file descriptor",
                Severity::Error,
                "the lost files' block maps overlap too much to tell them apart; none of their data is returned".into(),
            ));
            vec![Claim {
                start: 0,
                end: u64::MAX,
                owner: "every lost file".into(),
            }]
        }
    };
    let shared = Claims::new(shared);

    let mut taken: HashSet<String> = HashSet::new();
    for fd in &lost {
        let status_free = volume.fd_free(fd.address);
        let deleted = status_free == Some(true) || fd.link_count == 0;
        let status = if deleted {
            LostStatus::Deleted
        } else {
            LostStatus::Orphaned
        };
        let mut evidence = vec!["no directory of the live tree names this FD".to_string()];
        match status_free {
            Some(true) => evidence.push("the .fdc.sf bitmap marks the FD free".into()),
            Some(false) => evidence.push("the .fdc.sf bitmap marks the FD in use".into()),
            None => evidence.push("the .fdc.sf bitmap could not be read for it".into()),
        }
        if fd.link_count == 0 {
            evidence.push("its link count is 0".into());
        }
        let (_, name, name_from) = placed.get(&fd.address).expect("every lost FD is placed");
        let original = original_path(fd.address);
        let kind = kind_name(fd);
        let unreadable = if fd.is_dir() {
            Vec::new()
        } else {
            unreadable_ranges(
                volume,
                fd,
                pieces_of.get(&fd.address).map_or(&[][..], |v| v.as_slice()),
                &live_claims,
                &system_claims,
                &shared,
            )
        };
        let lost_bytes: u64 = unreadable.iter().map(|u| u.len).sum();
        let inner = relative(fd.address);
        let mut path = format!("{}{inner}", status.name());
        if !taken.insert(path.clone()) {
            path = format!("{path}~fd{:#x}", fd.address);
            taken.insert(path.clone());
        }
        report.files.push(LostFile {
            status,
            kind,
            path,
            original_path: original,
            name: name.clone(),
            name_from: *name_from,
            name_candidates: candidates.remove(&fd.address).unwrap_or_default(),
            size: fd.length,
            fd_address: fd.address,
            fd_offset: fd.lv_offset,
            generation: fd.generation,
            links: fd.link_count,
            mtime: fd.mtime,
            ctime: fd.ctime,
            atime: fd.atime,
            address_type: fd.zla_name(),
            fd_bitmap_free: status_free,
            evidence,
            recoverable_bytes: if fd.is_dir() {
                0
            } else {
                fd.length.saturating_sub(lost_bytes)
            },
            unreadable,
            fd: fd.clone(),
        });
    }
    report.files.sort_by(|a, b| a.path.cmp(&b.path));
    report.findings.extend(volume.findings());
    Ok(report)
}

fn finding(
    volume: &Volume,
    offset: u64,
    structure: &str,
    severity: Severity,
    what: String,
) -> Finding {
    Finding {
        file: volume.name().to_string(),
        offset,
        severity,
        structure: structure.to_string(),
        what,
    }
}

fn kind_name(fd: &FileDescriptor) -> &'static str {
    if fd.is_dir() {
        "dir"
    } else {
        match fd.file_type {
            FileType::Symlink => "symlink",
            FileType::RawDeviceMapping => "rdm",
            _ => "file",
        }
    }
}

/// ".vmdk" for a file that starts like a VMDK (descriptor, hosted sparse, COWD,
/// seSparse).
fn sniff_extension(volume: &Arc<Volume>, fd: &FileDescriptor) -> Option<&'static str> {
    if fd.is_dir() || fd.file_type == FileType::Symlink {
        return None;
    }
    let file = VmfsFile::new(volume.clone(), fd.clone(), "/");
    let mut head = [0u8; 32];
    let n = file.read_at(&mut head, 0).ok()?;
    detect_bytes(&head[..n]).is_vmdk().then_some(".vmdk")
}
