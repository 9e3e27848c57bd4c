//! vdr-mount: a read-only FUSE file system (fuser) over virtual disks and VMFS trees, and
//! a read-only NBD export of a virtual disk ([`nbd`]).
//!
//! What it is for: showing a recovered disk to the host's tools without copying it.
//! An image (or chain) mounts as `disk.raw`, `pN.raw` per partition and `info.json`
//! ([`fs_image`]); a VMFS datastore mounts as its directory tree with a `NAME.raw` flat
//! view beside each VMDK descriptor ([`fs_vmfs`]); [`nbd`] exports a disk over NBD.
//! Everything is read-only; unreadable ranges fail with EIO or, on request, read as zeros.
//!
//! What it is not for: opening images (vdr-formats does that; the CLI chooses how), or
//! writing anything. It uses fuser's pure-Rust mount (no libfuse headers; unprivileged
//! users need `fusermount3`).

pub mod fs;
pub mod fs_image;
pub mod fs_vmfs;
pub mod mountpoint;
pub mod nbd;
pub mod session;
pub mod tree;

pub use fs::FillUnreadable;
pub use fs::ReadOnlyFs;
pub use session::{serve, Ended, ServeOptions};
pub use tree::Tree;
