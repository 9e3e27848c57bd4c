//! VMDK output (`vdr convert -O vmdk --subformat ...`): picks the writer for the
//! subformat and builds the descriptor they share (VMware "Virtual Disk Format 1.1").
//!
//! - monolithicSparse (`vmdk_sparse.rs`): one hosted sparse extent, descriptor embedded,
//!   grains stored plain.
//! - streamOptimized (`vmdk_stream.rs`): one compressed sparse extent with markers, in
//!   VMware's layout (grain directory and footer at the end).
//! - monolithicFlat (`vmdk_flat.rs`): a descriptor file and a raw `-flat` extent.
//!
//! Both sparse subformats hold the disk in one extent, whose capacity is a 32-bit count of
//! sectors (VMware's limit, just under 2 TiB); a larger disk is refused, as is an empty one
//! (a sparse header of capacity 0 is how qemu recognises a descriptor-only file, so it
//! would not open). The sparse writers share the cluster pipeline with qcow2
//! (`clusters.rs`): workers read units, find all-zero grains and, for streamOptimized,
//! compress grains in parallel; the writer places them in unit order.

use std::fs::File;
use std::path::Path;

use crate::disk::VirtualDisk;
use crate::error::Error;

use super::compress::Codec;
use super::vmdk_descriptor::{extent_name, new_cid, Descriptor, ExtentKind};
use super::vmdk_extent::{GRAIN_BYTES, MAX_CAPACITY_SECTORS, SECTOR};
use super::vmdk_flat::convert_flat;
use super::vmdk_sparse::SparseWriter;
use super::vmdk_stream::StreamWriter;
use super::{convert_clusters, ConvertOptions, ConvertReport, VmdkSubformat};

/// Converts `disk` into the new, empty `file` at `out` (`path` is its display name).
pub(super) fn convert_vmdk(
    disk: &dyn VirtualDisk,
    file: File,
    out: &Path,
    path: &str,
    subformat: VmdkSubformat,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertReport, Error> {
    let cid = options.vmdk_cid.unwrap_or_else(new_cid);
    if subformat == VmdkSubformat::MonolithicFlat {
        return convert_flat(disk, file, out, cid, options, progress);
    }
    let size = disk.size();
    let capacity = size.div_ceil(SECTOR);
    let refuse = |what: String| Error::Output {
        path: path.to_string(),
        what,
    };
    if capacity == 0 {
        return Err(refuse(
            "an empty disk cannot be a sparse VMDK: a sparse extent of capacity 0 reads as a \
             descriptor-only file"
                .into(),
        ));
    }
    if capacity > MAX_CAPACITY_SECTORS {
        return Err(refuse(format!(
            "a {size}-byte disk does not fit one sparse extent (at most 2 TiB - 512 bytes); \
             use --subformat monolithicFlat"
        )));
    }
    let descriptor = Descriptor {
        cid,
        create_type: subformat.name(),
        sectors: capacity,
        extent: ExtentKind::Sparse,
        extent_name: extent_name(out, path)?,
    }
    .text();
    if subformat == VmdkSubformat::StreamOptimized {
        let mut writer = StreamWriter::new(file, path, size, capacity, &descriptor)?;
        convert_clusters(
            disk,
            path,
            GRAIN_BYTES,
            Some(Codec::VmdkZlib),
            options,
            progress,
            |offset, unit| writer.write_unit(offset, unit),
        )?;
        writer.finish()
    } else {
        let mut writer = SparseWriter::new(file, path, size, capacity, descriptor)?;
        convert_clusters(
            disk,
            path,
            GRAIN_BYTES,
            None,
            options,
            progress,
            |offset, unit| writer.write_unit(offset, unit),
        )?;
        writer.finish()
    }
}
