//! The e820 memory map handed to Linux in the zero page: which guest physical ranges are
//! RAM and which are reserved. Firecracker's x86_64 shape: conventional memory up to the
//! EBDA, the BIOS area (where the ACPI tables live) reserved up to 1 MiB, RAM from 1 MiB to
//! the 32-bit MMIO gap, and whatever memory is left above 4 GiB.

use crate::layout;

/// e820 type of usable RAM (Documentation/arch/x86/zero-page.rst, `E820_TYPE_RAM`).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (`E820_TYPE_RESERVED`).
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a machine with `memory_mib` MiB of RAM. At most four entries, so it
/// always fits the zero page's 128 slots. `memory_mib` must be at least 2 (checked by
/// [`super::prepare_linux`]; smaller sizes yield a map without the 1 MiB+ region).
pub fn e820_map(memory_mib: u32) -> Vec<E820Entry> {
    let total = u64::from(memory_mib) << 20;
    let one_mib = layout::HIMEM_START.0;
    let ebda = layout::EBDA_START.0;
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: ebda.min(total),
            kind: E820_RAM,
        },
        E820Entry {
            addr: ebda,
            size: one_mib - ebda,
            kind: E820_RESERVED,
        },
    ];
    let low_end = total.min(layout::MMIO_GAP_START);
    if low_end > one_mib {
        map.push(E820Entry {
            addr: one_mib,
            size: low_end - one_mib,
            kind: E820_RAM,
        });
    }
    if total > layout::MMIO_GAP_START {
        map.push(E820Entry {
            addr: layout::MMIO_GAP_END,
            size: total - layout::MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_machine_has_low_ram_bios_hole_and_ram_from_1_mib() {
        let map = e820_map(256);

        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x10_0000 - 0x9_fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (256 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn bios_hole_covers_the_acpi_tables() {
        let map = e820_map(512);

        let hole = map.iter().find(|e| e.kind == E820_RESERVED).unwrap();
        assert!(hole.addr <= layout::ACPI_START.0);
        assert_eq!(hole.addr + hole.size, layout::HIMEM_START.0);
    }

    #[test]
    fn exactly_3_gib_needs_no_high_region() {
        let map = e820_map(3 * 1024);

        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr + map[2].size, layout::MMIO_GAP_START);
    }

    #[test]
    fn memory_above_3_gib_continues_above_4_gib() {
        let map = e820_map(6 * 1024);

        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, layout::MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: 3 * GIB,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn ram_adds_up_to_the_machine_size_minus_the_bios_hole() {
        for mib in [64u32, 1024, 3 * 1024, 3 * 1024 + 1, 16 * 1024] {
            let map = e820_map(mib);

            let hole = layout::HIMEM_START.0 - layout::EBDA_START.0;
            assert_eq!(ram_total(&map), (u64::from(mib) << 20) - hole, "{mib} MiB");
        }
    }

    #[test]
    fn entries_are_sorted_and_never_overlap_the_mmio_gap() {
        for mib in [64u32, 4 * 1024, 64 * 1024] {
            let map = e820_map(mib);

            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{mib} MiB: {map:?}"
                );
            }
            for e in &map {
                let end = e.addr + e.size;
                assert!(
                    end <= layout::MMIO_GAP_START || e.addr >= layout::MMIO_GAP_END,
                    "{e:?}"
                );
            }
        }
    }
}
