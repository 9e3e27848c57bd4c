//! Copy offload: `copy_file_range(2)` from an input file into the output, so long data
//! runs never pass through user space (qemu-img's `-C` measured ~3× faster than
//! read/write on this kind of machine; on XFS/btrfs the kernel may even share extents).
//!
//! The call may copy less than asked (loop), and may be refused for a pair of files
//! (`EXDEV` on old kernels, `EINVAL`/`EOPNOTSUPP` on some file systems, `ENOSYS` in
//! sandboxes): then the caller falls back to read + write for the rest, and stops trying.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::source::advise_will_need;

/// Why a copy stopped before its end.
#[derive(Debug)]
pub(super) enum CopyStop {
    /// The kernel cannot offload this copy; `done` bytes were copied before it said so.
    Unsupported { done: u64 },
    /// A real I/O error (or the input ended early) after `done` bytes. The kernel does not
    /// say which side failed, so the caller retries the rest by reading and writing, whose
    /// error names the file.
    Failed { done: u64 },
}

/// Copies `len` bytes from `src` at `src_at` to `dst` at `dst_at` with copy_file_range.
pub(super) fn copy_range(
    src: &File,
    src_at: u64,
    dst: &File,
    dst_at: u64,
    len: u64,
) -> Result<(), CopyStop> {
    // Workers copy units at two or more places of one open file, whose shared readahead
    // state then sees no sequential stream: on a cold cache copy_file_range fell back to
    // small synchronous reads and ran slower than qemu-img's single reader.
    advise_will_need(src, src_at, len);
    let mut done = 0u64;
    while done < len {
        let (Ok(mut off_in), Ok(mut off_out)) =
            (i64::try_from(src_at + done), i64::try_from(dst_at + done))
        else {
            return Err(CopyStop::Unsupported { done });
        };
        // At most 1 GiB a call: the kernel caps a single call below 2 GiB anyway.
        let chunk = usize::try_from((len - done).min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open and owned by `File`s borrowed for the duration
        // of the call; the offset pointers point at live local i64s, which the kernel
        // reads and updates; flags must be 0. The call does not touch the descriptors'
        // file positions because explicit offsets are given.
        let copied = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        match copied {
            0 => return Err(CopyStop::Failed { done }),
            n if n > 0 => done += n as u64,
            _ => {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(
                        libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM,
                    ) => return Err(CopyStop::Unsupported { done }),
                    _ => return Err(CopyStop::Failed { done }),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn copies_a_range_between_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("in");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst_path = dir.path().join("out");
        let dst = File::create(&dst_path).unwrap();
        copy_range(&src, 1000, &dst, 5000, 200_000).unwrap();
        let mut back = vec![0u8; 200_000];
        File::open(&dst_path)
            .unwrap()
            .read_exact_at(&mut back, 5000)
            .unwrap();
        assert_eq!(back, data[1000..201_000]);
    }

    #[test]
    fn copying_past_the_input_end_fails_with_the_bytes_done() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("in");
        std::fs::write(&src_path, [7u8; 100]).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::create(dir.path().join("out")).unwrap();
        match copy_range(&src, 50, &dst, 0, 100) {
            Err(CopyStop::Failed { done: 50, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
