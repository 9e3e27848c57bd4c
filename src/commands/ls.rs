//! `vdr ls`: the entries of a directory of a VMFS datastore (or, with `-R`, of its whole
//! tree): names, or with `-l` type, mode, size, allocated bytes, mtime, FD address,
//! address type and lock holder. `--json` prints the array documented in docs/CLI.md.
//!
//! Each entry's FD is read once, through the directory listing (never looked up again by
//! path), so listing a directory of n files costs n FD reads.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use vdr_formats::vmfs::{join, normalise, FileDescriptor, FileType, Volume, WalkEntry};
use vdr_formats::{Finding, ParseMode, Severity};

use super::datastore::{
    has_errors, live_heartbeats, lock_holder, open_volume, print_findings, symlink_target,
    type_name, LockHolder,
};
use super::Status;
use crate::cli::LsArgs;
use crate::output::{print_json, to_stdout, utc_date};

/// One entry of `vdr ls --json`.
#[derive(Debug, Serialize)]
struct EntryReport {
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    system: bool,
    size: u64,
    allocated: u64,
    block_size: u64,
    blocks: u64,
    tbz_blocks: u64,
    mtime: u32,
    ctime: u32,
    atime: u32,
    uid: u32,
    gid: u32,
    mode: u32,
    links: u32,
    fd_address: u32,
    fd_offset: u64,
    address_type: &'static str,
    target: Option<String>,
    locked_by: Option<LockHolder>,
}

/// Runs `vdr ls`.
pub fn run(args: &LsArgs) -> Result<Status> {
    let volume = open_volume(
        &args.datastore,
        &args.datastore_args.extent,
        args.datastore_args.salvage,
    )?;
    if args.deleted {
        return run_deleted(&volume, args);
    }
    let mut findings = Vec::new();
    let path = normalise(&args.path);
    let top = volume.lookup(&path)?;
    let entries = if !top.is_dir() {
        vec![WalkEntry {
            path: path.clone(),
            fd: top,
        }]
    } else if args.recursive {
        volume.walk(&path)?
    } else {
        children(&volume, &path, &top, &mut findings)?
    };
    let live = live_heartbeats(&volume);
    let mut reports = Vec::with_capacity(entries.len());
    for entry in &entries {
        reports.push(describe(&volume, entry, &live, &mut findings)?);
    }
    findings.extend(volume.findings());
    if args.json {
        print_json(&reports)?;
    } else {
        to_stdout(|out| {
            let mut out = BufWriter::with_capacity(1 << 16, out);
            write_text(&mut out, &reports, args)?;
            out.flush()
        })?;
    }
    print_findings(&findings);
    Ok(if has_errors(&findings) {
        Status::ProblemsFound
    } else {
        Status::Ok
    })
}

/// The entries of directory `dir` at `path`, sorted by name, each FD read once.
fn children(
    volume: &Volume,
    path: &str,
    dir: &FileDescriptor,
    findings: &mut Vec<Finding>,
) -> Result<Vec<WalkEntry>> {
    let mut listing = volume.read_dir(dir)?;
    listing.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(listing.len());
    for entry in listing {
        let child = join(path, &entry.name);
        match volume.fd(entry.fd_address) {
            Ok(fd) => out.push(WalkEntry { path: child, fd }),
            Err(e) if volume.mode() == ParseMode::Salvage => findings.push(Finding {
                file: volume.name().to_string(),
                offset: dir.lv_offset,
                severity: Severity::Error,
                structure: "file descriptor".into(),
                what: format!("{child}: {e}; entry left out"),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn describe(
    volume: &Arc<Volume>,
    entry: &WalkEntry,
    live: &[u64],
    findings: &mut Vec<Finding>,
) -> Result<EntryReport> {
    let fd = &entry.fd;
    let target = if fd.file_type == FileType::Symlink {
        match symlink_target(volume, &entry.path, fd) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if volume.mode() == ParseMode::Salvage => {
                findings.push(Finding {
                    file: volume.name().to_string(),
                    offset: fd.lv_offset,
                    severity: Severity::Error,
                    structure: "symlink".into(),
                    what: e.to_string(),
                });
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(EntryReport {
        name: entry
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        path: entry.path.clone(),
        kind: type_name(fd),
        system: fd.file_type == FileType::System,
        size: fd.length,
        allocated: fd.num_blocks.saturating_mul(fd.block_size),
        block_size: fd.block_size,
        blocks: fd.num_blocks,
        tbz_blocks: fd.tbz_blocks,
        mtime: fd.mtime,
        ctime: fd.ctime,
        atime: fd.atime,
        uid: fd.uid,
        gid: fd.gid,
        mode: fd.mode,
        links: fd.link_count,
        fd_address: fd.address,
        fd_offset: fd.lv_offset,
        address_type: fd.zla_name(),
        target,
        locked_by: lock_holder(fd, live),
    })
}

fn write_text(out: &mut impl Write, reports: &[EntryReport], args: &LsArgs) -> io::Result<()> {
    let shown = |r: &EntryReport| {
        if args.recursive {
            r.path.clone()
        } else {
            r.name.clone()
        }
    };
    if !args.long {
        for r in reports {
            writeln!(out, "{}", shown(r))?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<7} {:<10} {:>14} {:>14} {:<19} {:>10} {:<9} {:<35} NAME",
        "TYPE", "MODE", "SIZE", "ALLOCATED", "MTIME (UTC)", "FD", "ADDRESS", "LOCKED BY"
    )?;
    for r in reports {
        let name = match &r.target {
            Some(target) => format!("{} -> {target}", shown(r)),
            None => shown(r),
        };
        writeln!(
            out,
            "{:<7} {:<10} {:>14} {:>14} {:<19} {:>10} {:<9} {:<35} {name}",
            r.kind,
            mode_text(r.kind, r.mode),
            r.size,
            r.allocated,
            utc_date(u64::from(r.mtime)),
            format!("{:#x}", r.fd_address),
            r.address_type,
            r.locked_by.as_ref().map_or("-", |l| l.owner.as_str()),
        )?;
    }
    Ok(())
}

/// `"file", 0o644` → `"-rw-r--r--"`.
fn mode_text(kind: &str, mode: u32) -> String {
    let first = match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "file" => '-',
        _ => '?',
    };
    let mut text = String::with_capacity(10);
    text.push(first);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// `vdr ls --deleted`: the deleted and orphaned files recovery finds whose original path
/// lies under PATH (all of them for "/", unnamed ones included).
fn run_deleted(volume: &Arc<Volume>, args: &LsArgs) -> Result<Status> {
    let path = normalise(&args.path);
    let report = super::datastore::find_lost(volume, args.json)?;
    let under = |f: &vdr_recover::LostFile| {
        path == "/"
            || f.original_path
                .as_deref()
                .is_some_and(|p| p == path || p.starts_with(&format!("{path}/")))
    };
    let files: Vec<&vdr_recover::LostFile> = report.files.iter().filter(|f| under(f)).collect();
    if args.json {
        print_json(&files)?;
    } else {
        to_stdout(|out| {
            let mut out = BufWriter::with_capacity(1 << 16, out);
            if args.long {
                writeln!(
                    out,
                    "{:<8} {:<7} {:>14} {:>14} {:<19} {:>10} {:<9} PATH (ORIGINAL)",
                    "STATUS", "TYPE", "SIZE", "RECOVERABLE", "MTIME (UTC)", "FD", "ADDRESS"
                )?;
            }
            for f in &files {
                let original = f
                    .original_path
                    .as_deref()
                    .map_or(String::new(), |p| format!(" ({p})"));
                if args.long {
                    writeln!(
                        out,
                        "{:<8} {:<7} {:>14} {:>14} {:<19} {:>#10x} {:<9} {}{original}",
                        f.status.name(),
                        f.kind,
                        f.size,
                        f.recoverable_bytes,
                        utc_date(u64::from(f.mtime)),
                        f.fd_address,
                        f.address_type,
                        f.path
                    )?;
                } else {
                    writeln!(out, "{}{original}", f.path)?;
                }
            }
            out.flush()
        })?;
        eprintln!(
            "vdr: {} FD slots read, {} valid FDs, {} reached from the root; {} lost",
            report.fd_slots,
            report.valid_fds,
            report.live_fds,
            report.files.len()
        );
    }
    print_findings(&report.findings);
    Ok(if has_errors(&report.findings) {
        Status::ProblemsFound
    } else {
        Status::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_text("file", 0o100644), "-rw-r--r--");
        assert_eq!(mode_text("dir", 0o040755), "drwxr-xr-x");
        assert_eq!(mode_text("sysfile", 0o400), "?r--------");
    }

    #[test]
    fn paths_are_normalised_like_the_volume_does() {
        assert_eq!(normalise(""), "/");
        assert_eq!(normalise("a//b/./"), "/a/b");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
