//! vdr-recover: the recovery pipeline (scan, carve, descriptor regeneration, chain rebuild,
//! salvage into a new output, the JSON report).
//!
//! Not written yet: it arrives with the VMDK and VMFS issues. It will depend on
//! vdr-formats only, and never opens evidence for writing.
