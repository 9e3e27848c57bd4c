//! QCOW2 against qemu: images are made at test time with qemu-img/qemu-io in a temp dir;
//! what vdr reads must equal `qemu-img convert -O raw`, its map must agree with
//! `qemu-img map --output=json`, and its check with `qemu-img check --output=json`.
//! Skips (printing `SKIP: qemu-img not found`) when qemu-img is missing.

mod qcow2_support;

use std::process::Command;

use qcow2_support::*;
use vdr_formats::{open_disk, ExtentKind, OpenOptions, VirtualDisk};

#[test]
fn plain_images_read_and_map_like_qemu_for_both_versions_and_all_cluster_sizes() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for compat in ["0.10", "1.1"] {
        for cluster in ["512", "4k", "64k", "2M"] {
            let img = dir.path().join(format!("plain-{compat}-{cluster}.qcow2"));
            create(
                &img,
                &format!("compat={compat},cluster_size={cluster}"),
                "4M",
            );
            scribble(&img);
            assert_same_content(&img, None);
            assert_same_map(&img);
            assert_same_check(&img);
        }
    }
}

#[test]
fn compressed_images_read_like_qemu_for_zlib_and_zstd() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 3 * 1024 * 1024 + 12345 * 3);
    // Version 2 images know only deflate (no compression_type field).
    let cases = [
        ("0.10", "zlib", "512"),
        ("0.10", "zlib", "64k"),
        ("1.1", "zlib", "4k"),
        ("1.1", "zlib", "64k"),
        ("1.1", "zlib", "2M"),
        ("1.1", "zstd", "512"),
        ("1.1", "zstd", "64k"),
        ("1.1", "zstd", "2M"),
    ];
    for (compat, kind, cluster) in cases {
        let img = dir
            .path()
            .join(format!("c-{compat}-{kind}-{cluster}.qcow2"));
        let opts = if compat == "0.10" {
            format!("compat=0.10,cluster_size={cluster}")
        } else {
            format!("compression_type={kind},cluster_size={cluster}")
        };
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &opts,
                p(&raw),
                p(&img),
            ],
        );
        assert_same_content(&img, None);
        assert_same_map(&img);
        assert_same_check(&img);
    }
}

#[test]
fn extended_l2_images_read_and_map_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for cluster in ["16k", "64k", "2M"] {
        let img = dir.path().join(format!("ext-{cluster}.qcow2"));
        create(
            &img,
            &format!("extended_l2=on,cluster_size={cluster}"),
            "4M",
        );
        scribble(&img);
        qemu_io(&img, &["write -P 0x33 5000 3000", "write -z 70000 2048"]);
        assert_same_content(&img, None);
        assert_same_map(&img);
        assert_same_check(&img);
    }
}

#[test]
fn three_deep_backing_chain_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    pattern_raw(&base, 4 << 20);
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            p(&mid),
        ],
    );
    qemu_io(&mid, &["write -P 0x44 64k 128k", "write -z 1M 64k"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    qemu_io(&top, &["write -P 0x55 100k 10k", "discard 1M 64k"]);
    assert_same_content(&top, None);
    let chain = open_disk(&top, &OpenOptions::default()).unwrap();
    assert_eq!(chain.layers().len(), 3);
    let parent = chain.leaf().parent().unwrap();
    assert_eq!(
        (parent.name.as_str(), parent.format.as_deref()),
        ("mid.qcow2", Some("qcow2"))
    );
}

#[test]
fn internal_snapshot_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("snap.qcow2");
    create(&img, "compat=1.1", "4M");
    qemu_io(&img, &["write -P 0x61 0 256k", "write -P 0x62 2M 64k"]);
    run("qemu-img", &["snapshot", "-c", "before", p(&img)]);
    qemu_io(
        &img,
        &[
            "write -P 0x63 64k 64k",
            "discard 2M 64k",
            "write -P 0x64 3M 4k",
        ],
    );
    assert_same_content(&img, None);
    assert_same_content(&img, Some("before"));
    assert_same_check(&img);
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    let info = disk.info();
    assert_eq!(info.snapshots.len(), 1);
    assert_eq!(info.snapshots[0].name, "before");
    assert_eq!(info.snapshots[0].disk_size, 4 << 20);
    let err = open_disk(
        &img,
        &OpenOptions {
            snapshot: Some("nope".into()),
            ..OpenOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("nope") && err.contains("before"), "{err}");
}

#[test]
fn external_data_file_reads_like_qemu_raw_or_not() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for raw in ["on", "off"] {
        let img = dir.path().join(format!("df-{raw}.qcow2"));
        let data = format!("df-{raw}.data");
        // Created from inside the directory, so the image records the name relatively.
        let out = Command::new("qemu-img")
            .current_dir(dir.path())
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("data_file={data},data_file_raw={raw}"))
            .args([format!("df-{raw}.qcow2").as_str(), "4M"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        scribble(&img);
        assert_same_content(&img, None);
        assert_same_map(&img);
        assert_same_check(&img);
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        let info = disk.info();
        assert_eq!(info.data_file.as_deref(), Some(data.as_str()));
        assert!(info.features.iter().any(|f| f == "external_data_file"));
        let data_extent = disk
            .map(0, 65536)
            .unwrap()
            .into_iter()
            .find_map(|e| match e.kind {
                ExtentKind::Data { source, at } => Some((source.name().to_string(), at)),
                _ => None,
            })
            .unwrap();
        assert!(data_extent.0.ends_with(&data), "{data_extent:?}");
        assert_eq!(data_extent.1, 0, "data file offset equals the guest offset");
    }
}

#[test]
fn encrypted_images_open_but_refuse_to_read() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for (method, extra) in [("luks", ",encrypt.iter-time=10"), ("aes", "")] {
        let img = dir.path().join(format!("{method}.qcow2"));
        let opts = format!("encrypt.format={method},encrypt.key-secret=sec0{extra}");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "--object",
                "secret,id=sec0,data=123456",
                "-f",
                "qcow2",
                "-o",
                &opts,
                p(&img),
                "1M",
            ],
        );
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        assert_eq!(disk.info().encryption.as_deref(), Some(method));
        let mut buf = [0u8; 512];
        let err = disk.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
        assert!(disk.map(0, 512).is_err());
        assert!(disk.check().unwrap().is_clean());
    }
}

#[test]
fn persistent_bitmaps_are_listed_and_counted_by_check() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("bitmap.qcow2");
    create(&img, "compat=1.1,cluster_size=4k", "4M");
    run("qemu-img", &["bitmap", "--add", p(&img), "b0"]);
    run("qemu-img", &["bitmap", "--add", "-g", "64k", p(&img), "b1"]);
    qemu_io(&img, &["write -P 0x77 0 1M", "write -P 0x78 3M 64k"]);
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    let info = disk.info();
    assert_eq!(info.details["bitmaps"], 2);
    assert!(
        info.features.iter().any(|f| f == "bitmaps"),
        "{:?}",
        info.features
    );
    assert_same_content(&img, None);
    assert_same_check(&img);
}

#[test]
fn preallocated_images_read_and_map_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for prealloc in ["metadata", "falloc", "full"] {
        for compat in ["0.10", "1.1"] {
            let img = dir.path().join(format!("pre-{prealloc}-{compat}.qcow2"));
            create(
                &img,
                &format!("preallocation={prealloc},compat={compat}"),
                "2M",
            );
            qemu_io(&img, &["write -P 0x99 100k 50k", "write -z 1M 64k"]);
            assert_same_content(&img, None);
            assert_same_map(&img);
            assert_same_check(&img);
        }
    }
}

#[test]
fn dirty_image_with_lazy_refcounts_reads_like_qemu_and_checks_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("dirty.qcow2");
    create(&img, "lazy_refcounts=on", "4M");
    // `abort` ends qemu-io without flushing refcounts: the dirty bit stays set.
    let _ = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 128k",
            "-c",
            "write -P 2 1M 64k",
        ])
        .args(["-c", "abort", p(&img)])
        .output()
        .unwrap();
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    let features = disk.info().features;
    assert!(features.iter().any(|f| f == "dirty"), "{features:?}");
    assert!(
        features.iter().any(|f| f == "lazy_refcounts"),
        "{features:?}"
    );
    assert_same_content(&img, None);
    assert_same_check(&img);
}

#[test]
fn snapshot_of_a_smaller_disk_keeps_its_own_size() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    // v3 only: qemu cannot resize a v2 image with snapshots.
    let img = dir.path().join("grow.qcow2");
    create(&img, "compat=1.1,cluster_size=4k", "3M");
    qemu_io(&img, &["write -P 0x41 1M 1M"]);
    run("qemu-img", &["snapshot", "-c", "small", p(&img)]);
    run("qemu-img", &["resize", "-q", p(&img), "9M"]);
    qemu_io(&img, &["write -P 0x42 5M 2M", "write -P 0x43 1M 4k"]);
    assert_same_content(&img, None);
    assert_same_check(&img);
    let snap = open_disk(
        &img,
        &OpenOptions {
            snapshot: Some("small".into()),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    // The snapshot's disk was 3 MiB (its extra data says so; `qemu-img snapshot -a`
    // shrinks the disk back to that). `qemu-img convert -l` keeps the active size
    // instead and pads with zeros: vdr must equal its first 3 MiB, and the padding is
    // all zeros.
    assert_eq!(snap.size(), 3 << 20);
    let theirs = qemu_raw(&img, Some("small"));
    let mut ours = vec![0u8; 3 << 20];
    snap.read_at(&mut ours, 0).unwrap();
    assert!(ours[..] == theirs[..3 << 20]);
    assert!(theirs[3 << 20..].iter().all(|b| *b == 0));
}

#[test]
fn compressed_image_reads_correctly_from_several_threads() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 2 << 20);
    let img = dir.path().join("threads.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            p(&raw),
            p(&img),
        ],
    );
    let expected = std::sync::Arc::new(std::fs::read(&raw).unwrap());
    let disk = std::sync::Arc::new(open_disk(&img, &OpenOptions::default()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (disk, expected) = (disk.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 10_000];
                for i in 0..300u64 {
                    let offset = ((i * 104_729 + t * 7_919) % (2_000_000)) as usize;
                    disk.read_at(&mut buf, offset as u64).unwrap();
                    assert!(
                        buf[..] == expected[offset..offset + buf.len()],
                        "at {offset}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
