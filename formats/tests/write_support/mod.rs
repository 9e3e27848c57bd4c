//! Shared by the writer tests: input generators, a scripted `VirtualDisk` that returns
//! every extent kind, and the qemu-img oracle.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vdr_formats::disk::{clip_end, DiskInfo, Extent, ExtentKind, ParentRef, VirtualDisk};
use vdr_formats::raw::RawDisk;
use vdr_formats::source::{FileSource, SliceSource, SourceRef};
use vdr_formats::{convert, ConvertOptions, ConvertReport, Error};

/// Skips the calling test (prints the SKIP line) when qemu-img is missing.
#[macro_export]
macro_rules! require_qemu_img {
    () => {
        if !$crate::write_support::have_qemu_img() {
            eprintln!("SKIP: qemu-img not found");
            return;
        }
    };
}

pub fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Deterministic pseudo-random bytes (xorshift64).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like bytes: words from a small vocabulary, compressible about 3:1.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the ",
        "disk ",
        "cluster ",
        "recovered ",
        "table ",
        "of ",
        "a ",
        "refcount ",
        "block\n",
        "datastore ",
        "snapshot ",
        "grain ",
        "volume ",
        "and ",
        "zero ",
        "image ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

/// A disk image with text, holes, random data, a sparse byte pattern and a text tail;
/// its size is a multiple of 512 but of no larger cluster size.
pub fn mixed_bytes(seed: u64) -> Vec<u8> {
    let mut v = text_bytes(700 << 10, seed);
    v.resize(v.len() + (600 << 10), 0);
    v.extend(random_bytes(300 << 10, seed));
    let pattern_start = v.len();
    v.resize(pattern_start + (400 << 10), 0);
    for block in (pattern_start..v.len()).step_by(3 * 4096) {
        v[block + 17] = 0xa5;
    }
    v.extend(text_bytes((100 << 10) + 4608, seed + 1));
    v
}

/// Writes `bytes` to `path` as a sparse file: all-zero 4 KiB blocks stay holes.
pub fn write_sparse(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    for (i, block) in bytes.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
}

/// A raw disk over the file at `path` (the copy_file_range path of the raw writer).
pub fn file_disk(path: &Path) -> RawDisk {
    RawDisk::new(Arc::new(FileSource::open(path).unwrap()))
}

/// A raw disk held in memory (no file: every byte goes through the read path).
pub fn slice_disk(bytes: &[u8]) -> RawDisk {
    RawDisk::new(Arc::new(SliceSource::new(bytes.to_vec(), "memory.raw")))
}

/// Converts with `options` and no progress display.
pub fn run(
    disk: &dyn VirtualDisk,
    out: &Path,
    options: &ConvertOptions,
) -> Result<ConvertReport, Error> {
    convert(disk, out, options, &|_| {})
}

/// What one scripted extent is.
#[derive(Clone)]
pub enum Piece {
    Data(Vec<u8>),
    Compressed(Vec<u8>),
    Zero(u64),
    Unallocated(u64),
    Unreadable(u64, &'static str),
    /// `len` bytes at `at` of `source`, which may end early: what lies past its end fails
    /// to read (the content expected after salvage is zeros there).
    Stored(SourceRef, u64, u64),
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Data(b) => write!(f, "Data({})", b.len()),
            Piece::Compressed(b) => write!(f, "Compressed({})", b.len()),
            Piece::Zero(n) => write!(f, "Zero({n})"),
            Piece::Unallocated(n) => write!(f, "Unallocated({n})"),
            Piece::Unreadable(n, r) => write!(f, "Unreadable({n}, {r})"),
            Piece::Stored(s, at, n) => write!(f, "Stored({}@{at}, {n})", s.name()),
        }
    }
}

/// A `VirtualDisk` made of scripted extents; `Compressed` content is only reachable
/// through `read_at` (as a real compressed image's is), `Unreadable` ranges fail there.
pub struct ScriptedDisk {
    parent: Option<ParentRef>,
    extents: Vec<Extent>,
    content: Vec<u8>,
    data: SourceRef,
    packed: SourceRef,
}

impl ScriptedDisk {
    pub fn new(pieces: &[Piece]) -> ScriptedDisk {
        let mut content = Vec::new();
        let mut kinds = Vec::new();
        for piece in pieces {
            let offset = content.len() as u64;
            let (len, kind) = match piece {
                Piece::Data(b) => {
                    content.extend_from_slice(b);
                    (b.len() as u64, 0)
                }
                Piece::Compressed(b) => {
                    content.extend_from_slice(b);
                    (b.len() as u64, 1)
                }
                Piece::Zero(n) => (*n, 2),
                Piece::Unallocated(n) => (*n, 3),
                Piece::Unreadable(n, _) => (*n, 4),
                Piece::Stored(source, at, n) => {
                    let have = source.len().saturating_sub(*at).min(*n);
                    let mut bytes = vec![0u8; have as usize];
                    source.read_exact_at(&mut bytes, *at).unwrap();
                    content.extend_from_slice(&bytes);
                    (*n, 5)
                }
            };
            content.resize((offset + len) as usize, 0);
            kinds.push((offset, len, kind, piece.clone()));
        }
        let data: SourceRef = Arc::new(SliceSource::new(content.clone(), "scripted.data"));
        let packed: SourceRef = Arc::new(SliceSource::new(vec![0u8; 16], "scripted.packed"));
        let extents = kinds
            .into_iter()
            .filter(|(_, len, _, _)| *len > 0)
            .map(|(offset, len, kind, piece)| Extent {
                offset,
                len,
                depth: 0,
                kind: match kind {
                    0 => ExtentKind::Data {
                        source: data.clone(),
                        at: offset,
                    },
                    1 => ExtentKind::Compressed {
                        source: packed.clone(),
                        at: 0,
                    },
                    2 => ExtentKind::Zero,
                    5 => match piece {
                        Piece::Stored(source, at, _) => ExtentKind::Data {
                            source: source.clone(),
                            at,
                        },
                        _ => unreachable!(),
                    },
                    3 => ExtentKind::Unallocated,
                    _ => ExtentKind::Unreadable {
                        reason: match piece {
                            Piece::Unreadable(_, r) => r.to_string(),
                            _ => unreachable!(),
                        },
                    },
                },
            })
            .collect();
        ScriptedDisk {
            parent: None,
            extents,
            content,
            data,
            packed,
        }
    }

    /// The same disk, naming a parent (its `Unallocated` ranges then read the parent's
    /// bytes in a `Chain`).
    pub fn with_parent(mut self, name: &str) -> ScriptedDisk {
        self.parent = Some(ParentRef {
            name: name.into(),
            format: None,
        });
        self
    }

    /// The bytes the disk reads as, with unreadable ranges as zeros.
    pub fn content(&self) -> &[u8] {
        &self.content
    }
}

impl VirtualDisk for ScriptedDisk {
    fn size(&self) -> u64 {
        self.content.len() as u64
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        let end = clip_end(offset, len, self.size());
        Ok(self
            .extents
            .iter()
            .filter_map(|e| e.clip(offset, end))
            .collect())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let end = offset + buf.len() as u64;
        for e in self.map(offset, buf.len() as u64)? {
            if let ExtentKind::Unreadable { reason } = &e.kind {
                return Err(Error::Unreadable {
                    file: "scripted.img".into(),
                    offset: e.offset,
                    len: e.len,
                    reason: reason.clone(),
                });
            }
        }
        assert!(end <= self.size());
        buf.copy_from_slice(&self.content[offset as usize..end as usize]);
        Ok(())
    }

    fn parent(&self) -> Option<ParentRef> {
        self.parent.clone()
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            format: "scripted".into(),
            file: "scripted.img".into(),
            virtual_size: self.size(),
            ..DiskInfo::default()
        }
    }
}

/// `qemu-img check --output=json`: panics unless the image is clean (exit 0, no
/// corruptions, no leaks, no check errors). Returns the parsed report.
pub fn qemu_check_clean(image: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} exited {:?}: {text} {}",
        image.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["corruptions", "leaks", "check-errors"] {
        let n = report.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "{key} in {}: {text}", image.display());
    }
    report
}

/// `qemu-img compare -f raw -F qcow2 RAW QCOW2` says identical.
pub fn qemu_compare_identical(raw: &Path, qcow2: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {} {}",
        raw.display(),
        qcow2.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The qcow2's content as qemu-img reads it (`convert -O raw`).
pub fn qemu_read_qcow2(qcow2: &Path, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(scratch);
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(qcow2)
        .arg(scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(scratch).unwrap()
}

/// `qemu-img info --output=json`.
pub fn qemu_info(image: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Resolves every parent name to one fixed disk.
pub struct OneParent(pub Arc<dyn VirtualDisk>);

impl vdr_formats::ParentResolver for OneParent {
    fn resolve(
        &self,
        _child: &dyn VirtualDisk,
        parent: &ParentRef,
    ) -> Result<(Arc<dyn VirtualDisk>, String), Error> {
        Ok((self.0.clone(), parent.name.clone()))
    }
}
