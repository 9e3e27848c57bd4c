//! Block addresses: the low three bits give the type, the rest is type-specific.
//!
//! VMFS3/5 addresses are 32 bits; VMFS6 block addresses are 64 bits (FD addresses stay
//! 32). Bit layouts from dissect.vmfs `address.py` and vmfs-tools `vmfs_block.h`
//! (research/vmfs.md §5); checked against the ESXi-made samples.

use std::fmt;

/// A decoded block address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// 0: no block (a hole in a thin file).
    Null,
    /// VMFS3/5 file block: LV offset `block × file block size`.
    FileBlock { block: u64, tbz: bool },
    /// VMFS6 small file block: block number `cluster × SFBs per cluster + resource`.
    SmallFileBlock {
        cluster: u64,
        resource: u64,
        tbz: bool,
    },
    /// A resource of `.sbc.sf`.
    SubBlock { cluster: u64, resource: u64 },
    /// A resource of `.pbc.sf`.
    PointerBlock { cluster: u64, resource: u64 },
    /// A resource of `.pb2.sf`.
    PointerBlock2 { cluster: u64, resource: u64 },
    /// A resource of `.fdc.sf`.
    FileDescriptor { cluster: u64, resource: u64 },
    /// VMFS6 large file block: LV offset `block × LFB size`.
    LargeFileBlock { block: u64, tbz: bool },
    /// A journal block or a type no reader knows.
    Other { kind: u8, raw: u64 },
}

pub const TYPE_FILE_BLOCK: u8 = 1;
pub const TYPE_SUB_BLOCK: u8 = 2;
pub const TYPE_POINTER_BLOCK: u8 = 3;
pub const TYPE_FILE_DESCRIPTOR: u8 = 4;
pub const TYPE_POINTER_BLOCK2: u8 = 5;
pub const TYPE_LARGE_FILE_BLOCK: u8 = 7;

impl Addr {
    /// Decodes a 32-bit VMFS3/5 address. `dense_sb`: the FS config flag DENSE_SBPC, which
    /// adds two high resource bits to sub-block addresses.
    pub fn decode32(raw: u32, dense_sb: bool) -> Addr {
        let v = u64::from(raw);
        if raw == 0 {
            return Addr::Null;
        }
        let cluster22 = (v >> 6) & 0x3F_FFFF;
        let resource4 = (v >> 28) & 0xF;
        match (raw & 7) as u8 {
            TYPE_FILE_BLOCK => Addr::FileBlock {
                block: (v >> 6) & 0x3FF_FFFF,
                tbz: v & 0x20 != 0,
            },
            TYPE_SUB_BLOCK => {
                let mut resource = resource4;
                if dense_sb {
                    resource |= (v & 0x18) << 1;
                }
                Addr::SubBlock {
                    cluster: cluster22,
                    resource,
                }
            }
            TYPE_POINTER_BLOCK => Addr::PointerBlock {
                cluster: cluster22,
                resource: resource4,
            },
            TYPE_FILE_DESCRIPTOR => Addr::decode_fd(raw),
            TYPE_POINTER_BLOCK2 => Addr::PointerBlock2 {
                cluster: cluster22,
                resource: resource4,
            },
            kind => Addr::Other { kind, raw: v },
        }
    }

    /// Decodes a 64-bit VMFS6 block address.
    pub fn decode64(v: u64) -> Addr {
        if v == 0 {
            return Addr::Null;
        }
        let cluster36 = (v >> 6) & 0xF_FFFF_FFFF;
        let resource8 = (v >> 56) & 0xFF;
        let tbz = (v >> 7) & 0xFF != 0;
        match (v & 7) as u8 {
            TYPE_FILE_BLOCK => Addr::SmallFileBlock {
                cluster: (v >> 15) & 0x7FFF_FFFF,
                resource: (v >> 51) & 0x1FFF,
                tbz,
            },
            TYPE_SUB_BLOCK => Addr::SubBlock {
                cluster: cluster36,
                resource: resource8,
            },
            TYPE_POINTER_BLOCK => Addr::PointerBlock {
                cluster: cluster36,
                resource: resource8,
            },
            TYPE_FILE_DESCRIPTOR => match u32::try_from(v) {
                Ok(raw) => Addr::decode_fd(raw),
                Err(_) => Addr::Other {
                    kind: TYPE_FILE_DESCRIPTOR,
                    raw: v,
                },
            },
            TYPE_POINTER_BLOCK2 => Addr::PointerBlock2 {
                cluster: cluster36,
                resource: resource8,
            },
            TYPE_LARGE_FILE_BLOCK => Addr::LargeFileBlock {
                block: (v >> 15) & 0x7FFF_FFFF,
                tbz,
            },
            kind => Addr::Other { kind, raw: v },
        }
    }

    /// Decodes an FD address (32 bits in every version).
    pub fn decode_fd(raw: u32) -> Addr {
        if raw == 0 {
            return Addr::Null;
        }
        if raw & 7 != u32::from(TYPE_FILE_DESCRIPTOR) {
            return Addr::Other {
                kind: (raw & 7) as u8,
                raw: u64::from(raw),
            };
        }
        Addr::FileDescriptor {
            cluster: u64::from((raw >> 6) & 0xFFFF),
            resource: u64::from((raw >> 22) & 0x3FF),
        }
    }

    /// The FD address with this cluster and resource.
    pub fn fd_address(cluster: u64, resource: u64) -> u32 {
        ((((cluster & 0xFFFF) << 6) | ((resource & 0x3FF) << 22)) as u32)
            | u32::from(TYPE_FILE_DESCRIPTOR)
    }

    /// A short name of the address type, as vmkfstools prints them.
    pub fn type_name(&self) -> &'static str {
        match self {
            Addr::Null => "null",
            Addr::FileBlock { .. } => "FB",
            Addr::SmallFileBlock { .. } => "SFB",
            Addr::SubBlock { .. } => "SB",
            Addr::PointerBlock { .. } => "PB",
            Addr::PointerBlock2 { .. } => "PB2",
            Addr::FileDescriptor { .. } => "FD",
            Addr::LargeFileBlock { .. } => "LFB",
            Addr::Other { .. } => "unknown",
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Addr::Null => write!(f, "null"),
            Addr::FileBlock { block, tbz } | Addr::LargeFileBlock { block, tbz } => {
                write!(
                    f,
                    "{} {block}{}",
                    self.type_name(),
                    if tbz { " tbz" } else { "" }
                )
            }
            Addr::SmallFileBlock {
                cluster,
                resource,
                tbz,
            } => write!(
                f,
                "SFB c{cluster} r{resource}{}",
                if tbz { " tbz" } else { "" }
            ),
            Addr::SubBlock { cluster, resource }
            | Addr::PointerBlock { cluster, resource }
            | Addr::PointerBlock2 { cluster, resource }
            | Addr::FileDescriptor { cluster, resource } => {
                write!(f, "{} c{cluster} r{resource}", self.type_name())
            }
            Addr::Other { kind, raw } => write!(f, "type {kind} address {raw:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_addresses_decode_as_the_esxi_images_use_them() {
        // VMFS6 sample: .fdc.sf's first block and /directory/file5's sub-block.
        assert_eq!(
            Addr::decode64(0x0038_0000_0000_0001),
            Addr::SmallFileBlock {
                cluster: 0,
                resource: 7,
                tbz: false
            }
        );
        assert_eq!(
            Addr::decode64(0x0200_0000_0000_0002),
            Addr::SubBlock {
                cluster: 0,
                resource: 2
            }
        );
        assert_eq!(
            Addr::decode_fd(0x0140_0004),
            Addr::FileDescriptor {
                cluster: 0,
                resource: 5
            }
        );
        assert_eq!(Addr::fd_address(0, 5), 0x0140_0004);
        assert_eq!(
            Addr::decode32(0x341, false),
            Addr::FileBlock {
                block: 13,
                tbz: false
            }
        );
        assert_eq!(
            Addr::decode32(0x361, false),
            Addr::FileBlock {
                block: 13,
                tbz: true
            }
        );
    }

    #[test]
    fn dense_sub_block_addresses_carry_two_more_resource_bits() {
        let raw = 0x1000_0002 | 0x18;
        assert_eq!(
            Addr::decode32(raw, true),
            Addr::SubBlock {
                cluster: 0,
                resource: 1 | 0x30
            }
        );
    }
}
