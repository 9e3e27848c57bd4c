//! Fuzz target for the parsers of guest output: whatever a guest prints on its serial
//! console (or keeps in its /etc and /boot) is attacker-controlled text. The input becomes
//! console lines fed to the probe protocol parser and report assembly, the appliance
//! report builder (which finds, base64-decodes and JSON-parses the guest's report, then
//! decodes and parses the os-release and fstab inside it), and the guest-kernel timeline;
//! the same text also goes to the os-release, fstab, grub.cfg and command-line parsers.
//! Every report is serialized as the CLI would. Checked: no panic, and the heap stays
//! within a small multiple of the input.
//!
//! Input: byte 0 chooses the mode. Bit 0 set: the rest up to the first NUL is console
//! text and what follows is the appliance's JSON document, which the target wraps as the
//! guest does (base64 in `VDR-R` lines between the begin and end markers), so the fuzzer
//! reaches the JSON and the fields inside it without having to write base64 itself.
//! Bits 1-2: 0 runs every parser, 1 only the probe's, 2 only the appliance's, 3 only the
//! guest kernel's (a run of one is faster, so the fuzzer explores more).

#![no_main]

#[path = "vm_common.rs"]
mod vm_common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vdr_formats::partition::{Partition, PartitionTable, Scheme};
use vdr_verify_vm::appliance::etc_files::{parse_fstab, parse_os_release};
use vdr_verify_vm::appliance::guest_output::{BEGIN_MARKER, END_MARKER, LINE_PREFIX};
use vdr_verify_vm::appliance::plan::{Plan, PlanEntry};
use vdr_verify_vm::appliance::{report, KernelInfo};
use vdr_verify_vm::backend::{BackendKind, BootOutcome, ConsoleLine, GuestExit};
use vdr_verify_vm::guest_kernel::{boot_cmdline, first_grub_linux, timeline};
use vdr_verify_vm::probe::params::SampleRange;
use vdr_verify_vm::probe::protocol;
use vdr_verify_vm::probe::report::{assemble, HostView, RunEnd, Timings};
use vdr_verify_vm::probe::samples::Expected;

/// Heap allowed per run beyond a fixed allowance: the console copy, the decoded report and
/// the reports built from it are each a small multiple of the input.
const HEAP_PER_INPUT_BYTE: usize = 64;
const HEAP_BASE: usize = 8 << 20;

/// Standard base64 with padding (RFC 4648 §4), as the appliance's /init writes it.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn console_of(text: &str, document: Option<&[u8]>) -> Vec<ConsoleLine> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    if let Some(document) = document {
        lines.push(BEGIN_MARKER.to_string());
        let encoded = base64(document);
        for piece in encoded.as_bytes().chunks(76) {
            lines.push(format!("{LINE_PREFIX}{}", String::from_utf8_lossy(piece)));
        }
        lines.push(END_MARKER.to_string());
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, text)| ConsoleLine {
            at: Duration::from_millis(i as u64 * 7),
            text,
        })
        .collect()
}

fn entry(device: &str, fs: &str, offset: u64, uuid: &str) -> PlanEntry {
    PlanEntry {
        device: device.into(),
        offset,
        len: 1 << 20,
        fs: Some(fs.into()),
        uuid: Some(uuid.into()),
        label: Some("root".into()),
        partuuid: Some("11111111-2222-3333-4444-555555555555".into()),
        partlabel: None,
    }
}

fn probe(console: &[ConsoleLine]) {
    let parsed = protocol::parse(console.iter().map(|l| l.text.as_str()));
    let part = |index, start| Partition {
        index,
        start,
        len: 1 << 20,
        type_id: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
        description: "Linux filesystem".into(),
        name: "root".into(),
        uuid: None,
    };
    let table = PartitionTable {
        scheme: Scheme::GptPrimary,
        sector_size: 512,
        partitions: vec![part(1, 1 << 20), part(2, 2 << 20)],
        findings: Vec::new(),
    };
    let samples = [
        SampleRange { lba: 0, sectors: 8 },
        SampleRange {
            lba: 2048,
            sectors: 16,
        },
    ];
    let expected = [Expected::Crc(0x1234_5678), Expected::Unreadable];
    let host = HostView {
        disk_sectors: 8192,
        table: Some(&table),
        samples: &samples,
        expected: &expected,
        overlay: Some((100, true)),
    };
    let end = RunEnd {
        exit_status: Some(0),
        exit: "exit port".into(),
        timings: Timings::default(),
        console: console.to_vec(),
    };
    let report = assemble(&parsed, &host, end);
    let _ = serde_json::to_string(&report);
}

fn appliance(console: &[ConsoleLine], text: &str) {
    let plan = Plan {
        scheme: Some("gpt".into()),
        entries: vec![
            entry(
                "vda1",
                "ext4",
                1 << 20,
                "0b5f2a3c-58c5-4c1b-9bd5-1d2c3e4f5a6b",
            ),
            entry("vda2", "vfat", 2 << 20, "ABCD-1234"),
        ],
        findings: vec!["a finding".into()],
    };
    let kernel = KernelInfo {
        path: PathBuf::from("/boot/vmlinuz"),
        version: "6.1.0-56-cloud-amd64".into(),
        modules_dir: PathBuf::from("/lib/modules/6.1.0-56-cloud-amd64"),
    };
    let outcome = BootOutcome {
        backend: BackendKind::Qemu,
        console: console.to_vec(),
        exit: GuestExit::Timeout,
        elapsed: Duration::from_millis(2500),
    };
    let built = report::build(kernel, &plan, &outcome);
    let _ = serde_json::to_string(&built);
    let _ = parse_os_release(text);
    let seen: HashSet<String> = ["vda", "vda1", "vda2"].map(String::from).into();
    let _ = parse_fstab(text, &plan.entries, &seen);
}

fn guest_kernel(console: &[ConsoleLine], text: &str) {
    let markers = ["login:".to_string()];
    let mut parser = timeline::Parser::new(markers.to_vec());
    for line in console {
        parser.feed(line);
        let _ = parser.reached_userspace();
    }
    let fed = parser.finish();
    let parsed = timeline::parse(console, &markers);
    assert_eq!(
        fed, parsed,
        "line-by-line and whole-console timelines differ"
    );
    let _ = fed.boot_ok();
    let _ = serde_json::to_string(&fed);
    if let Some(linux) = first_grub_linux(text) {
        let _ = boot_cmdline(&linux.args, "console=ttyS0");
    }
    let _ = boot_cmdline(text, "");
}

fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (text, document) = match rest.iter().position(|&b| b == 0) {
        Some(at) if selector & 1 != 0 => (&rest[..at], Some(&rest[at + 1..])),
        _ => (rest, None),
    };
    let text = String::from_utf8_lossy(text);
    let console = console_of(&text, document);
    let only = selector >> 1 & 3;
    if only == 0 || only == 1 {
        probe(&console);
    }
    if only == 0 || only == 2 {
        appliance(&console, &text);
    }
    if only == 0 || only == 3 {
        guest_kernel(&console, &text);
    }
}

fuzz_target!(|data: &[u8]| {
    let limit = HEAP_BASE.saturating_add(data.len().saturating_mul(HEAP_PER_INPUT_BYTE));
    vm_common::bounded_heap(limit, || run(data));
});
