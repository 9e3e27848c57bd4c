//! `vdr info`: format, size, backing chain, features, snapshots, allocation summary and
//! findings of an image. `--json` prints the object documented in docs/CLI.md. A VMFS
//! datastore is described by `datastore.rs` instead.

use std::io::{self, Write};

use anyhow::Result;
use serde::Serialize;
use vdr_formats::{Chain, DiskInfo, ExtentKind, Finding, VirtualDisk};

use super::{open, OpenRequest, Status};
use crate::cli::InfoArgs;
use crate::output::{binary_size, clock_text, print_json, size_text, to_stdout, utc_date};
use crate::walk::for_each_extent;

/// Bytes of the virtual disk per extent kind, over the whole chain's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub data: u64,
    pub compressed: u64,
    pub zero: u64,
    pub unallocated: u64,
    pub unreadable: u64,
}

impl Allocation {
    /// Adds up the chain's map.
    pub fn of(chain: &Chain) -> Result<Allocation> {
        let mut allocation = Allocation::default();
        for_each_extent(chain, 0, chain.size(), |extent| {
            let bucket = match extent.kind {
                ExtentKind::Data { .. } => &mut allocation.data,
                ExtentKind::Compressed { .. } => &mut allocation.compressed,
                ExtentKind::Zero => &mut allocation.zero,
                ExtentKind::Unallocated => &mut allocation.unallocated,
                ExtentKind::Unreadable { .. } => &mut allocation.unreadable,
            };
            *bucket += extent.len;
            Ok(())
        })?;
        Ok(allocation)
    }
}

/// The `vdr info --json` object.
#[derive(Debug, Serialize)]
struct InfoReport {
    file: String,
    format: String,
    virtual_size: u64,
    /// Leaf first.
    layers: Vec<DiskInfo>,
    chain_depth: usize,
    allocation: Allocation,
    findings: Vec<Finding>,
}

/// Runs `vdr info`.
pub fn run(args: &InfoArgs) -> Result<Status> {
    if super::datastore::info_wants_datastore(args) {
        return super::datastore::run_info(args);
    }
    let chain = open(
        &args.image,
        &OpenRequest {
            salvage: args.open.salvage,
            allow_escaping_extents: args.open.allow_escaping_extents,
            snapshot: args.snapshot.clone(),
            no_backing: args.no_backing,
        },
    )?;
    let layers: Vec<DiskInfo> = chain.layers().iter().map(|layer| layer.info()).collect();
    let report = InfoReport {
        file: args.image.display().to_string(),
        format: layers
            .first()
            .map(|leaf| leaf.format.clone())
            .unwrap_or_default(),
        virtual_size: chain.size(),
        chain_depth: layers.len(),
        allocation: Allocation::of(&chain)?,
        findings: chain.findings(),
        layers,
    };
    if args.json {
        print_json(&report)?;
    } else {
        to_stdout(|out| write_text(out, &report))?;
    }
    Ok(Status::Ok)
}

fn write_text(out: &mut impl Write, report: &InfoReport) -> io::Result<()> {
    writeln!(out, "image: {}", report.file)?;
    writeln!(out, "file format: {}", report.format)?;
    writeln!(out, "virtual size: {}", size_text(report.virtual_size))?;
    if let Some(leaf) = report.layers.first() {
        write_layer_facts(out, leaf)?;
    }
    let plural = if report.chain_depth == 1 { "" } else { "s" };
    writeln!(
        out,
        "backing chain ({} layer{plural}, leaf first):",
        report.chain_depth
    )?;
    for (depth, layer) in report.layers.iter().enumerate() {
        writeln!(out, "  {depth}: {} ({})", layer.file, layer.format)?;
    }
    if let Some(leaf) = report.layers.first() {
        write_snapshots(out, leaf)?;
    }
    let a = &report.allocation;
    writeln!(out, "allocation:")?;
    for (name, bytes) in [
        ("data", a.data),
        ("compressed", a.compressed),
        ("zero", a.zero),
        ("unallocated", a.unallocated),
        ("unreadable", a.unreadable),
    ] {
        writeln!(out, "  {name:<12} {bytes:>16} bytes")?;
    }
    if report.findings.is_empty() {
        writeln!(out, "findings: none")?;
    } else {
        writeln!(out, "findings:")?;
        for finding in &report.findings {
            writeln!(out, "  {finding}")?;
        }
    }
    Ok(())
}

fn write_layer_facts(out: &mut impl Write, leaf: &DiskInfo) -> io::Result<()> {
    writeln!(out, "file size: {}", size_text(leaf.file_size))?;
    if let Some(cluster_size) = leaf.cluster_size {
        writeln!(out, "cluster size: {cluster_size}")?;
    }
    if let Some(version) = &leaf.format_version {
        writeln!(out, "format version: {version}")?;
    }
    if !leaf.features.is_empty() {
        writeln!(out, "features: {}", leaf.features.join(", "))?;
    }
    writeln!(
        out,
        "encryption: {}",
        leaf.encryption.as_deref().unwrap_or("none")
    )?;
    if let Some(backing) = &leaf.backing {
        match &backing.format {
            Some(format) => writeln!(out, "backing file: {} (format {format})", backing.name)?,
            None => writeln!(out, "backing file: {}", backing.name)?,
        }
    }
    if let Some(data_file) = &leaf.data_file {
        writeln!(out, "data file: {data_file}")?;
    }
    for (key, value) in &leaf.details {
        writeln!(out, "{key}: {value}")?;
    }
    Ok(())
}

/// The snapshot table, in the columns of `qemu-img snapshot -l`.
fn write_snapshots(out: &mut impl Write, leaf: &DiskInfo) -> io::Result<()> {
    if leaf.snapshots.is_empty() {
        return Ok(());
    }
    writeln!(out, "snapshots:")?;
    writeln!(
        out,
        "  {:<8} {:<20} {:>10} {:<20} {:<15} {:>10}",
        "ID", "TAG", "VM SIZE", "DATE (UTC)", "VM CLOCK", "DISK SIZE"
    )?;
    for snapshot in &leaf.snapshots {
        writeln!(
            out,
            "  {:<8} {:<20} {:>10} {:<20} {:<15} {:>10}",
            snapshot.id,
            snapshot.name,
            binary_size(snapshot.vm_state_size),
            utc_date(u64::from(snapshot.date_sec)),
            clock_text(snapshot.vm_clock_nsec),
            binary_size(snapshot.disk_size)
        )?;
    }
    Ok(())
}
