//! Test helpers: an in-memory [`VirtualDisk`] with optional unreadable ranges (a damaged
//! qcow2 cluster in salvage mode reads as an error, never as data), and a counting
//! [`IrqLine`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vdr_formats::disk::{DiskInfo, Extent, ExtentKind};
use vdr_formats::{Error, VirtualDisk};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::IrqLine;
use crate::virtio::{BlkAccess, VirtioBlk, VirtioDevice};

pub struct MemDisk {
    bytes: Vec<u8>,
    unreadable: Vec<(u64, u64)>,
}

impl MemDisk {
    pub fn new(bytes: Vec<u8>) -> MemDisk {
        MemDisk {
            bytes,
            unreadable: Vec::new(),
        }
    }

    /// Marks `[offset, offset+len)` unreadable.
    pub fn with_unreadable(mut self, offset: u64, len: u64) -> MemDisk {
        self.unreadable.push((offset, len));
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl VirtualDisk for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        Ok(vec![Extent {
            offset,
            len,
            kind: ExtentKind::Zero,
            depth: 0,
        }])
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let len = buf.len() as u64;
        let end = offset + len;
        for &(bad, bad_len) in &self.unreadable {
            if offset < bad + bad_len && bad < end {
                return Err(Error::Unreadable {
                    file: "memdisk".into(),
                    offset: bad,
                    len: bad_len,
                    reason: "test damage".into(),
                });
            }
        }
        let src = self
            .bytes
            .get(offset as usize..end as usize)
            .ok_or(Error::OutOfRange {
                file: "memdisk".into(),
                offset,
                len,
                size: self.size(),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            format: "raw".into(),
            file: "memdisk".into(),
            virtual_size: self.size(),
            ..DiskInfo::default()
        }
    }
}

/// Counts triggers.
#[derive(Default)]
pub struct CountingIrq(pub AtomicU64);

impl CountingIrq {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A fresh counting interrupt line and the same line as the trait object devices take.
pub fn counting_irq() -> (Arc<CountingIrq>, Arc<dyn IrqLine>) {
    let irq = Arc::new(CountingIrq::default());
    (irq.clone(), irq)
}

/// Guest memory for queue tests: 2 MiB at address 0. Queues sit at 0, request buffers
/// from [`HEADER_ADDR`] on.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEMORY_SIZE as usize)]).unwrap()
}

pub const GUEST_MEMORY_SIZE: u64 = 0x20_0000;
pub const HEADER_ADDR: u64 = 0x10_0000;
pub const DATA_ADDR: u64 = 0x11_0000;
pub const STATUS_ADDR: u64 = 0x1f_f000;
/// Queue size used by the tests.
pub const TEST_QUEUE_SIZE: u16 = 16;

/// Writes a `virtio_blk_outhdr` at `addr`.
pub fn write_header(mem: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(addr)).unwrap();
}

/// A descriptor; `next` and the NEXT flag are set by [`linked`].
pub fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Links `descs` into one chain starting at table index `first`.
pub fn linked(descs: &[RawDescriptor], first: u16) -> Vec<RawDescriptor> {
    let count = descs.len();
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let (flags, next) = if i + 1 == count {
                (d.flags() & !(VRING_DESC_F_NEXT as u16), 0)
            } else {
                (d.flags() | VRING_DESC_F_NEXT as u16, first + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect()
}

/// The classic three-descriptor request: header, data, status.
pub fn request_chain(data_len: u32, data_write: bool) -> Vec<RawDescriptor> {
    linked(
        &[
            desc(HEADER_ADDR, 16, false),
            desc(DATA_ADDR, data_len, data_write),
            desc(STATUS_ADDR, 1, true),
        ],
        0,
    )
}

/// Reads the status byte the device wrote.
pub fn status_byte(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap()
}

/// The used ring's (id, len) entries published so far.
pub fn used_entries(mock: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let count = mock.used().idx().load();
    (0..count)
        .map(|i| {
            let e = mock
                .used()
                .ring()
                .ref_at(usize::from(i % TEST_QUEUE_SIZE))
                .unwrap()
                .load();
            (e.id(), e.len())
        })
        .collect()
}

/// `len` bytes of a recognisable pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

/// Size of the in-memory disk the blk tests serve.
pub const DISK_SIZE: usize = 64 * 1024;
/// Overlay access with room for every test write.
pub const OVERLAY: BlkAccess = BlkAccess::Overlay { cap_bytes: 1 << 20 };

/// A patterned in-memory disk of DISK_SIZE bytes.
pub fn disk() -> Arc<MemDisk> {
    Arc::new(MemDisk::new(pattern(DISK_SIZE)))
}

/// Puts `descs` in a fresh queue, lets the device serve it, and returns what
/// process_queue said and the used ring.
pub fn serve(
    blk: &mut VirtioBlk,
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (Result<bool, virtio_queue::Error>, Vec<(u32, u32)>) {
    let mock = MockSplitQueue::new(mem, TEST_QUEUE_SIZE);
    mock.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = mock.create_queue().unwrap();
    let result = blk.process_queue(0, &mut queue, mem);
    (result, used_entries(&mock))
}

/// Serves one request and returns (status byte, used ring).
pub fn request(
    blk: &mut VirtioBlk,
    mem: &GuestMemoryMmap,
    request_type: u32,
    sector: u64,
    descs: &[RawDescriptor],
) -> (u8, Vec<(u32, u32)>) {
    write_header(mem, HEADER_ADDR, request_type, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let (result, used) = serve(blk, mem, descs);
    assert!(result.unwrap(), "a served chain needs an interrupt");
    (status_byte(mem), used)
}

/// `len` bytes of guest memory at `addr`.
pub fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// An indirect descriptor pointing at a table of `entries` written at `table`.
pub fn indirect(mem: &GuestMemoryMmap, table: u64, entries: &[RawDescriptor]) -> RawDescriptor {
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    RawDescriptor::from(SplitDescriptor::new(
        table,
        16 * entries.len() as u32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ))
}
