//! Real VMDK samples written by other tools (../shared/corpus, read in place, never
//! copied): every VMDK row of MANIFEST.tsv with an expected hash must read to exactly that
//! content (the hash of `qemu-img convert -O raw`, or of the sample's documented content);
//! every row whose oracle is "none" must be refused with a clear error, without a panic or
//! a huge allocation. Skips when the corpus is absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use vdr_formats::{open_disk, OpenOptions, ParseMode, VirtualDisk};

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    let dir = if dir.is_dir() {
        dir
    } else {
        PathBuf::from("/work/shared/corpus")
    };
    if dir.join("MANIFEST.tsv").is_file() {
        Some(dir)
    } else {
        println!("SKIP: corpus not found");
        None
    }
}

/// One MANIFEST row.
struct Row {
    file: String,
    format: String,
    sha: String,
    oracle: String,
}

/// The VMDK rows, each file once.
fn vmdk_rows(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut rows: Vec<Row> = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 8 || !(cols[4].starts_with("vmdk") || cols[4].starts_with("extent")) {
            continue;
        }
        if rows.iter().any(|r| r.file == cols[0]) {
            continue;
        }
        rows.push(Row {
            file: cols[0].to_string(),
            format: cols[4].to_string(),
            sha: cols[6].to_string(),
            oracle: cols[7].to_string(),
        });
    }
    rows
}

/// sha256 of the whole virtual disk, read in 4 MiB pieces (never the whole disk at once):
/// through `openssl` or `sha256sum` when there (a debug build of sha2 hashes 16 GiB too
/// slowly), else with the sha2 crate.
fn disk_sha256(disk: &dyn VirtualDisk) -> String {
    let mut buf = vec![0u8; 4 << 20];
    let zeros = vec![0u8; 4 << 20];
    // Ranges the map says are zeros are fed from a zero buffer; everything else is read.
    let mut feed = |sink: &mut dyn FnMut(&[u8])| {
        for extent in disk.map(0, disk.size()).unwrap() {
            let mut offset = extent.offset;
            while offset < extent.end() {
                let n = (extent.end() - offset).min(buf.len() as u64) as usize;
                if extent.kind.reads_as_zero() {
                    sink(&zeros[..n]);
                } else {
                    disk.read_at(&mut buf[..n], offset).unwrap();
                    sink(&buf[..n]);
                }
                offset += n as u64;
            }
        }
    };
    // openssl uses the CPU's SHA instructions (about 4x coreutils' sha256sum here).
    for (program, args) in [
        ("openssl", &["dgst", "-sha256", "-r"][..]),
        ("sha256sum", &[][..]),
    ] {
        let Ok(mut child) = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            continue;
        };
        let mut stdin = child.stdin.take().unwrap();
        feed(&mut |b| stdin.write_all(b).unwrap());
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        return String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
    }
    let mut hasher = Sha256::new();
    feed(&mut |b| hasher.update(b));
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hashes every sample with an expected hash whose virtual size is (or is not) above 1 GiB;
/// returns how many were checked.
fn check_hashes(large: bool) -> usize {
    let Some(dir) = corpus() else { return 0 };
    let mut checked = 0;
    for row in vmdk_rows(&dir) {
        if row.sha.len() != 64 {
            continue;
        }
        let path = dir.join(&row.file);
        let disk = open_disk(&path, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
        if (disk.size() > 1 << 30) != large {
            continue;
        }
        assert_eq!(disk_sha256(&disk), row.sha, "{} ({})", row.file, row.format);
        disk.check()
            .unwrap_or_else(|e| panic!("{}: check: {e}", row.file));
        checked += 1;
    }
    checked
}

#[test]
fn every_vmdk_sample_with_a_hash_reads_to_that_content() {
    if corpus().is_some() {
        let checked = check_hashes(false);
        assert!(checked >= 15, "only {checked} samples had hashes");
    }
}

/// The 16 GiB stream (iotest-version3.vmdk) is hashed by streaming reads, never held in
/// memory; on its own so that it runs beside the other tests.
#[test]
fn large_vmdk_samples_hash_by_streaming() {
    if corpus().is_some() {
        assert!(check_hashes(true) >= 1);
    }
}

#[test]
fn every_vmdk_sample_marked_for_rejection_is_refused_clearly() {
    let Some(dir) = corpus() else { return };
    for row in vmdk_rows(&dir).iter().filter(|r| r.oracle == "none") {
        let path = dir.join(&row.file);
        for mode in [ParseMode::Strict, ParseMode::Salvage] {
            let options = OpenOptions {
                mode,
                ..OpenOptions::default()
            };
            let err = match open_disk(&path, &options) {
                Err(e) => e.to_string(),
                Ok(disk) => {
                    // Salvage may open what strict refuses; it must then not hand out data.
                    assert_eq!(
                        mode,
                        ParseMode::Salvage,
                        "{} opened in strict mode",
                        row.file
                    );
                    let mut buf = vec![0u8; disk.size().min(1 << 20) as usize];
                    match disk.read_at(&mut buf, 0) {
                        Err(e) => e.to_string(),
                        Ok(()) => continue,
                    }
                }
            };
            assert!(
                err.contains(path.file_name().unwrap().to_str().unwrap()) || err.contains(".vmdk"),
                "{}: {err}",
                row.file
            );
            println!("{} ({mode:?}): {err}", row.file);
        }
    }
}

#[test]
fn missing_extents_are_named() {
    let Some(dir) = corpus() else { return };
    let cases = [
        ("vmdk-forensic/ms3-win.vmdk", "disk-s001.vmdk"),
        (
            "vmdk-rs/monolithicFlat-missing-extent/monolithicFlat.vmdk",
            "monolithicFlat-flat.vmdk",
        ),
        (
            "vmdk-rs/vmfs_thick/vmfs_thick-000001.vmdk",
            "vmfs_thick-000001-delta.vmdk",
        ),
    ];
    for (file, extent) in cases {
        let err = open_disk(&dir.join(file), &OpenOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(extent), "{file}: {err}");
    }
}

#[test]
fn split_extents_alone_say_to_open_the_descriptor() {
    let Some(dir) = corpus() else { return };
    for file in [
        "vmdk-rs/twoGbMaxExtentSparse/twoGbMaxExtentSparse-s001.vmdk",
        "vmdk-forensic/tw_sparse/tw_sparse-s001.vmdk",
    ] {
        let err = open_disk(&dir.join(file), &OpenOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("descriptor file"), "{file}: {err}");
    }
}

#[test]
fn stream_converter_sample_uses_its_embedded_extent() {
    let Some(dir) = corpus() else { return };
    let disk = open_disk(
        &dir.join("vmdk-rs/streamOptimizedWithMarkers.vmdk"),
        &OpenOptions::default(),
    )
    .unwrap();
    let info = disk.info();
    assert_eq!(info.details["extents"][0]["file"], "call-me-stream.vmdk");
    assert!(info.features.contains(&"stream_optimized".to_string()));
}

#[test]
fn fuzzed_huge_capacity_is_refused_by_its_limit() {
    let Some(dir) = corpus() else { return };
    let err = open_disk(&dir.join("qemu-iotests/afl9.vmdk"), &OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("exceeds the limit") || err.contains("beyond any disk"),
        "{err}"
    );
}
