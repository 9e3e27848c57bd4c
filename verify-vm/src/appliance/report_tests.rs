//! The report's verdict from synthetic guest output: clean, damaged, no report, nothing
//! to mount.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::appliance::guest_output::{BEGIN_MARKER, END_MARKER, LINE_PREFIX};
use crate::backend::ConsoleLine;

fn b64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn kernel() -> KernelInfo {
    KernelInfo {
        path: PathBuf::from("/boot/vmlinuz-6.1"),
        version: "6.1".into(),
        modules_dir: PathBuf::from("/lib/modules/6.1"),
    }
}

fn plan_with(fs: Option<&str>) -> Plan {
    Plan {
        scheme: Some("gpt".into()),
        entries: vec![PlanEntry {
            device: "vda1".into(),
            offset: 1 << 20,
            len: 1 << 24,
            fs: fs.map(str::to_string),
            uuid: Some("11111111-2222-3333-4444-555555555555".into()),
            label: None,
            partuuid: None,
            partlabel: None,
        }],
        findings: Vec::new(),
    }
}

fn outcome(console_text: &str, exit: GuestExit) -> BootOutcome {
    BootOutcome {
        backend: BackendKind::Qemu,
        console: console_text
            .lines()
            .enumerate()
            .map(|(i, l)| ConsoleLine {
                at: Duration::from_millis(100 * i as u64),
                text: l.to_string(),
            })
            .collect(),
        exit,
        elapsed: Duration::from_millis(2500),
    }
}

fn guest_console(fsck_exit: i32, mounted: bool) -> String {
    let fstab = "UUID=11111111-2222-3333-4444-555555555555 / ext4 defaults 0 1\nUUID=dead-beef /home ext4 defaults 0 2\n";
    let json = format!(
        r#"{{"version":1,"stages":[{{"stage":"modules","at":1.5}},{{"stage":"checked vda1","at":2.25}}],"devices":"vda vda1","insmod_failed":"","partitions":[{{"device":"vda1","fs":"ext4","present":true,"fsck":{{"ran":true,"exit":{fsck_exit},"out":"{}"}},"mounted":{mounted},"mount_error":"","os_release":"{}","fstab":"{}"}}],"dmesg":""}}"#,
        b64("vda1: clean"),
        b64("PRETTY_NAME=\"Test Linux 1\"\nVERSION_ID=1\n"),
        b64(fstab)
    );
    let mut text = format!("boot noise\n{BEGIN_MARKER}\n");
    for chunk in b64(&json).as_bytes().chunks(76) {
        text.push_str(LINE_PREFIX);
        text.push_str(std::str::from_utf8(chunk).unwrap());
        text.push('\n');
    }
    text.push_str(END_MARKER);
    text.push_str("\nreboot: Power down\n");
    text
}

#[test]
fn clean_mounted_filesystem_is_usable() {
    let report = build(
        kernel(),
        &plan_with(Some("ext4")),
        &outcome(&guest_console(0, true), GuestExit::PowerOff),
    );
    assert!(report.usable, "{:?}", report.problems);
    let part = &report.partitions[0];
    assert_eq!(part.fsck.clean, Some(true));
    assert_eq!(
        part.os_release.as_ref().unwrap()["PRETTY_NAME"],
        "Test Linux 1"
    );
    let found: Vec<_> = part.fstab.iter().map(|e| e.found).collect();
    assert_eq!(found, [Some(true), Some(false)]);
    assert!(report.problems.iter().any(|p| p.contains("UUID=dead-beef")));
    let stages: Vec<_> = report
        .timeline
        .iter()
        .map(|s| (s.stage.as_str(), s.at_ms))
        .collect();
    assert!(stages.contains(&("modules", 1500)));
    assert!(stages.contains(&("checked vda1", 2250)));
    assert!(stages.contains(&("exit", 2500)));
}

#[test]
fn fsck_errors_make_the_disk_unusable() {
    let report = build(
        kernel(),
        &plan_with(Some("ext4")),
        &outcome(&guest_console(4, true), GuestExit::PowerOff),
    );
    assert!(!report.usable);
    assert_eq!(report.partitions[0].fsck.clean, Some(false));
    assert!(report.problems.iter().any(|p| p.contains("exit 4")));
}

#[test]
fn no_report_keeps_the_whole_console_and_says_why() {
    let console = "Kernel panic - not syncing: Attempted to kill init!\n";
    let report = build(
        kernel(),
        &plan_with(Some("ext4")),
        &outcome(console, GuestExit::Reset),
    );
    assert!(!report.usable);
    assert!(
        report.problems[0].contains("no report"),
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].contains("Reset"));
    assert_eq!(report.console_tail, [console.trim_end()]);
}

#[test]
fn nothing_recognised_is_no_filesystem() {
    let json = r#"{"version":1,"devices":"vda","partitions":[{"device":"vda","fs":"-","present":true,"fsck":{"ran":false},"mounted":false,"mount_error":"","os_release":null,"fstab":null}]}"#;
    let text = format!("{BEGIN_MARKER}\n{LINE_PREFIX}{}\n{END_MARKER}\n", b64(json));
    let mut plan = plan_with(None);
    plan.entries[0].device = "vda".into();
    let report = build(kernel(), &plan, &outcome(&text, GuestExit::PowerOff));
    assert!(!report.usable);
    assert!(report.problems.iter().any(|p| p.contains("no filesystem")));
}

#[test]
fn hostile_stage_times_saturate() {
    assert_eq!(millis(f64::NAN), 0);
    assert_eq!(millis(-5.0), 0);
    assert_eq!(millis(1e300), u64::MAX);
    assert_eq!(millis(0.0015), 1);
}
