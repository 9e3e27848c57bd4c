//! vdr-recover: the recovery pipeline. So far: the deleted and orphaned files of a VMFS
//! volume ([`vmfs_lost`]), which `vdr ls --deleted` lists and `vdr mount --deleted`
//! shows under `.recovered/`. Scan, carve, descriptor regeneration and chain rebuild
//! arrive with the recovery issue. It depends on vdr-formats only, and never opens
//! evidence for writing.

pub mod vmfs_lost;

pub use vmfs_lost::{
    find_lost, LostFile, LostReport, LostStatus, RecoveredFile, RecoveredFileSystem,
};
