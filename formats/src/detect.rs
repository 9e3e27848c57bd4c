//! Format detection from the first bytes: the one place that decides what a file is.

use std::fmt;

use serde::Serialize;

use crate::error::Error;
use crate::source::Source;

/// Formats vdr can recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    /// QCOW version 1 (recognised, not read).
    Qcow1,
    /// A VMDK sparse extent ("KDMV").
    VmdkSparse,
    /// A VMDK COWD (vmfsSparse) extent.
    VmdkCowd,
    /// A VMDK text descriptor.
    VmdkDescriptor,
    /// A VMware seSparse extent.
    VmdkSeSparse,
}

impl Format {
    /// Any VMDK file: descriptor, hosted sparse, COWD or seSparse extent.
    pub fn is_vmdk(self) -> bool {
        matches!(
            self,
            Format::VmdkDescriptor | Format::VmdkSparse | Format::VmdkCowd | Format::VmdkSeSparse
        )
    }

    /// A VMDK a disk is opened by (a descriptor, or a hosted sparse file with its embedded
    /// one), not an extent a descriptor names.
    pub fn is_vmdk_entry_point(self) -> bool {
        matches!(self, Format::VmdkDescriptor | Format::VmdkSparse)
    }

    /// The name users type and reports show.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow1 => "qcow",
            Format::VmdkSparse
            | Format::VmdkCowd
            | Format::VmdkDescriptor
            | Format::VmdkSeSparse => "vmdk",
        }
    }

    /// Parses a user-given format name (`-f qcow2`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vmdk" => Some(Format::VmdkDescriptor),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Magic of qcow and qcow2 images ("QFI\xfb"), big-endian u32 then the version.
const QCOW_MAGIC: [u8; 4] = *b"QFI\xfb";
/// VMDK sparse extent magic ("KDMV" as little-endian u32 0x564d444b).
const VMDK_SPARSE_MAGIC: [u8; 4] = *b"KDMV";
const VMDK_COWD_MAGIC: [u8; 4] = *b"COWD";
/// seSparse constant header magic 0x00000000cafebabe, little-endian u64.
const SESPARSE_MAGIC: [u8; 8] = [0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0];

/// Decides the format from the first bytes of `source`. Anything unrecognised is raw: a
/// raw disk has no magic, so this never fails on content, only on I/O.
pub fn detect_format(source: &dyn Source) -> Result<Format, Error> {
    let mut head = [0u8; 512];
    let n = source
        .read_at(&mut head, 0)
        .map_err(|e| Error::io(source.name(), 0, "format magic", e))?;
    Ok(detect_bytes(&head[..n]))
}

/// Format detection on a byte prefix.
pub fn detect_bytes(head: &[u8]) -> Format {
    if head.len() >= 8 && head[..4] == QCOW_MAGIC {
        return match u32::from_be_bytes([head[4], head[5], head[6], head[7]]) {
            1 => Format::Qcow1,
            _ => Format::Qcow2,
        };
    }
    if head.len() >= 4 && head[..4] == VMDK_SPARSE_MAGIC {
        return Format::VmdkSparse;
    }
    if head.len() >= 4 && head[..4] == VMDK_COWD_MAGIC {
        return Format::VmdkCowd;
    }
    if head.len() >= 8 && head[..8] == SESPARSE_MAGIC {
        return Format::VmdkSeSparse;
    }
    if looks_like_vmdk_descriptor(head) {
        return Format::VmdkDescriptor;
    }
    Format::Raw
}

fn looks_like_vmdk_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    text.trim_start().starts_with("# Disk DescriptorFile")
        || text.lines().take(20).any(|l| {
            let l = l.trim_start();
            l.starts_with("createType") || l.starts_with("parentCID")
        }) && text.contains("version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_magic_is_detected() {
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x03rest"), Format::Qcow2);
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x02"), Format::Qcow2);
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x01"), Format::Qcow1);
    }

    #[test]
    fn vmdk_magics_are_detected() {
        assert_eq!(detect_bytes(b"KDMV\x01\0\0\0"), Format::VmdkSparse);
        assert_eq!(detect_bytes(b"COWD\x01\0\0\0"), Format::VmdkCowd);
        assert_eq!(
            detect_bytes(b"# Disk DescriptorFile\nversion=1\n"),
            Format::VmdkDescriptor
        );
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(detect_bytes(&[0u8; 512]), Format::Raw);
        assert_eq!(detect_bytes(b""), Format::Raw);
    }
}
