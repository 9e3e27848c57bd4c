//! Reads served without copying through user space: a data run of a structured read
//! whose extents are all stored data in plain files (a raw image, the data clusters of a
//! qcow2, flat VMDK extents) goes out as its chunk header followed by each host range,
//! sent from the page cache to the socket with `sendfile(2)`.
//!
//! Why: a copy through the server otherwise moves every byte twice more than a direct
//! copy (page cache to the server, server to the socket) and on a busy machine that CPU
//! time is what the client waits for. Other data (compressed, or in sources that are
//! not plain files) is read into the reply buffer as before.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use vdr_formats::source::SourceRef;
use vdr_formats::{Extent, ExtentKind};

use super::server::Stream;

/// One host range of a read: `len` bytes at `at` in `source`'s plain file.
pub(crate) struct FileRange {
    source: SourceRef,
    at: u64,
    len: u64,
}

/// The host ranges behind `extents` (which must cover `len` bytes), when every one is
/// stored data in a plain file.
pub(crate) fn file_ranges(extents: &[Extent], len: u64) -> Option<Vec<FileRange>> {
    let mut ranges = Vec::with_capacity(extents.len());
    let mut covered = 0u64;
    for extent in extents {
        let ExtentKind::Data { source, at } = &extent.kind else {
            return None;
        };
        source.as_file()?;
        covered = covered.checked_add(extent.len)?;
        ranges.push(FileRange {
            source: source.clone(),
            at: *at,
            len: extent.len,
        });
    }
    (covered == len).then_some(ranges)
}

/// One piece of a reply.
pub(crate) enum Part {
    /// A range of the reply buffer (chunk headers, holes, errors, buffered data).
    Bytes(Range<usize>),
    /// Data sent straight from a file.
    File(FileRange),
}

/// Sends the parts of a reply in order. An error part-way leaves the client waiting for
/// data that will not come: the caller must close the connection.
pub(crate) fn send(stream: &Stream, buf: &[u8], parts: &[Part]) -> io::Result<()> {
    let socket = stream.as_raw_fd();
    for (i, part) in parts.iter().enumerate() {
        match part {
            Part::Bytes(range) => {
                let bytes = buf
                    .get(range.clone())
                    .ok_or_else(|| io::Error::other("reply part out of range"))?;
                // more to come: let the kernel put it in one segment with what follows
                let more = if i + 1 < parts.len() {
                    libc::MSG_MORE
                } else {
                    0
                };
                send_bytes(socket, bytes, more)?;
            }
            Part::File(range) => send_file(socket, range)?,
        }
    }
    Ok(())
}

fn send_bytes(socket: RawFd, bytes: &[u8], flags: libc::c_int) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is valid for reading `rest.len()` bytes during the call.
        let n = unsafe {
            libc::send(
                socket,
                rest.as_ptr().cast(),
                rest.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => sent += n,
            Err(_) => retry_or_fail()?,
        }
    }
    Ok(())
}

fn send_file(socket: RawFd, range: &FileRange) -> io::Result<()> {
    let Some(file) = range.source.as_file() else {
        return Err(io::Error::other("source lost its file"));
    };
    let mut offset = libc::off_t::try_from(range.at).map_err(io::Error::other)?;
    let mut left = range.len;
    while left > 0 {
        let count = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open for the duration of the call (`file` is
        // borrowed from the source, the socket from the caller's stream) and `offset` is
        // a valid off_t the kernel updates.
        let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut offset, count) };
        match u64::try_from(n) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: ends before {:#x}", range.source.name(), offset),
                ))
            }
            Ok(n) => left = left.saturating_sub(n),
            Err(_) => retry_or_fail()?,
        }
    }
    Ok(())
}

/// After a failed call: Ok to retry on EINTR, else the error.
fn retry_or_fail() -> io::Result<()> {
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::Interrupted {
        Ok(())
    } else {
        Err(err)
    }
}
