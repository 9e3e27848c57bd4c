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
use vdr_verify_vm::appliance::{self, ApplianceOptions, ApplianceReport};
use vdr_verify_vm::backend::{BackendKind, ConsoleLine, DiskAccess, LinuxBackend};
use vdr_verify_vm::guest_kernel::{self, GuestKernelOptions, GuestKernelReport};
use vdr_verify_vm::host::{self, KvmSupport};
use vdr_verify_vm::kvm_linux::KvmBackend;
use vdr_verify_vm::probe::{self, ProbeOptions, ProbeReport};
use vdr_verify_vm::qemu::{ConsoleEcho, QemuBackend};

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
    #[serde(skip_serializing_if = "Option::is_none")]
    appliance: Option<ApplianceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_kernel: Option<GuestKernelReport>,
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
        appliance: None,
        guest_kernel: None,
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
        VerifyMode::Appliance => {
            let backend = linux_backend(args, &host)?;
            let options = ApplianceOptions {
                kernel: args.kernel.clone(),
                timeout: Duration::from_secs(args.timeout.unwrap_or(300)),
                memory_mib: args.memory,
                vcpus: args.vcpus,
                access,
                ..ApplianceOptions::default()
            };
            let appliance =
                appliance::run(disk, backend.as_ref(), &options).context("appliance mode")?;
            report.usable = appliance.usable;
            report.problems = appliance.problems.clone();
            report.appliance = Some(appliance);
        }
        VerifyMode::GuestKernel => {
            if args.kernel.is_some() {
                usage_error(
                    "verify",
                    "--kernel is for --mode appliance; guest-kernel mode boots the image's own kernel",
                );
            }
            let backend = linux_backend(args, &host)?;
            let options = GuestKernelOptions {
                timeout: Duration::from_secs(args.timeout.unwrap_or(120)),
                memory_mib: args.memory,
                vcpus: args.vcpus,
                ..GuestKernelOptions::default()
            };
            let booted = match guest_kernel::run(disk, backend.as_ref(), &options) {
                Ok(booted) => booted,
                // a disk with no kernel to boot is a finding about the disk (exit 1, with
                // the report), not a failure to run the verify
                Err(no_kernel @ guest_kernel::Error::NoKernel { .. }) => {
                    report.problems.push(no_kernel.to_string());
                    return finish(args, report, started);
                }
                Err(other) => return Err(other).context("guest-kernel mode"),
            };
            report.usable = booted.boot_ok;
            report.problems = booted
                .problems
                .iter()
                .map(|p| format!("{} at {} ms: {}", enum_name(&p.kind), p.at_ms, p.line))
                .collect();
            if !booted.boot_ok && report.problems.is_empty() {
                report.problems.push(format!(
                    "the boot did not reach userspace (furthest stage: {})",
                    booted
                        .furthest
                        .as_ref()
                        .map_or("none".to_string(), enum_name)
                ));
            }
            report.guest_kernel = Some(booted);
        }
    }
    finish(args, report, started)
}

/// Prints the report and turns the verdict into the exit status.
fn finish(args: &VerifyArgs, mut report: VerifyReport, started: Instant) -> Result<Status> {
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

/// The backend that boots Linux for appliance and guest-kernel mode. The KVM backend on a
/// machine without VMX/SVM refuses with the reason and names `--backend qemu`.
fn linux_backend(args: &VerifyArgs, host: &KvmSupport) -> Result<Box<dyn LinuxBackend>> {
    let echo: Option<ConsoleEcho> = args.console.then(|| {
        Arc::new(|line: &ConsoleLine| eprintln!("[{:>8.3}] {}", line.at.as_secs_f64(), line.text))
            as ConsoleEcho
    });
    Ok(match args.backend {
        VerifyBackend::Kvm => {
            let mut backend = KvmBackend::with_host(host.clone(), force_kvm());
            if let Err(refused) = backend.check_host() {
                bail!(
                    "--mode {} boots Linux, which vdr's KVM microVM can only do with hardware virtualization (VMX/SVM): {refused}",
                    mode_name(args.mode)
                );
            }
            if let Some(echo) = echo {
                backend = backend.with_echo(echo);
            }
            Box::new(backend)
        }
        VerifyBackend::Qemu => {
            let mut backend = QemuBackend::new()?;
            if let Some(echo) = echo {
                backend = backend.with_echo(echo);
            }
            Box::new(backend)
        }
    })
}

/// `VDR_KVM_FORCE=1`: boot Linux in the KVM microVM even where the host says it cannot
/// (to see how far a kernel gets on a software-only KVM).
fn force_kvm() -> bool {
    std::env::var_os("VDR_KVM_FORCE").is_some_and(|v| v == "1")
}

/// The serde name of a unit enum value ("root-mounted").
fn enum_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
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
    if let Some(appliance) = &report.appliance {
        for line in appliance_lines(appliance) {
            print_line(&format!("  {line}"))?;
        }
    }
    if let Some(booted) = &report.guest_kernel {
        for line in guest_kernel_lines(booted) {
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

/// The appliance report in a few lines of text.
fn appliance_lines(appliance: &ApplianceReport) -> Vec<String> {
    let mut lines = vec![format!(
        "kernel {} ({}); partition table: {}",
        appliance.kernel.version,
        appliance.kernel.path.display(),
        appliance.partition_table.as_deref().unwrap_or("none")
    )];
    for part in &appliance.partitions {
        let mut text = format!(
            "{}: {}",
            part.device,
            part.fs.as_deref().unwrap_or("no filesystem")
        );
        if let Some(label) = &part.label {
            text.push_str(&format!(" label {label:?}"));
        }
        if part.fsck.ran {
            text.push_str(&match part.fsck.clean {
                Some(true) => ", fsck clean".to_string(),
                Some(false) => format!(", fsck found errors (exit {:?})", part.fsck.exit_code),
                None => ", fsck did not finish".to_string(),
            });
        }
        if part.mounted {
            text.push_str(", mounted read-only");
        } else if let Some(error) = &part.mount_error {
            text.push_str(&format!(", mount failed: {error}"));
        }
        if let Some(name) = part
            .os_release
            .as_ref()
            .and_then(|os| os.get("PRETTY_NAME").or_else(|| os.get("NAME")))
        {
            text.push_str(&format!(", os-release: {name}"));
        }
        lines.push(text);
        for entry in &part.fstab {
            let found = match entry.found {
                Some(true) => "found",
                Some(false) => "MISSING",
                None => "not a device",
            };
            lines.push(format!(
                "  fstab {} on {}: {found}",
                entry.spec, entry.mountpoint
            ));
        }
    }
    for (clock, what) in [
        ("guest", "guest clock, since the kernel started"),
        ("host", "host clock, since the VM started"),
    ] {
        let stages: Vec<String> = appliance
            .timeline
            .iter()
            .filter(|s| s.clock == clock)
            .map(|s| format!("{} {} ms", s.stage, s.at_ms))
            .collect();
        if !stages.is_empty() {
            lines.push(format!("timeline ({what}): {}", stages.join(", ")));
        }
    }
    lines.push(format!(
        "guest stopped: {:?} after {} ms",
        appliance.exit, appliance.elapsed_ms
    ));
    lines
}

/// The guest-kernel report in a few lines of text.
fn guest_kernel_lines(booted: &GuestKernelReport) -> Vec<String> {
    let mut lines = vec![format!(
        "kernel {} ({} bytes, {}), initrd {}",
        booted.kernel.path,
        booted.kernel.bytes,
        booted.kernel_chosen_because,
        booted
            .initrd
            .as_ref()
            .map_or("none".to_string(), |initrd| initrd.path.clone())
    )];
    lines.push(format!("command line: {}", booted.cmdline));
    for mark in &booted.stages {
        lines.push(format!(
            "{:>8} ms  {}: {}",
            mark.at_ms,
            enum_name(&mark.stage),
            mark.line
        ));
    }
    if let Some(panic) = &booted.panic {
        lines.push(format!("panic: {panic}"));
    }
    for finding in &booted.findings {
        lines.push(format!("note: {finding}"));
    }
    lines.push(format!(
        "furthest stage: {}; guest stopped: {:?} after {} ms",
        booted
            .furthest
            .as_ref()
            .map_or("none".to_string(), enum_name),
        booted.exit,
        booted.elapsed_ms
    ));
    lines
}
