//! vdr-formats: read-only access to virtual disk formats, and the writers used by
//! `vdr convert`.
//!
//! What it is for: turning bytes from evidence (a file, a mapped file, a byte slice, later a
//! file inside a VMFS volume) into a [`VirtualDisk`]: a virtual size, a classified extent
//! map and positional reads. Backing chains of any format are overlaid by [`Chain`].
//!
//! What it is not for: command-line handling, progress display, FUSE or KVM. Nothing here
//! opens an input for writing; the writers in [`write`] create new files only.

pub mod chain;
pub mod detect;
pub mod disk;
pub mod error;
pub mod inflate;
pub mod open;
pub mod partition;
pub mod qcow2;
pub mod raw;
pub mod source;
pub mod vmdk;
pub mod vmfs;
pub mod write;
pub mod xfs;

pub use chain::{Chain, FileParentResolver, ParentResolver, DEFAULT_MAX_DEPTH};
pub use detect::{detect_bytes, detect_format, Format};
pub use disk::{
    DiskInfo, Extent, ExtentKind, Finding, ParentRef, ParseMode, Severity, SnapshotInfo,
    VirtualDisk,
};
pub use error::Error;
pub use open::{open_disk, open_image, open_layer, OpenOptions};
pub use source::{FileSource, MmapSource, SliceSource, Source, SourceRef};
pub use write::{
    convert, flat_extent_path, Compression, ConvertOptions, ConvertReport, OutputFormat,
    UnreadablePolicy, VmdkSubformat,
};
