//! `vdr convert`: writes the image's content (the leaf's view of its chain) into a new
//! file, raw, qcow2 or vmdk.
//!
//! Safety rules (DESIGN.md): the output is never one of the inputs, checked by device and
//! inode (catches hard links and symlinks) and by canonical path, and `--force` does not
//! lift that rule; an existing output is replaced only with `--force`; a conversion that
//! fails or is interrupted leaves no partial output behind. VMDK monolithicFlat output is
//! two files (the descriptor OUTPUT and its `-flat` extent beside it): both follow these
//! rules.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use vdr_formats::{
    convert, flat_extent_path, Chain, Compression, ConvertOptions, ConvertReport, OutputFormat,
    UnreadablePolicy, VirtualDisk, VmdkSubformat,
};

use super::{open, OpenRequest, Status};
use crate::cli::{
    usage_error, CompressionArg, ConvertArgs, FillArg, OutputFormatArg, SubformatArg,
};
use crate::interrupt;
use crate::output::{binary_size, print_json, print_line};
use crate::progress::Progress;

/// Smallest and largest qcow2 cluster sizes (qcow2 spec: cluster_bits 9..=21).
const CLUSTER_SIZES: std::ops::RangeInclusive<u64> = 512..=(2 << 20);

/// Runs `vdr convert`.
pub fn run(args: &ConvertArgs) -> Result<Status> {
    let options = convert_options(args);
    let chain = open(
        &args.input,
        &OpenRequest {
            salvage: args.open.salvage,
            allow_escaping_extents: args.open.allow_escaping_extents,
            snapshot: args.snapshot.clone(),
            no_backing: false,
        },
    )?;
    let inputs = InputFiles::of(&args.input, &chain);
    let mut outputs = vec![args.output.clone()];
    if options.format == OutputFormat::Vmdk(VmdkSubformat::MonolithicFlat) {
        outputs.push(flat_extent_path(&args.output));
    }
    for out in &outputs {
        inputs.refuse_if_input(out)?;
    }
    for out in &outputs {
        make_room(out, args.force)?;
    }

    let progress = Progress::new(chain.size(), args.json);
    let armed: Vec<&Path> = outputs.iter().map(PathBuf::as_path).collect();
    let interrupted = interrupt::Guard::arm(&armed);
    let result = convert(&chain, &args.output, &options, &|done| progress.set(done));
    drop(interrupted);
    progress.finish();
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            for out in &outputs {
                remove_partial_output(out, &inputs);
            }
            return Err(err.into());
        }
    };

    for range in &report.unreadable {
        eprintln!(
            "vdr: unreadable bytes {:#x}..{:#x} ({}) written as zeros: {}",
            range.offset,
            range.offset.saturating_add(range.len),
            binary_size(range.len),
            range.reason
        );
    }
    if args.json {
        print_json(&report)?;
    } else {
        print_summary(args, options.format, &chain, &report)?;
    }
    Ok(if report.unreadable.is_empty() {
        Status::Ok
    } else {
        Status::ProblemsFound
    })
}

/// The writer's options from the flags; contradictory flags are usage errors (exit 2).
fn convert_options(args: &ConvertArgs) -> ConvertOptions {
    let format = match (args.format, args.subformat) {
        (OutputFormatArg::Raw | OutputFormatArg::Qcow2, Some(_)) => {
            usage_error("convert", "--subformat applies to -O vmdk only")
        }
        (OutputFormatArg::Raw, None) => OutputFormat::Raw,
        (OutputFormatArg::Qcow2, None) => OutputFormat::Qcow2,
        (OutputFormatArg::Vmdk, subformat) => OutputFormat::Vmdk(match subformat {
            None | Some(SubformatArg::MonolithicSparse) => VmdkSubformat::MonolithicSparse,
            Some(SubformatArg::StreamOptimized) => VmdkSubformat::StreamOptimized,
            Some(SubformatArg::MonolithicFlat) => VmdkSubformat::MonolithicFlat,
        }),
    };
    let stream = format == OutputFormat::Vmdk(VmdkSubformat::StreamOptimized);
    if args.compress && !stream && format != OutputFormat::Qcow2 {
        usage_error(
            "convert",
            "-c (compression) needs a compressing output format: use -O qcow2 or \
             -O vmdk --subformat streamOptimized",
        );
    }
    if stream && args.compression == CompressionArg::Zstd {
        usage_error(
            "convert",
            "streamOptimized grains are deflate-compressed; --compression zstd does not apply",
        );
    }
    if !args.cluster_size.is_power_of_two() || !CLUSTER_SIZES.contains(&args.cluster_size) {
        usage_error(
            "convert",
            format!(
                "--cluster-size {} is not a power of two from 512 to 2097152",
                args.cluster_size
            ),
        );
    }
    // streamOptimized grains are always compressed; -c is accepted and changes nothing.
    let compression = (args.compress && !stream).then_some(match args.compression {
        CompressionArg::Deflate => Compression::Deflate,
        CompressionArg::Zstd => Compression::Zstd,
    });
    ConvertOptions {
        format,
        compression,
        threads: args.threads,
        cluster_size: args.cluster_size,
        unreadable: match args.fill_unreadable {
            Some(FillArg::Zeros) => UnreadablePolicy::Zeros,
            None => UnreadablePolicy::Fail,
        },
        vmdk_cid: None,
    }
}

/// The files a conversion reads: every layer of the chain with its external data and
/// extent files.
struct InputFiles {
    /// (device, inode, the path it came from).
    identities: Vec<(u64, u64, PathBuf)>,
    canonical: Vec<PathBuf>,
}

impl InputFiles {
    fn of(named: &Path, chain: &Chain) -> InputFiles {
        // A disk opened inside a datastore (`DATASTORE::/path`) is protected through the
        // datastore's own file; its chain's files are paths inside the volume.
        let mut paths = vec![super::host_file(named)];
        if !super::is_datastore_path(named) {
            paths.extend(chain.files());
        }
        let mut inputs = InputFiles {
            identities: Vec::new(),
            canonical: Vec::new(),
        };
        for path in paths {
            if let Ok(meta) = fs::metadata(&path) {
                inputs
                    .identities
                    .push((meta.dev(), meta.ino(), path.clone()));
            }
            if let Ok(canonical) = fs::canonicalize(&path) {
                inputs.canonical.push(canonical);
            }
        }
        inputs
    }

    /// The input `out` is, if it is one (same inode, or same canonical path).
    fn input_at(&self, out: &Path) -> Option<PathBuf> {
        if let Ok(meta) = fs::metadata(out) {
            let same = self
                .identities
                .iter()
                .find(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino());
            if let Some((_, _, path)) = same {
                return Some(path.clone());
            }
        }
        let target = canonical_target(out)?;
        self.canonical.iter().find(|p| **p == target).cloned()
    }

    /// Fails when `out` is one of the inputs; `--force` does not change this.
    fn refuse_if_input(&self, out: &Path) -> Result<()> {
        match self.input_at(out) {
            Some(input) => bail!(
                "refusing to write {}: it is the input file {} (vdr never writes to its inputs, even with --force)",
                out.display(),
                input.display()
            ),
            None => Ok(()),
        }
    }
}

/// Where `out` resolves to: its canonical path, or, when it does not exist yet, its
/// directory's canonical path joined with its name.
fn canonical_target(out: &Path) -> Option<PathBuf> {
    if let Ok(path) = fs::canonicalize(out) {
        return Some(path);
    }
    let name = out.file_name()?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(dir).ok()?.join(name))
}

/// Refuses an existing output without `--force`; with it, removes the old file (the
/// writers create the output with `create_new`). Only files and symlinks are replaced.
fn make_room(out: &Path, force: bool) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !force {
        bail!(
            "{} already exists; use --force to replace it",
            out.display()
        );
    }
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_symlink()) {
        bail!(
            "{} exists and is not a regular file; refusing to replace it",
            out.display()
        );
    }
    fs::remove_file(out).map_err(|e| anyhow!("{}: cannot remove the old file: {e}", out.display()))
}

/// Removes what a failed conversion left at `out`, unless (against all expectations) it
/// is an input.
fn remove_partial_output(out: &Path, inputs: &InputFiles) {
    let is_file = fs::symlink_metadata(out).is_ok_and(|meta| meta.file_type().is_file());
    if is_file && inputs.input_at(out).is_none() {
        if let Err(e) = fs::remove_file(out) {
            eprintln!(
                "vdr: {}: cannot remove the partial output: {e}",
                out.display()
            );
        }
    }
}

fn print_summary(
    args: &ConvertArgs,
    format: OutputFormat,
    chain: &Chain,
    report: &ConvertReport,
) -> Result<()> {
    let format = match format {
        OutputFormat::Raw => "raw".to_string(),
        OutputFormat::Qcow2 => "qcow2".to_string(),
        OutputFormat::Vmdk(subformat) => format!("vmdk {}", subformat.name()),
    };
    print_line(&format!(
        "Converted {} ({}, chain of {}) to {} ({format}): {} virtual, {} data, {} zeros{}.",
        args.input.display(),
        chain.leaf().info().format,
        chain.layers().len(),
        args.output.display(),
        binary_size(report.virtual_size),
        binary_size(report.data_bytes),
        binary_size(report.zero_bytes),
        if report.unreadable.is_empty() {
            String::new()
        } else {
            format!(
                ", {} unreadable ranges filled with zeros",
                report.unreadable.len()
            )
        }
    ))
}
