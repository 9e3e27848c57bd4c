//! Volumes from the fixture builder (vdr_fixtures::vmfs), each in its own temporary
//! directory, for the tests that need what the corpus images do not have.

#![allow(dead_code)]

use std::path::PathBuf;

use vdr_fixtures::vmfs::{build, Data, FileSpec, LockHolder, Manifest, Spec, Version};

/// A built image and what the builder says a correct reader finds in it. The image is
/// removed with `dir`.
pub struct Built {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub manifest: Manifest,
}

pub fn built(spec: &Spec) -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("volume.img");
    let manifest = build(spec, &img).expect("the fixture builder writes the volume");
    Built { dir, img, manifest }
}

/// The file [`locked_volume`] locks.
pub const LOCKED_PATH: &str = "/vm/vm-flat.vmdk";

/// The host [`locked_volume`] names, as VMFS prints it, and its MAC address.
pub const LOCK_HOST: &str = "61137d5a-a2df8778-7ed5-000c29801686";
pub const LOCK_HOST_MAC: &str = "00:0c:29:80:16:86";
/// [`LOCK_HOST`] as stored on disk.
pub const LOCK_HOST_UUID: [u8; 16] = [
    0x5a, 0x7d, 0x13, 0x61, 0x78, 0x87, 0xdf, 0xa2, 0xd5, 0x7e, 0x00, 0x0c, 0x29, 0x80, 0x16, 0x86,
];

/// A volume whose [`LOCKED_PATH`] (8193 bytes) is locked by the host [`LOCK_HOST`],
/// whose heartbeat is live.
pub fn locked_volume(version: Version) -> Built {
    let mut spec = Spec::new(version, "locked", 64 << 20);
    spec.files.push(FileSpec::file(
        LOCKED_PATH,
        Data::Pattern { len: 8193, seed: 1 },
    ));
    spec.lock_holder = Some(LockHolder {
        host_uuid: LOCK_HOST_UUID,
        locked_paths: vec![LOCKED_PATH.to_string()],
    });
    built(&spec)
}
