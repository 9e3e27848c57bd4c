//! Which parts of a lost file can be trusted: the LV ranges the live tree and the system
//! files use and the ranges lost files share, as interval sets, and the file ranges of a
//! lost file they make unreadable (the rules are in the parent module's doc).

use std::sync::Arc;

use vdr_formats::vmfs::{FileDescriptor, PieceKind, VmfsFile, Volume};

use super::Unreadable;

/// The most overlapping pairs of lost files' block claims compared.
const MAX_CLAIM_PAIRS: usize = 1 << 22;

/// A range of the LV and who uses it.
#[derive(Clone, Debug)]
pub(super) struct Claim {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) owner: String,
}

/// Sorted, non-overlapping claims (an overlap keeps the first owner).
pub(super) struct Claims(Vec<Claim>);

impl Claims {
    pub(super) fn new(mut v: Vec<Claim>) -> Claims {
        v.sort_by_key(|c| (c.start, c.end));
        let mut out: Vec<Claim> = Vec::with_capacity(v.len());
        for c in v {
            match out.last_mut() {
                Some(last) if c.start < last.end => last.end = last.end.max(c.end),
                Some(last) if c.start == last.end && c.owner == last.owner => last.end = c.end,
                _ => out.push(c),
            }
        }
        Claims(out)
    }

    /// The parts of LV range [start, end) that are claimed, with their owners.
    fn overlaps(&self, start: u64, end: u64) -> Vec<(u64, u64, &str)> {
        let first = self.0.partition_point(|c| c.end <= start);
        self.0[first..]
            .iter()
            .take_while(|c| c.start < end)
            .map(|c| (c.start.max(start), c.end.min(end), c.owner.as_str()))
            .collect()
    }
}

/// The LV ranges `fd` uses (its data and its pointer blocks), owned by `path`.
pub(super) fn claim_file(
    volume: &Arc<Volume>,
    fd: &FileDescriptor,
    path: &str,
    out: &mut Vec<Claim>,
) {
    for (_, len, kind) in file_pieces(volume, fd) {
        if let PieceKind::Data(lv) = kind {
            out.push(Claim {
                start: lv,
                end: lv + len,
                owner: path.to_string(),
            });
        }
    }
    for pb in volume.pointer_blocks(fd) {
        out.push(Claim {
            start: pb.lv,
            end: pb.lv + pb.len,
            owner: path.to_string(),
        });
    }
}

/// `fd`'s pieces as (file offset, length, kind); a map that fails is one unreadable
/// piece.
pub(super) fn file_pieces(volume: &Arc<Volume>, fd: &FileDescriptor) -> Vec<(u64, u64, PieceKind)> {
    let file = VmfsFile::new(volume.clone(), fd.clone(), "/");
    match file.map(0, fd.length) {
        Ok(pieces) => {
            let mut at = 0;
            pieces
                .into_iter()
                .map(|p| {
                    let r = (at, p.len, p.kind);
                    at += p.len;
                    r
                })
                .collect()
        }
        Err(e) => vec![(0, fd.length, PieceKind::Unreadable(e.to_string()))],
    }
}

/// LV ranges more than one lost file claims, with the claimants; `None` when the
/// claims overlap so much that comparing them would pass [`MAX_CLAIM_PAIRS`] (only a
/// damaged or hostile volume gets there).
pub(super) fn shared_ranges(mut claims: Vec<Claim>) -> Option<Vec<Claim>> {
    claims.sort_by_key(|c| (c.start, c.end));
    let mut out: Vec<Claim> = Vec::new();
    let mut pairs = 0usize;
    for (i, a) in claims.iter().enumerate() {
        for b in claims[i + 1..].iter().take_while(|b| b.start < a.end) {
            pairs += 1;
            if pairs > MAX_CLAIM_PAIRS {
                return None;
            }
            if b.owner != a.owner {
                out.push(Claim {
                    start: b.start,
                    end: a.end.min(b.end),
                    owner: format!("{} and {}", a.owner, b.owner),
                });
            }
        }
    }
    Some(out)
}

/// The file ranges of lost file `fd` that cannot be trusted (see the module doc).
pub(super) fn unreadable_ranges(
    volume: &Arc<Volume>,
    fd: &FileDescriptor,
    pieces: &[(u64, u64, PieceKind)],
    live: &Claims,
    system: &Claims,
    shared: &Claims,
) -> Vec<Unreadable> {
    let mut out: Vec<Unreadable> = Vec::new();
    let mapped = volume.mapped_blocks(fd);
    let holes_doubtful = match mapped {
        Some(m) => m < fd.num_blocks,
        None => true,
    };
    let sub_blocks = fd.uses_sub_blocks();
    let resident = fd.is_resident();
    for (at, len, kind) in pieces {
        match kind {
            PieceKind::Unreadable(why) => out.push(Unreadable {
                offset: *at,
                len: *len,
                why: why.clone(),
            }),
            PieceKind::Zero { tbz: false } if holes_doubtful => out.push(Unreadable {
                offset: *at,
                len: *len,
                why: match mapped {
                    Some(m) => format!(
                        "a hole, or a pointer cleared on delete: the FD counts {} blocks but its map names {m}",
                        fd.num_blocks
                    ),
                    None => "a pointer block of the lost file cannot be read".into(),
                },
            }),
            PieceKind::Zero { .. } => {}
            PieceKind::Data(lv) => {
                let (lv, end) = (*lv, lv + len);
                let file_at = |x: u64| at + (x - lv);
                for (s, e, owner) in live.overlaps(lv, end) {
                    out.push(Unreadable {
                        offset: file_at(s),
                        len: e - s,
                        why: format!("LV {s:#x} is now used by {owner}"),
                    });
                }
                if !resident {
                    for (s, e, owner) in system.overlaps(lv, end) {
                        if sub_blocks && owner == "/.sbc.sf" {
                            continue;
                        }
                        out.push(Unreadable {
                            offset: file_at(s),
                            len: e - s,
                            why: format!("LV {s:#x} lies in the system file {owner}"),
                        });
                    }
                }
                for (s, e, owner) in shared.overlaps(lv, end) {
                    out.push(Unreadable {
                        offset: file_at(s),
                        len: e - s,
                        why: format!(
                            "LV {s:#x} is claimed by the lost FDs {owner}: which one it holds is unknown"
                        ),
                    });
                }
            }
        }
    }
    for pb in volume.pointer_blocks(fd) {
        let end = fd.length.min(pb.file_offset.saturating_add(pb.file_len));
        if pb.file_offset >= end {
            continue;
        }
        for (s, _, owner) in live.overlaps(pb.lv, pb.lv + pb.len).into_iter().chain(
            system
                .overlaps(pb.lv, pb.lv + pb.len)
                .into_iter()
                .filter(|(_, _, o)| !matches!(*o, "/.pbc.sf" | "/.pb2.sf" | "/.sbc.sf")),
        ) {
            out.push(Unreadable {
                offset: pb.file_offset,
                len: end - pb.file_offset,
                why: format!("its pointer block at LV {s:#x} is now used by {owner}"),
            });
        }
    }
    normalise_ranges(out)
}

/// Sorts ranges and merges overlapping ones (the first reason is kept).
fn normalise_ranges(mut v: Vec<Unreadable>) -> Vec<Unreadable> {
    v.sort_by_key(|u| (u.offset, u.len));
    let mut out: Vec<Unreadable> = Vec::new();
    for u in v {
        if u.len == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if u.offset <= last.offset + last.len => {
                let end = (last.offset + last.len).max(u.offset + u.len);
                if u.offset == last.offset + last.len && u.why != last.why {
                    out.push(u);
                } else {
                    last.len = end - last.offset;
                }
            }
            _ => out.push(u),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(start: u64, end: u64, owner: &str) -> Claim {
        Claim {
            start,
            end,
            owner: owner.into(),
        }
    }

    #[test]
    fn claims_answer_the_claimed_parts_of_a_range_with_their_owners() {
        let c = Claims::new(vec![
            claim(100, 200, "/b"),
            claim(0, 50, "/a"),
            claim(200, 300, "/b"),
        ]);
        assert_eq!(c.0.len(), 2, "adjacent claims of one owner join");
        assert_eq!(c.overlaps(40, 120), vec![(40, 50, "/a"), (100, 120, "/b")]);
        assert_eq!(c.overlaps(50, 100), vec![]);
        assert_eq!(c.overlaps(250, 1000), vec![(250, 300, "/b")]);
    }

    #[test]
    fn shared_ranges_are_where_two_owners_claim_the_same_bytes() {
        let shared = shared_ranges(vec![
            claim(0, 100, "0x4"),
            claim(50, 150, "0x8"),
            claim(60, 70, "0x4"),
            claim(200, 300, "0xc"),
        ])
        .unwrap();
        let shared = Claims::new(shared);
        assert_eq!(shared.overlaps(0, 1000).len(), 1, "{:?}", shared.0);
        let (s, e, owner) = shared.overlaps(0, 1000)[0];
        assert_eq!((s, e), (50, 100));
        assert!(owner.contains("0x4") && owner.contains("0x8"), "{owner}");
        // Thousands of lost files all claiming one range: refused, not quadratic.
        let many: Vec<Claim> = (0..3000)
            .map(|i| claim(0, 1 << 30, &format!("{i}")))
            .collect();
        assert!(shared_ranges(many).is_none());
    }

    #[test]
    fn unreadable_ranges_are_sorted_and_merged_keeping_distinct_reasons_apart() {
        let u = |offset, len, why: &str| Unreadable {
            offset,
            len,
            why: why.into(),
        };
        let got = normalise_ranges(vec![
            u(100, 50, "b"),
            u(0, 10, "a"),
            u(5, 10, "a"),
            u(150, 10, "c"),
            u(300, 0, "empty"),
        ]);
        assert_eq!(got, vec![u(0, 15, "a"), u(100, 50, "b"), u(150, 10, "c")]);
    }
}
