//! Opening a VMDK: from a text descriptor (extents resolved relative to it), from a sparse
//! extent with an embedded descriptor (monolithicSparse, streamOptimized: the embedded
//! extent is used even when the extent line names another file), or from a bare COWD or
//! seSparse delta (which carry their own capacity).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::detect::{detect_format, Format};
use crate::disk::{ParentRef, ParseMode, Severity};
use crate::error::Error as CrateError;
use crate::open::OpenOptions;
use crate::source::SourceRef;

use super::descriptor::{Access, Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_BYTES};
use super::{cowd, sesparse, sparse, DiskExtent, Error, ExtentData, Log, SparseData, VmdkDisk};

/// Opens the VMDK in `source`, whichever of its forms it is.
pub fn open(source: SourceRef, options: &OpenOptions) -> Result<VmdkDisk, CrateError> {
    let log = Arc::new(Log::new(options.mode));
    let file = source.name().to_string();
    match detect_format(source.as_ref())? {
        Format::VmdkSparse => {
            let raw = sparse::read_raw(&source)?;
            if let Some((at, len)) = sparse::descriptor_only(&raw) {
                let bytes = read_text(&source, at, len.min(MAX_DESCRIPTOR_BYTES))?;
                return from_descriptor(source, &bytes, options, log);
            }
            monolithic(source, log)
        }
        Format::VmdkCowd => {
            let sparse = cowd::open(source.clone(), log.clone())?;
            alone(source, sparse, log, "vmfsSparse")
        }
        Format::VmdkSeSparse => {
            let sparse = sesparse::open(source.clone(), log.clone())?;
            alone(source, sparse, log, "seSparse")
        }
        Format::Qcow2 | Format::Qcow1 => Err(CrateError::Unsupported {
            file,
            what: "reading a qcow image as a VMDK".into(),
        }),
        Format::VmdkDescriptor | Format::Raw => {
            let len = source.len();
            if len > MAX_DESCRIPTOR_BYTES {
                return Err(Error::TooLarge {
                    file,
                    what: "descriptor file bytes",
                    value: len,
                    limit: MAX_DESCRIPTOR_BYTES,
                }
                .into());
            }
            let bytes = read_text(&source, 0, len)?;
            from_descriptor(source, &bytes, options, log)
        }
    }
}

fn read_text(source: &SourceRef, at: u64, len: u64) -> Result<Vec<u8>, CrateError> {
    let len = len.min(source.len().saturating_sub(at));
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    source
        .read_exact_at(&mut bytes, at)
        .map_err(|e| CrateError::io(source.name(), at, "descriptor", e))?;
    Ok(bytes)
}

/// Parses a descriptor, refusing (strict) or recording (salvage) lines it cannot read.
fn parse(file: &str, bytes: &[u8], log: &Log) -> Result<Descriptor, CrateError> {
    let d = Descriptor::parse(bytes);
    for p in &d.problems {
        if log.mode == ParseMode::Strict {
            return Err(Error::Descriptor {
                file: file.to_string(),
                line: p.line,
                what: p.what.clone(),
            }
            .into());
        }
        let what = format!("line {}: {}; the line is ignored", p.line, p.what);
        log.record(file, 0, Severity::Warning, "descriptor", what);
    }
    Ok(d)
}

/// The parent a descriptor names.
fn parent_of(file: &str, d: &Descriptor, log: &Log) -> Result<Option<ParentRef>, CrateError> {
    if !d.has_parent() {
        return Ok(None);
    }
    match &d.parent_file_name_hint {
        Some(name) if !name.is_empty() => Ok(Some(ParentRef {
            name: name.clone(),
            format: Some("vmdk".into()),
        })),
        _ => {
            let what = "names a parentCID but no parentFileNameHint: the parent cannot be found; unallocated grains read as zeros".to_string();
            log.damage(file, "descriptor", 0, what)?;
            Ok(None)
        }
    }
}

/// A monolithic sparse extent: the extent itself, described by its embedded descriptor.
fn monolithic(source: SourceRef, log: Arc<Log>) -> Result<VmdkDisk, CrateError> {
    let file = source.name().to_string();
    let opened = sparse::open(source.clone(), log.clone())?;
    let descriptor = match &opened.descriptor {
        Some(bytes) => Some(parse(&file, bytes, &log)?),
        None => None,
    };
    let descriptor = descriptor.filter(|d| !d.is_empty());
    let Some(descriptor) = descriptor else {
        let what = "this sparse extent has no embedded descriptor: it is one extent of a split disk (twoGbMaxExtentSparse, \"-s001.vmdk\") or a monolithic disk whose descriptor was lost; open the disk's descriptor file instead (salvage mode reads the extent alone)".to_string();
        if log.mode == ParseMode::Strict {
            return Err(Error::LoneExtent { file, what }.into());
        }
        log.record(
            &file,
            opened.header.descriptor_at,
            Severity::Warning,
            "embedded descriptor",
            what,
        );
        let data = hosted(opened);
        return alone(source, data, log, "monolithicSparse");
    };
    let parent = parent_of(&file, &descriptor, &log)?;
    let capacity = opened.header.capacity;
    let create_type = descriptor.create_type.clone().unwrap_or_else(|| {
        if opened.header.compressed {
            "streamOptimized"
        } else {
            "monolithicSparse"
        }
        .into()
    });
    let line = descriptor.extents.first().cloned();
    Ok(VmdkDisk {
        file,
        extents: vec![DiskExtent {
            start: 0,
            len: capacity,
            line,
            data: ExtentData::Sparse(Box::new(hosted(opened))),
        }],
        size: capacity,
        source,
        descriptor: Some(descriptor),
        create_type,
        parent,
        log,
    })
}

fn hosted(opened: sparse::SparseExtent) -> SparseData {
    let h = opened.header;
    let mut metadata = vec![(0, 512, "header")];
    if h.descriptor_len > 0 {
        metadata.push((h.descriptor_at, h.descriptor_len, "embedded descriptor"));
    }
    if opened.tables.stream.is_none() {
        metadata.push((h.gd_at, h.gd_entries * 4, "grain directory"));
        if let Some(r) = h.rgd_at {
            metadata.push((r, h.gd_entries * 4, "redundant grain directory"));
        }
    }
    SparseData {
        kind: format!("hosted sparse v{}", h.version),
        tables: opened.tables,
        header: Some(h),
        metadata,
    }
}

/// A disk made of one sparse extent opened without a descriptor.
fn alone(
    source: SourceRef,
    data: SparseData,
    log: Arc<Log>,
    create_type: &str,
) -> Result<VmdkDisk, CrateError> {
    let file = source.name().to_string();
    let size = data.tables.geometry.capacity;
    if create_type != "monolithicSparse" {
        let what = format!(
            "a bare {create_type} extent without a descriptor: read as a disk of its own capacity; a parent, if it had one, is unknown and unallocated grains read as zeros"
        );
        log.record(&file, 0, Severity::Info, "extent", what);
    }
    Ok(VmdkDisk {
        file,
        extents: vec![DiskExtent {
            start: 0,
            len: size,
            line: None,
            data: ExtentData::Sparse(Box::new(data)),
        }],
        size,
        source,
        descriptor: None,
        create_type: create_type.to_string(),
        parent: None,
        log,
    })
}

/// A disk described by a text descriptor.
fn from_descriptor(
    source: SourceRef,
    bytes: &[u8],
    options: &OpenOptions,
    log: Arc<Log>,
) -> Result<VmdkDisk, CrateError> {
    let file = source.name().to_string();
    let descriptor = parse(&file, bytes, &log)?;
    if descriptor.extents.is_empty() {
        return Err(Error::Descriptor {
            file,
            line: 0,
            what: "the descriptor has no extent lines".into(),
        }
        .into());
    }
    let dir = source.path().and_then(Path::parent).map(Path::to_path_buf);
    let mut extents = Vec::with_capacity(descriptor.extents.len());
    let mut start = 0u64;
    for line in &descriptor.extents {
        let len = line
            .sectors
            .checked_mul(512)
            .filter(|l| start.checked_add(*l).is_some_and(|e| e <= i64::MAX as u64))
            .ok_or_else(|| Error::Descriptor {
                file: file.clone(),
                line: line.line,
                what: format!(
                    "extent of {} sectors makes the disk too large",
                    line.sectors
                ),
            })?;
        if len == 0 {
            continue;
        }
        for (offset, piece_len, data) in
            open_extent(&file, dir.as_deref(), &descriptor, line, len, options, &log)?
        {
            extents.push(DiskExtent {
                start: start + offset,
                len: piece_len,
                line: Some(line.clone()),
                data,
            });
        }
        start += len;
    }
    let parent = parent_of(&file, &descriptor, &log)?;
    let create_type = descriptor.create_type.clone().unwrap_or_default();
    Ok(VmdkDisk {
        file,
        source,
        descriptor: Some(descriptor),
        create_type,
        extents,
        size: start,
        parent,
        log,
    })
}

/// Where an extent named `name` lives, refusing names that leave `dir` unless allowed.
fn resolve(
    file: &str,
    dir: Option<&Path>,
    descriptor: &Descriptor,
    line: &ExtentLine,
    options: &OpenOptions,
) -> Result<PathBuf, CrateError> {
    use std::os::unix::ffi::OsStrExt;
    let name = line.file.clone().unwrap_or_default();
    let bytes = descriptor.file_name_bytes(&name);
    let p = Path::new(std::ffi::OsStr::from_bytes(&bytes));
    let escapes = p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir));
    if escapes && !options.allow_escaping_extents {
        return Err(Error::EscapingExtent {
            file: file.to_string(),
            name,
            line: line.line,
        }
        .into());
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match dir {
        Some(d) => Ok(d.join(p)),
        None => Err(CrateError::Unsupported {
            file: file.to_string(),
            what: format!(
                "resolving extent '{name}' of a descriptor that was not opened from a file"
            ),
        }),
    }
}

/// Opens one extent line; returns its pieces as (offset in the extent, length, data).
fn open_extent(
    file: &str,
    dir: Option<&Path>,
    descriptor: &Descriptor,
    line: &ExtentLine,
    len: u64,
    options: &OpenOptions,
    log: &Arc<Log>,
) -> Result<Vec<(u64, u64, ExtentData)>, CrateError> {
    let whole = |data| Ok(vec![(0, len, data)]);
    if line.access == Access::NoAccess {
        return whole(ExtentData::Unreadable(format!(
            "extent on descriptor line {} is NOACCESS",
            line.line
        )));
    }
    match line.kind {
        ExtentType::Zero => return whole(ExtentData::Zero),
        ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
            let device = line.file.clone().unwrap_or_default();
            return whole(ExtentData::Unreadable(format!(
                "raw device mapping ({}) to '{device}': the data is on that device, not in an image file; vdr does not read devices through mappings",
                line.kind.name()
            )));
        }
        _ => {}
    }
    let path = resolve(file, dir, descriptor, line, options)?;
    let name = line.file.clone().unwrap_or_default();
    let extent: SourceRef = match options.open_named(&path) {
        Ok(opened) => opened,
        // Salvage reads the other extents and reports this one's range as unreadable.
        Err(e) if options.mode == ParseMode::Salvage => {
            let what = format!(
                "extent '{name}' (descriptor line {}) cannot be opened at {}: {e}; its {len} bytes are unreadable",
                line.line,
                path.display()
            );
            let reason = log.damage(file, "extent", 0, what)?;
            return whole(ExtentData::Unreadable(reason));
        }
        Err(e) => {
            return Err(Error::MissingExtent {
                file: file.to_string(),
                name: name.clone(),
                line: line.line,
                path: path.display().to_string(),
                source: e,
            }
            .into())
        }
    };
    let data = match line.kind {
        ExtentType::Flat | ExtentType::Vmfs => {
            let at = line.offset.checked_mul(512).ok_or_else(|| Error::Descriptor {
                file: file.to_string(),
                line: line.line,
                what: format!("offset {} overflows", line.offset),
            })?;
            let have = extent.len().saturating_sub(at).min(len);
            if have < len {
                let what = format!(
                    "flat extent '{name}' holds {have:#x} of the {len:#x} bytes the descriptor gives it (from {at:#x})"
                );
                let reason = log.damage(extent.name(), "flat extent", at, what)?;
                let mut out = Vec::new();
                if have > 0 {
                    out.push((0, have, ExtentData::Flat { source: extent, at }));
                }
                out.push((have, len - have, ExtentData::Unreadable(reason)));
                return Ok(out);
            }
            ExtentData::Flat { source: extent, at }
        }
        ExtentType::SeSparse => ExtentData::Sparse(Box::new(sesparse::open(extent, log.clone())?)),
        _ => match detect_format(extent.as_ref())? {
            Format::VmdkCowd => ExtentData::Sparse(Box::new(cowd::open(extent, log.clone())?)),
            Format::VmdkSparse => {
                let opened = sparse::open(extent, log.clone())?;
                ExtentData::Sparse(Box::new(hosted(opened)))
            }
            other => {
                return Err(Error::Header {
                    file: path.display().to_string(),
                    offset: 0,
                    what: format!(
                        "extent '{name}' (descriptor line {}) is a {} extent but holds no sparse header (detected: {other})",
                        line.line,
                        line.kind.name()
                    ),
                }
                .into())
            }
        },
    };
    if let ExtentData::Sparse(s) = &data {
        let capacity = s.tables.geometry.capacity;
        if capacity < len {
            let what = format!(
                "capacity {capacity:#x} is smaller than the {len:#x} bytes descriptor line {} gives the extent",
                line.line
            );
            let reason = log.damage(&s.tables.file, "sparse extent header", 0, what)?;
            return Ok(vec![
                (0, capacity, data),
                (capacity, len - capacity, ExtentData::Unreadable(reason)),
            ]);
        }
    }
    whole(data)
}
