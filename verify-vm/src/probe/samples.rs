//! Which sectors the guest checksums, and what the host expects for each.
//!
//! The samples cover what a boot needs first (LBA 0, the GPT areas, each partition's first
//! sectors and the btrfs superblock at 64 KiB, the last sector) plus evenly spread runs
//! with a deterministic jitter, so that two runs on the same disk compare the same sectors.
//! The host reads each sample from the same [`VirtualDisk`]: a CRC-32 (crc32fast, the
//! guest's polynomial) or, when the host cannot read it, the expectation that the guest's
//! device answers IOERR too.

use vdr_formats::partition::{PartitionTable, Scheme};
use vdr_formats::VirtualDisk;

use super::params::{SampleRange, MAX_SAMPLES};

pub const SECTOR: u64 = 512;
/// Length of a spread sample.
const SPREAD_SECTORS: u32 = 8;
/// Sectors of a GPT's header plus a 128-entry array.
const GPT_AREA_SECTORS: u32 = 33;

/// What the host read for a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    Crc(u32),
    Unreadable,
}

impl Expected {
    /// The guest's notation: 8 lowercase hex digits or "ioerr".
    pub fn as_guest_text(&self) -> String {
        match self {
            Expected::Crc(crc) => format!("{crc:08x}"),
            Expected::Unreadable => "ioerr".into(),
        }
    }
}

/// Chooses up to [`MAX_SAMPLES`] ranges on a disk of `disk_sectors`, most important
/// first, `spread` of them evenly spread.
pub fn choose(
    disk_sectors: u64,
    table: Option<&PartitionTable>,
    spread: usize,
) -> Vec<SampleRange> {
    let mut out: Vec<SampleRange> = Vec::new();
    let push = |out: &mut Vec<SampleRange>, lba: u64, sectors: u32| {
        if lba >= disk_sectors || sectors == 0 {
            return;
        }
        let sectors = u64::from(sectors).min(disk_sectors - lba);
        // `sectors` came from a u32 and only shrank.
        let range = SampleRange {
            lba,
            sectors: sectors as u32,
        };
        if !out.contains(&range) && out.len() < MAX_SAMPLES {
            out.push(range);
        }
    };
    let last = disk_sectors.saturating_sub(1);
    push(&mut out, 0, 1);
    if let Some(table) = table {
        if matches!(table.scheme, Scheme::GptPrimary | Scheme::GptBackup) {
            push(&mut out, 1, GPT_AREA_SECTORS);
            push(
                &mut out,
                last.saturating_sub(u64::from(GPT_AREA_SECTORS) - 1),
                GPT_AREA_SECTORS,
            );
        }
        for p in &table.partitions {
            let start = p.start / SECTOR;
            let sectors = p.len / SECTOR;
            push(&mut out, start, sectors.min(8) as u32);
            if sectors >= 130 {
                push(&mut out, start + 128, 2);
            }
        }
    }
    push(&mut out, last, 1);
    let spread = spread.min(MAX_SAMPLES.saturating_sub(out.len()));
    if spread > 0 && disk_sectors > u64::from(SPREAD_SECTORS) {
        let usable = disk_sectors - u64::from(SPREAD_SECTORS);
        let stride = (usable / spread as u64).max(1);
        for i in 0..spread as u64 {
            let jitter = splitmix64(i) % stride;
            let lba = (i.saturating_mul(stride) + jitter).min(usable) & !7;
            push(&mut out, lba, SPREAD_SECTORS);
        }
    }
    out
}

/// Reads each sample from `disk` the way the guest will see it.
pub fn expect(disk: &dyn VirtualDisk, samples: &[SampleRange]) -> Vec<Expected> {
    let mut buf = Vec::new();
    samples
        .iter()
        .map(|s| {
            let len = u64::from(s.sectors) * SECTOR;
            let Ok(len) = usize::try_from(len) else {
                return Expected::Unreadable;
            };
            buf.resize(len, 0);
            match s
                .lba
                .checked_mul(SECTOR)
                .map(|offset| disk.read_at(&mut buf, offset))
            {
                Some(Ok(())) => Expected::Crc(crc32fast::hash(&buf)),
                _ => Expected::Unreadable,
            }
        })
        .collect()
}

/// A fixed pseudo-random sequence (Steele, Lea, Flood: SplitMix64).
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdr_formats::partition::Partition;

    fn gpt_with(parts: &[(u64, u64)]) -> PartitionTable {
        PartitionTable {
            scheme: Scheme::GptPrimary,
            sector_size: 512,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| Partition {
                    index: i as u32 + 1,
                    start: start * 512,
                    len: len * 512,
                    type_id: String::new(),
                    description: String::new(),
                    name: String::new(),
                    uuid: None,
                })
                .collect(),
            findings: Vec::new(),
        }
    }

    #[test]
    fn samples_cover_boot_structures_first() {
        let table = gpt_with(&[(2048, 100_000)]);
        let s = choose(131_072, Some(&table), 4);
        let firsts: Vec<(u64, u32)> = s.iter().take(6).map(|r| (r.lba, r.sectors)).collect();
        assert_eq!(
            firsts[..6],
            [
                (0, 1),
                (1, 33),
                (131_039, 33),
                (2048, 8),
                (2176, 2),
                (131_071, 1)
            ]
        );
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn samples_stay_inside_the_disk_and_are_deterministic() {
        for size in [1u64, 7, 8, 9, 100, 1 << 20, u64::MAX / 512] {
            let s = choose(size, None, 40);
            assert_eq!(s, choose(size, None, 40));
            assert!(s.len() <= MAX_SAMPLES);
            for r in &s {
                assert!(
                    r.sectors > 0 && r.lba + u64::from(r.sectors) <= size,
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn sample_count_is_capped() {
        let parts: Vec<(u64, u64)> = (0..100).map(|i| (2048 + i * 1000, 1000)).collect();
        let s = choose(1 << 24, Some(&gpt_with(&parts)), 1000);
        assert_eq!(s.len(), MAX_SAMPLES);
    }
}
