//! Opening images: detection, one layer, or a whole chain.

use std::path::Path;
use std::sync::Arc;

use crate::chain::{Chain, FileParentResolver, DEFAULT_MAX_DEPTH};
use crate::detect::{detect_format, Format};
use crate::disk::{ParseMode, VirtualDisk};
use crate::error::Error;
use crate::qcow2::Qcow2Disk;
use crate::raw::RawDisk;
use crate::source::{FileSource, FileSystem, FileSystemRef, HostFileSystem, SourceRef};

/// How to open an image.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub mode: ParseMode,
    /// Internal snapshot (qcow2) to read instead of the current state: a name or an ID.
    pub snapshot: Option<String>,
    /// Most layers a chain may have.
    pub max_depth: usize,
    /// Format to use instead of detecting it.
    pub format: Option<Format>,
    /// Follow backing files (a chain); false opens the named layer alone.
    pub follow_backing: bool,
    /// Let a VMDK descriptor name extents outside its own directory (absolute paths or
    /// `..`); refused by default so a crafted descriptor cannot make vdr read other files.
    pub allow_escaping_extents: bool,
    /// Where named files (extents, parents, data files) are opened; None = the host.
    pub file_system: Option<FileSystemRef>,
}

impl OpenOptions {
    /// Opens a file the image names, in the file system the image lives in.
    pub fn open_named(&self, path: &Path) -> std::io::Result<SourceRef> {
        match &self.file_system {
            Some(fs) => fs.0.open(path),
            None => HostFileSystem.open(path),
        }
    }

    /// The identity of a named file, for cycle detection.
    pub fn identity_of(&self, path: &Path) -> String {
        match &self.file_system {
            Some(fs) => fs.0.identity(path),
            None => HostFileSystem.identity(path),
        }
    }
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            mode: ParseMode::Strict,
            snapshot: None,
            max_depth: DEFAULT_MAX_DEPTH,
            format: None,
            follow_backing: true,
            allow_escaping_extents: false,
            file_system: None,
        }
    }
}

/// Opens one layer from `source`, detecting its format unless the options name one.
pub fn open_layer(source: SourceRef, options: &OpenOptions) -> Result<Arc<dyn VirtualDisk>, Error> {
    let format = match options.format {
        Some(f) => f,
        None => detect_format(source.as_ref())?,
    };
    match format {
        Format::Raw => Ok(Arc::new(RawDisk::new(source))),
        Format::Qcow2 => Ok(Arc::new(Qcow2Disk::open(source, options)?)),
        Format::VmdkSparse | Format::VmdkCowd | Format::VmdkDescriptor | Format::VmdkSeSparse => {
            Ok(Arc::new(crate::vmdk::open(source, options)?))
        }
        other => Err(Error::Unsupported {
            file: source.name().to_string(),
            what: format!("the {other:?} format"),
        }),
    }
}

/// Opens the file at `path` as one layer (read-only).
pub fn open_image(path: &Path, options: &OpenOptions) -> Result<Arc<dyn VirtualDisk>, Error> {
    let source = FileSource::open(path).map_err(|e| Error::Open {
        path: path.display().to_string(),
        source: e,
    })?;
    open_layer(Arc::new(source), options)
}

/// Opens the file at `path` and, unless told not to, its whole backing chain.
pub fn open_disk(path: &Path, options: &OpenOptions) -> Result<Chain, Error> {
    let leaf = open_image(path, options)?;
    if !options.follow_backing {
        return Ok(Chain::single(leaf));
    }
    let identity = std::fs::canonicalize(path)
        .ok()
        .map(|p| p.display().to_string());
    Chain::build(
        leaf,
        identity,
        &FileParentResolver::new(options),
        options.max_depth,
    )
}
