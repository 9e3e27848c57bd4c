//! The virtio-blk device over real images: a qcow2 that qemu-img made is read through the
//! virtio-mmio registers and a split queue (laid out in guest memory the way a driver
//! does) and compared with qemu-img's own raw conversion; a damaged copy from the
//! injector (vdr-fixtures::damage), opened in salvage mode, answers IOERR exactly where
//! the damage is and the good bytes everywhere else; overlay writes never reach the file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tempfile::TempDir;
use vdr_fixtures::damage::{write_variants, Expect};
use vdr_fixtures::qemu::{create, qemu_available, qemu_img, qemu_io};
use vdr_formats::disk::ParseMode;
use vdr_formats::{open_image, OpenOptions, VirtualDisk};
use vdr_verify_vm::devices::{IrqLine, MmioDevice};
use vdr_verify_vm::virtio::{BlkAccess, BlkStats, VirtioBlk, VirtioMmio};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HEADER: u64 = 0x3000;
const STATUS: u64 = 0x3100;
const DATA: u64 = 0x10_0000;
/// Bytes per read request: 128 sectors, Linux's usual readahead unit.
const REQUEST: u64 = 64 * 1024;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;

#[derive(Default)]
struct CountingIrq(AtomicU64);

impl IrqLine for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A minimal virtio-mmio block driver: one queue of 16, one request in flight.
struct Driver {
    mem: GuestMemoryMmap,
    dev: Box<dyn MmioDevice>,
    irq: Arc<CountingIrq>,
    submitted: u16,
}

impl Driver {
    /// Attaches `disk` the way the VMM does and brings the device up (virtio 1.1 §3.1.1).
    fn attach(disk: Arc<dyn VirtualDisk>, access: BlkAccess) -> (Driver, Arc<BlkStats>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let irq = Arc::new(CountingIrq::default());
        let line: Arc<dyn IrqLine> = irq.clone();
        let dev = VirtioMmio::new(VirtioBlk::new(disk, access), mem.clone(), line);
        let stats = dev.device().stats();
        let mut driver = Driver {
            mem,
            dev: Box::new(dev),
            irq,
            submitted: 0,
        };
        driver.bring_up();
        (driver, stats)
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.dev.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.dev.write(offset, &value.to_le_bytes());
    }

    fn bring_up(&mut self) {
        assert_eq!(self.read32(0x00), 0x7472_6976);
        assert_eq!(self.read32(0x08), 2, "block device");
        self.write32(0x70, 0);
        self.write32(0x70, 1 | 2);
        self.write32(0x14, 1);
        let high = self.read32(0x10);
        self.write32(0x14, 0);
        let low = self.read32(0x10);
        self.write32(0x24, 1);
        self.write32(0x20, high);
        self.write32(0x24, 0);
        self.write32(0x20, low);
        self.write32(0x70, 1 | 2 | 8);
        assert_ne!(self.read32(0x70) & 8, 0, "FEATURES_OK accepted");
        self.write32(0x30, 0);
        assert!(self.read32(0x34) >= u32::from(QUEUE_SIZE));
        self.write32(0x38, u32::from(QUEUE_SIZE));
        for (low, addr) in [(0x80, DESC_TABLE), (0x90, AVAIL_RING), (0xa0, USED_RING)] {
            self.write32(low, addr as u32);
            self.write32(low + 4, (addr >> 32) as u32);
        }
        self.write32(0x44, 1);
        self.write32(0x70, 1 | 2 | 8 | 4);
    }

    fn descriptor(&self, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(DESC_TABLE + 16 * index))
            .unwrap();
    }

    /// Submits header, `len` data bytes at DATA and a status byte; returns the status.
    fn request(&mut self, request_type: u32, sector: u64, len: u32) -> u8 {
        let (next, write) = (1u16, 2u16);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let data_flags = if request_type == T_IN {
            next | write
        } else {
            next
        };
        self.descriptor(0, HEADER, 16, next, 1);
        self.descriptor(1, DATA, len, data_flags, 2);
        self.descriptor(2, STATUS, 1, write, 0);
        let slot = u64::from(self.submitted % QUEUE_SIZE);
        self.mem
            .write_obj(0u16, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        self.submitted = self.submitted.wrapping_add(1);
        self.mem
            .write_obj(self.submitted, GuestAddress(AVAIL_RING + 2))
            .unwrap();
        let interrupts = self.irq.0.load(Ordering::SeqCst);
        self.write32(0x50, 0);
        assert_eq!(self.irq.0.load(Ordering::SeqCst), interrupts + 1);
        assert_eq!(self.read32(0x60) & 1, 1, "used-buffer interrupt");
        self.write32(0x64, 1);
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert_eq!(used, self.submitted, "the chain was used");
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        buf
    }
}

/// qemu-img's good image (v3, 4 KiB clusters, 6 MiB, data in every L2 range) and its raw
/// conversion, the oracle.
struct Fixture {
    dir: TempDir,
    good: PathBuf,
    good_raw: Vec<u8>,
}

fn fixture() -> Option<Fixture> {
    if !qemu_available() {
        println!("SKIP: qemu-img/qemu-io not found");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("vdr-virtio-")
        .tempdir()
        .unwrap();
    let good = create(
        dir.path(),
        "qcow2",
        "good.qcow2",
        "cluster_size=4096",
        None,
        "6M",
    );
    qemu_io(
        dir.path(),
        "qcow2",
        "good.qcow2",
        &[
            "write -P 0x01 0x0 0x1000",
            "write -P 0x02 0x200000 0x1000",
            "write -P 0x03 0x400000 0x1000",
            "write -P 0x11 0x1234 0x40000",
            "write -P 0x12 0x280000 0x30000",
            "write -P 0x14 0x500000 0x80000",
            "write -P 0x15 0x5ff000 0x1000",
        ],
    );
    qemu_img(
        dir.path(),
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "good.qcow2",
            "good.raw",
        ],
    );
    let good_raw = std::fs::read(dir.path().join("good.raw")).unwrap();
    Some(Fixture {
        dir,
        good,
        good_raw,
    })
}

fn open(path: &Path, mode: ParseMode) -> Arc<dyn VirtualDisk> {
    let options = OpenOptions {
        mode,
        ..OpenOptions::default()
    };
    open_image(path, &options).unwrap()
}

fn overlaps(range: &Range<u64>, ranges: &[Range<u64>]) -> bool {
    ranges
        .iter()
        .any(|r| r.start < range.end && range.start < r.end)
}

#[test]
fn reads_through_virtio_match_qemu_img() {
    let Some(fx) = fixture() else { return };
    let (mut driver, stats) =
        Driver::attach(open(&fx.good, ParseMode::Strict), BlkAccess::ReadOnly);
    for offset in (0..fx.good_raw.len() as u64).step_by(REQUEST as usize) {
        assert_eq!(
            driver.request(T_IN, offset / 512, REQUEST as u32),
            S_OK,
            "{offset:#x}"
        );
        let expected = &fx.good_raw[offset as usize..(offset + REQUEST) as usize];
        assert!(
            driver.data(REQUEST as usize) == expected,
            "bytes at {offset:#x}"
        );
    }
    let stats = stats.snapshot();
    assert_eq!(stats.bytes_read, fx.good_raw.len() as u64);
    assert_eq!(stats.io_errors, 0);
}

#[test]
fn damaged_qcow2_in_salvage_mode_fails_exactly_the_damaged_requests() {
    let Some(fx) = fixture() else { return };
    let variants_dir = fx.dir.path().join("variants");
    std::fs::create_dir(&variants_dir).unwrap();
    let variants = write_variants(&fx.good, &variants_dir).unwrap();
    let variant = variants.iter().find(|v| v.name == "l2_past_eof").unwrap();
    let Expect::Unreadable { damaged, lost, .. } = &variant.expect else {
        panic!("l2_past_eof is expected to leave ranges unreadable");
    };
    let (mut driver, stats) =
        Driver::attach(open(&variant.path, ParseMode::Salvage), BlkAccess::ReadOnly);
    let mut failed = Vec::new();
    for offset in (0..fx.good_raw.len() as u64).step_by(REQUEST as usize) {
        let range = offset..offset + REQUEST;
        match driver.request(T_IN, offset / 512, REQUEST as u32) {
            S_OK => {
                assert!(!overlaps(&range, lost), "{range:?} is lost but read OK");
                let expected = &fx.good_raw[offset as usize..range.end as usize];
                assert!(
                    driver.data(REQUEST as usize) == expected,
                    "bytes at {offset:#x}"
                );
            }
            S_IOERR => {
                assert!(
                    overlaps(&range, damaged),
                    "{range:?} failed outside the damage"
                );
                failed.push(range);
            }
            other => panic!("status {other} at {offset:#x}"),
        }
    }
    for lost_range in lost {
        assert!(
            overlaps(lost_range, &failed),
            "{lost_range:?} was never reported"
        );
    }
    let stats = stats.snapshot();
    assert_eq!(stats.io_errors, failed.len() as u64);
    assert!(!stats.failed_ranges.is_empty());
    // Each recorded range is the part the disk named unreadable: inside the damage.
    for f in &stats.failed_ranges {
        let inside = damaged
            .iter()
            .any(|r| r.start <= f.offset && f.offset + f.len <= r.end);
        assert!(inside, "{f:?} is not inside {damaged:?}");
    }
}

#[test]
fn overlay_writes_read_back_and_never_reach_the_image() {
    let Some(fx) = fixture() else { return };
    let before = std::fs::read(&fx.good).unwrap();
    let access = BlkAccess::Overlay { cap_bytes: 1 << 20 };
    let (mut driver, stats) = Driver::attach(open(&fx.good, ParseMode::Strict), access);
    // 0x280000 - 0x200: straddles an unallocated and an allocated cluster.
    let sector = (0x28_0000 - 0x200) / 512;
    let written = vec![0xa5u8; 8192];
    driver
        .mem
        .write_slice(&written, GuestAddress(DATA))
        .unwrap();
    assert_eq!(driver.request(T_OUT, sector, 8192), S_OK);
    driver
        .mem
        .write_slice(&[0u8; 16384], GuestAddress(DATA))
        .unwrap();
    assert_eq!(driver.request(T_IN, sector - 8, 16384), S_OK);
    let mut expected = fx.good_raw[(sector as usize - 8) * 512..][..16384].to_vec();
    expected[4096..4096 + 8192].copy_from_slice(&written);
    assert!(driver.data(16384) == expected);
    assert_eq!(
        std::fs::read(&fx.good).unwrap(),
        before,
        "the image file is unchanged"
    );
    assert_eq!(stats.snapshot().bytes_written, 8192);
}

#[test]
fn read_only_device_refuses_writes() {
    let Some(fx) = fixture() else { return };
    let (mut driver, stats) =
        Driver::attach(open(&fx.good, ParseMode::Strict), BlkAccess::ReadOnly);
    assert_eq!(driver.request(T_OUT, 0, 512), S_IOERR);
    assert_eq!(driver.request(T_IN, 0, 512), S_OK);
    assert!(driver.data(512) == fx.good_raw[..512]);
    assert_eq!(stats.snapshot().writes_refused, 1);
}
