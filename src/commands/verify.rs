//! `vdr verify`: boots the disk in a microVM and reports whether it is usable.
//!
//! The disk goes to the guest straight from its chain (no conversion); the guest sees it
//! read-only, or writable through an in-memory overlay with `--overlay` (always in
//! guest-kernel mode). Exit codes: 0 usable, 1 the guest found problems, 2 the verify could
//! not run (bad input, no /dev/kvm, a backend that cannot boot Linux here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vdr_formats::VirtualDisk;
use vdr_verify_vm::backend::{BackendKind, DiskAccess};
use vdr_verify_vm::host::{self, KvmSupport};
use vdr_verify_vm::probe::{self, ProbeOptions, ProbeReport};

use super::{open, OpenRequest, Status};
use crate::cli::{usage_error, VerifyArgs, VerifyBackend, VerifyMode};
use crate::output::{print_json, print_line, size_text};

/// The documented `--json` report (docs/CLI.md).
#[derive(Serialize)]
struct VerifyReport {
    source: String,
    format: String,
    size: u64,
    mode: &'static str,
    backend: BackendKind,
    host: KvmSupport,
    /// True when the guest found the disk usable (exit 0).
    usable: bool,
    problems: Vec<String>,
    elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe: Option<ProbeReport>,
}

pub fn run(args: &VerifyArgs) -> Result<Status> {
    if args.mode == VerifyMode::Probe && args.backend == VerifyBackend::Qemu {
        usage_error(
            "verify",
            "probe mode runs in vdr's own VMM on /dev/kvm; --backend qemu is for --mode appliance and --mode guest-kernel",
        );
    }
    let request = OpenRequest {
        salvage: args.open.salvage,
        allow_escaping_extents: args.open.allow_escaping_extents,
        ..OpenRequest::default()
    };
    let chain = open(&args.source, &request)?;
    let format = chain.leaf().info().format.to_string();
    let size = chain.size();
    let disk: Arc<dyn VirtualDisk> = Arc::new(chain);
    let host = host::detect();
    let access = if args.overlay {
        DiskAccess::Overlay
    } else {
        DiskAccess::ReadOnly
    };
    let started = Instant::now();
    let mut report = VerifyReport {
        source: args.source.display().to_string(),
        format,
        size,
        mode: mode_name(args.mode),
        backend: match args.backend {
            VerifyBackend::Kvm => BackendKind::Kvm,
            VerifyBackend::Qemu => BackendKind::Qemu,
        },
        host: host.clone(),
        usable: false,
        problems: Vec::new(),
        elapsed_ms: 0,
        probe: None,
    };
    match args.mode {
        VerifyMode::Probe => {
            if !host.can_run_vm() {
                bail!("probe mode needs /dev/kvm: {}", host.explain());
            }
            let options = ProbeOptions {
                timeout: Duration::from_secs(args.timeout.unwrap_or(10)),
                access,
                echo: args.console.then(probe_echo),
                ..ProbeOptions::default()
            };
            let probe = probe::run(disk, &options).context("probe mode")?;
            report.usable = probe.usable;
            report.problems = probe.problems.clone();
            report.probe = Some(probe);
        }
        VerifyMode::Appliance | VerifyMode::GuestKernel => {
            bail!("--mode {} is being built", mode_name(args.mode))
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    if args.json {
        print_json(&report)?;
    } else {
        print_text(&report)?;
    }
    Ok(if report.usable {
        Status::Ok
    } else {
        Status::ProblemsFound
    })
}

/// Streams the probe guest's console to stderr (`--console`).
fn probe_echo() -> probe::Echo {
    Arc::new(|line: &str| eprintln!("guest: {line}"))
}

fn mode_name(mode: VerifyMode) -> &'static str {
    match mode {
        VerifyMode::Probe => "probe",
        VerifyMode::Appliance => "appliance",
        VerifyMode::GuestKernel => "guest-kernel",
    }
}

fn print_text(report: &VerifyReport) -> Result<()> {
    print_line(&format!(
        "{}: {} disk, {}",
        report.source,
        report.format,
        size_text(report.size)
    ))?;
    print_line(&format!(
        "mode {} ({} backend), {} ms",
        report.mode, report.backend, report.elapsed_ms
    ))?;
    if let Some(probe) = &report.probe {
        for line in probe_lines(probe) {
            print_line(&format!("  {line}"))?;
        }
    }
    for problem in &report.problems {
        print_line(&format!("problem: {problem}"))?;
    }
    print_line(if report.usable {
        "verdict: usable"
    } else {
        "verdict: NOT usable"
    })
}

/// The probe report in a few lines of text.
fn probe_lines(probe: &ProbeReport) -> Vec<String> {
    let mut lines = vec![format!(
        "partition table: {}; boot signature: {}",
        probe.partition_table.as_deref().unwrap_or("unknown"),
        if probe.boot_signature { "yes" } else { "no" }
    )];
    for part in &probe.partitions {
        let fs = match &part.filesystem {
            Some(fs) => {
                let mut text = fs.kind.clone();
                if let Some(label) = &fs.label {
                    text.push_str(&format!(" label {label:?}"));
                }
                if let Some(uuid) = &fs.uuid {
                    text.push_str(&format!(" uuid {uuid}"));
                }
                text
            }
            None => "no filesystem found".to_string(),
        };
        let place = if part.index == 0 {
            "whole disk".to_string()
        } else {
            format!("partition {}", part.index)
        };
        lines.push(format!(
            "{place}: sectors {}+{}: {fs}",
            part.start_lba, part.sectors
        ));
    }
    let samples = &probe.samples;
    lines.push(format!(
        "samples: {} of {} match the host's reads ({} unreadable on both sides)",
        samples.matched, samples.checked, samples.unreadable
    ));
    for mismatch in &samples.mismatched {
        lines.push(format!(
            "  MISMATCH at LBA {} (+{}): guest {} host {}",
            mismatch.lba, mismatch.n, mismatch.guest, mismatch.host
        ));
    }
    if let Some(overlay) = &probe.overlay_check {
        lines.push(format!(
            "overlay write test at LBA {}: {}",
            overlay.lba,
            if overlay.passed {
                "passed, evidence unchanged"
            } else {
                "FAILED"
            }
        ));
    }
    for note in &probe.notes {
        lines.push(format!("note: {note}"));
    }
    let t = &probe.timings;
    lines.push(format!(
        "time: VM setup {:.1} ms, first guest line {} ms, guest {:.1} ms, total {:.1} ms",
        t.vm_setup_ms,
        t.first_line_ms
            .map_or("-".to_string(), |ms| format!("{ms:.1}")),
        t.guest_ms,
        t.total_ms
    ));
    lines
}
