//! The QCOW2 image header (qcow2.txt "Header"): the raw big-endian fields as stored, and
//! the validated [`Header`] every other part of the module works from.
//!
//! Validation happens once, here: cluster size, refcount width, table offsets and sizes
//! are checked against the spec's limits and the file length before anything is
//! allocated from them, so the code above never sees an unchecked header field.

use std::io::Cursor;

use binrw::BinRead;

use super::Error;

/// Magic of every qcow image: "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Length of a version 2 header (qcow2.txt: "For version 2, the header is exactly 72 bytes").
const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header: the fields through header_length.
const V3_MIN_HEADER_LEN: u32 = 104;
/// Offset of the compression_type byte in a version 3 header.
const COMPRESSION_TYPE_OFFSET: u32 = 104;
/// The spec limits a backing file name to 1023 bytes.
const MAX_BACKING_NAME: u32 = 1023;
/// qemu's limit on the L1 table: 32 MiB (qcow2.txt, note on `size`).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the refcount table: 8 MiB (qcow2.txt "Host cluster management").
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Host offsets live in bits 9-55 of table entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Incompatible feature bits (qcow2.txt, header bytes 72-79).
pub mod incompatible {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const DATA_FILE: u64 = 1 << 2;
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this reader understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bits (header bytes 80-87).
pub mod compatible {
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits (header bytes 88-95).
pub mod autoclear {
    pub const BITMAPS: u64 = 1 << 0;
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// The header fields as stored (big-endian). Version 3 fields are read from the bytes that
/// follow; for a version 2 image they are ignored by [`Header::validate`].
#[derive(BinRead, Debug, Clone, Default)]
#[br(big)]
pub struct RawHeader {
    pub magic: [u8; 4],
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
}

/// Bytes needed to parse [`RawHeader`] (the v3 fields plus the compression type byte).
pub const RAW_HEADER_LEN: usize = 105;

impl RawHeader {
    /// Parses the first bytes of an image. `head` shorter than [`RAW_HEADER_LEN`] is
    /// zero-extended first (a v2 header may legitimately end at byte 72).
    pub fn parse(head: &[u8]) -> RawHeader {
        let mut bytes = [0u8; RAW_HEADER_LEN];
        let n = head.len().min(RAW_HEADER_LEN);
        bytes[..n].copy_from_slice(&head[..n]);
        // Every field is a fixed-width integer and the buffer holds exactly enough bytes,
        // so reading cannot fail; fall back to an all-zero header (rejected by the magic
        // check) rather than panic if binrw ever says otherwise.
        RawHeader::read(&mut Cursor::new(&bytes[..])).unwrap_or_default()
    }
}

/// Compression used by compressed clusters (header byte 104).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (no zlib wrapper), qemu's default.
    Deflate,
    /// One zstd frame per cluster.
    Zstd,
}

/// Encryption method (header bytes 32-35).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    Aes,
    Luks,
}

impl Encryption {
    pub fn name(self) -> &'static str {
        match self {
            Encryption::Aes => "aes",
            Encryption::Luks => "luks",
        }
    }
}

/// A header that passed validation.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
    pub encryption: Option<Encryption>,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    /// Where header extensions start.
    pub header_length: u32,
    pub compression: CompressionType,
    /// Offset and length of the backing file name, when there is one.
    pub backing_name: Option<(u64, u32)>,
}

impl Header {
    /// Validates `raw` for a file of `file_len` bytes named `file`. The alignment of the
    /// table offsets is left to the opener, which can go on without a table in salvage
    /// mode.
    pub fn validate(raw: &RawHeader, file: &str, file_len: u64) -> Result<Header, Error> {
        let bad = |field: &'static str, offset: u64, what: String| Error::Header {
            file: file.to_string(),
            field,
            offset,
            what,
        };
        if raw.magic != MAGIC {
            return Err(Error::BadMagic {
                file: file.to_string(),
                found: raw.magic,
            });
        }
        if raw.version != 2 && raw.version != 3 {
            return Err(bad(
                "version",
                4,
                format!("version {} (only 2 and 3 exist)", raw.version),
            ));
        }
        if !(9..=21).contains(&raw.cluster_bits) {
            return Err(bad(
                "cluster_bits",
                20,
                format!("cluster_bits {} outside 9..=21", raw.cluster_bits),
            ));
        }
        let cluster_size = 1u64 << raw.cluster_bits;
        let v3 = raw.version >= 3;
        let (incompatible, compatible, autoclear, refcount_order, header_length) = if v3 {
            (
                raw.incompatible_features,
                raw.compatible_features,
                raw.autoclear_features,
                raw.refcount_order,
                raw.header_length,
            )
        } else {
            (0, 0, 0, 4, V2_HEADER_LEN)
        };
        if v3 {
            if header_length < V3_MIN_HEADER_LEN || header_length % 8 != 0 {
                return Err(bad("header_length", 100, format!(
                    "header_length {header_length} (must be >= {V3_MIN_HEADER_LEN} and a multiple of 8)"
                )));
            }
            if u64::from(header_length) > cluster_size {
                return Err(bad(
                    "header_length",
                    100,
                    format!(
                        "header_length {header_length} exceeds the cluster size {cluster_size}"
                    ),
                ));
            }
        }
        if refcount_order > 6 {
            return Err(bad(
                "refcount_order",
                96,
                format!("refcount_order {refcount_order} exceeds 6"),
            ));
        }
        let compression = if header_length > COMPRESSION_TYPE_OFFSET {
            match raw.compression_type {
                0 => CompressionType::Deflate,
                1 => CompressionType::Zstd,
                t => {
                    return Err(bad(
                        "compression_type",
                        104,
                        format!("unknown compression_type {t}"),
                    ))
                }
            }
        } else {
            CompressionType::Deflate
        };
        let type_bit = incompatible & incompatible::COMPRESSION_TYPE != 0;
        if type_bit != (compression != CompressionType::Deflate) {
            return Err(bad(
                "incompatible_features",
                72,
                format!(
                    "compression type bit is {} but compression_type is {:?}",
                    if type_bit { "set" } else { "clear" },
                    compression
                ),
            ));
        }
        if incompatible & incompatible::EXTENDED_L2 != 0 && raw.cluster_bits < 14 {
            return Err(bad(
                "incompatible_features",
                72,
                format!(
                    "extended L2 entries need clusters of at least 16 KiB, cluster_bits is {}",
                    raw.cluster_bits
                ),
            ));
        }
        if autoclear & autoclear::DATA_FILE_RAW != 0 && incompatible & incompatible::DATA_FILE == 0
        {
            return Err(bad(
                "autoclear_features",
                88,
                "data_file_raw is set without an external data file".into(),
            ));
        }
        let encryption = match raw.crypt_method {
            0 => None,
            1 => Some(Encryption::Aes),
            2 => Some(Encryption::Luks),
            m => return Err(bad("crypt_method", 32, format!("unknown crypt_method {m}"))),
        };
        let l1_bytes = u64::from(raw.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(bad(
                "l1_size",
                36,
                format!(
                    "l1_size {} exceeds the limit of {} entries",
                    raw.l1_size,
                    MAX_L1_BYTES / 8
                ),
            ));
        }
        if u64::from(raw.refcount_table_clusters) * cluster_size > MAX_REFCOUNT_TABLE_BYTES {
            return Err(bad(
                "refcount_table_clusters",
                56,
                format!(
                    "refcount_table_clusters {} exceeds the limit of {} bytes",
                    raw.refcount_table_clusters, MAX_REFCOUNT_TABLE_BYTES
                ),
            ));
        }
        let needed_l1 = l1_entries_for(raw.size, raw.cluster_bits, l2_entry_bytes(incompatible))
            .ok_or_else(|| {
                bad(
                    "size",
                    24,
                    format!("virtual size {:#x} is too large", raw.size),
                )
            })?;
        if u64::from(raw.l1_size) < needed_l1 {
            return Err(bad(
                "l1_size",
                36,
                format!(
                    "L1 table of {} entries is too small for the virtual size {:#x} ({} needed)",
                    raw.l1_size, raw.size, needed_l1
                ),
            ));
        }
        let backing_name = if raw.backing_file_offset != 0 {
            if raw.backing_file_size > MAX_BACKING_NAME {
                return Err(bad(
                    "backing_file_size",
                    16,
                    format!(
                        "backing file name of {} bytes exceeds {MAX_BACKING_NAME}",
                        raw.backing_file_size
                    ),
                ));
            }
            let inside = raw
                .backing_file_offset
                .checked_add(u64::from(raw.backing_file_size))
                .is_some_and(|end| end <= cluster_size && end <= file_len);
            if !inside {
                return Err(bad(
                    "backing_file_offset",
                    8,
                    format!(
                    "backing file name at {:#x} (+{}) lies outside the header cluster or the file",
                    raw.backing_file_offset, raw.backing_file_size
                ),
                ));
            }
            Some((raw.backing_file_offset, raw.backing_file_size))
        } else {
            None
        };
        Ok(Header {
            version: raw.version,
            cluster_bits: raw.cluster_bits,
            cluster_size,
            virtual_size: raw.size,
            encryption,
            l1_size: raw.l1_size,
            l1_table_offset: raw.l1_table_offset,
            refcount_table_offset: raw.refcount_table_offset,
            refcount_table_clusters: raw.refcount_table_clusters,
            nb_snapshots: raw.nb_snapshots,
            snapshots_offset: raw.snapshots_offset,
            incompatible,
            compatible,
            autoclear,
            refcount_order,
            header_length,
            compression,
            backing_name,
        })
    }

    /// True when L2 entries are 128 bits with subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible & incompatible::EXTENDED_L2 != 0
    }

    /// True when guest data lives in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible & incompatible::DATA_FILE != 0
    }

    /// Bytes of one L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_bytes(&self) -> u64 {
        l2_entry_bytes(self.incompatible)
    }

    /// log2 of the number of entries in an L2 table.
    pub fn l2_bits(&self) -> u32 {
        // cluster_bits >= 9 (>= 14 with extended L2), so this never underflows.
        self.cluster_bits - if self.extended_l2() { 4 } else { 3 }
    }

    /// Subclusters per cluster: 32 with extended L2, else 1.
    pub fn subclusters(&self) -> u64 {
        if self.extended_l2() {
            32
        } else {
            1
        }
    }

    /// Bytes of the refcount table.
    pub fn refcount_table_bytes(&self) -> u64 {
        u64::from(self.refcount_table_clusters) * self.cluster_size
    }

    /// Bits of one refcount entry.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
}

fn l2_entry_bytes(incompatible: u64) -> u64 {
    if incompatible & incompatible::EXTENDED_L2 != 0 {
        16
    } else {
        8
    }
}

/// L1 entries needed to map `size` bytes (qcow2.txt "Cluster mapping").
fn l1_entries_for(size: u64, cluster_bits: u32, entry_bytes: u64) -> Option<u64> {
    let l2_bits = cluster_bits.checked_sub(entry_bytes.trailing_zeros())?;
    let shift = cluster_bits.checked_add(l2_bits)?;
    let span = 1u64.checked_shl(shift)?;
    Some(size.div_ceil(span))
}
