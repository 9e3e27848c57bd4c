//! `Chain`: a leaf layer overlaid on its parents. Ranges a layer leaves `Unallocated` read
//! the next layer down; ranges past a shorter parent's end read as zeros (qemu's rule for
//! backing files shorter than the child).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{
    check_range, clip_end, push_merged, CheckReport, DiskInfo, Extent, ExtentKind, Finding,
    ParentRef, ParseMode, Severity, VirtualDisk,
};
use crate::error::Error;
use crate::open::{open_layer, OpenOptions};
use crate::source::SourceRef;

/// Default limit on the number of layers in a chain.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Finds and opens the parent a child names.
pub trait ParentResolver {
    /// Opens `parent` for `child`; returns the layer and an identity (a canonical path)
    /// used to detect cycles.
    fn resolve(
        &self,
        child: &dyn VirtualDisk,
        parent: &ParentRef,
    ) -> Result<(Arc<dyn VirtualDisk>, String), Error>;

    /// How inconsistencies between a child and its parent are treated (a VMDK parentCID
    /// that does not match the parent's CID): refused, or recorded as a finding.
    fn mode(&self) -> ParseMode {
        ParseMode::Strict
    }
}

/// The default resolver: follows the recorded file name, relative to the child's directory.
pub struct FileParentResolver {
    options: OpenOptions,
}

impl FileParentResolver {
    /// Parents are opened with `options`, minus any snapshot selection (that applies to the
    /// image the user named, not to its backing files).
    pub fn new(options: &OpenOptions) -> FileParentResolver {
        let mut options = options.clone();
        options.snapshot = None;
        options.format = None;
        FileParentResolver { options }
    }

    /// Where a child at `child_path` finds a parent recorded as `name`.
    pub fn parent_path(child_path: Option<&Path>, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match child_path.and_then(Path::parent) {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }
}

impl ParentResolver for FileParentResolver {
    fn resolve(
        &self,
        child: &dyn VirtualDisk,
        parent: &ParentRef,
    ) -> Result<(Arc<dyn VirtualDisk>, String), Error> {
        let child_source = child.source();
        let child_name = child_source
            .as_ref()
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let path = Self::parent_path(child_source.as_ref().and_then(|s| s.path()), &parent.name);
        let missing = |source: Error| Error::MissingParent {
            child: child_name.clone(),
            name: parent.name.clone(),
            looked_for: path.display().to_string(),
            source: Box::new(source),
        };
        let file = self.options.open_named(&path).map_err(|e| {
            missing(Error::Open {
                path: path.display().to_string(),
                source: e,
            })
        })?;
        let identity = self.options.identity_of(&path);
        let mut options = self.options.clone();
        options.format = parent
            .format
            .as_deref()
            .and_then(crate::detect::Format::from_name);
        let layer = open_layer(file, &options)?;
        Ok((layer, identity))
    }

    fn mode(&self) -> ParseMode {
        self.options.mode
    }
}

/// A leaf and its parents, read as one disk (the leaf's view).
pub struct Chain {
    /// Leaf first.
    layers: Vec<Arc<dyn VirtualDisk>>,
    /// The leaf's file name, kept for messages (`info()` is too costly for every read).
    leaf_file: String,
    /// Inconsistencies between layers met while building the chain (salvage mode).
    findings: Vec<Finding>,
}

impl Chain {
    /// A chain of one layer.
    pub fn single(disk: Arc<dyn VirtualDisk>) -> Chain {
        Chain::from_layers(vec![disk])
    }

    fn from_layers(layers: Vec<Arc<dyn VirtualDisk>>) -> Chain {
        let leaf_file = layers.first().map(|l| l.info().file).unwrap_or_default();
        Chain {
            layers,
            leaf_file,
            findings: Vec::new(),
        }
    }

    /// Follows `leaf`'s parents through `resolver`, refusing more than `max_depth` layers
    /// and any layer that appears twice. `leaf_identity` is the leaf's canonical path.
    pub fn build(
        leaf: Arc<dyn VirtualDisk>,
        leaf_identity: Option<String>,
        resolver: &dyn ParentResolver,
        max_depth: usize,
    ) -> Result<Chain, Error> {
        let mut seen: Vec<String> = leaf_identity.into_iter().collect();
        let mut layers = vec![leaf];
        let mut findings = Vec::new();
        while let Some(current) = layers.last() {
            let Some(parent) = current.parent() else {
                break;
            };
            let file = current.info().file;
            if layers.len() >= max_depth {
                return Err(Error::ChainTooDeep {
                    file,
                    limit: max_depth,
                });
            }
            let (layer, identity) = resolver.resolve(current.as_ref(), &parent)?;
            if seen.contains(&identity) {
                return Err(Error::ChainCycle {
                    file,
                    again: identity,
                });
            }
            seen.push(identity);
            if let Some(finding) = check_link(current.as_ref(), layer.as_ref(), resolver.mode())? {
                findings.push(finding);
            }
            layers.push(layer);
        }
        let mut chain = Chain::from_layers(layers);
        chain.findings = findings;
        Ok(chain)
    }

    /// The layers, leaf first.
    pub fn layers(&self) -> &[Arc<dyn VirtualDisk>] {
        &self.layers
    }

    /// The leaf layer.
    pub fn leaf(&self) -> &Arc<dyn VirtualDisk> {
        &self.layers[0]
    }

    fn map_layer(
        &self,
        depth: usize,
        offset: u64,
        end: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), Error> {
        let layer = &self.layers[depth];
        let layer_end = end.min(layer.size());
        let depth_u32 = u32::try_from(depth).unwrap_or(u32::MAX);
        if offset < layer_end {
            for mut extent in layer.map(offset, layer_end - offset)? {
                let below = depth + 1;
                if matches!(extent.kind, ExtentKind::Unallocated) && below < self.layers.len() {
                    self.map_layer(below, extent.offset, extent.end(), out)?;
                } else {
                    extent.depth = depth_u32;
                    push_merged(out, extent);
                }
            }
        }
        let tail_start = offset.max(layer_end);
        if tail_start < end {
            // Past the end of a shorter parent: zeros, as qemu reads them. qemu reports the
            // range at the depth of the child that left it unallocated, not the parent's.
            push_merged(
                out,
                Extent {
                    offset: tail_start,
                    len: end - tail_start,
                    kind: ExtentKind::Unallocated,
                    depth: depth_u32.saturating_sub(1),
                },
            );
        }
        Ok(())
    }
}

impl VirtualDisk for Chain {
    fn size(&self) -> u64 {
        self.leaf().size()
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        let end = clip_end(offset, len, self.size());
        let mut out = Vec::new();
        if offset < end {
            self.map_layer(0, offset, end, &mut out)?;
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(&self.leaf_file, offset, buf.len() as u64, self.size())?;
        if self.layers.len() == 1 {
            return self.leaf().read_at(buf, offset);
        }
        for extent in self.map(offset, buf.len() as u64)? {
            let start = usize::try_from(extent.offset - offset).unwrap_or(usize::MAX);
            let piece = &mut buf[start..start + extent.len as usize];
            read_extent(&self.layers, &extent, piece)?;
        }
        Ok(())
    }

    fn parent(&self) -> Option<ParentRef> {
        None
    }

    fn info(&self) -> DiskInfo {
        self.leaf().info()
    }

    fn findings(&self) -> Vec<Finding> {
        let mut out = self.findings.clone();
        out.extend(self.layers.iter().flat_map(|l| l.findings()));
        out
    }

    fn check(&self) -> Result<CheckReport, Error> {
        self.leaf().check()
    }

    fn source(&self) -> Option<SourceRef> {
        self.leaf().source()
    }

    fn files(&self) -> Vec<PathBuf> {
        self.layers.iter().flat_map(|l| l.files()).collect()
    }
}

/// Checks a child against its parent: when the child records the parent's content ID
/// (`details["parent_cid"]`, VMDK's parentCID) and the parent has one (`details["cid"]`),
/// they must be equal. Strict mode refuses a mismatch; salvage returns it as a finding.
fn check_link(
    child: &dyn VirtualDisk,
    parent: &dyn VirtualDisk,
    mode: ParseMode,
) -> Result<Option<Finding>, Error> {
    let (child_info, parent_info) = (child.info(), parent.info());
    let (Some(expected), Some(found)) = (
        child_info
            .details
            .get("parent_cid")
            .and_then(|v| v.as_str()),
        parent_info.details.get("cid").and_then(|v| v.as_str()),
    ) else {
        return Ok(None);
    };
    if expected.eq_ignore_ascii_case(found) {
        return Ok(None);
    }
    if mode == ParseMode::Strict {
        return Err(Error::CidMismatch {
            child: child_info.file,
            parent: parent_info.file,
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(Some(Finding {
        file: child_info.file,
        offset: 0,
        severity: Severity::Warning,
        structure: "parent link".into(),
        what: format!(
            "parentCID {expected} does not match the CID {found} of the parent {}; read on as the chain stands",
            parent_info.file
        ),
    }))
}

/// Reads one extent of a chain's map into `buf` (whose length is the extent's).
fn read_extent(
    layers: &[Arc<dyn VirtualDisk>],
    extent: &Extent,
    buf: &mut [u8],
) -> Result<(), Error> {
    match &extent.kind {
        ExtentKind::Zero | ExtentKind::Unallocated => {
            buf.fill(0);
            Ok(())
        }
        ExtentKind::Data { source, at } => source
            .read_exact_at(buf, *at)
            .map_err(|e| Error::io(source.name(), *at, "data cluster", e)),
        ExtentKind::Compressed { .. } => {
            let layer = layers
                .get(extent.depth as usize)
                .ok_or_else(|| Error::Unreadable {
                    file: String::new(),
                    offset: extent.offset,
                    len: extent.len,
                    reason: "extent names a layer the chain does not have".into(),
                })?;
            layer.read_at(buf, extent.offset)
        }
        ExtentKind::Unreadable { reason } => Err(Error::Unreadable {
            file: layers
                .get(extent.depth as usize)
                .map(|l| l.info().file)
                .unwrap_or_default(),
            offset: extent.offset,
            len: extent.len,
            reason: reason.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::RawDisk;
    use crate::source::SliceSource;

    /// A layer whose first half is unallocated and whose second half is data.
    struct HalfLayer {
        inner: RawDisk,
        parent: Option<ParentRef>,
    }

    impl VirtualDisk for HalfLayer {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
            let half = self.size() / 2;
            let end = clip_end(offset, len, self.size());
            let mut out = Vec::new();
            for e in self.inner.map(offset, len)? {
                if let Some(a) = e.clip(offset, half.min(end)) {
                    out.push(Extent {
                        kind: ExtentKind::Unallocated,
                        ..a
                    });
                }
                if let Some(b) = e.clip(half.max(offset), end) {
                    out.push(b);
                }
            }
            Ok(out)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
            self.inner.read_at(buf, offset)
        }
        fn parent(&self) -> Option<ParentRef> {
            self.parent.clone()
        }
        fn info(&self) -> DiskInfo {
            self.inner.info()
        }
    }

    fn raw(bytes: Vec<u8>) -> Arc<dyn VirtualDisk> {
        Arc::new(RawDisk::new(Arc::new(SliceSource::new(bytes, "base"))))
    }

    struct Fixed(Vec<Arc<dyn VirtualDisk>>);
    impl ParentResolver for Fixed {
        fn resolve(
            &self,
            _child: &dyn VirtualDisk,
            parent: &ParentRef,
        ) -> Result<(Arc<dyn VirtualDisk>, String), Error> {
            let i: usize = parent.name.parse().unwrap();
            Ok((self.0[i].clone(), parent.name.clone()))
        }
    }

    #[test]
    fn unallocated_leaf_ranges_read_the_parent() {
        let leaf: Arc<dyn VirtualDisk> = Arc::new(HalfLayer {
            inner: RawDisk::new(Arc::new(SliceSource::new(vec![1u8; 8], "leaf"))),
            parent: Some(ParentRef {
                name: "0".into(),
                format: None,
            }),
        });
        let chain = Chain::build(leaf, None, &Fixed(vec![raw(vec![2u8; 8])]), 8).unwrap();
        let mut buf = [0u8; 8];
        chain.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [2, 2, 2, 2, 1, 1, 1, 1]);
        let map = chain.map(0, 8).unwrap();
        assert_eq!(map[0].depth, 1);
        assert_eq!(map[1].depth, 0);
    }

    #[test]
    fn shorter_parent_reads_zeros_past_its_end() {
        let leaf: Arc<dyn VirtualDisk> = Arc::new(HalfLayer {
            inner: RawDisk::new(Arc::new(SliceSource::new(vec![1u8; 8], "leaf"))),
            parent: Some(ParentRef {
                name: "0".into(),
                format: None,
            }),
        });
        let chain = Chain::build(leaf, None, &Fixed(vec![raw(vec![2u8; 2])]), 8).unwrap();
        let mut buf = [9u8; 8];
        chain.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [2, 2, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn a_chain_that_names_itself_is_a_cycle() {
        let looping: Arc<dyn VirtualDisk> = Arc::new(HalfLayer {
            inner: RawDisk::new(Arc::new(SliceSource::new(vec![1u8; 8], "leaf"))),
            parent: Some(ParentRef {
                name: "0".into(),
                format: None,
            }),
        });
        let resolver = Fixed(vec![looping.clone()]);
        let err = Chain::build(looping, Some("0".into()), &resolver, 8)
            .err()
            .unwrap();
        assert!(matches!(err, Error::ChainCycle { .. }), "{err}");
    }

    #[test]
    fn depth_limit_is_enforced() {
        let looping: Arc<dyn VirtualDisk> = Arc::new(HalfLayer {
            inner: RawDisk::new(Arc::new(SliceSource::new(vec![1u8; 8], "leaf"))),
            parent: Some(ParentRef {
                name: "0".into(),
                format: None,
            }),
        });
        let resolver = Fixed(vec![looping.clone()]);
        let err = Chain::build(looping, None, &resolver, 1).err().unwrap();
        assert!(matches!(err, Error::ChainTooDeep { limit: 1, .. }), "{err}");
    }
}
