//! File descriptors (VMFS "inodes"): a lock block, the file metadata, and the data area
//! holding either the block array or, for small files, the data itself.
//!
//! Layout from dissect.vmfs `FS3_FileMetadata`/`FS3_DiskLock` and vmfs-tools
//! `vmfs_inode.h` (research/vmfs.md §7). VMFS3/5: 2 KiB FDs, metadata at +0x200, data
//! and a 256 × u32 block array at +0x400. VMFS6: 2 × mdAlignment, metadata at
//! +mdAlignment, resident data right after the 512-byte metadata, a 320 × u64 block
//! array aligned to the end.

use super::bytes::{u32_at, u64_at, u8_at, Uuid};
use super::fs::FsInfo;
use super::Error;

/// Lock-block type of an FD.
pub const FD_LOCK_TYPE: u32 = 0x10C0_0001;
/// ZLA of a file whose data sits in the FD.
pub const ZLA_RESIDENT: u32 = 0x10D1;
/// ZLA of a double-indirect file.
pub const ZLA_DOUBLE_INDIRECT: u32 = 0x10D0;
pub const ZLA_FILE_BLOCK: u32 = 1;
pub const ZLA_SUB_BLOCK: u32 = 2;
pub const ZLA_POINTER_BLOCK: u32 = 3;
pub const ZLA_POINTER_BLOCK2: u32 = 5;

/// What an FD describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Volume,
    Directory,
    Regular,
    Symlink,
    /// A system file (`.fdc.sf`, …); `.sdd.sf` is one too but carries a directory mode.
    System,
    RawDeviceMapping,
    Unknown(u32),
}

impl FileType {
    pub fn from_raw(v: u32) -> FileType {
        match v {
            1 => FileType::Volume,
            2 => FileType::Directory,
            3 => FileType::Regular,
            4 => FileType::Symlink,
            5 => FileType::System,
            6 => FileType::RawDeviceMapping,
            other => FileType::Unknown(other),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FileType::Volume => "volume",
            FileType::Directory => "dir",
            FileType::Regular => "file",
            FileType::Symlink => "symlink",
            FileType::System => "sysfile",
            FileType::RawDeviceMapping => "rdm",
            FileType::Unknown(_) => "unknown",
        }
    }
}

/// The on-disk lock at the start of an FD (or a resource cluster).
#[derive(Clone, Debug)]
pub struct DiskLock {
    pub kind: u32,
    /// The lock's own LV offset (a self-check).
    pub addr: u64,
    pub heartbeat_addr: u64,
    pub heartbeat_gen: u64,
    pub mode: u32,
    pub owner: Uuid,
    pub num_holders: u32,
}

impl DiskLock {
    pub fn parse(b: &[u8]) -> DiskLock {
        DiskLock {
            kind: u32_at(b, 0),
            addr: u64_at(b, 4),
            heartbeat_addr: u64_at(b, 0x0C),
            heartbeat_gen: u64_at(b, 0x14),
            mode: u32_at(b, 0x24),
            owner: Uuid::at(b, 0x28),
            num_holders: u32_at(b, 0x40),
        }
    }

    /// True when a host holds the lock (a non-zero mode with an owner).
    pub fn is_held(&self) -> bool {
        self.mode != 0 && !self.owner.is_nil()
    }
}

/// A parsed, validated file descriptor.
#[derive(Clone, Debug)]
pub struct FileDescriptor {
    /// The FD's own address.
    pub address: u32,
    /// Where it lies in the LV.
    pub lv_offset: u64,
    pub lock: DiskLock,
    pub generation: u32,
    pub link_count: u32,
    pub file_type: FileType,
    pub flags: u32,
    pub length: u64,
    pub block_size: u64,
    pub num_blocks: u64,
    pub mtime: u32,
    pub ctime: u32,
    pub atime: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub zla: u32,
    pub tbz_blocks: u64,
    pub pointer_blocks: u32,
    /// VMFS6: the FD address of the parent directory.
    pub parent_fd: u32,
    /// log2 of the span of one block-array entry.
    pub block_shift: u32,
    /// The block array (VMFS3/5 values widened to u64).
    pub blocks: Vec<u64>,
    /// The data area (resident data, a symlink target, an RDM's SCSI id).
    pub resident: Vec<u8>,
    /// Where the data area starts inside the FD.
    pub resident_at: u64,
}

impl FileDescriptor {
    /// Parses the FD bytes `b` (one FD, `fs.fd_size()` bytes) read from LV offset
    /// `lv_offset` for address `address`. `file` names the volume in errors.
    pub fn parse(
        fs: &FsInfo,
        file: &str,
        address: u32,
        lv_offset: u64,
        b: &[u8],
    ) -> Result<FileDescriptor, Error> {
        let bad =
            |off: u64, what: String| Error::bad(file, lv_offset + off, "file descriptor", what);
        let lock = DiskLock::parse(b);
        if lock.kind != FD_LOCK_TYPE {
            return Err(bad(
                0,
                format!(
                    "FD {address:#x}: lock type {:#010x}, expected {FD_LOCK_TYPE:#010x}",
                    lock.kind
                ),
            ));
        }
        let meta_at = if fs.is_vmfs6() {
            fs.md_block as usize
        } else {
            0x200
        };
        let m = b.get(meta_at..).unwrap_or(&[]);
        let desc_addr = u32_at(m, 0);
        if desc_addr != address {
            return Err(bad(
                meta_at as u64,
                format!("FD {address:#x} records its own address as {desc_addr:#x}"),
            ));
        }
        let zla = u32_at(m, 0x44);
        let block_size = u64_at(m, 0x1C);
        let length = u64_at(m, 0x14);
        if !matches!(
            zla,
            ZLA_FILE_BLOCK
                | ZLA_SUB_BLOCK
                | ZLA_POINTER_BLOCK
                | ZLA_POINTER_BLOCK2
                | ZLA_DOUBLE_INDIRECT
                | ZLA_RESIDENT
        ) {
            return Err(bad(
                meta_at as u64 + 0x44,
                format!("FD {address:#x}: unknown zero-level address type {zla:#x}"),
            ));
        }
        // VMFS3 leaves blockOffsetShift at 0: derive it from the block size then.
        let shift = u32::from(u8_at(m, 0x89));
        let block_shift = if zla == ZLA_RESIDENT {
            0
        } else if shift != 0 {
            shift
        } else if block_size.is_power_of_two() {
            block_size.trailing_zeros()
        } else {
            return Err(bad(
                meta_at as u64 + 0x1C,
                format!("FD {address:#x}: block size {block_size:#x} is not a power of two"),
            ));
        };
        if zla != ZLA_RESIDENT && !(9..=40).contains(&block_shift) {
            return Err(bad(
                meta_at as u64 + 0x89,
                format!("FD {address:#x}: block shift {block_shift} is outside 9..40"),
            ));
        }
        let (data_at, data_len, array_at, entries, wide) = if fs.is_vmfs6() {
            let fd = fs.fd_size() as usize;
            let md = fs.md_block as usize;
            let data_len = md - 512;
            let array_len = if md <= 0x1000 { 2560 } else { md / 2 };
            (fd - data_len, data_len, fd - array_len, array_len / 8, true)
        } else {
            (0x400, 0x400, 0x400, 256, false)
        };
        let resident = b.get(data_at..data_at + data_len).unwrap_or(&[]).to_vec();
        let blocks = if zla == ZLA_RESIDENT {
            Vec::new()
        } else {
            (0..entries)
                .map(|i| {
                    if wide {
                        u64_at(b, array_at + 8 * i)
                    } else {
                        u64::from(u32_at(b, array_at + 4 * i))
                    }
                })
                .collect()
        };
        Ok(FileDescriptor {
            address,
            lv_offset,
            lock,
            generation: u32_at(m, 4),
            link_count: u32_at(m, 8),
            file_type: FileType::from_raw(u32_at(m, 0x0C)),
            flags: u32_at(m, 0x10),
            length,
            block_size,
            num_blocks: u64_at(m, 0x24),
            mtime: u32_at(m, 0x2C),
            ctime: u32_at(m, 0x30),
            atime: u32_at(m, 0x34),
            uid: u32_at(m, 0x38),
            gid: u32_at(m, 0x3C),
            mode: u32_at(m, 0x40),
            zla,
            tbz_blocks: u64::from(u32_at(m, 0x48)) | (u64::from(u32_at(m, 0x54)) << 32),
            pointer_blocks: u32_at(m, 0x5C),
            parent_fd: if fs.is_vmfs6() { u32_at(m, 0x70) } else { 0 },
            block_shift,
            blocks,
            resident,
            resident_at: data_at as u64,
        })
    }

    /// True for a directory, including `.sdd.sf` (a system file with a directory mode).
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Directory
            || (self.file_type == FileType::System && self.mode & 0o170000 == 0o040000)
    }

    /// True when the data sits in the FD itself.
    pub fn is_resident(&self) -> bool {
        self.zla == ZLA_RESIDENT
    }

    /// True when the data is addressed in sub-blocks of `.sbc.sf`.
    pub fn uses_sub_blocks(&self) -> bool {
        self.zla == ZLA_SUB_BLOCK
    }

    /// A name for the address type, as `vdr ls -l` shows it.
    pub fn zla_name(&self) -> &'static str {
        match self.zla {
            ZLA_FILE_BLOCK => "FB",
            ZLA_SUB_BLOCK => "SB",
            ZLA_POINTER_BLOCK => "PB",
            ZLA_POINTER_BLOCK2 => "PB2",
            ZLA_DOUBLE_INDIRECT => "PB-double",
            ZLA_RESIDENT => "resident",
            _ => "unknown",
        }
    }
}
