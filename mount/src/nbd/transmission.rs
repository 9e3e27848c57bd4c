//! The transmission phase of one connection: requests are read in order by one thread
//! and reads and block-status queries are answered by a few workers, so a client that
//! keeps several requests in flight (qemu-img keeps up to 16) gets them served in
//! parallel. Each reply is assembled whole and written under the stream's lock, so
//! replies never interleave.

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread;

use vdr_formats::{ExtentKind, VirtualDisk};

use super::handshake::{Session, BASE_ALLOCATION_ID};
use super::proto::{self, Request};
use super::server::Stream;
use super::{Export, MAX_PAYLOAD};

/// Worker threads per connection.
const WORKERS: usize = 4;
/// At most this many descriptors in one block status reply (the spec says at most 2^20).
const MAX_DESCRIPTORS: usize = 1 << 16;

/// What one connection shares between its reader and its workers.
struct Connection<'a> {
    export: &'a Export,
    session: Session,
    writer: Mutex<Stream>,
}

/// Serves requests until the client disconnects. An `Err` is a protocol violation that
/// ended the connection (a bad request magic: the stream cannot be resynchronised).
pub(crate) fn run(
    mut reader: Stream,
    writer: Stream,
    export: &Export,
    session: Session,
) -> io::Result<()> {
    let connection = Connection {
        export,
        session,
        writer: Mutex::new(writer),
    };
    let (sender, receiver) = mpsc::sync_channel::<Request>(WORKERS * 4);
    let receiver = Mutex::new(receiver);
    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| work(&receiver, &connection));
        }
        // returns (and drops the sender, letting the workers finish) at the end
        read_requests(&mut reader, sender, &connection)
    })
}

/// Reads requests: reads and block status go to the workers, the rest is answered here.
fn read_requests(
    reader: &mut Stream,
    sender: SyncSender<Request>,
    connection: &Connection,
) -> io::Result<()> {
    loop {
        let mut header = [0u8; proto::REQUEST_LEN];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            // the client went away without NBD_CMD_DISC
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        }
        let request = proto::parse_request(&header).map_err(|magic| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad request magic {magic:#010x}; closing the connection"),
            )
        })?;
        match request.command {
            proto::CMD_READ | proto::CMD_BLOCK_STATUS => {
                if sender.send(request).is_err() {
                    return Ok(());
                }
            }
            proto::CMD_WRITE => {
                // skip the payload without storing it, to stay in step with the client
                let len = u64::from(request.len);
                let skipped = io::copy(&mut Read::by_ref(reader).take(len), &mut io::sink())?;
                if skipped < len {
                    return Ok(());
                }
                connection.simple(proto::EPERM, request.cookie)?;
            }
            proto::CMD_TRIM | proto::CMD_WRITE_ZEROES => {
                connection.simple(proto::EPERM, request.cookie)?
            }
            // nothing is ever written, so nothing needs flushing; CACHE is only a hint
            proto::CMD_FLUSH | proto::CMD_CACHE => connection.simple(0, request.cookie)?,
            proto::CMD_DISC => return Ok(()),
            _ => connection.simple(proto::EINVAL, request.cookie)?,
        }
    }
}

/// A worker: answers requests until the reader stops. A panic while answering one is
/// contained: that request gets `NBD_EIO` if the stream is still usable, else the
/// connection is shut down.
fn work(receiver: &Mutex<Receiver<Request>>, connection: &Connection) {
    let mut buf = Vec::new();
    loop {
        let request = match receiver.lock() {
            Ok(receiver) => match receiver.recv() {
                Ok(request) => request,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let answered =
            panic::catch_unwind(AssertUnwindSafe(|| connection.answer(&request, &mut buf)));
        let failed = match answered {
            Ok(Ok(())) => false,
            Ok(Err(_)) => true,
            Err(_) => {
                eprintln!(
                    "nbd: internal error answering a request at {:#x}",
                    request.offset
                );
                connection
                    .error_reply(&request, proto::EIO, "internal error")
                    .is_err()
            }
        };
        if failed {
            // writing failed: make the reader see the end too
            if let Ok(writer) = connection.writer.lock() {
                writer.shutdown();
            }
            return;
        }
    }
}

impl Connection<'_> {
    fn disk(&self) -> &dyn VirtualDisk {
        self.export.disk.as_ref()
    }

    /// Answers a read or block status request.
    fn answer(&self, request: &Request, buf: &mut Vec<u8>) -> io::Result<()> {
        if let Err((error, message)) = self.check(request) {
            return self.error_reply(request, error, &message);
        }
        buf.clear();
        if request.command == proto::CMD_BLOCK_STATUS {
            self.block_status(request, buf);
        } else if !self.session.structured {
            self.simple_read(request, buf);
        } else if request.flags & proto::CMD_FLAG_DF != 0 {
            self.unfragmented_read(request, buf);
        } else {
            self.structured_read(request, buf);
        }
        self.send(buf)
    }

    /// The bounds every read and block status request must keep.
    fn check(&self, request: &Request) -> Result<(), (u32, String)> {
        let size = self.disk().size();
        let end = request.offset.checked_add(u64::from(request.len));
        if request.len == 0 {
            return Err((proto::EINVAL, "zero-length request".to_string()));
        }
        if end.is_none_or(|end| end > size) {
            let message = format!(
                "request {:#x}+{:#x} lies outside the disk of {size:#x} bytes",
                request.offset, request.len
            );
            return Err((proto::EINVAL, message));
        }
        if request.command == proto::CMD_READ && request.len > MAX_PAYLOAD {
            let message = format!(
                "read of {} bytes exceeds the maximum {MAX_PAYLOAD}",
                request.len
            );
            return Err((proto::EINVAL, message));
        }
        if request.command == proto::CMD_BLOCK_STATUS
            && !(self.session.structured && self.session.base_allocation)
        {
            return Err((
                proto::EINVAL,
                "no metadata context was selected".to_string(),
            ));
        }
        Ok(())
    }

    /// A read without structured replies: the data, or an error with no data.
    fn simple_read(&self, request: &Request, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&proto::simple_reply(0, request.cookie));
        buf.resize(16 + request.len as usize, 0);
        if self.disk().read_at(&mut buf[16..], request.offset).is_err() {
            buf.clear();
            buf.extend_from_slice(&proto::simple_reply(proto::EIO, request.cookie));
        }
    }

    /// A read with NBD_CMD_FLAG_DF: one data chunk with zeros written out.
    fn unfragmented_read(&self, request: &Request, buf: &mut Vec<u8>) {
        buf.resize(proto::OFFSET_DATA_HEADER_LEN + request.len as usize, 0);
        proto::offset_data_header(
            buf,
            proto::REPLY_FLAG_DONE,
            request.cookie,
            request.offset,
            request.len,
        );
        if let Err(err) = self
            .disk()
            .read_at(&mut buf[proto::OFFSET_DATA_HEADER_LEN..], request.offset)
        {
            buf.clear();
            let chunk = proto::error_chunk(
                proto::REPLY_FLAG_DONE,
                request.cookie,
                proto::EIO,
                &err.to_string(),
                None,
            );
            buf.extend_from_slice(&chunk);
        }
    }

    /// A structured read: data chunks for data, hole chunks for zero and unallocated
    /// ranges, an error chunk (`NBD_EIO` at its offset) for each unreadable range.
    fn structured_read(&self, request: &Request, buf: &mut Vec<u8>) {
        let runs = match self.disk().map(request.offset, u64::from(request.len)) {
            Ok(extents) => runs(extents.into_iter().map(|e| (e.offset, e.len, e.kind))),
            Err(err) => vec![Run::Unreadable(
                request.offset,
                request.len,
                err.to_string(),
            )],
        };
        let mut last_chunk = 0;
        for run in runs {
            last_chunk = buf.len();
            match run {
                Run::Data(offset, len) => {
                    buf.resize(last_chunk + proto::OFFSET_DATA_HEADER_LEN + len as usize, 0);
                    proto::offset_data_header(
                        &mut buf[last_chunk..],
                        0,
                        request.cookie,
                        offset,
                        len,
                    );
                    let data = &mut buf[last_chunk + proto::OFFSET_DATA_HEADER_LEN..];
                    if let Err(err) = self.disk().read_at(data, offset) {
                        buf.truncate(last_chunk);
                        let chunk = proto::error_chunk(
                            0,
                            request.cookie,
                            proto::EIO,
                            &err.to_string(),
                            Some(offset),
                        );
                        buf.extend_from_slice(&chunk);
                    }
                }
                Run::Hole(offset, len) => {
                    buf.extend_from_slice(&proto::offset_hole_chunk(
                        0,
                        request.cookie,
                        offset,
                        len,
                    ));
                }
                Run::Unreadable(offset, len, reason) => {
                    let message = format!("{len} bytes at {offset:#x} are unreadable: {reason}");
                    let chunk =
                        proto::error_chunk(0, request.cookie, proto::EIO, &message, Some(offset));
                    buf.extend_from_slice(&chunk);
                }
            }
        }
        if buf.is_empty() {
            // map() returned nothing for a range inside the disk: never claim data
            let chunk = proto::error_chunk(0, request.cookie, proto::EIO, "no extent map", None);
            buf.extend_from_slice(&chunk);
        }
        mark_done(&mut buf[last_chunk..]);
    }

    /// Block status in the `base:allocation` context: zero and unallocated ranges are
    /// holes that read as zeros (what qemu's server reports for a qcow2 zero cluster or
    /// an unallocated one); data, compressed and unreadable ranges are 0, so a client
    /// reads them (and gets `NBD_EIO` for the unreadable ones).
    fn block_status(&self, request: &Request, buf: &mut Vec<u8>) {
        let extents = match self.disk().map(request.offset, u64::from(request.len)) {
            Ok(extents) => extents,
            Err(err) => {
                let chunk = proto::error_chunk(
                    proto::REPLY_FLAG_DONE,
                    request.cookie,
                    proto::EIO,
                    &err.to_string(),
                    None,
                );
                buf.extend_from_slice(&chunk);
                return;
            }
        };
        let mut descriptors: Vec<(u32, u32)> = Vec::new();
        for extent in extents {
            let status = allocation_status(&extent.kind);
            // extents are clipped to the request, whose length is 32 bits
            let len = u32::try_from(extent.len).unwrap_or(u32::MAX);
            match descriptors.last_mut() {
                Some((last_len, last_status)) if *last_status == status => {
                    *last_len = last_len.saturating_add(len);
                }
                _ => descriptors.push((len, status)),
            }
        }
        let limit = if request.flags & proto::CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        };
        descriptors.truncate(limit);
        if descriptors.is_empty() {
            descriptors.push((request.len, 0));
        }
        let chunk = proto::block_status_chunk(
            proto::REPLY_FLAG_DONE,
            request.cookie,
            BASE_ALLOCATION_ID,
            &descriptors,
        );
        buf.extend_from_slice(&chunk);
    }

    /// An error reply in the form the session uses for this command.
    fn error_reply(&self, request: &Request, error: u32, message: &str) -> io::Result<()> {
        if self.session.structured {
            self.send(&proto::error_chunk(
                proto::REPLY_FLAG_DONE,
                request.cookie,
                error,
                message,
                None,
            ))
        } else {
            self.simple(error, request.cookie)
        }
    }

    fn simple(&self, error: u32, cookie: u64) -> io::Result<()> {
        self.send(&proto::simple_reply(error, cookie))
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("a writer panicked"))?;
        writer.write_all(bytes)
    }
}

/// The base:allocation status of an extent.
fn allocation_status(kind: &ExtentKind) -> u32 {
    match kind {
        ExtentKind::Zero | ExtentKind::Unallocated => proto::STATE_HOLE | proto::STATE_ZERO,
        ExtentKind::Data { .. } | ExtentKind::Compressed { .. } | ExtentKind::Unreadable { .. } => {
            0
        }
    }
}

/// A stretch of a read answered by one chunk. Lengths fit 32 bits: they are clipped to
/// the request.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    Data(u64, u32),
    Hole(u64, u32),
    Unreadable(u64, u32, String),
}

/// Groups map extents into chunks: neighbouring data (stored or compressed) is read with
/// one `read_at`, neighbouring zero and unallocated ranges make one hole.
fn runs(extents: impl IntoIterator<Item = (u64, u64, ExtentKind)>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (offset, len, kind) in extents {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        match (out.last_mut(), kind) {
            (
                Some(Run::Data(_, run_len)),
                ExtentKind::Data { .. } | ExtentKind::Compressed { .. },
            )
            | (Some(Run::Hole(_, run_len)), ExtentKind::Zero | ExtentKind::Unallocated) => {
                *run_len = run_len.saturating_add(len);
            }
            (_, ExtentKind::Data { .. } | ExtentKind::Compressed { .. }) => {
                out.push(Run::Data(offset, len))
            }
            (_, ExtentKind::Zero | ExtentKind::Unallocated) => out.push(Run::Hole(offset, len)),
            (_, ExtentKind::Unreadable { reason }) => {
                out.push(Run::Unreadable(offset, len, reason))
            }
        }
    }
    out
}

/// Sets NBD_REPLY_FLAG_DONE on the chunk at the start of `chunk`.
fn mark_done(chunk: &mut [u8]) {
    if let Some(flags) = chunk.get_mut(4..6) {
        flags.copy_from_slice(&proto::REPLY_FLAG_DONE.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_extents_of_one_kind_make_one_run() {
        let extents = vec![
            (0, 512, ExtentKind::Zero),
            (512, 512, ExtentKind::Unallocated),
            (
                1024,
                1024,
                ExtentKind::Unreadable {
                    reason: "bad".into(),
                },
            ),
            (2048, 512, ExtentKind::Zero),
        ];
        assert_eq!(
            runs(extents),
            vec![
                Run::Hole(0, 1024),
                Run::Unreadable(1024, 1024, "bad".into()),
                Run::Hole(2048, 512)
            ]
        );
    }

    #[test]
    fn holes_read_as_zeros_and_unreadable_ranges_as_data() {
        assert_eq!(allocation_status(&ExtentKind::Zero), 3);
        assert_eq!(allocation_status(&ExtentKind::Unallocated), 3);
        assert_eq!(
            allocation_status(&ExtentKind::Unreadable {
                reason: String::new()
            }),
            0
        );
    }

    #[test]
    fn mark_done_sets_the_flags_field() {
        let mut chunk = proto::offset_hole_chunk(0, 1, 0, 512);
        mark_done(&mut chunk);
        assert_eq!(&chunk[4..6], &[0, 1]);
    }
}
