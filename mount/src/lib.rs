//! vdr-mount: a read-only FUSE file system (fuser) over virtual disks and VMFS trees, and
//! later a read-only NBD export.
//!
//! Not written yet: it arrives with the mount issue. It depends on vdr-formats only.
