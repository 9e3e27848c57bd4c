//! VMDK snapshot chains through the `vdr` binary: COWD and seSparse chains from the
//! fixture builders (oracle: the builder's expected bytes, and qemu-img), chains of depth
//! 3 that qemu-img made over each base subformat, a qcow2 over a vmdk chain, and a vmdk
//! over a raw file. Every case: `vdr convert -O raw` has the oracle's bytes, `map` agrees
//! with qemu-img's, `info --json` shows the chain, and no input changed.

mod common;

use std::path::{Path, PathBuf};

use common::vmdk::*;
use common::*;
use tempfile::TempDir;
use vdr_fixtures::qemu::{create, qemu_img, qemu_io};
use vdr_fixtures::vmdk_fixture::{cowd_chain, sesparse_chain, VmdkFixture};

const MIB: u64 = 1024 * 1024;

fn tempdir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("vdr-{name}-"))
        .tempdir()
        .expect("tempdir")
}

/// A builder-made chain (base first): vdr and qemu-img both return the builder's bytes,
/// the maps agree, `info` lists each layer with its create type and CID links.
fn assert_fixture_chain(dir: &Path, chain: &[VmdkFixture]) {
    let before = hash_tree(dir);
    let leaf = chain.last().expect("a chain");
    let ours = dir.join("vdr.raw");
    let theirs = dir.join("qemu.raw");

    vdr_raw(dir, &leaf.descriptor, &ours, &[]).expect_code(0);
    qemu_raw(dir, &leaf.descriptor, &[], &theirs);
    let info = vdr_info(dir, &leaf.descriptor, &[]);

    let got = std::fs::read(&ours).expect("read vdr output");
    assert!(
        got == leaf.expected,
        "vdr's raw differs from the builder's bytes"
    );
    assert_same_content("vdr vs qemu-img", &ours, &theirs);
    assert_map_agrees_with_qemu(dir, &leaf.descriptor);
    assert_eq!(info["chain_depth"], 3, "{info}");
    let want: Vec<_> = chain
        .iter()
        .rev()
        .enumerate()
        .map(|(i, layer)| {
            let parent = chain.len().checked_sub(i + 2).map(|p| chain[p].cid);
            (
                layer.create_type.to_string(),
                Some(format!("{:08x}", layer.cid)),
                parent.map(|c| format!("{c:08x}")),
            )
        })
        .collect();
    let mut got_chain = chain_of(&info);
    // The base has no parent: vdr shows its parentCID ffffffff or leaves it out.
    if let Some(base) = got_chain.last_mut() {
        if base.2.as_deref() == Some("ffffffff") {
            base.2 = None;
        }
    }
    assert_eq!(got_chain, want, "{info}");
    std::fs::remove_file(&ours).expect("rm");
    std::fs::remove_file(&theirs).expect("rm");
    assert_eq!(hash_tree(dir), before, "an input changed");
}

#[test]
fn cowd_chain_of_depth_3_reads_as_the_builder_and_qemu_say() {
    if skip_without_qemu() {
        return;
    }
    let dir = tempdir("cowd-chain");
    let chain = cowd_chain(dir.path(), "disk", 4 * MIB).expect("build");
    assert_fixture_chain(dir.path(), &chain);
}

#[test]
fn sesparse_chain_of_depth_3_reads_as_the_builder_and_qemu_say() {
    if skip_without_qemu() {
        return;
    }
    let dir = tempdir("se-chain");
    let chain = sesparse_chain(dir.path(), "disk", 4 * MIB).expect("build");
    assert_fixture_chain(dir.path(), &chain);
}

/// Patterns of one layer, straddling grains (64 KiB) and grain tables (32 MiB).
fn layer_writes(seed: u8) -> Vec<String> {
    let s = u64::from(seed);
    vec![
        format!("write -P {} {} 70000", 0x10 + s, s * 4096 + 300 * 512),
        format!("write -P {} {} 8k", 0x20 + s, 33 * MIB - s * 65536),
        format!("write -P {} {} 512", 0x30 + s, 40 * MIB - 512 * s - 512),
        format!("write -z {} 64k", 2 * MIB + s * 65536),
    ]
}

const SIZE: &str = "40M";

/// The base of a qemu-made chain, written with patterns.
fn qemu_base(dir: &Path, subformat: &str) -> &'static str {
    if subformat == "streamOptimized" {
        // qemu writes streamOptimized only by converting.
        create(dir, "raw", "src.raw", "", None, SIZE);
        let cmds = layer_writes(0);
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(dir, "raw", "src.raw", &refs);
        qemu_img(
            dir,
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                "src.raw",
                "base.vmdk",
            ],
        );
        std::fs::remove_file(dir.join("src.raw")).expect("rm");
    } else {
        create(
            dir,
            "vmdk",
            "base.vmdk",
            &format!("subformat={subformat}"),
            None,
            SIZE,
        );
        let cmds = layer_writes(0);
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(dir, "vmdk", "base.vmdk", &refs);
    }
    "base.vmdk"
}

/// base ← mid ← leaf, the children `child_subformat`, each layer with its own patterns.
fn qemu_chain(dir: &Path, base_subformat: &str, child_subformat: &str) -> PathBuf {
    let mut parent = qemu_base(dir, base_subformat).to_string();
    for (seed, name) in [(1u8, "mid.vmdk"), (2, "leaf.vmdk")] {
        create(
            dir,
            "vmdk",
            name,
            &format!("subformat={child_subformat}"),
            Some((&parent, "vmdk")),
            SIZE,
        );
        let cmds = layer_writes(seed);
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(dir, "vmdk", name, &refs);
        parent = name.to_string();
    }
    dir.join(parent)
}

/// vdr's raw equals qemu-img's, the maps agree, info lists `depth` layers, and no input
/// changed.
fn assert_reads_like_qemu(dir: &Path, image: &Path, depth: u64, formats: &[&str]) {
    let out = tempdir("out");
    let before = hash_tree(dir);
    let ours = out.path().join("vdr.raw");
    let theirs = out.path().join("qemu.raw");

    vdr_raw(dir, image, &ours, &[]).expect_code(0);
    qemu_raw(dir, image, &[], &theirs);
    let info = vdr_info(dir, image, &[]);

    assert_eq!(
        sha256_file(&ours),
        sha256_file(&theirs),
        "{}",
        image.display()
    );
    assert_map_agrees_with_qemu(dir, image);
    assert_eq!(info["chain_depth"], depth, "{info}");
    let got: Vec<&str> = info["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["format"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(got, formats, "{info}");
    assert_eq!(hash_tree(dir), before, "an input changed");
}

/// A qemu-made vmdk chain: as qemu reads it, and `info` links each layer's parentCID to
/// its parent's CID.
fn assert_qemu_vmdk_chain(base: &str, child: &str) {
    if skip_without_qemu() {
        return;
    }
    let dir = tempdir(base);
    let leaf = qemu_chain(dir.path(), base, child);
    assert_reads_like_qemu(dir.path(), &leaf, 3, &["vmdk"; 3]);
    let chain = chain_of(&vdr_info(dir.path(), &leaf, &[]));
    let types: Vec<&str> = chain.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(types, [child, child, base]);
    for pair in chain.windows(2) {
        assert_eq!(
            pair[0].2, pair[1].1,
            "parentCID links the parent's CID: {chain:?}"
        );
    }
}

#[test]
fn qemu_chain_over_monolithic_sparse_reads_like_qemu() {
    assert_qemu_vmdk_chain("monolithicSparse", "monolithicSparse");
}

#[test]
fn qemu_chain_over_two_gb_max_extent_sparse_reads_like_qemu() {
    assert_qemu_vmdk_chain("twoGbMaxExtentSparse", "twoGbMaxExtentSparse");
}

#[test]
fn qemu_chain_over_monolithic_flat_reads_like_qemu() {
    assert_qemu_vmdk_chain("monolithicFlat", "monolithicSparse");
}

#[test]
fn qemu_chain_over_stream_optimized_reads_like_qemu() {
    assert_qemu_vmdk_chain("streamOptimized", "monolithicSparse");
}

#[test]
fn qcow2_over_a_vmdk_chain_reads_like_qemu() {
    if skip_without_qemu() {
        return;
    }
    let dir = tempdir("qcow2-over-vmdk");
    let d = dir.path();
    qemu_chain(d, "monolithicSparse", "monolithicSparse");
    create(
        d,
        "qcow2",
        "top.qcow2",
        "",
        Some(("leaf.vmdk", "vmdk")),
        SIZE,
    );
    qemu_io(d, "qcow2", "top.qcow2", &["write -P 0x77 1M 100k"]);
    assert_reads_like_qemu(
        d,
        &d.join("top.qcow2"),
        4,
        &["qcow2", "vmdk", "vmdk", "vmdk"],
    );
}

#[test]
fn vmdk_over_raw_through_a_flat_extent_reads_like_qemu() {
    if skip_without_qemu() {
        return;
    }
    // A raw file, a hand-written descriptor whose FLAT extents point into it (the second
    // at an offset), and a sparse child over that descriptor.
    let dir = tempdir("vmdk-over-raw");
    let d = dir.path();
    create(d, "raw", "disk.raw", "", None, "6M");
    qemu_io(
        d,
        "raw",
        "disk.raw",
        &["write -P 0x61 0 1M", "write -P 0x62 5M 4k"],
    );
    let descriptor = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\n\
        RW 4096 FLAT \"disk.raw\" 0\nRW 4096 FLAT \"disk.raw\" 4096\n\n\
        ddb.adapterType = \"lsilogic\"\n";
    std::fs::write(d.join("flat.vmdk"), descriptor).expect("write descriptor");
    create(
        d,
        "vmdk",
        "child.vmdk",
        "",
        Some(("flat.vmdk", "vmdk")),
        "4M",
    );
    qemu_io(d, "vmdk", "child.vmdk", &["write -P 0x63 64k 64k"]);

    assert_reads_like_qemu(d, &d.join("flat.vmdk"), 1, &["vmdk"]);
    assert_reads_like_qemu(d, &d.join("child.vmdk"), 2, &["vmdk", "vmdk"]);
}
