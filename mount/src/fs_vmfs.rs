//! The tree of a datastore mount: the VMFS directory tree with sizes and times, and
//! beside every VMDK descriptor `NAME.vmdk` a `NAME.raw` with that disk's flat view
//! through its snapshot chain, opened inside the volume the first time it is looked at.
//! A chain that fails to open gives an empty `NAME.raw` whose reads fail with EIO; the
//! reason goes to the log.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vdr_formats::raw::RawDisk;
use vdr_formats::source::FileSystemRef;
use vdr_formats::vmfs::{FileDescriptor, FileType, VmfsFile, Volume, VolumeFileSystem};
use vdr_formats::{open_layer, Chain, FileParentResolver, OpenOptions, Source, VirtualDisk};

use crate::tree::{node, Content, Kind, Node, Tree, ROOT};

/// The longest symlink target read (Linux PATH_MAX); longer means a damaged FD.
const SYMLINK_TARGET_MAX: u64 = 4096;
/// The first bytes of a VMDK text descriptor.
const DESCRIPTOR_MAGIC: &[u8] = b"# Disk DescriptorFile";
/// The magic of a hosted sparse VMDK ("KDMV"), which embeds its descriptor.
const SPARSE_MAGIC: &[u8] = b"KDMV";

/// Builds the tree of `volume`. `options` open the VMDK chains (mode, extent policy);
/// their file system is set to the volume. Entries the walk cannot read are left out
/// (salvage mode records them as findings on the volume).
pub fn vmfs_tree(volume: &Arc<Volume>, options: &OpenOptions) -> Result<Tree, String> {
    let root = volume.root().map_err(|e| e.to_string())?;
    let mut tree = Tree::new(time(root.mtime));
    let entries = volume.walk("/").map_err(|e| e.to_string())?;
    for entry in entries {
        let (parent_path, name) = match entry.path.rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
            None => ("/", entry.path.as_str()),
        };
        let Some(parent) = find_dir(&tree, parent_path) else {
            continue;
        };
        let fd = &entry.fd;
        let kind = if fd.is_dir() {
            Kind::Dir(Default::default())
        } else if fd.file_type == FileType::Symlink {
            Kind::Symlink(symlink_target(volume, &entry.path, fd))
        } else {
            Kind::File(file_content(volume, &entry.path, fd))
        };
        tree.add(parent, name, fd_node(kind, fd));
        if !fd.is_dir() && is_vmdk_disk(volume, &entry.path, fd) {
            let raw_name = format!("{}.raw", &name[..name.len() - ".vmdk".len()]);
            let lazy = Content::Lazy {
                open: chain_opener(volume.clone(), entry.path.clone(), options.clone()),
                disk: OnceLock::new(),
            };
            if tree
                .add(parent, &raw_name, fd_node(Kind::File(lazy), fd))
                .is_none()
            {
                eprintln!(
                    "vdr mount: {}: {raw_name} already exists; the disk's flat view is not shown",
                    entry.path
                );
            }
        }
    }
    Ok(tree)
}

/// The inode of directory `path` already in `tree`.
fn find_dir(tree: &Tree, path: &str) -> Option<u64> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .try_fold(ROOT, |dir, part| tree.child(dir, part))
}

fn time(seconds: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(seconds))
}

fn fd_node(kind: Kind, fd: &FileDescriptor) -> Node {
    let mut n = node(kind, time(fd.mtime));
    n.atime = time(fd.atime);
    n.ctime = time(fd.ctime);
    n
}

/// A regular file's bytes as a disk (so thin and damaged ranges map truthfully).
fn file_content(volume: &Arc<Volume>, path: &str, fd: &FileDescriptor) -> Content {
    let file = VmfsFile::new(volume.clone(), fd.clone(), path);
    let disk: Arc<dyn VirtualDisk> = Arc::new(RawDisk::new(Arc::new(file)));
    let len = disk.size();
    Content::Disk {
        disk,
        start: 0,
        len,
    }
}

fn symlink_target(volume: &Arc<Volume>, path: &str, fd: &FileDescriptor) -> Vec<u8> {
    if fd.length > SYMLINK_TARGET_MAX {
        eprintln!(
            "vdr mount: {path}: symlink target of {} bytes left out",
            fd.length
        );
        return Vec::new();
    }
    let file = VmfsFile::new(volume.clone(), fd.clone(), path);
    let mut target = vec![0u8; fd.length as usize];
    match file.read_at(&mut target, 0) {
        Ok(n) => {
            target.truncate(n);
            target
        }
        Err(e) => {
            eprintln!("vdr mount: {path}: reading the symlink target: {e}");
            Vec::new()
        }
    }
}

/// A `.vmdk` that is a disk's entry point: a text descriptor or a hosted sparse file
/// (not a `-flat`/`-delta`/`-sesparse` extent, which are raw data without a magic).
fn is_vmdk_disk(volume: &Arc<Volume>, path: &str, fd: &FileDescriptor) -> bool {
    if !path.ends_with(".vmdk") || path.ends_with("/.vmdk") {
        return false;
    }
    let file = VmfsFile::new(volume.clone(), fd.clone(), path);
    let mut head = [0u8; 32];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    let head = &head[..n];
    head.starts_with(DESCRIPTOR_MAGIC) || head.starts_with(SPARSE_MAGIC)
}

/// Opens the chain of the VMDK at `path` inside `volume`, parents and extents included.
fn chain_opener(volume: Arc<Volume>, path: String, options: OpenOptions) -> crate::tree::Opener {
    Box::new(move || {
        let mut options = options.clone();
        options.file_system = Some(FileSystemRef(Arc::new(VolumeFileSystem(volume.clone()))));
        let open = || -> Result<Arc<dyn VirtualDisk>, vdr_formats::Error> {
            let file = Arc::new(volume.open_file(&path)?);
            let leaf = open_layer(file, &options)?;
            let identity = format!("{}::{}", volume.name(), path);
            let chain = Chain::build(
                leaf,
                Some(identity),
                &FileParentResolver::new(&options),
                options.max_depth,
            )?;
            Ok(Arc::new(chain))
        };
        open().map_err(|e| {
            let message = format!("{}::{path}: {e}", volume.name());
            eprintln!("vdr mount: {message}");
            message
        })
    })
}
