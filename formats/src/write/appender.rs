//! An append-only output stream with a byte cursor, for the qcow2 writer: small pieces
//! (compressed clusters of a few KiB, L2 tables) are gathered into large `pwrite`s.
//! Nothing here seeks back; the two fixed structures at the front of the file (header and
//! L1 table) are written at the end with [`Appender::write_at`].

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::Error;

use super::raw::write_error;

/// Gathered bytes are written out once this many are pending.
const FLUSH_AT: usize = 4 << 20;

pub(super) struct Appender<'a> {
    file: File,
    path: &'a str,
    /// Offset in the file of `pending[0]`.
    pending_at: u64,
    pending: Vec<u8>,
}

impl<'a> Appender<'a> {
    /// Appends from `start` on (the bytes before it are written later with `write_at`).
    pub fn new(file: File, path: &'a str, start: u64) -> Appender<'a> {
        Appender {
            file,
            path,
            pending_at: start,
            pending: Vec::with_capacity(FLUSH_AT),
        }
    }

    /// Offset of the next byte appended.
    pub fn pos(&self) -> u64 {
        self.pending_at + self.pending.len() as u64
    }

    /// Appends `bytes` at [`Appender::pos`].
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.pending.is_empty() && bytes.len() >= FLUSH_AT {
            self.file
                .write_all_at(bytes, self.pending_at)
                .map_err(|e| write_error(self.path, e))?;
            self.pending_at += bytes.len() as u64;
            return Ok(());
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends `bytes` with a write of their own, without copying them (what is pending
    /// goes first).
    pub fn append_direct(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.flush()?;
        self.file
            .write_all_at(bytes, self.pending_at)
            .map_err(|e| write_error(self.path, e))?;
        self.pending_at += bytes.len() as u64;
        Ok(())
    }

    /// Appends zeros up to the next multiple of `align` (a power of two).
    pub fn align(&mut self, align: u64) -> Result<(), Error> {
        let pad = self.pos().next_multiple_of(align) - self.pos();
        let pad = usize::try_from(pad).map_err(|_| self.error("alignment overflow"))?;
        self.pending.resize(self.pending.len() + pad, 0);
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is pending.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.pending.is_empty() {
            self.file
                .write_all_at(&self.pending, self.pending_at)
                .map_err(|e| write_error(self.path, e))?;
            self.pending_at += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes `bytes` at `at`, which must lie before everything appended so far.
    pub fn write_at(&mut self, bytes: &[u8], at: u64) -> Result<(), Error> {
        self.flush()?;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| write_error(self.path, e))
    }

    /// An output error naming the file.
    pub fn error(&self, what: &str) -> Error {
        Error::Output {
            path: self.path.to_string(),
            what: what.to_string(),
        }
    }
}
