//! One descriptor chain as a request: the device-readable bytes, the device-writable bytes
//! and the status byte, found without trusting the driver's framing.
//!
//! virtio 1.1 §2.6.4 (message framing): a device must not assume a particular arrangement
//! of descriptors, so a virtio-blk request is read as "readable stream, then writable
//! stream", the header being the first 16 readable bytes and the status the last writable
//! byte (§5.2.6). Every segment is checked against guest memory before it is used.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// A guest buffer the driver handed over in one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain cannot be served as the driver laid it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainProblem {
    /// The chain ended early: a `next` index past the table, a loop longer than the table,
    /// an unreadable descriptor, a bad indirect table, or no descriptor at all.
    Broken,
    /// More descriptors than the device allows in one request (seg_max + 2).
    TooManyDescriptors,
    /// A device-readable descriptor after a device-writable one (§2.6.4.2).
    ReadableAfterWritable,
    /// The last descriptor is not device-writable or has length 0: no status byte.
    NoStatus,
    /// A buffer lies (partly) outside guest memory.
    OutsideMemory,
}

/// The request a chain carries, split by direction.
#[derive(Debug)]
pub(crate) struct RequestChain {
    /// Device-readable buffers, in order (header first).
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order, without the status byte.
    pub writable: Vec<Segment>,
    /// Where the status byte goes, when the chain has a usable one.
    pub status: Option<GuestAddress>,
    /// The first rule the chain broke, if any.
    pub problem: Option<ChainProblem>,
}

/// Why copying between a segment list and host memory failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CopyError {
    /// The segments hold fewer bytes than asked for.
    Short,
    /// Guest memory refused the access.
    Memory,
}

impl RequestChain {
    /// Collects at most `max_descriptors` descriptors of `chain` and classifies them.
    pub fn parse<M, D>(chain: DescriptorChain<D>, mem: &M, max_descriptors: usize) -> Self
    where
        M: GuestMemory + ?Sized,
        D: Deref<Target = M>,
    {
        let mut descs: Vec<Descriptor> = Vec::new();
        let mut too_many = false;
        for desc in chain {
            if descs.len() >= max_descriptors {
                too_many = true;
                break;
            }
            descs.push(desc);
        }
        let mut request = RequestChain {
            readable: Vec::new(),
            writable: Vec::new(),
            status: None,
            problem: None,
        };
        // The iterator stops silently on every error; a last descriptor that still says
        // NEXT means the chain did not end where the driver said it would.
        let broken = descs.last().is_none_or(Descriptor::has_next);
        if too_many || broken {
            request.problem = Some(if too_many {
                ChainProblem::TooManyDescriptors
            } else {
                ChainProblem::Broken
            });
            return request;
        }
        let Some((last, body)) = descs.split_last() else {
            return request;
        };
        request.status = status_byte(last, mem);
        if request.status.is_none() {
            request.problem = Some(if last.is_write_only() && last.len() > 0 {
                ChainProblem::OutsideMemory
            } else {
                ChainProblem::NoStatus
            });
        }
        let status_data = (last.len() > 1 && last.is_write_only()).then(|| Segment {
            addr: last.addr(),
            len: last.len() - 1,
        });
        let mut seen_writable = false;
        let body = body.iter().map(|d| {
            (
                d.is_write_only(),
                Segment {
                    addr: d.addr(),
                    len: d.len(),
                },
            )
        });
        for (write_only, seg) in body.chain(status_data.map(|s| (true, s))) {
            if seen_writable && !write_only {
                request
                    .problem
                    .get_or_insert(ChainProblem::ReadableAfterWritable);
            }
            seen_writable |= write_only;
            if seg.len == 0 {
                continue;
            }
            let access = if write_only {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(seg.addr, seg.len as usize, access) {
                request.problem.get_or_insert(ChainProblem::OutsideMemory);
            }
            if write_only {
                request.writable.push(seg);
            } else {
                request.readable.push(seg);
            }
        }
        request
    }
}

/// The last byte of `last` when it is a writable descriptor inside guest memory.
fn status_byte<M: GuestMemory + ?Sized>(last: &Descriptor, mem: &M) -> Option<GuestAddress> {
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

/// Total bytes of `segments`.
pub(crate) fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Walks the part of `segments` that covers stream bytes `[skip, skip + len)`, calling
/// `f(guest address, position in the range, length)` for each piece.
fn for_each_piece(
    segments: &[Segment],
    skip: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), CopyError>,
) -> Result<(), CopyError> {
    let want_end = skip.checked_add(len as u64).ok_or(CopyError::Short)?;
    let mut stream_pos = 0u64;
    let mut done = 0usize;
    for seg in segments {
        let seg_end = stream_pos + u64::from(seg.len);
        let from = skip.max(stream_pos);
        let to = want_end.min(seg_end);
        if from < to {
            let addr = seg
                .addr
                .checked_add(from - stream_pos)
                .ok_or(CopyError::Memory)?;
            let n = (to - from) as usize;
            f(addr, done, n)?;
            done += n;
        }
        stream_pos = seg_end;
        if stream_pos >= want_end {
            break;
        }
    }
    if done == len {
        Ok(())
    } else {
        Err(CopyError::Short)
    }
}

/// Fills `buf` from stream bytes starting at `skip` of the guest buffers `segments`.
pub(crate) fn read_from_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), CopyError> {
    let len = buf.len();
    for_each_piece(segments, skip, len, |addr, at, n| {
        let dst = buf.get_mut(at..at + n).ok_or(CopyError::Short)?;
        mem.read_slice(dst, addr).map_err(|_| CopyError::Memory)
    })
}

/// Writes `buf` into the guest buffers `segments` from stream byte `skip` on.
pub(crate) fn write_to_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    skip: u64,
    buf: &[u8],
) -> Result<(), CopyError> {
    for_each_piece(segments, skip, buf.len(), |addr, at, n| {
        let src = buf.get(at..at + n).ok_or(CopyError::Short)?;
        mem.write_slice(src, addr).map_err(|_| CopyError::Memory)
    })
}
