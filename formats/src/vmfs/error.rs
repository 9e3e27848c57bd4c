//! VMFS errors: each names the device or volume file, the byte offset and the structure.

use std::io;

/// What went wrong reading a VMFS volume.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: no VMFS volume found ({why})")]
    NoVolume { file: String, why: String },

    #[error("{file}: read error at offset {offset:#x} ({structure}): {source}")]
    Io {
        file: String,
        offset: u64,
        structure: &'static str,
        source: io::Error,
    },

    #[error("{file}: bad {structure} at offset {offset:#x}: {what}")]
    Bad {
        file: String,
        offset: u64,
        structure: &'static str,
        what: String,
    },

    #[error("{volume}: {path}: no such file or directory")]
    NotFound { volume: String, path: String },

    #[error("{volume}: {path}: not a directory")]
    NotADirectory { volume: String, path: String },

    #[error("{volume}: {path}: is a directory")]
    IsADirectory { volume: String, path: String },

    #[error("{volume}: {path}: directory loop: it contains FD {fd:#x}, which is one of its own ancestors")]
    DirectoryLoop {
        volume: String,
        path: String,
        fd: u32,
    },

    #[error("{volume}: {path}: raw device mapping: the data lives on the mapped LUN ({lun}), not in the datastore")]
    RawDeviceMapping {
        volume: String,
        path: String,
        lun: String,
    },

    #[error("{volume}: the volume spans {expected} devices (LVM numDevs) but only {given} were given; missing: {missing}")]
    MissingExtents {
        volume: String,
        expected: u32,
        given: usize,
        missing: String,
    },

    #[error("{volume}: {path}: file bytes {offset:#x}..{end:#x} are unreadable: {reason}", end = offset + len)]
    Unreadable {
        volume: String,
        path: String,
        offset: u64,
        len: u64,
        reason: String,
    },
}

impl Error {
    pub(crate) fn bad(
        file: &str,
        offset: u64,
        structure: &'static str,
        what: impl Into<String>,
    ) -> Error {
        Error::Bad {
            file: file.to_string(),
            offset,
            structure,
            what: what.into(),
        }
    }

    pub(crate) fn io(file: &str, offset: u64, structure: &'static str, source: io::Error) -> Error {
        Error::Io {
            file: file.to_string(),
            offset,
            structure,
            source,
        }
    }
}
