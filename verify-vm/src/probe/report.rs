//! The probe report: what the guest saw through its virtio-blk device, compared with what
//! the host reads from the same [`vdr_formats::VirtualDisk`] (its partition table by
//! `vdr_formats::partition`, its sample sectors by crc32fast). Pure: built from parsed
//! [`Fact`]s and the host's expectations, so it is tested without a VM.

use std::time::Duration;

use serde::Serialize;
use vdr_formats::partition::PartitionTable;

use super::params::SampleRange;
use super::protocol::{Fact, Parsed};
use super::samples::{Expected, SECTOR};
use crate::backend::ConsoleLine;

/// The problem a blank or unrecognisable disk gets (DESIGN: "no boot signature, no
/// filesystem").
pub const NO_BOOT_NO_FS: &str = "no boot signature, no filesystem";

#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// The device's capacity as the guest saw it (512-byte sectors).
    pub disk_sectors: Option<u64>,
    /// Whether the guest negotiated VIRTIO_BLK_F_RO.
    pub read_only: Option<bool>,
    /// "gpt", "gpt-backup", "mbr" or "none", as the guest read it.
    pub partition_table: Option<String>,
    /// 0x55AA at the end of LBA 0.
    pub boot_signature: bool,
    /// Non-zero boot code in the MBR's first 440 bytes.
    pub mbr_boot_code: bool,
    /// The partitions (or index 0 for the whole disk when there is no table).
    pub partitions: Vec<PartitionReport>,
    pub samples: SampleReport,
    pub overlay_check: Option<OverlayCheck>,
    /// No problem found: the disk has a boot signature or a file system, every sample
    /// matched, the guest and the host agree on the table, the probe finished.
    pub usable: bool,
    pub problems: Vec<String>,
    /// What the guest noticed on the way (damaged structures, failing reads).
    pub notes: Vec<String>,
    pub timings: Timings,
    pub console: Vec<ConsoleLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub index: u32,
    pub start_lba: u64,
    pub sectors: u64,
    /// GPT type GUID or MBR type ("0x83"); empty for the whole disk.
    #[serde(rename = "type")]
    pub type_id: String,
    pub name: Option<String>,
    pub filesystem: Option<Filesystem>,
    /// 0x55AA at the end of the partition's first sector.
    pub vbr_signature: bool,
    /// ... and non-zero code after the BPB.
    pub boot_code: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub kind: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SampleReport {
    pub checked: usize,
    pub matched: usize,
    pub mismatched: Vec<SampleMismatch>,
    /// Samples the host cannot read and the guest's device answered IOERR for: matches
    /// that show the device reports damage instead of inventing data.
    pub unreadable: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SampleMismatch {
    pub lba: u64,
    pub n: u32,
    /// The guest's CRC-32, "ioerr", or "missing".
    pub guest: String,
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OverlayCheck {
    pub lba: u64,
    /// The device took the write.
    pub write_accepted: bool,
    /// Reading the sector back returned the written pattern.
    pub read_back_matched: bool,
    /// The host read the sector from the evidence after the run: unchanged.
    pub evidence_unchanged: bool,
    pub passed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Building the VM (memory, vCPU, devices) and loading the guest.
    pub vm_setup_ms: f64,
    /// From the VM's start to the guest's first console line.
    pub first_line_ms: Option<f64>,
    /// The VM's run, from its start to its stop.
    pub guest_ms: f64,
    /// The whole probe: host reads, VM setup, the run and the comparison.
    pub total_ms: f64,
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// What the host knows independently of the guest.
pub struct HostView<'a> {
    pub disk_sectors: u64,
    pub table: Option<&'a PartitionTable>,
    pub samples: &'a [SampleRange],
    pub expected: &'a [Expected],
    /// The overlay sector asked for, and whether the evidence still reads the same after.
    pub overlay: Option<(u64, bool)>,
}

/// How the guest run ended, in the VMM's words.
pub struct RunEnd {
    /// The status byte written to the exit port, if it was.
    pub exit_status: Option<u8>,
    /// The VMM's description of how the VM stopped (timeout, reset, ...).
    pub exit: String,
    pub timings: Timings,
    pub console: Vec<ConsoleLine>,
}

/// Builds the report from the guest's facts and the host's view.
pub fn assemble(parsed: &Parsed, host: &HostView<'_>, end: RunEnd) -> ProbeReport {
    let mut report = ProbeReport {
        disk_sectors: None,
        read_only: None,
        partition_table: None,
        boot_signature: false,
        mbr_boot_code: false,
        partitions: Vec::new(),
        samples: SampleReport::default(),
        overlay_check: None,
        usable: false,
        problems: Vec::new(),
        notes: Vec::new(),
        timings: end.timings,
        console: end.console,
    };
    let mut done = false;
    let mut guest_samples = Vec::new();
    let mut overlay_fact = None;
    for fact in &parsed.facts {
        match fact {
            Fact::Start { .. } => {}
            Fact::Disk { sectors, ro } => {
                report.disk_sectors = Some(*sectors);
                report.read_only = Some(*ro);
            }
            Fact::Mbr {
                signature,
                boot_code,
            } => {
                report.boot_signature = *signature;
                report.mbr_boot_code = *boot_code;
            }
            Fact::Table { scheme, .. } => report.partition_table = Some(scheme.clone()),
            Fact::Part {
                i,
                start,
                sectors,
                type_id,
                name,
            } => report.partitions.push(PartitionReport {
                index: *i,
                start_lba: *start,
                sectors: *sectors,
                type_id: type_id.clone(),
                name: name.clone(),
                filesystem: None,
                vbr_signature: false,
                boot_code: false,
            }),
            Fact::Fs { part, .. } => apply_fs(&mut report, *part, fact),
            Fact::Sample { lba, n, crc } => guest_samples.push((*lba, *n, crc.as_str())),
            Fact::Overlay { .. } => overlay_fact = Some(fact),
            Fact::Note { what, lba } => report.notes.push(match lba {
                Some(lba) => format!("{what} (LBA {lba})"),
                None => what.clone(),
            }),
            Fact::Error { what } => report.problems.push(format!("the probe failed: {what}")),
            Fact::Done => done = true,
        }
    }
    if !done {
        report.problems.push(format!(
            "the probe did not finish (exit status {}, {})",
            end.exit_status
                .map_or_else(|| "none".to_string(), |s| s.to_string()),
            end.exit
        ));
    } else if end.exit_status != Some(0) {
        report.problems.push(format!(
            "the probe finished but exited with status {:?} ({})",
            end.exit_status, end.exit
        ));
    }
    if parsed.malformed > 0 || parsed.dropped > 0 {
        report.notes.push(format!(
            "{} malformed and {} excess probe lines ignored",
            parsed.malformed, parsed.dropped
        ));
    }
    if done {
        let any_fs = report.partitions.iter().any(|p| p.filesystem.is_some());
        if !report.boot_signature && !any_fs {
            report.problems.push(NO_BOOT_NO_FS.into());
        }
    }
    if let Some(sectors) = report.disk_sectors {
        if sectors != host.disk_sectors {
            report.problems.push(format!(
                "the guest sees {sectors} sectors, the host {}",
                host.disk_sectors
            ));
        }
    }
    if done {
        compare_table(&mut report, host.table);
    }
    report.samples = compare_samples(host, &guest_samples);
    for m in &report.samples.mismatched {
        report.problems.push(format!(
            "sample at LBA {} ({} sectors): guest {}, host {}",
            m.lba, m.n, m.guest, m.host
        ));
    }
    if let Some((lba, evidence_unchanged)) = host.overlay {
        report.overlay_check = Some(overlay_check(
            &mut report.problems,
            lba,
            evidence_unchanged,
            overlay_fact,
        ));
    }
    report.usable = report.problems.is_empty();
    report
}

fn apply_fs(report: &mut ProbeReport, part: u32, fact: &Fact) {
    let Fact::Fs {
        kind,
        label,
        uuid,
        vbr_signature,
        boot_code,
        error,
        ..
    } = fact
    else {
        return;
    };
    if part == 0 && !report.partitions.iter().any(|p| p.index == 0) {
        report.partitions.push(PartitionReport {
            index: 0,
            start_lba: 0,
            sectors: report.disk_sectors.unwrap_or(0),
            type_id: String::new(),
            name: None,
            filesystem: None,
            vbr_signature: false,
            boot_code: false,
        });
    }
    let Some(p) = report.partitions.iter_mut().find(|p| p.index == part) else {
        report
            .notes
            .push(format!("file system line for unknown partition {part}"));
        return;
    };
    p.filesystem = kind.as_ref().map(|kind| Filesystem {
        kind: kind.clone(),
        label: label.clone().filter(|l| !l.is_empty()),
        uuid: uuid.clone().filter(|u| !u.is_empty()),
    });
    p.vbr_signature = *vbr_signature;
    p.boot_code = *boot_code;
    if let Some(error) = error {
        report.problems.push(format!(
            "partition {part}: reading its first sectors failed ({error})"
        ));
    }
}

/// The guest's table against `vdr_formats::partition`'s reading of the same disk.
fn compare_table(report: &mut ProbeReport, host: Option<&PartitionTable>) {
    let host_scheme = host.map_or("none", |t| t.scheme.name());
    let guest_scheme = report.partition_table.as_deref().unwrap_or("missing");
    if guest_scheme != host_scheme {
        report.problems.push(format!(
            "partition table: the guest read {guest_scheme}, the host {host_scheme}"
        ));
        return;
    }
    let Some(host) = host else {
        return;
    };
    if host.sector_size != SECTOR {
        report.notes.push(format!(
            "the host read the table with {}-byte sectors; partitions not compared",
            host.sector_size
        ));
        return;
    }
    for hp in &host.partitions {
        let start = hp.start / SECTOR;
        let sectors = hp.len / SECTOR;
        match report.partitions.iter().find(|p| p.index == hp.index) {
            None => report.problems.push(format!(
                "partition {}: the host sees it (LBA {start}, {sectors} sectors), the guest does not",
                hp.index
            )),
            Some(gp) if gp.start_lba != start || gp.sectors != sectors || gp.type_id != hp.type_id => {
                report.problems.push(format!(
                    "partition {}: the guest sees LBA {} + {} type {}, the host LBA {start} + {sectors} type {}",
                    hp.index, gp.start_lba, gp.sectors, gp.type_id, hp.type_id
                ))
            }
            Some(_) => {}
        }
    }
    for gp in &report.partitions {
        if gp.index != 0 && !host.partitions.iter().any(|hp| hp.index == gp.index) {
            report.problems.push(format!(
                "partition {}: the guest sees it (LBA {}), the host does not",
                gp.index, gp.start_lba
            ));
        }
    }
}

fn compare_samples(host: &HostView<'_>, guest: &[(u64, u32, &str)]) -> SampleReport {
    let mut report = SampleReport {
        checked: host.samples.len().min(host.expected.len()),
        ..SampleReport::default()
    };
    for (range, expected) in host.samples.iter().zip(host.expected) {
        let want = expected.as_guest_text();
        let got = guest
            .iter()
            .find(|(lba, n, _)| *lba == range.lba && *n == range.sectors)
            .map_or("missing", |(_, _, crc)| crc);
        if got.eq_ignore_ascii_case(&want) {
            report.matched += 1;
            if *expected == Expected::Unreadable {
                report.unreadable += 1;
            }
        } else {
            report.mismatched.push(SampleMismatch {
                lba: range.lba,
                n: range.sectors,
                guest: got.chars().take(16).collect(),
                host: want,
            });
        }
    }
    report
}

fn overlay_check(
    problems: &mut Vec<String>,
    lba: u64,
    evidence_unchanged: bool,
    fact: Option<&Fact>,
) -> OverlayCheck {
    let (write_accepted, read_back_matched) = match fact {
        Some(Fact::Overlay {
            lba: guest_lba,
            write,
            matched,
            ..
        }) if *guest_lba == lba => (write == "ok", *matched),
        _ => (false, false),
    };
    let passed = write_accepted && read_back_matched && evidence_unchanged;
    if !write_accepted {
        problems.push(format!(
            "overlay check: the write to LBA {lba} was not accepted"
        ));
    } else if !read_back_matched {
        problems.push(format!(
            "overlay check: LBA {lba} did not read back what was written"
        ));
    }
    if !evidence_unchanged {
        problems.push(format!("overlay check: the evidence changed at LBA {lba}"));
    }
    OverlayCheck {
        lba,
        write_accepted,
        read_back_matched,
        evidence_unchanged,
        passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::protocol::parse;
    use vdr_formats::partition::{Partition, Scheme};

    const GOOD: &[&str] = &[
        r#"VDRPROBE {"t":"disk","sectors":1000,"ro":true}"#,
        r#"VDRPROBE {"t":"mbr","signature":true,"boot_code":false}"#,
        r#"VDRPROBE {"t":"table","scheme":"mbr"}"#,
        r#"VDRPROBE {"t":"part","i":1,"start":100,"sectors":900,"type":"0x83"}"#,
        r#"VDRPROBE {"t":"fs","part":1,"kind":"ext4","label":"","uuid":"u","vbr_signature":false,"boot_code":false}"#,
        r#"VDRPROBE {"t":"sample","lba":0,"n":1,"crc":"0000abcd"}"#,
        r#"VDRPROBE {"t":"done"}"#,
    ];

    fn mbr_table(start_lba: u64) -> PartitionTable {
        PartitionTable {
            scheme: Scheme::Mbr,
            sector_size: 512,
            partitions: vec![Partition {
                index: 1,
                start: start_lba * 512,
                len: 900 * 512,
                type_id: "0x83".into(),
                description: String::new(),
                name: String::new(),
                uuid: None,
            }],
            findings: Vec::new(),
        }
    }

    fn report(lines: &[&str], table: &PartitionTable, host_crc: u32) -> ProbeReport {
        let samples = [SampleRange { lba: 0, sectors: 1 }];
        let expected = [Expected::Crc(host_crc)];
        let host = HostView {
            disk_sectors: 1000,
            table: Some(table),
            samples: &samples,
            expected: &expected,
            overlay: None,
        };
        let end = RunEnd {
            exit_status: Some(0),
            exit: "stopped".into(),
            timings: Timings::default(),
            console: Vec::new(),
        };
        assemble(&parse(lines.iter().copied()), &host, end)
    }

    #[test]
    fn agreeing_guest_and_host_make_a_usable_disk() {
        let r = report(GOOD, &mbr_table(100), 0xabcd);
        assert!(r.usable, "{:?}", r.problems);
        let fs = r.partitions[0].filesystem.as_ref().unwrap();
        assert_eq!((fs.kind.as_str(), fs.label.as_deref()), ("ext4", None));
        assert_eq!(r.samples.matched, 1);
    }

    #[test]
    fn a_mismatched_sample_makes_the_disk_unusable() {
        let r = report(GOOD, &mbr_table(100), 0x1234);
        assert!(!r.usable);
        assert_eq!(r.samples.mismatched[0].host, "00001234");
        assert_eq!(r.samples.mismatched[0].guest, "0000abcd");
    }

    #[test]
    fn a_partition_the_host_places_elsewhere_is_a_problem() {
        let r = report(GOOD, &mbr_table(200), 0xabcd);
        assert!(!r.usable);
        assert!(r.problems[0].starts_with("partition 1: the guest sees LBA 100"));
    }

    #[test]
    fn a_guest_that_never_finishes_is_a_problem() {
        let r = report(&GOOD[..GOOD.len() - 1], &mbr_table(100), 0xabcd);
        assert!(!r.usable);
        assert!(r.problems[0].starts_with("the probe did not finish"));
    }

    #[test]
    fn facts_for_unknown_partitions_are_noted_not_trusted() {
        let mut lines = GOOD.to_vec();
        lines.insert(
            5,
            r#"VDRPROBE {"t":"fs","part":7,"kind":"xfs","vbr_signature":true,"boot_code":true}"#,
        );
        let r = report(&lines, &mbr_table(100), 0xabcd);
        assert!(r.usable, "{:?}", r.problems);
        assert_eq!(r.partitions.len(), 1);
        assert!(r.notes[0].contains("unknown partition 7"));
    }
}
