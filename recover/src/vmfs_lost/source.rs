//! A lost file's bytes as a [`Source`] that refuses its untrusted ranges, and the
//! [`FileSystem`] a lost VMDK finds its extents and parents in.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdr_formats::source::{FileSystem, SourceRef, SourceRun};
use vdr_formats::vmfs::{self, normalise, VmfsFile, Volume};
use vdr_formats::{detect_bytes, Source};

use super::{LostFile, LostReport, Unreadable};

impl LostFile {
    /// The file's bytes: the volume's where the map is trusted, errors elsewhere.
    pub fn open(&self, volume: &Arc<Volume>) -> RecoveredFile {
        let location = self
            .original_path
            .clone()
            .unwrap_or_else(|| format!("/{}", self.path));
        RecoveredFile {
            inner: VmfsFile::new(volume.clone(), self.fd.clone(), &location),
            name: format!("{}::.recovered/{}", volume.name(), self.path),
            path: PathBuf::from(location),
            unreadable: self.unreadable.clone(),
        }
    }

    /// True for a `.vmdk` that is a disk's entry point (a descriptor or a hosted sparse
    /// file), judged by its first bytes.
    pub fn is_vmdk_disk(&self, volume: &Arc<Volume>) -> bool {
        if self.kind != "file" || !self.path.ends_with(".vmdk") {
            return false;
        }
        let mut head = [0u8; 32];
        let n = self.open(volume).read_at(&mut head, 0).unwrap_or(0);
        detect_bytes(&head[..n]).is_vmdk_entry_point()
    }
}

/// A lost file as a [`Source`]: reads touching an untrusted range fail, and `layout`
/// reports those ranges as unreadable, so a disk or a mount over it says where.
pub struct RecoveredFile {
    inner: VmfsFile,
    name: String,
    path: PathBuf,
    unreadable: Vec<Unreadable>,
}

impl Source for RecoveredFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.len());
        if let Some(u) = self
            .unreadable
            .iter()
            .find(|u| u.offset < end && offset < u.offset + u.len)
        {
            return Err(io::Error::other(format!(
                "{}: bytes {:#x}..{:#x} are unreadable: {}",
                self.name,
                u.offset,
                u.offset + u.len,
                u.why
            )));
        }
        self.inner.read_at(buf, offset)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn layout(&self, offset: u64, len: u64) -> Option<Vec<SourceRun>> {
        let end = offset.saturating_add(len).min(self.len());
        let mut out = Vec::new();
        let mut at = offset;
        for u in &self.unreadable {
            let (s, e) = (u.offset.max(at), (u.offset + u.len).min(end));
            if s >= e {
                continue;
            }
            if s > at {
                out.extend(self.inner.layout(at, s - at)?);
            }
            out.push(SourceRun::Unreadable(e - s, u.why.clone()));
            at = e;
        }
        if at < end {
            out.extend(self.inner.layout(at, end - at)?);
        }
        Some(out)
    }
}

/// The recovered files and then the live volume, as the [`FileSystem`] a recovered
/// VMDK opens its extents and parents in: a deleted descriptor finds its deleted
/// extent at the path both had.
pub struct RecoveredFileSystem {
    volume: Arc<Volume>,
    by_path: HashMap<String, LostFile>,
    /// Lost files by name, for names that only one lost file has (a descriptor whose
    /// own name was lost still finds its extent by the name it records).
    by_name: HashMap<String, LostFile>,
}

impl RecoveredFileSystem {
    pub fn new(volume: Arc<Volume>, report: &LostReport) -> RecoveredFileSystem {
        let mut by_path: HashMap<String, LostFile> = HashMap::new();
        for f in report.files.iter().filter(|f| f.kind == "file") {
            let Some(p) = &f.original_path else { continue };
            // Two lost files once at one path: the newer one.
            match by_path.get(p) {
                Some(old) if old.mtime >= f.mtime => {}
                _ => {
                    by_path.insert(p.clone(), f.clone());
                }
            }
        }
        let mut by_name: HashMap<String, Option<LostFile>> = HashMap::new();
        for f in report.files.iter().filter(|f| f.kind == "file") {
            if let Some(name) = &f.name {
                by_name
                    .entry(name.clone())
                    .and_modify(|v| *v = None)
                    .or_insert_with(|| Some(f.clone()));
            }
        }
        let by_name = by_name
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        RecoveredFileSystem {
            volume,
            by_path,
            by_name,
        }
    }

    /// The lost file at `path`: by original path, else (when the volume has nothing
    /// there) by its name alone if only one lost file has it.
    fn find(&self, path: &str) -> Option<&LostFile> {
        if let Some(f) = self.by_path.get(path) {
            return Some(f);
        }
        if self.volume.lookup(path).is_ok() {
            return None;
        }
        let name = path.rsplit('/').next()?;
        self.by_name.get(name)
    }
}

impl FileSystem for RecoveredFileSystem {
    fn open(&self, path: &Path) -> io::Result<SourceRef> {
        let p = normalise(&path.to_string_lossy());
        if let Some(f) = self.find(&p) {
            return Ok(Arc::new(f.open(&self.volume)));
        }
        vmfs::VolumeFileSystem(self.volume.clone()).open(path)
    }

    fn identity(&self, path: &Path) -> String {
        let p = normalise(&path.to_string_lossy());
        if let Some(f) = self.find(&p) {
            format!("{}::.recovered/{}", self.volume.name(), f.path)
        } else {
            format!("{}::{p}", self.volume.name())
        }
    }
}
