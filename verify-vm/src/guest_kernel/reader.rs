//! A partition of a [`VirtualDisk`] as the storage of ext4-view ([`Ext4Read`]) and of vdr's
//! XFS reader ([`XfsRead`]): reads are relative to the partition's start and may not leave
//! it, so a damaged superblock or extent tree cannot make either read a neighbouring
//! partition.

use std::sync::Arc;

use std::io;

use ext4_view::Ext4Read;
use vdr_formats::xfs::XfsRead;
use vdr_formats::VirtualDisk;

/// A byte range of a disk.
pub struct PartitionReader {
    disk: Arc<dyn VirtualDisk>,
    /// Where the partition starts on the disk, in bytes.
    start: u64,
    len: u64,
}

impl PartitionReader {
    pub fn new(disk: Arc<dyn VirtualDisk>, start: u64, len: u64) -> Self {
        PartitionReader { disk, start, len }
    }

    /// Fills `dst` from `start_byte` of the partition.
    pub fn read_at(&self, start_byte: u64, dst: &mut [u8]) -> Result<(), ReadError> {
        let len = dst.len();
        let disk_offset = self.start.saturating_add(start_byte);
        let inside = u64::try_from(len)
            .ok()
            .and_then(|l| start_byte.checked_add(l))
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(ReadError::OutOfBounds {
                offset: start_byte,
                disk_offset,
                len,
                partition_len: self.len,
            });
        }
        self.disk
            .read_at(dst, disk_offset)
            .map_err(|source| ReadError::Disk {
                disk_offset,
                len,
                source,
            })
    }
}

/// A read ext4-view asked for that failed; offsets are the disk's, not the partition's.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "read of {len} bytes at partition offset {offset} (disk offset {disk_offset}) \
         goes past the partition's end ({partition_len} bytes)"
    )]
    OutOfBounds {
        offset: u64,
        disk_offset: u64,
        len: usize,
        partition_len: u64,
    },
    #[error("reading {len} bytes at disk offset {disk_offset}: {source}")]
    Disk {
        disk_offset: u64,
        len: usize,
        source: vdr_formats::Error,
    },
}

impl Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        PartitionReader::read_at(self, start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

impl XfsRead for PartitionReader {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_at(offset, buf).map_err(|e| match e {
            ReadError::OutOfBounds { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            ReadError::Disk { .. } => io::Error::other(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdr_formats::raw::RawDisk;
    use vdr_formats::SliceSource;

    fn disk(bytes: Vec<u8>) -> Arc<dyn VirtualDisk> {
        Arc::new(RawDisk::new(Arc::new(SliceSource::new(bytes, "test"))))
    }

    #[test]
    fn reads_are_relative_to_the_partition_start() {
        let mut reader = PartitionReader::new(disk((0..=255).collect()), 16, 32);
        let mut buf = [0u8; 4];

        reader.read(2, &mut buf).unwrap();

        assert_eq!(buf, [18, 19, 20, 21]);
    }

    #[test]
    fn reads_past_the_partition_end_fail_with_the_disk_offset() {
        let mut reader = PartitionReader::new(disk(vec![0; 256]), 16, 32);
        let mut buf = [0u8; 4];

        let err = reader.read(30, &mut buf).unwrap_err();

        assert!(err.to_string().contains("disk offset 46"), "{err}");
        assert!(reader.read(u64::MAX, &mut buf).is_err());
    }
}
