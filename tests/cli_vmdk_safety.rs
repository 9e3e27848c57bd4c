//! The convert safety rule for multi-file VMDKs: an output that is one of the disk's
//! extent files is refused, even with --force, and the extents stay unchanged.

mod cli_support;

use cli_support::{fingerprint, have_qemu_img, qemu_img, vdr};
use predicates::prelude::*;

/// Makes a `subformat` VMDK with qemu-img, then asks vdr to convert it over its extent
/// file `extent_name` with --force: refused, and neither file changes.
fn converting_over_an_extent_is_refused(test: &str, subformat: &str, extent_name: &str) {
    if !have_qemu_img(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let descriptor = dir.path().join("disk.vmdk");
    let extent = dir.path().join(extent_name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        descriptor.to_str().expect("utf-8 path"),
        "1M",
    ]);
    let before = fingerprint(&[&descriptor, &extent]);

    vdr()
        .arg("convert")
        .arg(&descriptor)
        .arg(&extent)
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input"));

    assert_eq!(fingerprint(&[&descriptor, &extent]), before);
}

#[test]
fn converting_over_a_flat_extent_is_refused_even_with_force() {
    converting_over_an_extent_is_refused(
        "converting_over_a_flat_extent_is_refused_even_with_force",
        "monolithicFlat",
        "disk-flat.vmdk",
    );
}

#[test]
fn converting_over_a_split_extent_is_refused_even_with_force() {
    converting_over_an_extent_is_refused(
        "converting_over_a_split_extent_is_refused_even_with_force",
        "twoGbMaxExtentSparse",
        "disk-s001.vmdk",
    );
}

#[test]
fn extents_outside_the_descriptor_directory_need_the_explicit_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("vm");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(dir.path().join("outside.raw"), vec![0x5au8; 4096]).expect("write extent");
    let descriptor = sub.join("escape.vmdk");
    std::fs::write(
        &descriptor,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\nRW 8 FLAT \"../outside.raw\" 0\n",
    )
    .expect("write descriptor");
    let out = dir.path().join("out.raw");

    vdr()
        .arg("convert")
        .arg(&descriptor)
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("outside.raw"));
    assert!(!out.exists());

    vdr()
        .arg("convert")
        .arg(&descriptor)
        .arg(&out)
        .arg("--allow-escaping-extents")
        .assert()
        .code(0);
    assert_eq!(std::fs::read(&out).expect("output"), vec![0x5au8; 4096]);
}
