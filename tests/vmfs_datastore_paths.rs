//! Disks opened inside a VMFS datastore without copying them out: `DATASTORE::/path`.
//! A COWD snapshot chain (VMFS5, as ESXi makes them there) and a seSparse chain (VMFS6)
//! are written by the fixture builders, placed in a synthetic datastore, and read by
//! `vdr info/map/convert/compare` through the datastore: the content equals what the
//! builders say (and what qemu-img reads from a host copy), the chain is found inside
//! the volume, and the datastore image is never written.

mod common;

use std::path::Path;

use common::{sha256_file, vdr};
use vdr_fixtures::vmdk_fixture::{cowd_chain, sesparse_chain, VmdkFixture};
use vdr_fixtures::vmfs::{build, Data, FileSpec, Spec, Version};

const SIZE: u64 = 4 << 20;

fn sha_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes every file of `host_dir` into a new datastore under /vm; returns its path.
fn datastore_with(dir: &Path, host_dir: &Path, version: Version) -> std::path::PathBuf {
    let mut spec = Spec::new(version, "chains", 128 << 20);
    for e in std::fs::read_dir(host_dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        spec.files.push(FileSpec::file(
            &format!("/vm/{name}"),
            Data::Bytes(std::fs::read(e.path()).unwrap()),
        ));
    }
    let img = dir.join("datastore.img");
    build(&spec, &img).expect("datastore builds");
    img
}

fn chain_inside(version: Version, make: fn(&Path, &str, u64) -> std::io::Result<Vec<VmdkFixture>>) {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let layers = make(&host, "vm", SIZE).unwrap();
    let leaf = layers.last().unwrap();
    let leaf_name = leaf
        .descriptor
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let ds = datastore_with(dir.path(), &host, version);
    let before = sha256_file(&ds);
    let inside = format!("{}::/vm/{leaf_name}", ds.display());

    let info = vdr(dir.path(), &["info", "--json", &inside]);
    info.expect_code(0);
    let chain = info.json()["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        chain.len(),
        layers.len(),
        "the whole chain is found inside the volume: {}",
        info.stdout
    );

    let out = dir.path().join("out.raw");
    vdr(
        dir.path(),
        &["convert", "-O", "raw", &inside, out.to_str().unwrap()],
    )
    .expect_code(0);
    assert_eq!(
        sha256_file(&out),
        sha_hex(&leaf.expected),
        "content through the datastore"
    );

    let host_leaf = host.join(&leaf_name);
    vdr(
        dir.path(),
        &["compare", &inside, host_leaf.to_str().unwrap()],
    )
    .expect_code(0);
    if vdr_fixtures::qemu::qemu_available() {
        let q = dir.path().join("qemu.raw");
        common::qemu_raw(dir.path(), &host_leaf, &[], &q);
        assert_eq!(
            sha256_file(&q),
            sha_hex(&leaf.expected),
            "qemu-img reads the host copy the same"
        );
    }
    let map = vdr(dir.path(), &["map", "--json", &inside]);
    map.expect_code(0);

    // Writing over the datastore itself is refused, even with --force.
    let refused = vdr(
        dir.path(),
        &[
            "convert",
            "-O",
            "raw",
            "--force",
            &inside,
            ds.to_str().unwrap(),
        ],
    );
    refused.expect_code(2);
    assert!(refused.stderr.contains("input"), "{}", refused.stderr);
    // A missing file inside the datastore is named.
    let missing = vdr(
        dir.path(),
        &["info", &format!("{}::/vm/nope.vmdk", ds.display())],
    );
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("/vm/nope.vmdk"),
        "{}",
        missing.stderr
    );
    assert_eq!(sha256_file(&ds), before, "the datastore is unchanged");
}

#[test]
fn cowd_snapshot_chain_reads_inside_a_vmfs5_datastore() {
    chain_inside(Version::V5, cowd_chain);
}

#[test]
fn sesparse_snapshot_chain_reads_inside_a_vmfs6_datastore() {
    chain_inside(Version::V6, sesparse_chain);
}
