//! vdr-verify-vm: a small KVM microVM (kvm-ioctls, vm-memory) that boot-tests recovered
//! images through a read-only virtio-blk device with an in-memory write overlay.
//!
//! Not written yet: it arrives with the verify issue. It depends on vdr-formats only.
