//! Deleted and orphaned VMFS files on synthetic volumes (fixtures' deletion and feature
//! specs): every deleted file of the manifest is found with its content, names come
//! back where the directories still hold them, reused blocks and cleared maps are
//! unreadable (never zeros or another file's bytes), and orphans are told apart.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vdr_fixtures::vmfs::{build, deletion_spec, feature_spec, Manifest, Version};
use vdr_fixtures::vmfs_damage::{apply, VmfsDamage};
use vdr_formats::source::{FileSource, Source, SourceRef, SourceRun};
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
    let damage = VmfsDamage::BlockReused {
        deleted: "/thin-gone.bin".into(),
        live: "/keep.bin".into(),
    };
    apply(&img, &m, &damage).unwrap();

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
        matches!(&runs[0], SourceRun::Unreadable(len, _) if *len == 1 << 20),
        "{runs:?}"
    );
}

fn a_cleared_map_makes_holes_unreadable(version: Version) {
    let (_d, img, m) = built(version);
    let damage = VmfsDamage::ClearedPointer {
        path: "/vm2/vm2-flat.vmdk".into(),
    };
    apply(&img, &m, &damage).unwrap();

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
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&feature_spec(version), &img).unwrap();
    let (_v, report) = lost(&img);
    assert_eq!(
        report.files.len(),
        1,
        "the feature volume's one deleted file: {report:#?}"
    );
    assert_eq!(report.files[0].status, LostStatus::Deleted);

    let damage = VmfsDamage::UnlinkedEntry {
        path: "/fb.bin".into(),
    };
    apply(&img, &m, &damage).unwrap();
    let (volume, report) = lost(&img);
    let e = m.entry("/fb.bin").unwrap();
    let f = by_fd(&report, &m, "/fb.bin");
    assert_eq!(f.status, LostStatus::Orphaned, "{f:#?}");
    assert_eq!(f.fd_bitmap_free, Some(false));
    assert!(f.unreadable.is_empty(), "{:?}", f.unreadable);
    assert_eq!(sha(&read_all(&f.open(&volume)).unwrap()), e.sha256);
}

fn an_unlinked_directory_is_orphaned_with_what_it_holds(version: Version) {
    let (_d, img, m) = built(version);
    apply(
        &img,
        &m,
        &VmfsDamage::UnlinkedEntry {
            path: "/vm1".into(),
        },
    )
    .unwrap();
    let (volume, report) = lost(&img);
    let dir = by_fd(&report, &m, "/vm1");
    assert_eq!((dir.status, dir.kind), (LostStatus::Orphaned, "dir"));
    for path in ["/vm1/vm1.vmdk", "/vm1/vm1-flat.vmdk"] {
        let e = m.entry(path).unwrap();
        let f = by_fd(&report, &m, path);
        assert_eq!(f.status, LostStatus::Orphaned);
        assert_eq!(f.name_from, Some("lost directory"));
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(
            f.path,
            format!("{}/{name}", dir.path),
            "nested under its directory"
        );
        assert_eq!(
            sha(&read_all(&f.open(&volume)).unwrap()),
            e.sha256,
            "{path}"
        );
    }
    // The deleted files are still found beside them.
    assert_eq!(
        report
            .files
            .iter()
            .filter(|f| f.status == LostStatus::Deleted)
            .count(),
        4
    );
}

use vdr_fixtures::per_vmfs_version as per_version;

per_version! {
    deleted_files_are_found_with_their_bytes => every_deleted_file_is_found_with_its_bytes;
    deleted_names_come_back => names_come_back_where_the_directories_keep_them;
    reused_blocks_are_unreadable => a_block_reused_by_a_live_file_is_unreadable_not_its_bytes;
    cleared_maps_make_holes_unreadable => a_cleared_map_makes_holes_unreadable;
    unlinked_fds_in_use_are_orphans => an_unlinked_fd_in_use_is_orphaned;
    unlinked_dirs_are_orphans_with_their_files => an_unlinked_directory_is_orphaned_with_what_it_holds;
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
        let (volume, report) = lost(&img);
        assert!(report.valid_fds > 5, "{name}: {report:#?}");
        assert!(report.files.is_empty(), "{name}: {report:#?}");
        // ESXi's own FD bitmap agrees: every slot without a valid FD is free, every FD
        // of the tree is in use.
        for address in volume.fd_slots() {
            if volume.fd(address).is_err() {
                assert_eq!(volume.fd_free(address), Some(true), "{name}: {address:#x}");
            }
        }
        for e in volume.walk("/").unwrap() {
            assert_eq!(
                volume.fd_free(e.fd.address),
                Some(false),
                "{name}: {} (FD {:#x})",
                e.path,
                e.fd.address
            );
        }
    }
}

/// A damaged FD claiming far more bytes than the file holds (cut by salvage to what its
/// double-indirect map can address, 2^48 bytes on VMFS5) is mapped by its allocated
/// blocks, not block by block over its claimed size: listing and recovery finish.
#[test]
fn a_huge_claimed_length_maps_by_its_holes_not_block_by_block() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&feature_spec(Version::V5), &img).unwrap();
    let damage = VmfsDamage::ImpossibleFileSize {
        path: "/double.bin".into(),
    };
    apply(&img, &m, &damage).unwrap();
    let src: SourceRef = Arc::new(FileSource::open(&img).unwrap());
    let volume = vmfs::open(&[src], ParseMode::Salvage).unwrap();
    let started = std::time::Instant::now();
    let file = volume.open_file("/double.bin").unwrap();
    assert!(file.len() >= 1 << 40, "{}", file.len());
    let pieces = file.map(0, file.len()).unwrap();
    assert!(pieces.len() <= 8, "{pieces:?}");
    let report = find_lost(&volume, &mut |_, _| {}).unwrap();
    assert_eq!(report.files.len(), 1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// VMFS6 freed slots are matched by parent directory and generation; when several lost
/// files share both, no name is guessed: the names are listed as candidates.
#[test]
fn ambiguous_vmfs6_names_are_candidates_not_guesses() {
    use vdr_fixtures::vmfs::half_deleted_spec;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let spec = half_deleted_spec(Version::V6, "/many", 600);
    let m = build(&spec, &img).unwrap();
    let (_v, report) = lost(&img);
    assert_eq!(report.files.len(), 300);
    for f in &report.files {
        let e = m
            .entries
            .iter()
            .find(|e| e.fd_address == f.fd_address)
            .unwrap();
        let true_name = e.path.rsplit('/').next().unwrap().to_string();
        match &f.name {
            Some(n) => assert_eq!(n, &true_name, "a name given is the true one"),
            None => assert!(
                f.name_candidates.contains(&true_name) || f.name_candidates.len() == 16,
                "{}: {:?}",
                true_name,
                f.name_candidates
            ),
        }
    }
}
