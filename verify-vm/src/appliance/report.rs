//! What appliance mode reports: the plan vdr made, what the guest found on each device,
//! the boot timeline, and whether the disk looks usable.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::etc_files::{parse_fstab, parse_os_release, FstabEntry};
use super::guest_output::{decode_text, parse_console, GuestDocument, GuestPartition};
use super::kernel::KernelInfo;
use super::plan::{Plan, PlanEntry};
use crate::backend::{BackendKind, BootOutcome, GuestExit};

/// The report format guest/appliance/init prints.
const GUEST_REPORT_VERSION: u32 = 1;
/// Console lines kept in the report.
const CONSOLE_TAIL_LINES: usize = 40;

/// The appliance's findings about one disk.
#[derive(Clone, Debug, Serialize)]
pub struct ApplianceReport {
    pub kernel: KernelInfo,
    pub backend: BackendKind,
    pub exit: GuestExit,
    /// Wall time of the boot, from starting the VM to its exit.
    pub elapsed_ms: u64,
    /// "gpt", "gpt-backup", "mbr"; None when the disk has no partition table.
    pub partition_table: Option<String>,
    pub partitions: Vec<PartitionReport>,
    pub timeline: Vec<Stage>,
    /// At least one filesystem mounted and every one checked is clean.
    pub usable: bool,
    pub problems: Vec<String>,
    /// The last console lines (all of them when the guest printed no report).
    pub console_tail: Vec<String>,
    /// The end of the guest kernel's log (mount and driver errors), when it reported.
    pub kernel_log_tail: Option<String>,
}

/// One planned device.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionReport {
    pub device: String,
    /// From the host's superblock probe; None: no filesystem recognised.
    pub fs: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    /// The device node existed in the guest.
    pub present: bool,
    pub fsck: FsckReport,
    pub mounted: bool,
    pub mount_error: Option<String>,
    /// os-release(5) fields (NAME, VERSION_ID, PRETTY_NAME, ...), when the file exists.
    pub os_release: Option<BTreeMap<String, String>>,
    pub fstab: Vec<FstabEntry>,
}

/// The filesystem checker's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub ran: bool,
    /// "e2fsck -n -f"; None when the appliance has no checker for the filesystem.
    pub checker: Option<String>,
    /// Exit status 0: nothing to fix (e2fsck(8) exit codes).
    pub clean: Option<bool>,
    pub exit_code: Option<i32>,
    pub output_tail: String,
}

/// A point in the boot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    pub stage: String,
    pub at_ms: u64,
    /// "guest": since the kernel started (/proc/uptime); "host": since the VM started.
    pub clock: &'static str,
}

/// Combines the plan and the boot's console into the report.
pub fn build(kernel: KernelInfo, plan: &Plan, outcome: &BootOutcome) -> ApplianceReport {
    let mut problems: Vec<String> = plan.findings.clone();
    let guest = match parse_console(&outcome.console) {
        Ok(document) => Some(document),
        Err(err) => {
            problems.push(format!("{err} (the guest stopped with {:?})", outcome.exit));
            None
        }
    };
    let seen: HashSet<String> = guest
        .as_ref()
        .map(|g| g.devices.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let partitions: Vec<PartitionReport> = plan
        .entries
        .iter()
        .map(|entry| partition_report(entry, guest.as_ref(), plan, &seen))
        .collect();
    if let Some(guest) = &guest {
        if guest.version != GUEST_REPORT_VERSION {
            problems.push(format!(
                "the guest's report has version {}, expected {GUEST_REPORT_VERSION}",
                guest.version
            ));
        }
        if let Some(failed) = decode_text(&guest.insmod_failed).filter(|t| !t.trim().is_empty()) {
            problems.extend(failed.lines().map(|l| format!("module did not load: {l}")));
        }
    }
    problems.extend(partition_problems(&partitions, guest.is_some()));
    let mounted = partitions.iter().any(|p| p.mounted);
    let all_clean = partitions
        .iter()
        .filter(|p| p.fsck.ran)
        .all(|p| p.fsck.clean == Some(true));
    if guest.is_some() && !plan.entries.iter().any(|e| e.fs.is_some()) {
        problems.push("no filesystem found on the disk".into());
    }
    let tail_len = if guest.is_some() {
        CONSOLE_TAIL_LINES
    } else {
        usize::MAX
    };
    let skip = outcome.console.len().saturating_sub(tail_len);
    ApplianceReport {
        kernel,
        backend: outcome.backend,
        exit: outcome.exit.clone(),
        elapsed_ms: millis(outcome.elapsed.as_secs_f64()),
        partition_table: plan.scheme.clone(),
        partitions,
        timeline: timeline(guest.as_ref(), outcome),
        usable: guest.is_some() && mounted && all_clean,
        problems,
        kernel_log_tail: guest.as_ref().and_then(|g| decode_text(&g.dmesg)),
        console_tail: outcome
            .console
            .iter()
            .skip(skip)
            .map(|l| l.text.clone())
            .collect(),
    }
}

fn partition_report(
    entry: &PlanEntry,
    guest: Option<&GuestDocument>,
    plan: &Plan,
    seen: &HashSet<String>,
) -> PartitionReport {
    let found: Option<&GuestPartition> =
        guest.and_then(|g| g.partitions.iter().find(|p| p.device == entry.device));
    let fsck = match found {
        Some(p) if p.fsck.ran => FsckReport {
            ran: true,
            checker: Some("e2fsck -n -f".into()),
            clean: Some(p.fsck.exit == Some(0)),
            exit_code: p.fsck.exit,
            output_tail: decode_text(&p.fsck.out).unwrap_or_default(),
        },
        _ => FsckReport::default(),
    };
    let fstab = found
        .and_then(|p| p.fstab.as_deref())
        .and_then(decode_text)
        .map(|text| parse_fstab(&text, &plan.entries, seen))
        .unwrap_or_default();
    PartitionReport {
        device: entry.device.clone(),
        fs: entry.fs.clone(),
        uuid: entry.uuid.clone(),
        label: entry.label.clone(),
        partuuid: entry.partuuid.clone(),
        present: found.is_some_and(|p| p.present),
        fsck,
        mounted: found.is_some_and(|p| p.mounted),
        mount_error: found
            .and_then(|p| decode_text(&p.mount_error))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
        os_release: found
            .and_then(|p| p.os_release.as_deref())
            .and_then(decode_text)
            .map(|text| parse_os_release(&text)),
        fstab,
    }
}

fn partition_problems(partitions: &[PartitionReport], reported: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if !reported {
        return problems;
    }
    for p in partitions {
        let device = &p.device;
        if !p.present {
            problems.push(format!("{device}: the guest has no such device"));
            continue;
        }
        if p.fsck.clean == Some(false) {
            let code = p.fsck.exit_code.map_or("?".into(), |c| c.to_string());
            problems.push(format!("{device}: e2fsck found problems (exit {code})"));
        }
        if let Some(error) = &p.mount_error {
            problems.push(format!("{device}: mount failed: {error}"));
        }
        for entry in p.fstab.iter().filter(|e| e.found == Some(false)) {
            problems.push(format!(
                "{device}: /etc/fstab names {} for {}, which is not on this disk{}",
                entry.spec,
                entry.mountpoint,
                entry
                    .note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
        }
    }
    problems
}

fn timeline(guest: Option<&GuestDocument>, outcome: &BootOutcome) -> Vec<Stage> {
    let mut stages = vec![Stage {
        stage: "kernel start".into(),
        at_ms: 0,
        clock: "guest",
    }];
    if let Some(guest) = guest {
        stages.extend(guest.stages.iter().map(|s| Stage {
            stage: s.stage.clone(),
            at_ms: millis(s.at),
            clock: "guest",
        }));
    }
    if let Some(line) = outcome.console.first() {
        stages.push(Stage {
            stage: "first console line".into(),
            at_ms: millis(line.at.as_secs_f64()),
            clock: "host",
        });
    }
    if let Some(line) = outcome
        .console
        .iter()
        .rev()
        .find(|l| l.text.trim_end() == super::guest_output::END_MARKER)
    {
        stages.push(Stage {
            stage: "report received".into(),
            at_ms: millis(line.at.as_secs_f64()),
            clock: "host",
        });
    }
    stages.push(Stage {
        stage: "exit".into(),
        at_ms: millis(outcome.elapsed.as_secs_f64()),
        clock: "host",
    });
    stages
}

/// Seconds as whole milliseconds; negative, NaN or huge values (from a guest) saturate.
fn millis(seconds: f64) -> u64 {
    let ms = seconds * 1000.0;
    if ms.is_finite() && ms > 0.0 {
        ms.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
