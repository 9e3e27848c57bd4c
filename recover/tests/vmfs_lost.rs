//! Deleted and orphaned VMFS files on synthetic volumes (fixtures' deletion and feature
//! specs): every deleted file of the manifest is found with its content, names come
//! back where the directories still hold them, reused blocks and cleared maps are
//! unreadable (never zeros or another file's bytes), and orphans are told apart.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vdr_fixtures::vmfs::{build, deletion_spec, feature_spec, Manifest, Version};
use vdr_formats::source::{FileSource, Source, SourceRef};
use vdr_formats::{vmfs, ParseMode};
use vdr_recover::{find_lost, LostFile, LostReport, LostStatus};

fn open(img: &Path) -> Arc<vmfs::Volume> {
    let src: SourceRef = Arc::new(FileSource::open(img).unwrap());
    vmfs::open(&[src], ParseMode::Strict).unwrap()
}

fn lost(img: &Path) -> (Arc<vmfs::Volume>, LostReport) {
    let volume = open(img);
    let report = find_lost(&volume, &mut |_, _| {}).unwrap();
    (volume, report)
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_all(src: &dyn Source) -> std::io::Result<Vec<u8>> {
    let mut all = vec![0u8; src.len() as usize];
    src.read_exact_at(&mut all, 0)?;
    Ok(all)
}

fn by_fd<'a>(report: &'a LostReport, m: &Manifest, path: &str) -> &'a LostFile {
    let e = m
        .entry(path)
        .unwrap_or_else(|| panic!("{path} in the manifest"));
    report
        .files
        .iter()
        .find(|f| f.fd_address == e.fd_address)
        .unwrap_or_else(|| panic!("{path} (FD {:#x}) not found: {report:#?}", e.fd_address))
}

/// Builds `spec` into a temp dir; returns the dir guard, the image and its manifest.
fn built(version: Version) -> (tempfile::TempDir, std::path::PathBuf, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&deletion_spec(version), &img).unwrap();
    (dir, img, m)
}

fn every_deleted_file_is_found_with_its_bytes(version: Version) {
    let (_d, img, m) = built(version);
    let (volume, report) = lost(&img);
    let deleted: Vec<_> = m.entries.iter().filter(|e| e.deleted).collect();
    assert_eq!(deleted.len(), 4);
    assert_eq!(
        report.files.len(),
        deleted.len(),
        "exactly the deleted files: {report:#?}"
    );
    for e in deleted {
        let f = by_fd(&report, &m, &e.path);
        assert_eq!(f.status, LostStatus::Deleted, "{}", e.path);
        assert_eq!(f.size, e.size, "{}", e.path);
        assert_eq!(f.fd_bitmap_free, Some(true), "{}", e.path);
        assert!(f.unreadable.is_empty(), "{}: {:?}", e.path, f.unreadable);
        assert_eq!(f.recoverable_bytes, e.size);
        let bytes = read_all(&f.open(&volume)).unwrap();
        assert_eq!(sha(&bytes), e.sha256, "{} content", e.path);
    }
    assert!(report.live_fds >= 10, "{report:#?}");
}

fn names_come_back_where_the_directories_keep_them(version: Version) {
    let (_d, img, m) = built(version);
    let (_volume, report) = lost(&img);
    for e in m.entries.iter().filter(|e| e.deleted) {
        let f = by_fd(&report, &m, &e.path);
        match &f.original_path {
            Some(p) => {
                assert_eq!(p, &e.path, "a recovered name is the true one");
                assert_eq!(f.path, format!("deleted{}", e.path));
            }
            None => {
                // VMFS3/5 loses a name when the unlink moved another entry over it.
                assert_eq!(version, Version::V5, "VMFS6 keeps every name: {f:#?}");
                assert!(f.path.starts_with("deleted/fd-0x"), "{}", f.path);
            }
        }
    }
    let named = report
        .files
        .iter()
        .filter(|f| f.original_path.is_some())
        .count();
    assert!(named >= 1, "{report:#?}");
    // The unnamed deleted descriptor is still recognised as a VMDK.
    let vm2 = by_fd(&report, &m, "/vm2/vm2.vmdk");
    assert!(vm2.path.ends_with(".vmdk"), "{}", vm2.path);
}

fn a_block_reused_by_a_live_file_is_unreadable_not_its_bytes(version: Version) {
    let (_d, img, m) = built(version);
    // Point the deleted thin file's first block at /keep.bin's first block, as if the
    // block had been given to keep.bin after the delete.
    let gone = m.entry("/thin-gone.bin").unwrap();
    let keep = m.entry("/keep.bin").unwrap();
    let (_v, before) = lost(&img);
    let thin_before = by_fd(&before, &m, "/thin-gone.bin");
    assert!(thin_before.unreadable.is_empty());
    let volume = open(&img);
    let keep_fd = volume.fd(keep.fd_address).unwrap();
    let (array_at, width) = if version == Version::V6 {
        let fd_size = volume.fs().fd_size();
        let md = volume.fs().md_block;
        let array_len = if md <= 0x1000 { 2560 } else { md / 2 };
        (fd_size - array_len, 8)
    } else {
        (0x400, 4)
    };
    drop(volume);
    let raw = keep_fd.blocks[0];
    let mut image = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    image
        .seek(SeekFrom::Start(gone.fd_offset + array_at))
        .unwrap();
    image.write_all(&raw.to_le_bytes()[..width]).unwrap();
    drop(image);

    let (volume, report) = lost(&img);
    let f = by_fd(&report, &m, "/thin-gone.bin");
    assert_eq!(f.unreadable.len(), 1, "{:?}", f.unreadable);
    let u = &f.unreadable[0];
    assert_eq!((u.offset, u.len), (0, 1 << 20));
    assert!(u.why.contains("/keep.bin"), "{}", u.why);
    assert_eq!(f.recoverable_bytes, f.size - (1 << 20));
    let src = f.open(&volume);
    let mut buf = vec![0u8; 4096];
    let err = src.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains("unreadable"), "{err}");
    // The rest still reads: block 3 is the file's own.
    src.read_exact_at(&mut buf, 3 << 20).unwrap();
    let runs = src.layout(0, f.size).unwrap();
    assert!(
        matches!(&runs[0], vdr_formats::source::SourceRun::Unreadable(len, _) if *len == 1 << 20),
        "{runs:?}"
    );
}

fn a_cleared_map_makes_holes_unreadable(version: Version) {
    let (_d, img, m) = built(version);
    // Clear the deleted flat extent's first pointer (a delete that zeroes pointers):
    // its FD still counts 4 blocks, so no hole of it can be trusted as zeros.
    let gone = m.entry("/vm2/vm2-flat.vmdk").unwrap();
    assert!(!gone.pointer_blocks.is_empty());
    let pb = gone.pointer_blocks[0];
    let width = if version == Version::V6 { 8 } else { 4 };
    let mut image = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    image.seek(SeekFrom::Start(pb)).unwrap();
    image.write_all(&vec![0u8; width]).unwrap();
    drop(image);

    let (_volume, report) = lost(&img);
    let f = by_fd(&report, &m, "/vm2/vm2-flat.vmdk");
    assert_eq!(f.unreadable.len(), 1, "{:?}", f.unreadable);
    assert_eq!((f.unreadable[0].offset, f.unreadable[0].len), (0, 1 << 20));
    assert!(
        f.unreadable[0].why.contains("cleared"),
        "{:?}",
        f.unreadable
    );
}

fn an_unlinked_fd_in_use_is_orphaned(version: Version) {
    // The feature volume's deleted file is freed; a live file whose directory entry is
    // wiped (its FD still in use) is an orphan.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&feature_spec(version), &img).unwrap();
    let (_v, report) = lost(&img);
    assert_eq!(report.files.len(), 1, "{report:#?}");
    assert_eq!(report.files[0].status, LostStatus::Deleted);

    // Wipe /fb.bin's directory entry by renaming it into a hole: zero its FD address
    // in the root directory's data (VMFS5: the entry's u32 at +4; VMFS6: same offset
    // in a 0x120-byte slot).
    let e = m.entry("/fb.bin").unwrap();
    let volume = open(&img);
    let root = volume.root().unwrap();
    let file = vmfs::VmfsFile::new(volume.clone(), root.clone(), "/");
    let mut data = vec![0u8; root.length as usize];
    file.read_exact_at(&mut data, 0).unwrap();
    let needle = e.fd_address.to_le_bytes();
    let at = data
        .windows(4)
        .position(|w| w == needle)
        .expect("the root names /fb.bin's FD");
    let lv = match file.map(at as u64, 4).unwrap()[0].kind {
        vmfs::PieceKind::Data(lv) => lv,
        ref k => panic!("{k:?}"),
    };
    drop(file);
    drop(volume);
    let mut image = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    image.seek(SeekFrom::Start(m.volume_offset + lv)).unwrap();
    image.write_all(&[0u8; 4]).unwrap();
    drop(image);

    let (volume, report) = lost(&img);
    let f = by_fd(&report, &m, "/fb.bin");
    assert_eq!(f.status, LostStatus::Orphaned, "{f:#?}");
    assert_eq!(f.fd_bitmap_free, Some(false));
    assert!(f.unreadable.is_empty(), "{:?}", f.unreadable);
    assert_eq!(sha(&read_all(&f.open(&volume)).unwrap()), e.sha256);
}

macro_rules! per_version {
    ($($name:ident => $check:ident;)*) => {$(
        mod $name {
            #[test]
            fn vmfs5() {
                super::$check(vdr_fixtures::vmfs::Version::V5);
            }
            #[test]
            fn vmfs6() {
                super::$check(vdr_fixtures::vmfs::Version::V6);
            }
        }
    )*};
}

per_version! {
    deleted_files_are_found_with_their_bytes => every_deleted_file_is_found_with_its_bytes;
    deleted_names_come_back => names_come_back_where_the_directories_keep_them;
    reused_blocks_are_unreadable => a_block_reused_by_a_live_file_is_unreadable_not_its_bytes;
    cleared_maps_make_holes_unreadable => a_cleared_map_makes_holes_unreadable;
    unlinked_fds_in_use_are_orphans => an_unlinked_fd_in_use_is_orphaned;
}

/// The ESXi-made corpus volumes hold no deleted or orphaned file an open reader knows
/// of; vdr must not invent any.
#[test]
fn the_esxi_corpus_volumes_have_nothing_lost() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/vmfs");
    if !corpus.exists() {
        println!("SKIP: ../shared/corpus/vmfs is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["vmfs5.bin.gz", "vmfs6.bin.gz"] {
        let img = dir.path().join(name.trim_end_matches(".gz"));
        let out = std::fs::File::create(&img).unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gzip -dc '{}' | cp --sparse=always /dev/stdin '{}'",
                corpus.join(name).display(),
                img.display()
            ))
            .status()
            .unwrap();
        drop(out);
        assert!(status.success());
        let (_v, report) = lost(&img);
        assert!(report.valid_fds > 5, "{name}: {report:#?}");
        assert!(report.files.is_empty(), "{name}: {report:#?}");
    }
}
