//! VMDK against qemu: images are made at test time with qemu-img/qemu-io in a temp dir;
//! what vdr reads must equal `qemu-img convert -O raw`, and its map must agree with
//! `qemu-img map --output=json`. Skips (printing `SKIP: qemu-img not found`) when qemu-img
//! is missing.

mod vmdk_support;

use vdr_formats::{open_disk, OpenOptions, ParseMode, VirtualDisk};
use vmdk_support::*;

/// Writes at aligned and unaligned places, and zero writes (zeroed grains where enabled).
fn scribble(img: &std::path::Path, zero_writes: bool) {
    let mut cmds = vec![
        "write -P 0xab 0 64k",
        "write -P 0xcd 1000000 100000",
        "write -P 0x11 2M 192k",
        "write -P 0x22 3500000 512",
    ];
    if zero_writes {
        cmds.push("write -z 2M 64k");
    }
    qemu_io(img, &cmds);
}

#[test]
fn every_subformat_qemu_creates_reads_and_maps_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let cases = [
        ("monolithicSparse", ""),
        ("monolithicSparse", ",compat6=on"),
        ("monolithicSparse", ",hwversion=10,adapter_type=lsilogic"),
        (
            "monolithicSparse",
            ",zeroed_grain=on,adapter_type=legacyESX",
        ),
        ("monolithicFlat", ",adapter_type=buslogic"),
        ("twoGbMaxExtentSparse", ",zeroed_grain=on"),
        ("twoGbMaxExtentFlat", ",hwversion=7"),
    ];
    for (i, (sub, extra)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("img{i}.vmdk"));
        create(&img, &format!("subformat={sub}{extra}"), "4M");
        scribble(&img, extra.contains("zeroed_grain"));
        assert_same_content(&img);
        assert_same_map(&img);
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        let info = disk.info();
        assert_eq!(info.details["create_type"], *sub, "{}", img.display());
        assert!(disk.check().unwrap().is_clean(), "{}", img.display());
    }
}

#[test]
fn info_shows_descriptor_keys_and_features() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("info.vmdk");
    create(
        &img,
        "subformat=monolithicSparse,hwversion=10,adapter_type=lsilogic,zeroed_grain=on",
        "4M",
    );
    let info = open_disk(&img, &OpenOptions::default()).unwrap().info();
    assert_eq!(info.format, "vmdk");
    assert_eq!(info.details["hw_version"], "10");
    assert_eq!(info.details["adapter_type"], "lsilogic");
    assert_eq!(info.details["parent_cid"], "ffffffff");
    assert_eq!(info.cluster_size, Some(65536));
    assert!(
        info.features.contains(&"redundant_gd".to_string()),
        "{:?}",
        info.features
    );
    assert!(info.features.contains(&"zeroed_grain_gte".to_string()));
}

#[test]
fn split_extents_across_the_2gb_boundary_read_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        create(&img, &format!("subformat={sub}"), "2052M");
        qemu_io(
            &img,
            &["write -P 0x5a 2047M 2M", "write -P 0x6b 2050M 100k"],
        );
        let disk = open_disk(&img, &OpenOptions::default()).unwrap();
        assert_eq!(disk.info().details["extents"].as_array().unwrap().len(), 2);
        let mut buf = vec![0u8; 2 << 20];
        disk.read_at(&mut buf, 2047 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));
        assert_same_map(&img);
    }
}

#[test]
fn stream_optimized_from_qemu_reads_and_maps_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 5 * 1024 * 1024 + 12345 * 3);
    let img = dir.path().join("stream.vmdk");
    run_in(
        dir.path(),
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            p(&raw),
            p(&img),
        ],
    );
    assert_same_content(&img);
    assert_same_map(&img);
    let info = open_disk(&img, &OpenOptions::default()).unwrap().info();
    assert!(info.features.contains(&"stream_optimized".to_string()));
}

#[test]
fn vmware_stream_layout_with_footer_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 3 * 1024 * 1024 + 4096);
    let img = dir.path().join("vmware-stream.vmdk");
    write_vmware_stream(&std::fs::read(&raw).unwrap(), &img);
    assert_same_content(&img);
    assert_same_map(&img);
    let info = open_disk(&img, &OpenOptions::default()).unwrap().info();
    assert!(
        info.features.contains(&"footer".to_string()),
        "{:?}",
        info.features
    );
}

#[test]
fn stream_reads_from_several_threads_at_once() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 4 << 20);
    let img = dir.path().join("stream.vmdk");
    run_in(
        dir.path(),
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            p(&raw),
            p(&img),
        ],
    );
    let expected = std::fs::read(&raw).unwrap();
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (disk, expected) = (&disk, &expected);
            s.spawn(move || {
                let mut buf = vec![0u8; 40_000];
                for k in 0..40u64 {
                    let at = (k * 97_003 + t * 13_001) % (4 << 20);
                    let at = at.min((4 << 20) - buf.len() as u64);
                    disk.read_at(&mut buf, at).unwrap();
                    assert!(buf[..] == expected[at as usize..at as usize + buf.len()]);
                }
            });
        }
    });
}

#[test]
fn three_deep_chain_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.vmdk");
    create(&base, "subformat=monolithicSparse", "4M");
    qemu_io(&base, &["write -P 0x01 0 4M"]);
    let mid = dir.path().join("mid.vmdk");
    create_child(&mid, "base.vmdk");
    qemu_io(
        &mid,
        &["write -P 0x02 64k 128k", "write -P 0x03 1000000 5000"],
    );
    let top = dir.path().join("top.vmdk");
    create_child(&top, "mid.vmdk");
    qemu_io(&top, &["write -P 0x04 100k 10k", "write -P 0x05 3M 64k"]);
    let leaf = dir.path().join("leaf.vmdk");
    create_child(&leaf, "top.vmdk");
    qemu_io(&leaf, &["write -P 0x06 2M 1k"]);
    assert_same_content(&leaf);
    assert_same_map(&leaf);
    let chain = open_disk(&leaf, &OpenOptions::default()).unwrap();
    assert_eq!(chain.layers().len(), 4);
    let parent = chain.leaf().parent().unwrap();
    assert_eq!(
        (parent.name.as_str(), parent.format.as_deref()),
        ("top.vmdk", Some("vmdk"))
    );
    assert!(chain.findings().is_empty());
}

#[test]
fn chain_over_a_stream_optimized_base_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("pattern.raw");
    pattern_raw(&raw, 2 << 20);
    let base = dir.path().join("base.vmdk");
    run_in(
        dir.path(),
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            p(&raw),
            p(&base),
        ],
    );
    let mid = dir.path().join("mid.vmdk");
    create_child(&mid, "base.vmdk");
    qemu_io(&mid, &["write -P 0x77 70000 70000"]);
    let top = dir.path().join("top.vmdk");
    create_child(&top, "mid.vmdk");
    qemu_io(&top, &["write -P 0x88 1M 4096"]);
    assert_same_content(&top);
    let chain = open_disk(&top, &options(ParseMode::Strict)).unwrap();
    assert_eq!(chain.layers().len(), 3);
}

/// A vmfsSparse (COWD) delta of `grains` grains of 8 KiB with data in some of them,
/// described by a vmfsSparse descriptor: qemu-img reads it (it cannot write one).
fn write_cowd(dir: &std::path::Path, data: &[(usize, u8)]) -> std::path::PathBuf {
    write_cowd_child(dir, data, None)
}

/// Like [`write_cowd`], as a child of `parent` (file name, CID) when given.
fn write_cowd_child(
    dir: &std::path::Path,
    data: &[(usize, u8)],
    parent: Option<(&str, &str)>,
) -> std::path::PathBuf {
    let sectors = 4096u32; // 2 MiB
    let grain_sectors = 16u32;
    let mut f = vec![0u8; 40 * 512];
    f[0..4].copy_from_slice(b"COWD");
    for (i, v) in [1u32, 3, sectors, grain_sectors, 4, 1, 0]
        .iter()
        .enumerate()
    {
        f[4 + i * 4..8 + i * 4].copy_from_slice(&v.to_le_bytes());
    }
    f[4 * 512..4 * 512 + 4].copy_from_slice(&8u32.to_le_bytes());
    for &(grain, byte) in data {
        let sector = (f.len() / 512) as u32;
        f[8 * 512 + grain * 4..8 * 512 + grain * 4 + 4].copy_from_slice(&sector.to_le_bytes());
        f.extend(std::iter::repeat_n(byte, grain_sectors as usize * 512));
    }
    std::fs::write(dir.join("d-delta.vmdk"), f).unwrap();
    let desc = dir.join("d.vmdk");
    let (parent_cid, hint) = match parent {
        Some((name, cid)) => (cid.to_string(), format!("parentFileNameHint=\"{name}\"\n")),
        None => ("ffffffff".to_string(), String::new()),
    };
    std::fs::write(
        &desc,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=22222222\nparentCID={parent_cid}\ncreateType=\"vmfsSparse\"\n{hint}\n\
             RW {sectors} VMFSSPARSE \"d-delta.vmdk\"\n\nddb.virtualHWVersion = \"14\"\n"
        ),
    )
    .unwrap();
    desc
}

#[test]
fn cowd_delta_reads_and_maps_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let img = write_cowd(
        dir.path(),
        &[(0, 0x31), (5, 0x32), (255, 0x33), (100, 0x34)],
    );
    // qemu 10 lists a VMFSSPARSE extent twice (virtual size 4 MiB for a 2 MiB descriptor;
    // `qemu-img info` shows extents [0] and [1], both the same file): compare the part
    // the descriptor describes.
    let raw = qemu_raw(&img);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert_reads_like(&img, ParseMode::Strict, &raw);
    let theirs: Vec<Run> = qemu_map(&img)
        .into_iter()
        .filter(|r| r.0 < 2 << 20)
        .collect();
    assert_eq!(vdr_map(&img), theirs);
    let disk = open_disk(&img, &OpenOptions::default()).unwrap();
    assert_eq!(disk.info().cluster_size, Some(8192));
    assert!(disk.check().unwrap().is_clean());
}

#[test]
fn qcow2_over_a_vmdk_chain_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.vmdk");
    create(&base, "subformat=monolithicSparse", "4M");
    qemu_io(&base, &["write -P 0x41 0 3M"]);
    let mid = dir.path().join("mid.vmdk");
    create_child(&mid, "base.vmdk");
    qemu_io(&mid, &["write -P 0x42 1M 64k"]);
    let top = dir.path().join("top.qcow2");
    run_in(
        dir.path(),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.vmdk",
            "-F",
            "vmdk",
            p(&top),
        ],
    );
    run_in(
        dir.path(),
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x43 2M 4k", p(&top)],
    );
    let raw = dir.path().join("top.raw");
    run_in(
        dir.path(),
        "qemu-img",
        &["convert", "-O", "raw", p(&top), p(&raw)],
    );
    assert_reads_like(&top, ParseMode::Strict, &raw);
    let chain = open_disk(&top, &OpenOptions::default()).unwrap();
    assert_eq!(chain.layers().len(), 3);
    assert_eq!(chain.layers()[1].info().format, "vmdk");
}

#[test]
fn cowd_delta_over_a_flat_parent_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.vmdk");
    create(&base, "subformat=monolithicFlat", "2M");
    qemu_io(&base, &["write -P 0x61 0 2M"]);
    let info = open_disk(&base, &OpenOptions::default()).unwrap().info();
    let cid = info.details["cid"].as_str().unwrap().to_string();
    let img = write_cowd_child(
        dir.path(),
        &[(3, 0x71), (200, 0x72)],
        Some(("base.vmdk", &cid)),
    );
    let raw = qemu_raw(&img);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert_reads_like(&img, ParseMode::Strict, &raw);
    let chain = open_disk(&img, &OpenOptions::default()).unwrap();
    assert_eq!(chain.layers().len(), 2);
}
