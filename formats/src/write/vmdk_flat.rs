//! The monolithicFlat writer: a text descriptor (the file the user names) and one flat
//! extent holding the raw disk (VMware "Virtual Disk Format 1.1", "Simple Extents"; the
//! extent line `RW <sectors> FLAT "<name>" 0`).
//!
//! The extent file is named as qemu names it (`vmdk_co_create_opts_cb`): the descriptor's
//! name with `-flat` put before its extension (`disk.vmdk` → `disk-flat.vmdk`), in the
//! same directory, recorded in the descriptor by its bare name (relative to the
//! descriptor). Its content is written by the sparse raw writer (`raw.rs`: holes for
//! zeros, `copy_file_range` for long data runs) and its length rounded up to whole
//! sectors, as the extent line counts sectors. The extent file is created with
//! `create_new` like every output, and removed again when the conversion fails.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::disk::VirtualDisk;
use crate::error::Error;

use super::raw::write_error;
use super::vmdk_descriptor::{extent_name, Descriptor, ExtentKind};
use super::vmdk_extent::SECTOR;
use super::{convert_raw, ConvertOptions, ConvertReport};

/// The flat extent file that goes with the descriptor at `descriptor`: its name with
/// `-flat` before the extension, beside it.
pub fn flat_extent_path(descriptor: &Path) -> PathBuf {
    let name = descriptor
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let flat = match name.rfind('.') {
        Some(dot) => format!("{}-flat{}", &name[..dot], &name[dot..]),
        None => format!("{name}-flat"),
    };
    descriptor.with_file_name(flat)
}

/// Writes the disk into the flat extent beside `out` and the descriptor into
/// `descriptor_file` (the new, empty file at `out`).
pub(super) fn convert_flat(
    disk: &dyn VirtualDisk,
    descriptor_file: File,
    out: &Path,
    cid: u32,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertReport, Error> {
    let shown = out.display().to_string();
    let data_path = flat_extent_path(out);
    let name = extent_name(&data_path, &shown)?;
    let data_shown = data_path.display().to_string();
    let data = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&data_path)
        .map_err(|source| Error::Write {
            path: data_shown.clone(),
            source,
        })?;
    let sectors = disk.size().div_ceil(SECTOR);
    let result = (|| {
        let handle = data.try_clone().map_err(|e| write_error(&data_shown, e))?;
        let mut report = convert_raw(disk, handle, &data_shown, options, progress)?;
        data.set_len(sectors * SECTOR)
            .map_err(|e| write_error(&data_shown, e))?;
        let text = Descriptor {
            cid,
            create_type: "monolithicFlat",
            sectors,
            extent: ExtentKind::Flat,
            extent_name: name,
        }
        .text();
        descriptor_file
            .write_all_at(text.as_bytes(), 0)
            .map_err(|e| write_error(&shown, e))?;
        report.output_size = sectors * SECTOR + text.len() as u64;
        Ok(report)
    })();
    if result.is_err() {
        // Ours to remove: create_new made it. A removal failure leaves the error as it is.
        let _ = std::fs::remove_file(&data_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_extent_is_named_as_qemu_names_it() {
        assert_eq!(
            flat_extent_path(Path::new("/d/disk.vmdk")),
            Path::new("/d/disk-flat.vmdk")
        );
        assert_eq!(
            flat_extent_path(Path::new("a.b.img")),
            Path::new("a.b-flat.img")
        );
        assert_eq!(flat_extent_path(Path::new("disk")), Path::new("disk-flat"));
    }
}
