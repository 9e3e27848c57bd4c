//! vdr-mount: a read-only FUSE file system (fuser) over virtual disks and VMFS trees, and
//! a read-only NBD export of a virtual disk ([`nbd`]).
//!
//! What it is not for: format logic (vdr-formats) or the command line (the `vdr` crate).
//! Nothing here ever writes to the disk it exports. It depends on vdr-formats only.

pub mod nbd;
