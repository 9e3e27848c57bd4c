//! The probe guest's parameter block, written by the host into guest memory (at
//! [`crate::layout::CMDLINE_START`]) and passed to the guest in rdi. It mirrors
//! `guest/probe/probe_params.h` byte for byte; `params_match_the_c_header` compiles that
//! header and compares every offset.
//!
//! Serialised field by field (little-endian) rather than transmuted, so no `unsafe` and no
//! padding question arises.

use crate::layout;

/// "VDRP" little-endian.
pub const MAGIC: u32 = 0x5052_4456;
pub const VERSION: u32 = 1;
/// Sample slots in the block (`VDR_PROBE_MAX_SAMPLES`).
pub const MAX_SAMPLES: usize = 64;
/// `VDR_PROBE_OVERLAY_TEST`.
pub const FLAG_OVERLAY_TEST: u32 = 1;
/// Bytes of the block: 56 of fields, 16 per sample slot.
pub const SIZE: usize = 56 + 16 * MAX_SAMPLES;

/// Field offsets (`probe_params.h`).
pub(crate) mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const VIRTIO_BASE: usize = 8;
    pub const SERIAL_PORT: usize = 16;
    pub const EXIT_PORT: usize = 18;
    pub const FLAGS: usize = 20;
    pub const OVERLAY_LBA: usize = 24;
    pub const SAMPLE_COUNT: usize = 32;
    pub const MAX_SAMPLE_SECTORS: usize = 36;
    pub const MAX_PARTITIONS: usize = 40;
    pub const SPIN_LIMIT: usize = 48;
    pub const SAMPLES: usize = 56;
}

/// A run of sectors the guest checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SampleRange {
    pub lba: u64,
    pub sectors: u32,
}

/// What the guest is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub virtio_base: u64,
    pub serial_port: u16,
    pub exit_port: u16,
    /// The sector the overlay test writes, when it should run.
    pub overlay_lba: Option<u64>,
    /// At most [`MAX_SAMPLES`] are sent; the rest are dropped by [`Params::to_bytes`].
    pub samples: Vec<SampleRange>,
    pub max_sample_sectors: u32,
    pub max_partitions: u32,
    /// Polls of the used ring per request before the guest declares the device dead.
    pub spin_limit: u64,
}

impl Params {
    /// The defaults for the VMM's machine ([`crate::layout`]).
    pub fn for_vm(samples: Vec<SampleRange>, overlay_lba: Option<u64>) -> Params {
        Params {
            virtio_base: layout::VIRTIO_MMIO_BASE.0,
            serial_port: layout::SERIAL_PORT,
            exit_port: layout::EXIT_PORT,
            overlay_lba,
            samples,
            max_sample_sectors: 2048,
            max_partitions: 128,
            spin_limit: 200_000_000,
        }
    }

    /// The block as the guest reads it.
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        put(&mut b, offset::MAGIC, &MAGIC.to_le_bytes());
        put(&mut b, offset::VERSION, &VERSION.to_le_bytes());
        put(&mut b, offset::VIRTIO_BASE, &self.virtio_base.to_le_bytes());
        put(&mut b, offset::SERIAL_PORT, &self.serial_port.to_le_bytes());
        put(&mut b, offset::EXIT_PORT, &self.exit_port.to_le_bytes());
        let flags = if self.overlay_lba.is_some() {
            FLAG_OVERLAY_TEST
        } else {
            0
        };
        put(&mut b, offset::FLAGS, &flags.to_le_bytes());
        put(
            &mut b,
            offset::OVERLAY_LBA,
            &self.overlay_lba.unwrap_or(0).to_le_bytes(),
        );
        let samples = &self.samples[..self.samples.len().min(MAX_SAMPLES)];
        // At most MAX_SAMPLES (64): the cast cannot truncate.
        put(
            &mut b,
            offset::SAMPLE_COUNT,
            &(samples.len() as u32).to_le_bytes(),
        );
        put(
            &mut b,
            offset::MAX_SAMPLE_SECTORS,
            &self.max_sample_sectors.to_le_bytes(),
        );
        put(
            &mut b,
            offset::MAX_PARTITIONS,
            &self.max_partitions.to_le_bytes(),
        );
        put(&mut b, offset::SPIN_LIMIT, &self.spin_limit.to_le_bytes());
        for (i, s) in samples.iter().enumerate() {
            let at = offset::SAMPLES + 16 * i;
            put(&mut b, at, &s.lba.to_le_bytes());
            put(&mut b, at + 8, &s.sectors.to_le_bytes());
        }
        b
    }
}

/// Copies `value` into `block` at `at`; offsets are the constants above, all in range.
fn put(block: &mut [u8; SIZE], at: usize, value: &[u8]) {
    if let Some(dst) = block.get_mut(at..at + value.len()) {
        dst.copy_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn params_match_the_c_header() {
        let dir = tempfile::tempdir().unwrap();
        let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/probe");
        let source = dir.path().join("offsets.c");
        std::fs::write(
            &source,
            r#"#include <stdio.h>
#include <stddef.h>
#include "probe_params.h"
#define F(x) printf("%s %zu\n", #x, offsetof(struct vdr_probe_params, x))
int main(void) {
    F(magic); F(version); F(virtio_base); F(serial_port); F(exit_port); F(flags);
    F(overlay_lba); F(sample_count); F(max_sample_sectors); F(max_partitions);
    F(spin_limit); F(samples);
    printf("size %zu\nmagic %u\nversion %u\nmax_samples %u\noverlay %u\n",
           sizeof(struct vdr_probe_params), VDR_PROBE_MAGIC, VDR_PROBE_VERSION,
           VDR_PROBE_MAX_SAMPLES, VDR_PROBE_OVERLAY_TEST);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("offsets");
        let status = Command::new("gcc")
            .arg("-I")
            .arg(&header)
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .status()
            .unwrap();
        assert!(status.success());
        let out = Command::new(&exe).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let expected = [
            ("magic", offset::MAGIC),
            ("version", offset::VERSION),
            ("virtio_base", offset::VIRTIO_BASE),
            ("serial_port", offset::SERIAL_PORT),
            ("exit_port", offset::EXIT_PORT),
            ("flags", offset::FLAGS),
            ("overlay_lba", offset::OVERLAY_LBA),
            ("sample_count", offset::SAMPLE_COUNT),
            ("max_sample_sectors", offset::MAX_SAMPLE_SECTORS),
            ("max_partitions", offset::MAX_PARTITIONS),
            ("spin_limit", offset::SPIN_LIMIT),
            ("samples", offset::SAMPLES),
            ("size", SIZE),
            ("magic", MAGIC as usize),
            ("version", VERSION as usize),
            ("max_samples", MAX_SAMPLES),
            ("overlay", FLAG_OVERLAY_TEST as usize),
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{text}");
        for (line, (name, value)) in lines.iter().zip(expected) {
            assert_eq!(*line, format!("{name} {value}"));
        }
    }

    #[test]
    fn params_serialise_samples_and_drop_the_excess() {
        let samples = (0..100)
            .map(|i| SampleRange {
                lba: i * 8,
                sectors: 8,
            })
            .collect();
        let b = Params::for_vm(samples, Some(77)).to_bytes();
        assert_eq!(&b[0..4], b"VDRP");
        assert_eq!(b[offset::SAMPLE_COUNT], 64);
        assert_eq!(b[offset::FLAGS], 1);
        assert_eq!(b[offset::OVERLAY_LBA], 77);
        let last = offset::SAMPLES + 16 * 63;
        assert_eq!(
            u64::from_le_bytes(b[last..last + 8].try_into().unwrap()),
            63 * 8
        );
    }
}
