//! `vdr compare A B`: is the content of two images the same, across formats, chains and
//! sizes? Ranges that read as zeros in both maps are skipped without reading; the rest is
//! read in bounded chunks and compared. As with `qemu-img compare`, images of different
//! sizes are identical when the extra part of the larger one reads as zeros, unless
//! `--strict-size` is given.

use anyhow::Result;
use serde::Serialize;
use vdr_formats::VirtualDisk;

use super::{open, OpenRequest, Status};
use crate::cli::CompareArgs;
use crate::output::{print_json, print_line};
use crate::progress::Progress;
use crate::walk::{for_each_extent, WINDOW};

/// Bytes read from each image at a time.
const CHUNK: usize = 1 << 20;

/// The `vdr compare --json` object.
#[derive(Debug, Serialize)]
struct CompareReport {
    identical: bool,
    /// Offset of the first byte that differs, or null.
    first_difference: Option<u64>,
    size_a: u64,
    size_b: u64,
}

/// Runs `vdr compare`.
pub fn run(args: &CompareArgs) -> Result<Status> {
    let request = OpenRequest {
        salvage: args.open.salvage,
        allow_escaping_extents: args.open.allow_escaping_extents,
        ..OpenRequest::default()
    };
    let a = open(&args.a, &request)?;
    let b = open(&args.b, &request)?;
    let (size_a, size_b) = (a.size(), b.size());

    let first_difference = if args.strict_size && size_a != size_b {
        Some(size_a.min(size_b))
    } else {
        let progress = Progress::new(size_a.max(size_b), args.json);
        let found = first_difference(&a, &b, &progress);
        progress.finish();
        found?
    };

    if args.json {
        print_json(&CompareReport {
            identical: first_difference.is_none(),
            first_difference,
            size_a,
            size_b,
        })?;
    } else {
        match first_difference {
            None => print_line("Images are identical.")?,
            Some(_) if args.strict_size && size_a != size_b => print_line(&format!(
                "Strict mode: image size mismatch ({size_a} bytes vs {size_b} bytes)!"
            ))?,
            Some(offset) => print_line(&format!("Content mismatch at offset {offset}!"))?,
        }
    }
    Ok(if first_difference.is_none() {
        Status::Ok
    } else {
        Status::ProblemsFound
    })
}

/// Offset of the first byte where `a` and `b` differ; past the end of the smaller disk its
/// content counts as zeros.
fn first_difference(
    a: &dyn VirtualDisk,
    b: &dyn VirtualDisk,
    progress: &Progress,
) -> Result<Option<u64>> {
    let size = a.size().max(b.size());
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    let mut window = 0;
    while window < size {
        let window_end = window.saturating_add(WINDOW).min(size);
        let to_read = union(
            &nonzero_ranges(a, window, window_end)?,
            &nonzero_ranges(b, window, window_end)?,
        );
        for (start, end) in to_read {
            let mut pos = start;
            while pos < end {
                let len = usize::try_from(end - pos).map_or(CHUNK, |n| n.min(CHUNK));
                let (chunk_a, chunk_b) = (&mut buf_a[..len], &mut buf_b[..len]);
                read_or_zeros(a, chunk_a, pos)?;
                read_or_zeros(b, chunk_b, pos)?;
                if chunk_a != chunk_b {
                    let i = chunk_a
                        .iter()
                        .zip(chunk_b.iter())
                        .position(|(x, y)| x != y)
                        .unwrap_or(0);
                    return Ok(Some(pos + i as u64));
                }
                pos += len as u64;
                progress.set(pos);
            }
        }
        window = window_end;
        progress.set(window);
    }
    Ok(None)
}

/// Reads `buf.len()` bytes at `offset`; the part past the end of the disk reads as zeros.
fn read_or_zeros(disk: &dyn VirtualDisk, buf: &mut [u8], offset: u64) -> Result<()> {
    let inside = disk.size().saturating_sub(offset);
    let split = usize::try_from(inside).map_or(buf.len(), |n| n.min(buf.len()));
    let (head, tail) = buf.split_at_mut(split);
    if !head.is_empty() {
        disk.read_at(head, offset)?;
    }
    tail.fill(0);
    Ok(())
}

/// Merged ranges of `[start, end)` that do not read as zeros by the map alone (nothing
/// past the end of the disk).
fn nonzero_ranges(disk: &dyn VirtualDisk, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for_each_extent(disk, start, end, |extent| {
        if !extent.kind.reads_as_zero() {
            match ranges.last_mut() {
                Some(last) if last.1 == extent.offset => last.1 = extent.end(),
                _ => ranges.push((extent.offset, extent.end())),
            }
        }
        Ok(())
    })?;
    Ok(ranges)
}

/// The union of two sorted lists of disjoint ranges, as sorted disjoint ranges.
fn union(x: &[(u64, u64)], y: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = x.iter().chain(y.iter()).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in all {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlapping_and_touching_ranges() {
        let merged = union(&[(0, 10), (20, 30)], &[(5, 15), (30, 40), (50, 60)]);
        assert_eq!(merged, vec![(0, 15), (20, 40), (50, 60)]);
    }
}
