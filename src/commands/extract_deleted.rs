//! `vdr extract --deleted`: what recovery finds planned under OUT_DIR, and the ranges
//! it does not trust cut out of a lost file's map (written as holes and listed by
//! extract's writer).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use vdr_formats::vmfs::{self, FileDescriptor, PieceKind, Volume};

use super::extract::Planned;

/// `--deleted`: the lost files recovery finds, under `out` at their recovered paths
/// (`deleted/...`, `orphaned/...`). Directories vdr makes to hold them take the times of
/// the live directory at their original path, else of the root.
pub(super) fn plan_lost(
    volume: &Arc<Volume>,
    root: &FileDescriptor,
    out: &Path,
    json: bool,
) -> Result<Vec<Planned>> {
    let report = super::datastore::find_lost(volume, json)?;
    let dir_entry = |path: &str, fd: FileDescriptor| Planned {
        path: path.to_string(),
        out: out.join(path),
        fd,
        distrust: None,
    };
    let mut plan = vec![Planned {
        path: ".recovered".into(),
        fd: root.clone(),
        out: out.to_path_buf(),
        distrust: None,
    }];
    let mut made: HashSet<String> = HashSet::new();
    let mut files: Vec<&vdr_recover::LostFile> = report.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in files {
        // The directories above it (recovered paths never hold "..": names with it are
        // refused below).
        let parts: Vec<&str> = f.path.split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if made.insert(dir.clone()) {
                let original = format!("/{}", parts[1..depth].join("/"));
                let fd = volume.lookup(&original).unwrap_or_else(|_| root.clone());
                let fd = if fd.is_dir() { fd } else { root.clone() };
                plan.push(dir_entry(&dir, fd));
            }
        }
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            bail!(
                "{}::.recovered/{}: a name component would leave the output directory",
                volume.name(),
                f.path
            );
        }
        if f.kind == "dir" {
            if made.insert(f.path.clone()) {
                plan.push(dir_entry(&f.path, f.fd.clone()));
            }
            continue;
        }
        plan.push(Planned {
            path: f.path.clone(),
            fd: f.fd.clone(),
            out: out.join(&f.path),
            distrust: Some(f.unreadable.clone()),
        });
    }
    Ok(plan)
}

/// `pieces` (a map from file offset `at`) with the ranges in `distrust` cut out as
/// unreadable pieces.
pub(super) fn split_distrusted(
    pieces: Vec<vmfs::Piece>,
    mut at: u64,
    distrust: Option<&[vdr_recover::vmfs_lost::Unreadable]>,
) -> Vec<vmfs::Piece> {
    let Some(distrust) = distrust.filter(|d| !d.is_empty()) else {
        return pieces;
    };
    let mut out = Vec::new();
    for piece in pieces {
        let end = at + piece.len;
        let mut from = at;
        while from < end {
            let bad = distrust
                .iter()
                .find(|u| u.offset <= from && from < u.offset + u.len);
            let next = match bad {
                Some(u) => (u.offset + u.len).min(end),
                None => distrust
                    .iter()
                    .map(|u| u.offset)
                    .filter(|o| *o > from)
                    .min()
                    .unwrap_or(end)
                    .min(end),
            };
            let kind = match (bad, &piece.kind) {
                (Some(u), _) => PieceKind::Unreadable(u.why.clone()),
                (None, PieceKind::Data(lv)) => PieceKind::Data(lv + (from - at)),
                (None, k) => k.clone(),
            };
            out.push(vmfs::Piece {
                len: next - from,
                kind,
            });
            from = next;
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdr_recover::vmfs_lost::Unreadable;

    fn data(len: u64, lv: u64) -> vmfs::Piece {
        vmfs::Piece {
            len,
            kind: PieceKind::Data(lv),
        }
    }

    #[test]
    fn distrusted_ranges_are_cut_out_of_the_pieces_at_their_offsets() {
        let bad = [Unreadable {
            offset: 150,
            len: 100,
            why: "reused".into(),
        }];
        let pieces = vec![
            data(200, 1000),
            vmfs::Piece {
                len: 100,
                kind: PieceKind::Zero { tbz: false },
            },
        ];
        let got = split_distrusted(pieces, 0, Some(&bad));
        let want = vec![
            data(150, 1000),
            vmfs::Piece {
                len: 50,
                kind: PieceKind::Unreadable("reused".into()),
            },
            vmfs::Piece {
                len: 50,
                kind: PieceKind::Unreadable("reused".into()),
            },
            vmfs::Piece {
                len: 50,
                kind: PieceKind::Zero { tbz: false },
            },
        ];
        assert_eq!(got, want);
        assert_eq!(got.iter().map(|p| p.len).sum::<u64>(), 300);
        // A window starting past the range, and no distrust at all, leave pieces alone.
        assert_eq!(
            split_distrusted(vec![data(10, 5)], 400, Some(&bad)),
            vec![data(10, 5)]
        );
        assert_eq!(
            split_distrusted(vec![data(10, 5)], 0, None),
            vec![data(10, 5)]
        );
    }
}
