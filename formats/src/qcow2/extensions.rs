//! Header extensions (qcow2.txt "Header extensions"): the backing file format, the feature
//! name table, the external data file name, the bitmaps extension and the full disk
//! encryption header pointer. Unknown extensions are kept by type and length so `info`
//! can list them.

use super::header::{incompatible, Header};
use super::Error;

pub const BACKING_FORMAT: u32 = 0xe279_2aca;
pub const FEATURE_NAMES: u32 = 0x6803_f857;
pub const BITMAPS: u32 = 0x2385_2875;
pub const CRYPTO_HEADER: u32 = 0x0537_be77;
pub const DATA_FILE_NAME: u32 = 0x4441_5441;

/// One entry of the feature name table (48 bytes each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

/// The bitmaps extension (qcow2.txt "Bitmaps extension").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapsExt {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// Everything found in the header extension area.
#[derive(Clone, Debug, Default)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    pub data_file: Option<String>,
    pub bitmaps: Option<BitmapsExt>,
    /// Offset and length of the encryption header (LUKS).
    pub crypto_header: Option<(u64, u64)>,
    /// (type, length) of every extension found, in order, known ones included.
    pub found: Vec<(u32, u32)>,
}

/// A human name for an extension type.
pub fn extension_name(kind: u32) -> String {
    match kind {
        BACKING_FORMAT => "backing_format".into(),
        FEATURE_NAMES => "feature_name_table".into(),
        BITMAPS => "bitmaps".into(),
        CRYPTO_HEADER => "full_disk_encryption".into(),
        DATA_FILE_NAME => "external_data_file".into(),
        other => format!("unknown {other:#010x}"),
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Parses the extensions in `cluster` (the image's first bytes, at most one cluster),
/// starting at the end of the header (version 2 images carry them too, after byte 72) and ending at the type-0 terminator, the backing file
/// name, or the end of the cluster.
///
/// Returns what was parsed, and the damage that stopped parsing early, if any (an error in
/// strict mode; in salvage mode the extensions before it are still used).
pub fn parse(cluster: &[u8], header: &Header, file: &str) -> (Extensions, Option<Error>) {
    let mut ext = Extensions::default();
    let damage = parse_into(cluster, header, file, &mut ext).err();
    (ext, damage)
}

fn parse_into(
    cluster: &[u8],
    header: &Header,
    file: &str,
    ext: &mut Extensions,
) -> Result<(), Error> {
    let bad = |at: usize, what: String| Error::Structure {
        file: file.to_string(),
        structure: "header extension".into(),
        offset: at as u64,
        what,
    };
    let mut end = cluster.len();
    if let Some((offset, _)) = header.backing_name {
        end = end.min(usize::try_from(offset).unwrap_or(usize::MAX));
    }
    let mut at = usize::try_from(header.header_length).unwrap_or(usize::MAX);
    while at.checked_add(8).is_some_and(|e| e <= end) {
        let (Some(kind), Some(len)) = (be_u32(cluster, at), be_u32(cluster, at + 4)) else {
            break;
        };
        if kind == 0 {
            break;
        }
        let data_start = at + 8;
        let data_end = data_start
            .checked_add(len as usize)
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                bad(
                    at,
                    format!(
                        "extension {} of {len} bytes runs past the header area",
                        extension_name(kind)
                    ),
                )
            })?;
        let data = cluster.get(data_start..data_end).unwrap_or_default();
        ext.found.push((kind, len));
        match kind {
            BACKING_FORMAT => ext.backing_format = Some(text(data)),
            DATA_FILE_NAME => ext.data_file = Some(text(data)),
            FEATURE_NAMES => {
                ext.feature_names = data
                    .chunks_exact(48)
                    .map(|entry| FeatureName {
                        kind: entry.first().copied().unwrap_or(0),
                        bit: entry.get(1).copied().unwrap_or(0),
                        name: text(entry.get(2..).unwrap_or_default()),
                    })
                    .collect();
            }
            BITMAPS => {
                let parsed = (be_u32(data, 0), be_u64(data, 8), be_u64(data, 16));
                let (Some(nb_bitmaps), Some(directory_size), Some(directory_offset)) = parsed
                else {
                    return Err(bad(
                        at,
                        format!("bitmaps extension of {len} bytes is too short"),
                    ));
                };
                ext.bitmaps = Some(BitmapsExt {
                    nb_bitmaps,
                    directory_size,
                    directory_offset,
                });
            }
            CRYPTO_HEADER => {
                let (Some(offset), Some(length)) = (be_u64(data, 0), be_u64(data, 8)) else {
                    return Err(bad(
                        at,
                        format!("encryption header pointer of {len} bytes is too short"),
                    ));
                };
                ext.crypto_header = Some((offset, length));
            }
            _ => {}
        }
        // Extension data is padded to a multiple of 8.
        at = data_start.saturating_add((len as usize).next_multiple_of(8));
    }
    Ok(())
}

/// A string stored without terminator; padding zeros (if any) are dropped.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

/// Names of the incompatible feature bits this reader does not know, from the feature
/// name table when it names them, else "bit N".
pub fn unknown_incompatible(header: &Header, ext: &Extensions) -> Vec<String> {
    let unknown = header.incompatible & !incompatible::KNOWN;
    (0..64u8)
        .filter(|bit| unknown & (1u64 << bit) != 0)
        .map(|bit| {
            ext.feature_names
                .iter()
                .find(|f| f.kind == 0 && f.bit == bit && !f.name.is_empty())
                .map(|f| format!("{} (bit {bit})", f.name))
                .unwrap_or_else(|| format!("bit {bit}"))
        })
        .collect()
}
