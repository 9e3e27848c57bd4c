//! `vdr check` for VMDK: the grain directories and tables of every sparse extent. Reported
//! as errors: directory entries and grains outside the file, grains overlapping metadata
//! (header, descriptor, directories, grain tables) or each other, undecodable entries, and
//! a primary directory or grain table that disagrees with its redundant copy.

use crate::disk::{CheckReport, Finding, Severity};
use crate::error::Error as CrateError;

use super::grains::{Grain, GrainTables, TableRef};
use super::{ExtentData, SparseData, VmdkDisk};

/// Findings kept per report.
const MAX_REPORTED: usize = 10_000;

struct Report<'a> {
    file: &'a str,
    errors: Vec<Finding>,
}

impl Report<'_> {
    fn error(&mut self, offset: u64, structure: &str, what: String) {
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(Finding {
                file: self.file.to_string(),
                offset,
                severity: Severity::Error,
                structure: structure.to_string(),
                what,
            });
        }
    }
}

pub fn check(disk: &VmdkDisk) -> Result<CheckReport, CrateError> {
    let mut report = CheckReport {
        file: disk.file.clone(),
        format: "vmdk".into(),
        supported: true,
        ..CheckReport::default()
    };
    let mut errors = Vec::new();
    for extent in &disk.extents {
        if let ExtentData::Sparse(s) = &extent.data {
            let mut r = Report {
                file: &s.tables.file,
                errors: Vec::new(),
            };
            let (allocated, total) = check_sparse(s, &mut r)?;
            report.allocated_clusters += allocated;
            report.total_clusters += total;
            errors.extend(r.errors);
        }
    }
    report.errors = errors;
    Ok(report)
}

/// Checks one sparse extent; returns (allocated grains, total grains).
fn check_sparse(s: &SparseData, r: &mut Report<'_>) -> Result<(u64, u64), CrateError> {
    let t = &s.tables;
    let len = t.source.len();
    let total = t.grain_count();
    if let Some(stream) = &t.stream {
        return Ok((stream.grains.len() as u64, total));
    }
    let mut regions: Vec<(u64, u64, String)> = s
        .metadata
        .iter()
        .map(|&(at, l, name)| (at, l, name.to_string()))
        .collect();
    for (i, slot) in t.directory.iter().enumerate() {
        match slot {
            TableRef::At(at) => {
                regions.push((*at, t.geometry.table_bytes(), format!("grain table {i}")))
            }
            TableRef::Damaged(why) => r.error(0, "grain directory", format!("entry {i}: {why}")),
            TableRef::Absent => {}
        }
    }
    if let Some(h) = &s.header {
        if let Some(rgd) = h.rgd_at {
            compare_redundant(t, h.gd_at, rgd, h.gd_entries, r, &mut regions)?;
        }
    }
    let mut grains: Vec<(u64, u64, u64)> = Vec::new();
    let mut allocated = 0u64;
    for (i, slot) in t.directory.iter().enumerate() {
        let TableRef::At(at) = slot else { continue };
        let table = t.read_table(*at)?;
        for (j, &entry) in table.iter().enumerate() {
            let index = i as u64 * t.geometry.gtes_per_gt + j as u64;
            if index >= total {
                break;
            }
            match t.decode(entry) {
                Err(what) => r.error(*at, "grain table", format!("entry {j}: {what}")),
                Ok(Grain::Data { host }) => {
                    allocated += 1;
                    let start = index * t.geometry.grain_size;
                    let need = t
                        .geometry
                        .grain_size
                        .min(t.geometry.capacity.saturating_sub(start));
                    if host.checked_add(need).is_none_or(|e| e > len) {
                        r.error(
                            *at,
                            "grain table",
                            format!(
                                "entry {j} (grain {index}) points past end of file ({host:#x})"
                            ),
                        );
                    } else {
                        grains.push((host, need, index));
                    }
                }
                Ok(Grain::Compressed { host }) => {
                    allocated += 1;
                    if host >= len {
                        r.error(
                            *at,
                            "grain table",
                            format!(
                                "entry {j} (grain {index}) points past end of file ({host:#x})"
                            ),
                        );
                    }
                }
                Ok(_) => {}
            }
        }
    }
    // Overlaps: grains with metadata, and grains with each other.
    regions.sort_unstable();
    grains.sort_unstable();
    for &(host, need, index) in &grains {
        let i = regions.partition_point(|(at, l, _)| at.saturating_add(*l) <= host);
        if let Some((at, l, name)) = regions.get(i) {
            if *at < host + need && host < at.saturating_add(*l) {
                r.error(
                    host,
                    "grain",
                    format!("grain {index} at {host:#x} overlaps the {name} at {at:#x}"),
                );
            }
        }
    }
    for pair in grains.windows(2) {
        if let [(a, alen, ai), (b, _, bi)] = pair {
            if a + alen > *b {
                r.error(
                    *b,
                    "grain",
                    format!("grains {ai} and {bi} overlap at {b:#x}"),
                );
            }
        }
    }
    Ok((allocated, total))
}

/// Compares the primary directory and its tables with the redundant copies.
fn compare_redundant(
    t: &GrainTables,
    gd_at: u64,
    rgd_at: u64,
    entries: u64,
    r: &mut Report<'_>,
    regions: &mut Vec<(u64, u64, String)>,
) -> Result<(), CrateError> {
    let len = t.source.len();
    let bytes = entries.saturating_mul(4);
    let read = |at: u64| {
        super::grains::read_entries(
            &t.source,
            at,
            len.saturating_sub(at).min(bytes) & !3,
            4,
            "grain directory",
        )
    };
    let primary = read(gd_at)?;
    let redundant = read(rgd_at)?;
    let table_bytes = t.geometry.table_bytes();
    for i in 0..usize::try_from(entries).unwrap_or(0) {
        let (p, q) = (
            primary.get(i).copied().unwrap_or(0),
            redundant.get(i).copied().unwrap_or(0),
        );
        if (p == 0) != (q == 0) {
            r.error(
                gd_at,
                "grain directory",
                format!(
                    "entry {i} is {p:#x} but the redundant directory at {rgd_at:#x} has {q:#x}"
                ),
            );
            continue;
        }
        if q == 0 {
            continue;
        }
        let q_at = q * 512;
        if q_at.checked_add(table_bytes).is_none_or(|e| e > len) {
            r.error(
                rgd_at,
                "redundant grain directory",
                format!("entry {i} points past end of file ({q_at:#x})"),
            );
            continue;
        }
        regions.push((q_at, table_bytes, format!("redundant grain table {i}")));
        let p_at = p * 512;
        if p_at.checked_add(table_bytes).is_none_or(|e| e > len) {
            continue;
        }
        if t.read_table(p_at)? != t.read_table(q_at)? {
            r.error(
                p_at,
                "grain table",
                format!("table {i} differs from its redundant copy at {q_at:#x}"),
            );
        }
    }
    Ok(())
}
