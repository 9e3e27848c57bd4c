//! The text descriptor of a written VMDK (VMware "Virtual Disk Format 1.1", "The
//! Descriptor File": header, extent description, disk database), embedded in a sparse
//! extent or, for monolithicFlat, the file the user names.
//!
//! The lines and their order are qemu's `vmdk_co_do_create` template, so the descriptors
//! look like the ones qemu-img writes with its defaults: `version=1`, no parent
//! (`parentCID=ffffffff`), one RW extent, `ddb.virtualHWVersion = "4"` (qemu's default,
//! the oldest hardware version, which every VMware product opens),
//! `ddb.adapterType = "ide"` with qemu's geometry for it (16 heads, 63 sectors per track,
//! cylinders = size / (16 × 63 × 512), not clamped, as qemu does) and qemu's
//! `ddb.toolsVersion`. The CID is printed as 8 hex digits, as VMware's own stream writer
//! does (qemu omits leading zeros; both read it with a hex scan).
//!
//! Extent file names are written between double quotes with no escape mechanism in the
//! format, so a name holding a quote or a line break (or one that is not UTF-8) is
//! refused rather than written into a descriptor that would name another file.

use std::path::Path;

use crate::error::Error;

/// `ddb.virtualHWVersion`: qemu's default.
const VIRTUAL_HW_VERSION: &str = "4";
/// `ddb.adapterType` and the heads VMware uses with it (qemu: 16 for ide, 255 otherwise).
const ADAPTER_TYPE: &str = "ide";
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;
/// `ddb.toolsVersion`: qemu's default.
const TOOLS_VERSION: &str = "2147483647";

/// Kinds of extent line this writer emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ExtentKind {
    /// `SPARSE`: the extent is a hosted sparse extent (here: the file itself).
    Sparse,
    /// `FLAT ... 0`: raw data from offset 0 of the named file.
    Flat,
}

/// A descriptor for one extent of `sectors` sectors in the file `extent_name`.
pub(super) struct Descriptor<'a> {
    pub cid: u32,
    pub create_type: &'a str,
    pub sectors: u64,
    pub extent: ExtentKind,
    pub extent_name: &'a str,
}

impl Descriptor<'_> {
    /// The descriptor text (lines end with "\n").
    pub fn text(&self) -> String {
        let extent = match self.extent {
            ExtentKind::Sparse => format!("RW {} SPARSE \"{}\"", self.sectors, self.extent_name),
            ExtentKind::Flat => format!("RW {} FLAT \"{}\" 0", self.sectors, self.extent_name),
        };
        let cylinders = self.sectors * 512 / (HEADS * SECTORS_PER_TRACK * 512);
        format!(
            "# Disk DescriptorFile\n\
             version=1\n\
             CID={cid:08x}\n\
             parentCID=ffffffff\n\
             createType=\"{create_type}\"\n\
             \n\
             # Extent description\n\
             {extent}\n\
             \n\
             # The Disk Data Base\n\
             #DDB\n\
             \n\
             ddb.virtualHWVersion = \"{VIRTUAL_HW_VERSION}\"\n\
             ddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"{HEADS}\"\n\
             ddb.geometry.sectors = \"{SECTORS_PER_TRACK}\"\n\
             ddb.adapterType = \"{ADAPTER_TYPE}\"\n\
             ddb.toolsVersion = \"{TOOLS_VERSION}\"\n",
            cid = self.cid,
            create_type = self.create_type,
        )
    }
}

/// The file name of `path` as it may appear in an extent line.
pub(super) fn extent_name<'a>(path: &'a Path, shown: &str) -> Result<&'a str, Error> {
    let refuse = |why: &str| Error::Output {
        path: shown.to_string(),
        what: format!("the extent file name {why}; a VMDK descriptor cannot record it"),
    };
    let name = path
        .file_name()
        .ok_or_else(|| refuse("is missing"))?
        .to_str()
        .ok_or_else(|| refuse("is not UTF-8"))?;
    if name.contains(['"', '\n', '\r']) {
        return Err(refuse("holds a quote or a line break"));
    }
    Ok(name)
}

/// A content ID for a new disk when the caller gave none: different from run to run (the
/// clock and the process id, mixed), never one of the values with a meaning
/// (`ffffffff` "no parent", `fffffffe` "use the long content ID").
pub(super) fn new_cid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    match hasher.finalize() {
        0xffff_fffe | 0xffff_ffff => 0x1234_5678,
        cid => cid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_has_qemus_lines_and_geometry() {
        let d = Descriptor {
            cid: 0xab,
            create_type: "streamOptimized",
            sectors: 8 << 20,
            extent: ExtentKind::Sparse,
            extent_name: "disk.vmdk",
        };
        let text = d.text();
        assert!(text.starts_with("# Disk DescriptorFile\nversion=1\nCID=000000ab\n"));
        assert!(text.contains("createType=\"streamOptimized\"\n"));
        assert!(text.contains("\nRW 8388608 SPARSE \"disk.vmdk\"\n"));
        // 4 GiB / (16 * 63 * 512) = 8322
        assert!(text.contains("ddb.geometry.cylinders = \"8322\"\n"));
        assert!(text.contains("ddb.virtualHWVersion = \"4\"\n"));
    }

    #[test]
    fn flat_extent_line_names_the_offset() {
        let d = Descriptor {
            cid: 1,
            create_type: "monolithicFlat",
            sectors: 100,
            extent: ExtentKind::Flat,
            extent_name: "d-flat.vmdk",
        };
        assert!(d.text().contains("\nRW 100 FLAT \"d-flat.vmdk\" 0\n"));
    }

    #[test]
    fn names_that_a_descriptor_cannot_hold_are_refused() {
        assert_eq!(
            extent_name(Path::new("/x/a b.vmdk"), "o").unwrap(),
            "a b.vmdk"
        );
        assert!(extent_name(Path::new("/x/a\"b.vmdk"), "o").is_err());
        assert!(extent_name(Path::new("/x/a\nb.vmdk"), "o").is_err());
    }

    #[test]
    fn generated_cids_avoid_the_reserved_values() {
        let cid = new_cid();
        assert!(cid != 0xffff_ffff && cid != 0xffff_fffe);
    }
}
