//! The real ESXi-made VMFS3/5/6 volumes of ../shared/corpus/vmfs: every file, directory
//! and symlink EXPECTED.tsv lists (from vmfs-fuse, vmfs6-fuse and dissect.vmfs) reads
//! back through the library with that type, size and sha256; VOLUMES.tsv's label,
//! UUIDs, block sizes and block counts match; the images are not modified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vdr_formats::source::{FileSource, Source, SourceRef};
use vdr_formats::{vmfs, ParseMode};

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/vmfs");
    if dir.join("EXPECTED.tsv").exists() {
        Some(dir)
    } else {
        println!("SKIP: no VMFS corpus at {}", dir.display());
        None
    }
}

fn expand(gz: &Path, out: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gunzip -c '{}' | cp --sparse=always /dev/stdin '{}'",
            gz.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "gunzip {}", gz.display());
}

fn sha256_of(src: &dyn Source) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < src.len() {
        let n = src.read_at(&mut buf, at).unwrap();
        assert!(n > 0, "{}: short read at {at}", src.name());
        h.update(&buf[..n]);
        at += n as u64;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn rows(file: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn check_image(corpus: &Path, name: &str) {
    let volumes = rows(&corpus.join("VOLUMES.tsv"));
    let vol_row = volumes.iter().find(|r| r[0] == name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join(name);
    expand(&corpus.join(&vol_row[1]), &image);
    let src: SourceRef = Arc::new(FileSource::open(&image).unwrap());
    let before = sha256_of(src.as_ref());
    assert_eq!(
        before, vol_row[2],
        "{name}: corpus image expands to its recorded hash"
    );

    let volume = vmfs::open(std::slice::from_ref(&src), ParseMode::Strict).unwrap();
    let fs = volume.fs();
    assert_eq!(
        format!("{}.{}", fs.major, fs.minor),
        vol_row[6],
        "{name}: fs version"
    );
    assert_eq!(fs.vmfs_version().to_string(), vol_row[7]);
    assert_eq!(fs.label, vol_row[8]);
    assert_eq!(fs.uuid.to_string(), vol_row[9]);
    assert_eq!(fs.block_size.to_string(), vol_row[10]);
    assert_eq!(fs.sub_block_size.to_string(), vol_row[11]);
    assert_eq!(volume.logical_volume().len().to_string(), vol_row[13]);
    let (total, free) = volume.block_counts().unwrap();
    assert_eq!(
        (total.to_string(), free.to_string()),
        (vol_row[14].clone(), vol_row[15].clone())
    );
    assert!(
        volume.findings().is_empty(),
        "{name}: {:?}",
        volume.findings()
    );

    let walked: BTreeMap<String, vmfs::FileDescriptor> = volume
        .walk("/")
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.fd))
        .collect();
    let expected: Vec<Vec<String>> = rows(&corpus.join("EXPECTED.tsv"))
        .into_iter()
        .filter(|r| r[0] == name)
        .collect();
    assert_eq!(
        walked.keys().collect::<Vec<_>>(),
        expected.iter().map(|r| &r[1]).collect::<Vec<_>>(),
        "{name}: the tree lists exactly the expected entries"
    );
    for row in &expected {
        let (path, kind, size, sha) = (&row[1], &row[2], &row[3], &row[4]);
        let fd = &walked[path];
        assert_eq!(fd.length.to_string(), *size, "{name}:{path} size");
        match kind.as_str() {
            "dir" => assert!(fd.is_dir(), "{name}:{path} is a directory"),
            "file" => {
                assert!(!fd.is_dir());
                let file = volume.open_file(path).unwrap();
                assert_eq!(sha256_of(&file), *sha, "{name}:{path} content");
            }
            "symlink" => {
                assert_eq!(fd.file_type, vmfs::FileType::Symlink);
                let file = volume.open_file(path).unwrap();
                let mut target = vec![0u8; file.len() as usize];
                file.read_exact_at(&mut target, 0).unwrap();
                assert_eq!(
                    String::from_utf8(target).unwrap(),
                    *sha,
                    "{name}:{path} target"
                );
            }
            other => panic!("unknown type {other}"),
        }
    }
    assert_eq!(sha256_of(src.as_ref()), before, "{name}: image unchanged");
}

#[test]
fn vmfs3_sample_reads_as_the_oracles_read_it() {
    if let Some(c) = corpus() {
        check_image(&c, "vmfs3");
    }
}

#[test]
fn vmfs5_sample_reads_as_the_oracles_read_it() {
    if let Some(c) = corpus() {
        check_image(&c, "vmfs5");
    }
}

#[test]
fn vmfs6_sample_reads_as_the_oracles_read_it() {
    if let Some(c) = corpus() {
        check_image(&c, "vmfs6");
    }
}

#[test]
fn thin_and_to_be_zeroed_blocks_map_as_zeros() {
    let Some(c) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vmfs3");
    expand(&c.join("vmfs3.img.gz"), &image);
    let src: SourceRef = Arc::new(FileSource::open(&image).unwrap());
    let volume = vmfs::open(&[src], ParseMode::Strict).unwrap();
    // EXPECTED.tsv notes: thin = 1 FB + 199 holes; zeroedthick = FB 0 written, 199 TBZ.
    for (path, tbz) in [("/thin-flat.vmdk", false), ("/zeroedthick-flat.vmdk", true)] {
        let map = volume.open_file(path).unwrap().map(0, u64::MAX).unwrap();
        assert_eq!(map.len(), 2, "{path}: {map:?}");
        assert!(matches!(map[0].kind, vmfs::PieceKind::Data(_)) && map[0].len == 1 << 20);
        assert_eq!(map[1].kind, vmfs::PieceKind::Zero { tbz });
        assert_eq!(map[1].len, 199 << 20);
    }
}

/// Copies corpus image `name` to a writable temp file and zeroes `len` bytes at `at`.
fn damaged_copy(corpus: &Path, name: &str, dir: &Path, at: u64, len: usize) -> SourceRef {
    use std::os::unix::fs::FileExt;
    let image = dir.join(name);
    expand(
        &corpus.join(format!(
            "{name}{}",
            if name == "vmfs3" {
                ".img.gz"
            } else {
                ".bin.gz"
            }
        )),
        &image,
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(&vec![0u8; len], at).unwrap();
    Arc::new(FileSource::open(&image).unwrap())
}

/// Every sample's LV starts at 0x1100000; the FS descriptor is 2 MiB into it.
const FS_DESCRIPTOR: u64 = 0x110_0000 + 0x20_0000;

#[test]
fn zeroed_fs_descriptor_is_refused_in_strict_mode_and_rebuilt_in_salvage() {
    let Some(c) = corpus() else { return };
    for name in ["vmfs3", "vmfs5", "vmfs6"] {
        let dir = tempfile::tempdir().unwrap();
        let good: SourceRef = {
            let image = dir.path().join("good");
            expand(
                &c.join(format!(
                    "{name}{}",
                    if name == "vmfs3" {
                        ".img.gz"
                    } else {
                        ".bin.gz"
                    }
                )),
                &image,
            );
            Arc::new(FileSource::open(&image).unwrap())
        };
        let bad = damaged_copy(&c, name, dir.path(), FS_DESCRIPTOR, 512);

        let err = vmfs::open(std::slice::from_ref(&bad), ParseMode::Strict)
            .err()
            .expect("strict refuses");
        let msg = err.to_string();
        assert!(
            msg.contains("FS descriptor") && msg.contains("0x200000"),
            "{name}: {msg}"
        );

        let salvaged = vmfs::open(&[bad], ParseMode::Salvage).unwrap();
        assert!(
            salvaged
                .findings()
                .iter()
                .any(|f| f.structure == "FS descriptor"),
            "{name}: the rebuild is reported"
        );
        let reference = vmfs::open(&[good], ParseMode::Strict).unwrap();
        assert_eq!(salvaged.fs().block_size, reference.fs().block_size);
        assert_eq!(
            salvaged.fs().sub_block_size,
            reference.fs().sub_block_size,
            "{name}"
        );
        let tree = |v: &vmfs::Volume| -> Vec<(String, u64)> {
            v.walk("/")
                .unwrap()
                .into_iter()
                .map(|e| (e.path, e.fd.length))
                .collect()
        };
        assert_eq!(tree(&salvaged), tree(&reference), "{name}: same tree");
        for (path, len) in tree(&reference) {
            // .vh.sf holds the descriptor itself: it differs where the damage is.
            if path == "/.vh.sf" || len > (16 << 20) || reference.lookup(&path).unwrap().is_dir() {
                continue;
            }
            assert_eq!(
                sha256_of(&salvaged.open_file(&path).unwrap()),
                sha256_of(&reference.open_file(&path).unwrap()),
                "{name}:{path}"
            );
        }
    }
}
