//! `vdr check`: consistency check of an image's own metadata (its backing files are not
//! opened), reported like `qemu-img check`. Exit 1 when errors or leaks were found.

use std::io::{self, Write};

use anyhow::Result;
use vdr_formats::disk::CheckReport;

use super::{open, OpenRequest, Status};
use crate::cli::CheckArgs;
use crate::output::{print_json, to_stdout};

/// Runs `vdr check`.
pub fn run(args: &CheckArgs) -> Result<Status> {
    let chain = open(
        &args.image,
        &OpenRequest {
            salvage: args.open.salvage,
            allow_escaping_extents: args.open.allow_escaping_extents,
            snapshot: None,
            no_backing: true,
        },
    )?;
    let report = chain.leaf().check()?;
    if args.json {
        print_json(&report)?;
    } else {
        to_stdout(|out| write_text(out, &report))?;
    }
    Ok(if report.is_clean() {
        Status::Ok
    } else {
        Status::ProblemsFound
    })
}

fn write_text(out: &mut impl Write, report: &CheckReport) -> io::Result<()> {
    if !report.supported {
        writeln!(
            out,
            "This image format ({}) has no metadata to check; nothing was checked.",
            report.format
        )?;
        return Ok(());
    }
    for error in &report.errors {
        writeln!(out, "ERROR {error}")?;
    }
    for leak in &report.leaks {
        writeln!(out, "Leaked cluster: {leak}")?;
    }
    if report.is_clean() {
        writeln!(out, "No errors were found on the image.")?;
    }
    if !report.errors.is_empty() {
        writeln!(
            out,
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
            report.errors.len()
        )?;
    }
    let leaked = report.leaked_clusters.max(report.leaks.len() as u64);
    if leaked > 0 {
        writeln!(
            out,
            "\n{leaked} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data."
        )?;
    }
    if report.total_clusters > 0 {
        let percent = report.allocated_clusters as f64 * 100.0 / report.total_clusters as f64;
        writeln!(
            out,
            "{}/{} = {percent:.2}% allocated",
            report.allocated_clusters, report.total_clusters
        )?;
    }
    if let Some(end) = report.image_end_offset {
        writeln!(out, "Image end offset: {end}")?;
    }
    Ok(())
}
