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

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vdr_formats::source::{FileSystem, SourceRef, SourceRun};
use vdr_formats::vmfs::{
    self, normalise, FileDescriptor, FileType, PieceKind, VmfsFile, Volume, ROOT_FD,
};
use vdr_formats::{detect_bytes, Finding, Severity, Source};

/// FD slots read per progress report.
const SLOT_BATCH: usize = 4096;
/// The most overlapping pairs of lost files' block claims compared.
const MAX_CLAIM_PAIRS: usize = 1 << 22;
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

/// A range of the LV and who uses it.
#[derive(Clone, Debug)]
struct Claim {
    start: u64,
    end: u64,
    owner: String,
}

/// Sorted, non-overlapping claims (an overlap keeps the first owner).
struct Claims(Vec<Claim>);

impl Claims {
    fn new(mut v: Vec<Claim>) -> Claims {
        v.sort_by_key(|c| (c.start, c.end));
        let mut out: Vec<Claim> = Vec::with_capacity(v.len());
        for c in v {
            match out.last_mut() {
                Some(last) if c.start < last.end => last.end = last.end.max(c.end),
                Some(last) if c.start == last.end && c.owner == last.owner => last.end = c.end,
                _ => out.push(c),
            }
        }
        Claims(out)
    }

    /// The parts of LV range [start, end) that are claimed, with their owners.
    fn overlaps(&self, start: u64, end: u64) -> Vec<(u64, u64, &str)> {
        let first = self.0.partition_point(|c| c.end <= start);
        self.0[first..]
            .iter()
            .take_while(|c| c.start < end)
            .map(|c| (c.start.max(start), c.end.min(end), c.owner.as_str()))
            .collect()
    }
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

/// The LV ranges `fd` uses (its data and its pointer blocks), owned by `path`.
fn claim_file(volume: &Arc<Volume>, fd: &FileDescriptor, path: &str, out: &mut Vec<Claim>) {
    for (_, len, kind) in file_pieces(volume, fd) {
        if let PieceKind::Data(lv) = kind {
            out.push(Claim {
                start: lv,
                end: lv + len,
                owner: path.to_string(),
            });
        }
    }
    for pb in volume.pointer_blocks(fd) {
        out.push(Claim {
            start: pb.lv,
            end: pb.lv + pb.len,
            owner: path.to_string(),
        });
    }
}

/// `fd`'s pieces as (file offset, length, kind); a map that fails is one unreadable
/// piece.
fn file_pieces(volume: &Arc<Volume>, fd: &FileDescriptor) -> Vec<(u64, u64, PieceKind)> {
    let file = VmfsFile::new(volume.clone(), fd.clone(), "/");
    match file.map(0, fd.length) {
        Ok(pieces) => {
            let mut at = 0;
            pieces
                .into_iter()
                .map(|p| {
                    let r = (at, p.len, p.kind);
                    at += p.len;
                    r
                })
                .collect()
        }
        Err(e) => vec![(0, fd.length, PieceKind::Unreadable(e.to_string()))],
    }
}

/// LV ranges more than one lost file claims, with the claimants; `None` when the
/// claims overlap so much that comparing them would pass [`MAX_CLAIM_PAIRS`] (only a
/// damaged or hostile volume gets there).
fn shared_ranges(mut claims: Vec<Claim>) -> Option<Vec<Claim>> {
    claims.sort_by_key(|c| (c.start, c.end));
    let mut out: Vec<Claim> = Vec::new();
    let mut pairs = 0usize;
    for (i, a) in claims.iter().enumerate() {
        for b in claims[i + 1..].iter().take_while(|b| b.start < a.end) {
            pairs += 1;
            if pairs > MAX_CLAIM_PAIRS {
                return None;
            }
            if b.owner != a.owner {
                out.push(Claim {
                    start: b.start,
                    end: a.end.min(b.end),
                    owner: format!("{} and {}", a.owner, b.owner),
                });
            }
        }
    }
    Some(out)
}

/// The file ranges of lost file `fd` that cannot be trusted (see the module doc).
fn unreadable_ranges(
    volume: &Arc<Volume>,
    fd: &FileDescriptor,
    pieces: &[(u64, u64, PieceKind)],
    live: &Claims,
    system: &Claims,
    shared: &Claims,
) -> Vec<Unreadable> {
    let mut out: Vec<Unreadable> = Vec::new();
    let mapped = volume.mapped_blocks(fd);
    let holes_doubtful = match mapped {
        Some(m) => m < fd.num_blocks,
        None => true,
    };
    let sub_blocks = fd.uses_sub_blocks();
    let resident = fd.is_resident();
    for (at, len, kind) in pieces {
        match kind {
            PieceKind::Unreadable(why) => out.push(Unreadable {
                offset: *at,
                len: *len,
                why: why.clone(),
            }),
            PieceKind::Zero { tbz: false } if holes_doubtful => out.push(Unreadable {
                offset: *at,
                len: *len,
                why: match mapped {
                    Some(m) => format!(
                        "a hole, or a pointer cleared on delete: the FD counts {} blocks but its map names {m}",
                        fd.num_blocks
                    ),
                    None => "a pointer block of the lost file cannot be read".into(),
                },
            }),
            PieceKind::Zero { .. } => {}
            PieceKind::Data(lv) => {
                let (lv, end) = (*lv, lv + len);
                let file_at = |x: u64| at + (x - lv);
                for (s, e, owner) in live.overlaps(lv, end) {
                    out.push(Unreadable {
                        offset: file_at(s),
                        len: e - s,
                        why: format!("LV {s:#x} is now used by {owner}"),
                    });
                }
                if !resident {
                    for (s, e, owner) in system.overlaps(lv, end) {
                        if sub_blocks && owner == "/.sbc.sf" {
                            continue;
                        }
                        out.push(Unreadable {
                            offset: file_at(s),
                            len: e - s,
                            why: format!("LV {s:#x} lies in the system file {owner}"),
                        });
                    }
                }
                for (s, e, owner) in shared.overlaps(lv, end) {
                    out.push(Unreadable {
                        offset: file_at(s),
                        len: e - s,
                        why: format!(
                            "LV {s:#x} is claimed by the lost FDs {owner}: which one it holds is unknown"
                        ),
                    });
                }
            }
        }
    }
    for pb in volume.pointer_blocks(fd) {
        let end = fd.length.min(pb.file_offset.saturating_add(pb.file_len));
        if pb.file_offset >= end {
            continue;
        }
        for (s, _, owner) in live.overlaps(pb.lv, pb.lv + pb.len).into_iter().chain(
            system
                .overlaps(pb.lv, pb.lv + pb.len)
                .into_iter()
                .filter(|(_, _, o)| !matches!(*o, "/.pbc.sf" | "/.pb2.sf" | "/.sbc.sf")),
        ) {
            out.push(Unreadable {
                offset: pb.file_offset,
                len: end - pb.file_offset,
                why: format!("its pointer block at LV {s:#x} is now used by {owner}"),
            });
        }
    }
    normalise_ranges(out)
}

/// Sorts ranges and merges overlapping ones (the first reason is kept).
fn normalise_ranges(mut v: Vec<Unreadable>) -> Vec<Unreadable> {
    v.sort_by_key(|u| (u.offset, u.len));
    let mut out: Vec<Unreadable> = Vec::new();
    for u in v {
        if u.len == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if u.offset <= last.offset + last.len => {
                let end = (last.offset + last.len).max(u.offset + u.len);
                if u.offset == last.offset + last.len && u.why != last.why {
                    out.push(u);
                } else {
                    last.len = end - last.offset;
                }
            }
            _ => out.push(u),
        }
    }
    out
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

impl LostFile {
    /// The file's bytes: the volume's where the map is trusted, errors elsewhere.
    pub fn open(&self, volume: &Arc<Volume>) -> RecoveredFile {
        let location = self
            .original_path
            .clone()
            .unwrap_or_else(|| format!("/{}", self.path));
        RecoveredFile {
            inner: VmfsFile::new(volume.clone(), self.fd.clone(), &location),
            name: format!("{}::.recovered/{}", volume.name(), self.path),
            path: PathBuf::from(location),
            unreadable: self.unreadable.clone(),
        }
    }

    /// True for a `.vmdk` that is a disk's entry point (a descriptor or a hosted sparse
    /// file), judged by its first bytes.
    pub fn is_vmdk_disk(&self, volume: &Arc<Volume>) -> bool {
        if self.kind != "file" || !self.path.ends_with(".vmdk") {
            return false;
        }
        let mut head = [0u8; 32];
        let n = self.open(volume).read_at(&mut head, 0).unwrap_or(0);
        detect_bytes(&head[..n]).is_vmdk_entry_point()
    }
}

/// A lost file as a [`Source`]: reads touching an untrusted range fail, and `layout`
/// reports those ranges as unreadable, so a disk or a mount over it says where.
pub struct RecoveredFile {
    inner: VmfsFile,
    name: String,
    path: PathBuf,
    unreadable: Vec<Unreadable>,
}

impl Source for RecoveredFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.len());
        if let Some(u) = self
            .unreadable
            .iter()
            .find(|u| u.offset < end && offset < u.offset + u.len)
        {
            return Err(io::Error::other(format!(
                "{}: bytes {:#x}..{:#x} are unreadable: {}",
                self.name,
                u.offset,
                u.offset + u.len,
                u.why
            )));
        }
        self.inner.read_at(buf, offset)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn layout(&self, offset: u64, len: u64) -> Option<Vec<SourceRun>> {
        let end = offset.saturating_add(len).min(self.len());
        let mut out = Vec::new();
        let mut at = offset;
        for u in &self.unreadable {
            let (s, e) = (u.offset.max(at), (u.offset + u.len).min(end));
            if s >= e {
                continue;
            }
            if s > at {
                out.extend(self.inner.layout(at, s - at)?);
            }
            out.push(SourceRun::Unreadable(e - s, u.why.clone()));
            at = e;
        }
        if at < end {
            out.extend(self.inner.layout(at, end - at)?);
        }
        Some(out)
    }
}

/// The recovered files and then the live volume, as the [`FileSystem`] a recovered
/// VMDK opens its extents and parents in: a deleted descriptor finds its deleted
/// extent at the path both had.
pub struct RecoveredFileSystem {
    volume: Arc<Volume>,
    by_path: HashMap<String, LostFile>,
    /// Lost files by name, for names that only one lost file has (a descriptor whose
    /// own name was lost still finds its extent by the name it records).
    by_name: HashMap<String, LostFile>,
}

impl RecoveredFileSystem {
    pub fn new(volume: Arc<Volume>, report: &LostReport) -> RecoveredFileSystem {
        let mut by_path: HashMap<String, LostFile> = HashMap::new();
        for f in report.files.iter().filter(|f| f.kind == "file") {
            let Some(p) = &f.original_path else { continue };
            // Two lost files once at one path: the newer one.
            match by_path.get(p) {
                Some(old) if old.mtime >= f.mtime => {}
                _ => {
                    by_path.insert(p.clone(), f.clone());
                }
            }
        }
        let mut by_name: HashMap<String, Option<LostFile>> = HashMap::new();
        for f in report.files.iter().filter(|f| f.kind == "file") {
            if let Some(name) = &f.name {
                by_name
                    .entry(name.clone())
                    .and_modify(|v| *v = None)
                    .or_insert_with(|| Some(f.clone()));
            }
        }
        let by_name = by_name
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        RecoveredFileSystem {
            volume,
            by_path,
            by_name,
        }
    }

    /// The lost file at `path`: by original path, else (when the volume has nothing
    /// there) by its name alone if only one lost file has it.
    fn find(&self, path: &str) -> Option<&LostFile> {
        if let Some(f) = self.by_path.get(path) {
            return Some(f);
        }
        if self.volume.lookup(path).is_ok() {
            return None;
        }
        let name = path.rsplit('/').next()?;
        self.by_name.get(name)
    }
}

impl FileSystem for RecoveredFileSystem {
    fn open(&self, path: &Path) -> io::Result<SourceRef> {
        let p = normalise(&path.to_string_lossy());
        if let Some(f) = self.find(&p) {
            return Ok(Arc::new(f.open(&self.volume)));
        }
        vmfs::VolumeFileSystem(self.volume.clone()).open(path)
    }

    fn identity(&self, path: &Path) -> String {
        let p = normalise(&path.to_string_lossy());
        if let Some(f) = self.find(&p) {
            format!("{}::.recovered/{}", self.volume.name(), f.path)
        } else {
            format!("{}::{p}", self.volume.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(start: u64, end: u64, owner: &str) -> Claim {
        Claim {
            start,
            end,
            owner: owner.into(),
        }
    }

    #[test]
    fn claims_answer_the_claimed_parts_of_a_range_with_their_owners() {
        let c = Claims::new(vec![
            claim(100, 200, "/b"),
            claim(0, 50, "/a"),
            claim(200, 300, "/b"),
        ]);
        assert_eq!(c.0.len(), 2, "adjacent claims of one owner join");
        assert_eq!(c.overlaps(40, 120), vec![(40, 50, "/a"), (100, 120, "/b")]);
        assert_eq!(c.overlaps(50, 100), vec![]);
        assert_eq!(c.overlaps(250, 1000), vec![(250, 300, "/b")]);
    }

    #[test]
    fn shared_ranges_are_where_two_owners_claim_the_same_bytes() {
        let shared = shared_ranges(vec![
            claim(0, 100, "0x4"),
            claim(50, 150, "0x8"),
            claim(60, 70, "0x4"),
            claim(200, 300, "0xc"),
        ])
        .unwrap();
        let shared = Claims::new(shared);
        assert_eq!(shared.overlaps(0, 1000).len(), 1, "{:?}", shared.0);
        let (s, e, owner) = shared.overlaps(0, 1000)[0];
        assert_eq!((s, e), (50, 100));
        assert!(owner.contains("0x4") && owner.contains("0x8"), "{owner}");
        // Thousands of lost files all claiming one range: refused, not quadratic.
        let many: Vec<Claim> = (0..3000)
            .map(|i| claim(0, 1 << 30, &format!("{i}")))
            .collect();
        assert!(shared_ranges(many).is_none());
    }

    #[test]
    fn unreadable_ranges_are_sorted_and_merged_keeping_distinct_reasons_apart() {
        let u = |offset, len, why: &str| Unreadable {
            offset,
            len,
            why: why.into(),
        };
        let got = normalise_ranges(vec![
            u(100, 50, "b"),
            u(0, 10, "a"),
            u(5, 10, "a"),
            u(150, 10, "c"),
            u(300, 0, "empty"),
        ]);
        assert_eq!(got, vec![u(0, 15, "a"), u(100, 50, "b"), u(150, 10, "c")]);
    }
}
