//! Fuzz target for the virtio-mmio transport and the virtio-blk device, the fuzzer playing a
//! hostile guest driver: it fills a small guest memory (descriptor tables, rings, buffers)
//! and issues a sequence of MMIO register accesses, QueueNotify included, to a
//! `VirtioMmio<VirtioBlk, GuestMemoryMmap>` over an 8-sector in-memory disk with an
//! optional unreadable range (a damaged cluster in salvage mode), read-only or through a
//! capped overlay.
//!
//! Input layout (all little-endian):
//!
//! ```text
//! [0]     flags: bit 0 overlay (else read-only), bits 1-2 overlay cap
//!         (0, 4 KiB, 8 KiB, 1 MiB), bit 3 disk ends in a partial sector,
//!         bit 4 guest memory has a hole at 0xc000..0xd000
//! [1]     unreadable range: 0xff none, else sector (bits 0-2), sectors - 1 (bits 3-4),
//!         +100 bytes (bit 5)
//! [2..4]  length of the op stream
//! [4..]   op stream, then the guest memory image (copied to guest address 0)
//! ```
//!
//! Ops (first byte % 8): a 32-bit register write, a raw write or read at any offset and
//! width, QueueNotify, a guest memory poke, and three driver macros that let the fuzzer
//! reach deep states quickly: a well-formed initialisation (§3.1.1), publishing a head in
//! the avail ring, and a whole well-formed request (header, data, status, maybe indirect).
//!
//! Checked after every op: no panic; the disk's bytes never change and are never read
//! outside the disk; a read-only device never counts a successful write; failed read
//! ranges lie inside the damaged range; DRIVER_OK implies FEATURES_OK and acceptable
//! features; NEEDS_RESET only goes away with a reset; every interrupt reached the line;
//! the heap grows by at most a few MiB per run. A request the macro built on a queue the
//! fuzzer did not touch since initialisation is also checked for its answer: read-only
//! reads that succeed return the disk's bytes and never cover the damaged range; GET_ID
//! returns the ID.

#![no_main]

#[path = "vm_common.rs"]
mod vm_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdr_formats::VirtualDisk;
use vdr_verify_vm::devices::MmioDevice;
use vdr_verify_vm::virtio::{
    BlkAccess, VirtioBlk, VirtioDevice, VirtioMmio, BLK_ID, MAX_FAILED_RANGES,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vm_common::{FuzzDisk, Line};

/// Guest memory size; the rings sit at 0, request slots from `BUFS` on.
const MEM_SIZE: u64 = 0x1_0000;
/// The optional hole in guest memory (bit 4 of the flags).
const HOLE: (u64, u64) = (0xc000, 0xd000);
/// Request slots of the request macro: header at +0, status at +0x10, data at +0x200,
/// indirect table at +0x100.
const BUFS: u64 = 0x2000;
const SLOT: u64 = 0x1000;
const SECTOR: u64 = 512;
const DISK_SECTORS: u64 = 8;
/// At most this many ops per input: each run stays well under a millisecond.
const MAX_OPS: usize = 256;
/// Heap growth allowed during one run: the device's chunk buffer (at most 1 MiB, but the
/// disk is 4 KiB), the overlay (at most 1 MiB cap, 3 blocks here), chain vectors and the
/// failed-range list.
const HEAP_LIMIT: usize = 4 << 20;
const OVERLAY_CAPS: [u64; 4] = [0, 4096, 8192, 1 << 20];

/// Reads the op stream; every getter returns None once it is exhausted.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Where the driver macros put the split ring: descriptor table at 0, avail ring right
/// after it, used ring 4-aligned after that (§2.6).
#[derive(Clone, Copy)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Ring {
    fn new(size: u16) -> Ring {
        let n = u64::from(size);
        let avail = 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        Ring {
            size,
            desc: 0,
            avail,
            used,
        }
    }
}

struct Rig {
    dev: VirtioMmio<VirtioBlk, GuestMemoryMmap>,
    mem: GuestMemoryMmap,
    disk: Arc<FuzzDisk>,
    pristine: Vec<u8>,
    read_only: bool,
    ring: Ring,
    /// The macro's ring is the device's queue 0: initialised by the macro and no raw
    /// register write since.
    trusted: bool,
    /// The disk as the guest should read it (the overlay's writes applied), while every
    /// successful write was a macro request whose data is known.
    model: Option<Vec<u8>>,
    /// Successful writes the model has seen.
    model_writes: u64,
}

/// What the request macro wrote for one request.
struct Built {
    head: u16,
    request_type: u32,
    sector: u64,
    data: u64,
    data_len: u32,
    status: u64,
    /// Every (address, bytes) the macro wrote that the device reads: descriptors, header.
    written: Vec<(u64, Vec<u8>)>,
}

impl Rig {
    fn read32(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.dev.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u32, value: u32) {
        self.dev.write(u64::from(offset), &value.to_le_bytes());
    }

    /// §3.1.1 with the macro's ring layout; `features` chooses among the offered bits.
    fn init(&mut self, size: u16, features: u64) {
        self.ring = Ring::new(size);
        let offered = self.dev.device().features();
        let accepted = (offered & features) | (1 << VIRTIO_F_VERSION_1);
        let ack = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.write32(VIRTIO_MMIO_STATUS, 0);
        self.write32(VIRTIO_MMIO_STATUS, ack);
        for (sel, half) in [(0, accepted as u32), (1, (accepted >> 32) as u32)] {
            self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.write32(VIRTIO_MMIO_DRIVER_FEATURES, half);
        }
        self.write32(VIRTIO_MMIO_STATUS, ack | VIRTIO_CONFIG_S_FEATURES_OK);
        self.write32(VIRTIO_MMIO_QUEUE_SEL, 0);
        self.write32(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        let r = self.ring;
        for (low, high, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                r.desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                r.avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                r.used,
            ),
        ] {
            self.write32(low, addr as u32);
            self.write32(high, (addr >> 32) as u32);
        }
        self.write32(VIRTIO_MMIO_QUEUE_READY, 1);
        self.write32(
            VIRTIO_MMIO_STATUS,
            ack | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let running = self.dev.status() & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        self.trusted = running && self.read32(VIRTIO_MMIO_QUEUE_READY) == 1;
    }

    /// Puts `head` in the next avail ring entry and bumps the avail index; returns the
    /// avail index the entry took.
    fn publish(&mut self, head: u16) -> Option<u16> {
        let r = self.ring;
        let idx: u16 = self.mem.read_obj(GuestAddress(r.avail + 2)).ok()?;
        let entry = r.avail + 4 + 2 * u64::from(idx % r.size);
        self.mem.write_obj(head, GuestAddress(entry)).ok()?;
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(r.avail + 2))
            .ok()?;
        Some(idx)
    }

    /// Writes `bytes` at `addr` and remembers them in `built`, so the answer is only
    /// judged when the device saw exactly this request.
    fn put(&self, built: &mut Built, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
        built.written.push((addr, bytes.to_vec()));
    }

    fn put_desc(&self, built: &mut Built, at: u64, d: (u64, u32, u32, u16)) {
        let (addr, len, flags, next) = d;
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(built, at, &raw);
    }

    /// A well-formed request: header, data (unless empty), status; published and notified.
    fn request(&mut self, p: [u8; 4]) {
        const TYPES: [u32; 8] = [
            VIRTIO_BLK_T_IN,
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_FLUSH,
            VIRTIO_BLK_T_GET_ID,
            VIRTIO_BLK_T_IN,
            VIRTIO_BLK_T_OUT,
            11, // DISCARD: not offered
            u32::MAX,
        ];
        let [a, b, c, d] = p;
        let r = self.ring;
        let slots = (MEM_SIZE - BUFS) / SLOT;
        let slot = BUFS + SLOT * (u64::from(d >> 4) % slots);
        let mut built = Built {
            head: u16::from(d) % r.size,
            request_type: TYPES[usize::from(a & 7)],
            sector: if b & 0x80 == 0 {
                u64::from(b & 0xf)
            } else {
                u64::MAX - u64::from(b & 0xf)
            },
            data: slot + 0x200,
            data_len: u32::from(c & 7) * SECTOR as u32 + u32::from(c >> 3 & 1) * u32::from(b >> 4),
            status: slot + 0x10,
            written: Vec::new(),
        };
        let device_writes = built.request_type != VIRTIO_BLK_T_OUT;
        let mut chain = vec![(slot, 16, 0)];
        if built.data_len > 0 {
            let flags = if device_writes { VRING_DESC_F_WRITE } else { 0 };
            chain.push((built.data, built.data_len, flags));
        }
        chain.push((built.status, 1, VRING_DESC_F_WRITE));
        let (table, first, count) = if a & 8 != 0 {
            let table = slot + 0x100;
            let len = 16 * chain.len() as u32;
            let head_at = r.desc + 16 * u64::from(built.head);
            self.put_desc(&mut built, head_at, (table, len, VRING_DESC_F_INDIRECT, 0));
            (table, 0u16, u16::MAX)
        } else {
            (r.desc, built.head, r.size)
        };
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let index = (first + i as u16) % count;
            let next = (index + 1) % count;
            let flags = if i + 1 == chain.len() {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let at = table + 16 * u64::from(index);
            self.put_desc(&mut built, at, (addr, len, flags, next));
        }
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&built.request_type.to_le_bytes());
        header[8..16].copy_from_slice(&built.sector.to_le_bytes());
        self.put(&mut built, slot, &header);
        let _ = self.mem.write_obj(0xffu8, GuestAddress(built.status));
        let trusted = self.trusted;
        if self.publish(built.head).is_none() {
            return;
        }
        let used_before: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap_or(0);
        self.write32(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        if trusted && self.answered(&built, used_before) {
            self.check_answer(&built);
        }
    }

    /// Whether the last chain the device used is `built` as the macro wrote it, answered
    /// OK: the used ring names its head, nothing overwrote its descriptors or header
    /// before the device read them (another chain served first may write anywhere), and
    /// the status byte says OK. Chains after it would have been used after it.
    fn answered(&self, built: &Built, used_before: u16) -> bool {
        let r = self.ring;
        let Ok(used_after) = self.mem.read_obj::<u16>(GuestAddress(r.used + 2)) else {
            return false;
        };
        let last = r.used + 4 + 8 * u64::from(used_after.wrapping_sub(1) % r.size);
        let id = self.mem.read_obj::<u32>(GuestAddress(last));
        let status = self.mem.read_obj::<u8>(GuestAddress(built.status));
        let intact = built.written.iter().all(|(addr, bytes)| {
            let mut now = vec![0u8; bytes.len()];
            self.mem.read_slice(&mut now, GuestAddress(*addr)).is_ok() && now == *bytes
        });
        used_after != used_before
            && id.is_ok_and(|id| id == u32::from(built.head))
            && status.is_ok_and(|s| s == 0)
            && intact
    }

    /// Judges an OK answer to the macro's request against the model of the disk.
    fn check_answer(&mut self, built: &Built) {
        let writes = self.dev.device().stats().snapshot().writes;
        let mut got = vec![0u8; built.data_len as usize];
        if self
            .mem
            .read_slice(&mut got, GuestAddress(built.data))
            .is_err()
        {
            return;
        }
        let range = || {
            let from = built.sector.checked_mul(SECTOR).expect("OK past u64");
            let to = from + u64::from(built.data_len);
            assert!(
                to <= self.disk.size(),
                "OK for {from:#x}..{to:#x} past the disk"
            );
            (from, to)
        };
        match built.request_type {
            VIRTIO_BLK_T_IN => {
                let (from, to) = range();
                if let Some((bad, bad_len)) = self.disk.unreadable.filter(|_| self.read_only) {
                    assert!(
                        from == to || to <= bad || bad + bad_len <= from,
                        "read {from:#x}..{to:#x} over the unreadable {bad:#x}+{bad_len:#x} \
                         answered OK"
                    );
                }
                if writes != self.model_writes {
                    // A chain served before this one wrote what the model does not know.
                    self.model = None;
                }
                if let Some(model) = &self.model {
                    assert!(
                        got == model[from as usize..to as usize],
                        "read {from:#x}..{to:#x} returned other bytes than the disk holds"
                    );
                }
            }
            VIRTIO_BLK_T_OUT => {
                assert!(!self.read_only, "a read-only device answered a write OK");
                let (from, to) = range();
                // The request read its data from the buffer as it is now: nothing was
                // served after it. Other writes in the same notification are not modelled.
                match &mut self.model {
                    Some(model) if writes == self.model_writes + 1 => {
                        model[from as usize..to as usize].copy_from_slice(&got);
                        self.model_writes = writes;
                    }
                    _ => self.model = None,
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; 20];
                id[..BLK_ID.len()].copy_from_slice(BLK_ID.as_bytes());
                let n = got.len().min(20);
                assert_eq!(&got[..n], &id[..n], "GET_ID");
            }
            _ => {}
        }
    }

    /// The invariants that hold after any access.
    fn check(&mut self, needs_reset_before: bool, was_reset: bool) {
        assert_eq!(self.disk.bytes, self.pristine, "the disk changed");
        assert!(
            !self.disk.out_of_range.load(Ordering::Relaxed),
            "the device read outside the disk"
        );
        let stats = self.dev.device().stats().snapshot();
        if self.read_only {
            assert_eq!(
                (stats.writes, stats.bytes_written),
                (0, 0),
                "read-only wrote"
            );
            assert_ne!(self.dev.device().features() & (1 << VIRTIO_BLK_F_RO), 0);
        }
        assert!(stats.failed_ranges.len() <= MAX_FAILED_RANGES);
        let disk_size = self.disk.size();
        for range in &stats.failed_ranges {
            let end = range.offset.checked_add(range.len);
            assert!(end.is_some_and(|end| end <= disk_size), "{range:?}");
            if range.op == "read" {
                let (bad, bad_len) = self.disk.unreadable.expect("a read failed on a sound disk");
                assert!(range.offset >= bad && range.offset + range.len <= bad + bad_len);
            }
        }
        assert!(stats.bytes_read <= stats.reads.saturating_mul(disk_size));
        // A write the macro did not model (a raw chain's) makes the model unknown.
        if stats.writes != self.model_writes {
            self.model = None;
        }
        let status = self.dev.status();
        if status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            assert_ne!(
                status & VIRTIO_CONFIG_S_FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK"
            );
        }
        if status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let features = self.dev.driver_features();
            assert_eq!(
                features & !self.dev.device().features(),
                0,
                "unoffered feature"
            );
            assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0, "no VERSION_1");
        }
        if needs_reset_before && !was_reset {
            assert_ne!(
                status & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "NEEDS_RESET vanished"
            );
        }
        assert_eq!(
            self.dev.irq_failures(),
            0,
            "an interrupt did not reach the line"
        );
    }
}

fn guest_memory(hole: bool) -> GuestMemoryMmap {
    let ranges: &[(GuestAddress, usize)] = if hole {
        &[
            (GuestAddress(0), HOLE.0 as usize),
            (GuestAddress(HOLE.1), (MEM_SIZE - HOLE.1) as usize),
        ]
    } else {
        &[(GuestAddress(0), MEM_SIZE as usize)]
    };
    GuestMemoryMmap::from_ranges(ranges).expect("guest memory")
}

/// One op of the stream; None when the stream ends. Returns whether the op reset the device
/// (a 0 written to the status register).
fn step(rig: &mut Rig, cur: &mut Cursor) -> Option<bool> {
    let kind = cur.u8()?;
    let mut was_reset = false;
    match kind % 8 {
        0 => {
            let offset = u32::from(cur.u8()? & 0x3f) * 4;
            let value = cur.u32()?;
            was_reset = offset == VIRTIO_MMIO_STATUS && value == 0;
            rig.trusted &= harmless(u64::from(offset));
            rig.write32(offset, value);
        }
        1 => {
            let offset = u64::from(cur.u16()? & 0xfff);
            let width = [1, 2, 4, 8][usize::from(kind >> 3 & 3)];
            let value = cur.bytes(width)?;
            was_reset = offset == u64::from(VIRTIO_MMIO_STATUS) && value == [0; 4];
            rig.trusted &= harmless(offset);
            rig.dev.write(offset, value);
        }
        2 => {
            let offset = u64::from(cur.u16()? & 0xfff);
            let mut buf = [0u8; 8];
            let width = [1, 2, 4, 8][usize::from(kind >> 3 & 3)];
            rig.dev.read(offset, &mut buf[..width]);
        }
        3 => {
            let q = cur.u8()?;
            let queue = if q & 1 == 0 { 0 } else { u32::from(q >> 1) };
            rig.write32(VIRTIO_MMIO_QUEUE_NOTIFY, queue);
        }
        4 => {
            let addr = u64::from(cur.u16()?);
            let len = usize::from(cur.u8()? % 64) + 1;
            let len = len.min(cur.0.len());
            let bytes = cur.bytes(len)?;
            let _ = rig.mem.write(bytes, GuestAddress(addr));
        }
        5 => {
            let size = 1u16 << (cur.u8()? % 9);
            let features = u64::from(cur.u32()?);
            rig.init(size, features);
            was_reset = true;
        }
        6 => {
            let head = cur.u16()?;
            rig.publish(head);
            rig.write32(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        }
        _ => {
            let p = cur.bytes(4)?;
            rig.request([p[0], p[1], p[2], p[3]]);
        }
    }
    Some(was_reset)
}

/// Register writes that leave the macro's queue set-up as it was: the configuration
/// space, QueueNotify and InterruptACK.
fn harmless(offset: u64) -> bool {
    offset >= 0x100
        || offset == u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)
        || offset == u64::from(VIRTIO_MMIO_INTERRUPT_ACK)
}

fn run(data: &[u8]) {
    let Some((&[flags, bad, l0, l1], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let ops_len = usize::from(u16::from_le_bytes([l0, l1])).min(rest.len());
    let (ops, image) = rest.split_at(ops_len);

    let mut bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR)
        .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
        .collect();
    if flags & 8 != 0 {
        bytes.extend_from_slice(&[0xa5; 300]);
    }
    let unreadable = (bad != 0xff).then(|| {
        let offset = u64::from(bad & 7) * SECTOR + u64::from(bad >> 5 & 1) * 100;
        (offset, (u64::from(bad >> 3 & 3) + 1) * SECTOR)
    });
    let disk = Arc::new(FuzzDisk {
        bytes: bytes.clone(),
        unreadable,
        out_of_range: AtomicBool::new(false),
    });
    let read_only = flags & 1 == 0;
    let access = if read_only {
        BlkAccess::ReadOnly
    } else {
        BlkAccess::Overlay {
            cap_bytes: OVERLAY_CAPS[usize::from(flags >> 1 & 3)],
        }
    };
    let mem = guest_memory(flags & 0x10 != 0);
    // 256-byte pieces never straddle the hole, so everything outside it is written.
    for (i, piece) in image
        .chunks(256)
        .take((MEM_SIZE / 256) as usize)
        .enumerate()
    {
        let _ = mem.write_slice(piece, GuestAddress(256 * i as u64));
    }
    let blk = VirtioBlk::new(disk.clone(), access);
    let dev = VirtioMmio::new(blk, mem.clone(), Arc::new(Line));
    let mut rig = Rig {
        dev,
        mem,
        disk,
        model: Some(bytes.clone()),
        model_writes: 0,
        pristine: bytes,
        read_only,
        ring: Ring::new(16),
        trusted: false,
    };
    let mut cur = Cursor(ops);
    for _ in 0..MAX_OPS {
        let needs_reset = rig.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        let Some(was_reset) = step(&mut rig, &mut cur) else {
            break;
        };
        rig.check(needs_reset, was_reset);
    }
}

fuzz_target!(|data: &[u8]| vm_common::bounded_heap(HEAP_LIMIT, || run(data)));
