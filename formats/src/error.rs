//! The crate-level error: format errors wrap into it; every variant names the file, the
//! byte offset and the structure concerned.

use std::io;

/// Errors of opening and reading virtual disks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },

    #[error("{file}: read error at offset {offset:#x} ({structure}): {source}")]
    Io {
        file: String,
        offset: u64,
        structure: &'static str,
        source: io::Error,
    },

    #[error("{file}: not a format vdr knows (first bytes {magic})")]
    UnknownFormat { file: String, magic: String },

    #[error("{file}: virtual bytes {offset:#x}..{end:#x} are unreadable: {reason}", end = offset + len)]
    Unreadable {
        file: String,
        offset: u64,
        len: u64,
        reason: String,
    },

    #[error("{file}: request {offset:#x}+{len:#x} lies outside the disk of {size:#x} bytes")]
    OutOfRange {
        file: String,
        offset: u64,
        len: u64,
        size: u64,
    },

    #[error("{file}: backing chain deeper than {limit} layers")]
    ChainTooDeep { file: String, limit: usize },

    #[error("{file}: backing chain loops back to {again}")]
    ChainCycle { file: String, again: String },

    #[error("{child}: backing file '{name}' not found (looked for {looked_for}): {source}")]
    MissingParent {
        child: String,
        name: String,
        looked_for: String,
        source: Box<Error>,
    },

    #[error("{file}: {what} is not supported")]
    Unsupported { file: String, what: String },

    #[error(transparent)]
    Qcow2(#[from] crate::qcow2::Error),

    #[error(transparent)]
    Vmdk(#[from] crate::vmdk::Error),

    #[error(transparent)]
    Vmfs(#[from] crate::vmfs::Error),

    #[error("{child}: parentCID {expected} does not match the CID {found} of its parent {parent}: the parent changed after the child was made (salvage mode reads on with a finding)")]
    CidMismatch {
        child: String,
        parent: String,
        expected: String,
        found: String,
    },

    #[error("{path}: {what}")]
    Output { path: String, what: String },

    #[error("{path}: write failed: {source}")]
    Write { path: String, source: io::Error },
}

impl Error {
    /// An I/O error reading `structure` at `offset` of `file`.
    pub fn io(file: &str, offset: u64, structure: &'static str, source: io::Error) -> Error {
        Error::Io {
            file: file.to_string(),
            offset,
            structure,
            source,
        }
    }
}
