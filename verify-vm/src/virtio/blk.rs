//! The virtio-blk device (virtio 1.1 §5.2) serving a [`VirtualDisk`]: read-only (the device
//! says VIRTIO_BLK_F_RO and refuses writes) or writable into a capped in-memory [`Overlay`].
//!
//! Requests: IN reads the disk (or overlay), OUT writes the overlay, FLUSH succeeds (there
//! is nothing to make durable), GET_ID returns [`BLK_ID`]; everything else is UNSUPP. A
//! range the disk cannot read (a damaged cluster in salvage mode) is answered IOERR and
//! recorded in [`BlkStats`] — never zeros, never stale bytes.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};

use vdr_formats::VirtualDisk;

use crate::backend::DiskAccess;
use crate::virtio::chain::{read_from_guest, total_len, write_to_guest, RequestChain};
use crate::virtio::overlay::{Overlay, OverlayError};
use crate::virtio::stats::{BlkStats, FailedRange};
use crate::virtio::VirtioDevice;

/// virtio device ID of a block device (§5).
const VIRTIO_ID_BLOCK: u32 = 2;
/// The unit of `capacity` and of request sectors (§5.2.4), whatever `blk_size` says.
const SECTOR_SIZE: u64 = 512;
/// `struct virtio_blk_outhdr`: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: u64 = 16;
/// The single request queue's size, the largest QueueNumMax the transport reports.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Largest single data segment the driver may use (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments in one request (config `seg_max`); with header and status a request
/// has at most `SEG_MAX + 2` descriptors.
pub const SEG_MAX: u32 = 128;
/// Most data bytes in one request; larger requests are IOERR.
const MAX_REQUEST_BYTES: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// Disk reads and overlay writes move at most this much host memory at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// What GET_ID returns (NUL-padded to 20 bytes).
pub const BLK_ID: &str = "vdr-evidence";
/// Overlay memory allowed when the access comes from a [`DiskAccess`].
pub const DEFAULT_OVERLAY_CAP_BYTES: u64 = 256 << 20;

/// What the guest may do with the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkAccess {
    /// VIRTIO_BLK_F_RO is offered and every write is answered IOERR.
    ReadOnly,
    /// Writes go to an in-memory overlay of at most `cap_bytes`; past that they fail.
    Overlay { cap_bytes: u64 },
}

impl From<DiskAccess> for BlkAccess {
    fn from(access: DiskAccess) -> BlkAccess {
        match access {
            DiskAccess::ReadOnly => BlkAccess::ReadOnly,
            DiskAccess::Overlay => BlkAccess::Overlay {
                cap_bytes: DEFAULT_OVERLAY_CAP_BYTES,
            },
        }
    }
}

enum Backing {
    ReadOnly(Arc<dyn VirtualDisk>),
    Overlay(Overlay),
}

/// A virtio-blk device over a virtual disk.
pub struct VirtioBlk {
    backing: Backing,
    /// Whole 512-byte sectors of the disk; a trailing partial sector is not exposed.
    capacity_sectors: u64,
    stats: Arc<BlkStats>,
    /// Reused for every chunk so requests do not allocate.
    buffer: Vec<u8>,
    queue_sizes: [u16; 1],
}

impl VirtioBlk {
    /// A block device serving `disk` with `access` (a [`BlkAccess`], or a
    /// [`DiskAccess`] which gets [`DEFAULT_OVERLAY_CAP_BYTES`]).
    pub fn new(disk: Arc<dyn VirtualDisk>, access: impl Into<BlkAccess>) -> VirtioBlk {
        let access = access.into();
        let capacity_sectors = disk.size() / SECTOR_SIZE;
        let backing = match access {
            BlkAccess::ReadOnly => Backing::ReadOnly(disk),
            BlkAccess::Overlay { cap_bytes } => Backing::Overlay(Overlay::new(disk, cap_bytes)),
        };
        VirtioBlk {
            backing,
            capacity_sectors,
            stats: Arc::new(BlkStats::default()),
            buffer: Vec::new(),
            queue_sizes: [QUEUE_MAX_SIZE],
        }
    }

    /// The live statistics; keep the `Arc` to read them after the VM is gone.
    pub fn stats(&self) -> Arc<BlkStats> {
        self.stats.clone()
    }

    fn read_only(&self) -> bool {
        matches!(self.backing, Backing::ReadOnly(_))
    }

    /// `struct virtio_blk_config` up to `blk_size` (§5.2.4), little-endian.
    fn config_bytes(&self) -> [u8; 24] {
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // 16..20: geometry, not offered.
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config
    }

    /// Serves one chain; returns the number of bytes written into its writable buffers
    /// (the used length, §2.6.8).
    fn serve_chain<M: GuestMemory>(&mut self, request: &RequestChain, mem: &M) -> u32 {
        let Some(status_addr) = request.status else {
            // Nowhere to say what happened: consume the chain, write nothing.
            self.stats.malformed();
            return 0;
        };
        let (status, data_written) = if request.problem.is_some() {
            self.stats.malformed();
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            self.serve_request(request, mem)
        };
        if status == VIRTIO_BLK_S_IOERR {
            self.stats.io_error();
        }
        // The status byte was checked to lie in guest memory when the chain was parsed.
        match mem.write_obj(status as u8, status_addr) {
            Ok(()) => data_written.saturating_add(1),
            Err(_) => data_written,
        }
    }

    /// Executes a well-formed request: (status, data bytes written to the guest).
    fn serve_request<M: GuestMemory>(&mut self, request: &RequestChain, mem: &M) -> (u32, u32) {
        let mut header = [0u8; HEADER_LEN as usize];
        if read_from_guest(mem, &request.readable, 0, &mut header).is_err() {
            self.stats.malformed();
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        match request_type {
            VIRTIO_BLK_T_IN => self.read(request, mem, sector),
            VIRTIO_BLK_T_OUT => (self.write(request, mem, sector), 0),
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flush();
                (VIRTIO_BLK_S_OK, 0)
            }
            VIRTIO_BLK_T_GET_ID => get_id(request, mem),
            _ => {
                self.stats.unsupported();
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// The disk byte range `[offset, offset + len)` of a request at `sector` with `len`
    /// data bytes, when it is a whole number of sectors inside the disk and not larger than
    /// a request may be.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) || len > MAX_REQUEST_BYTES {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        let capacity = self.capacity_sectors.checked_mul(SECTOR_SIZE)?;
        (end <= capacity).then_some(offset)
    }

    fn read<M: GuestMemory>(&mut self, request: &RequestChain, mem: &M, sector: u64) -> (u32, u32) {
        let len = total_len(&request.writable);
        let Some(offset) = self.disk_range(sector, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES as u64) as usize;
            self.buffer.resize(n, 0);
            let at = offset + done;
            let result = match &self.backing {
                Backing::ReadOnly(disk) => disk
                    .read_at(&mut self.buffer, at)
                    .map_err(|e| (unreadable_span(&e), e.to_string())),
                Backing::Overlay(overlay) => overlay.read_at(&mut self.buffer, at).map_err(|e| {
                    let span = match &e {
                        OverlayError::Disk { source, .. } => unreadable_span(source),
                        _ => None,
                    };
                    (span, e.to_string())
                }),
            };
            if let Err((span, reason)) = result {
                let (offset, len) = clip_span(span, at, n as u64);
                self.stats.failed_range(FailedRange {
                    offset,
                    len,
                    op: "read",
                    reason,
                });
                return (VIRTIO_BLK_S_IOERR, done as u32);
            }
            if write_to_guest(mem, &request.writable, done, &self.buffer).is_err() {
                return (VIRTIO_BLK_S_IOERR, done as u32);
            }
            done += n as u64;
        }
        self.stats.read_ok(len);
        // len <= MAX_REQUEST_BYTES, far below u32::MAX.
        (VIRTIO_BLK_S_OK, u32::try_from(len).unwrap_or(u32::MAX))
    }

    fn write<M: GuestMemory>(&mut self, request: &RequestChain, mem: &M, sector: u64) -> u32 {
        if self.read_only() {
            self.stats.write_refused();
            return VIRTIO_BLK_S_IOERR;
        }
        let len = total_len(&request.readable).saturating_sub(HEADER_LEN);
        let Some(offset) = self.disk_range(sector, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let Backing::Overlay(overlay) = &mut self.backing else {
            return VIRTIO_BLK_S_IOERR;
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES as u64) as usize;
            self.buffer.resize(n, 0);
            if read_from_guest(mem, &request.readable, HEADER_LEN + done, &mut self.buffer).is_err()
            {
                return VIRTIO_BLK_S_IOERR;
            }
            let at = offset + done;
            if let Err(e) = overlay.write_at(&self.buffer, at) {
                self.stats.failed_range(FailedRange {
                    offset: at,
                    len: n as u64,
                    op: "write",
                    reason: e.to_string(),
                });
                return VIRTIO_BLK_S_IOERR;
            }
            done += n as u64;
        }
        self.stats.write_ok(len);
        VIRTIO_BLK_S_OK
    }
}

/// The virtual range a disk error names as unreadable, if it names one.
fn unreadable_span(error: &vdr_formats::Error) -> Option<(u64, u64)> {
    match error {
        vdr_formats::Error::Unreadable { offset, len, .. } => Some((*offset, *len)),
        _ => None,
    }
}

/// The failed part of a read of `[at, at + len)`: `span` clipped to the read, or the whole
/// read when the error named no range inside it.
fn clip_span(span: Option<(u64, u64)>, at: u64, len: u64) -> (u64, u64) {
    let end = at.saturating_add(len);
    span.map(|(bad, bad_len)| (bad.max(at), bad.saturating_add(bad_len).min(end)))
        .filter(|(from, to)| from < to)
        .map_or((at, len), |(from, to)| (from, to - from))
}

/// GET_ID (§5.2.6): the ID, NUL-padded, into as much of the 20 bytes as the driver gave.
fn get_id<M: GuestMemory>(request: &RequestChain, mem: &M) -> (u32, u32) {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let text = BLK_ID.as_bytes();
    let n = text.len().min(id.len());
    if let (Some(dst), Some(src)) = (id.get_mut(..n), text.get(..n)) {
        dst.copy_from_slice(src);
    }
    let room = total_len(&request.writable).min(id.len() as u64) as usize;
    let Some(id) = id.get(..room) else {
        return (VIRTIO_BLK_S_IOERR, 0);
    };
    match write_to_guest(mem, &request.writable, 0, id) {
        Ok(()) => (VIRTIO_BLK_S_OK, room as u32),
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// The configuration is read-only without VIRTIO_BLK_F_CONFIG_WCE (not offered).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn process_queue<M: GuestMemory>(
        &mut self,
        _queue_index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used_any = false;
        // At most one pass over the ring per notification: a driver that keeps adding
        // chains notifies again, and a hostile one cannot keep this loop going.
        for _ in 0..queue.size() {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            let request = RequestChain::parse(chain, mem, SEG_MAX as usize + 2);
            let used_len = self.serve_chain(&request, mem);
            queue.add_used(mem, head, used_len)?;
            used_any = true;
        }
        Ok(used_any)
    }

    fn reset(&mut self) {
        self.buffer = Vec::new();
    }
}
