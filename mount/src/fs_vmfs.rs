//! The tree of a datastore mount: the VMFS directory tree with sizes and times, and
//! beside every VMDK descriptor `NAME.vmdk` a `NAME.raw` with that disk's flat view
//! through its snapshot chain, opened inside the volume the first time it is looked at.
//! A chain that fails to open gives an empty `NAME.raw` whose reads fail with EIO; the
//! reason goes to the log.
//!
//! With a [`LostReport`] (`vdr mount --deleted`), `.recovered/` holds what recovery
//! found: `deleted/` and `orphaned/` with each lost file at its original path when known
//! (`fd-0xADDRESS` otherwise), `NAME.raw` beside a lost VMDK (its extents and parents
//! found among the lost files first, then in the live tree), and `report.json`. Ranges
//! recovery does not trust read as EIO (or zeros with `--fill-unreadable zeros`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vdr_formats::raw::RawDisk;
use vdr_formats::source::{FileSystemRef, SourceRef};
use vdr_formats::vmfs::{FileDescriptor, FileType, VmfsFile, Volume, VolumeFileSystem};
use vdr_formats::{
    detect_bytes, open_layer, Chain, FileParentResolver, OpenOptions, Source, VirtualDisk,
};

use vdr_recover::{LostFile, LostReport, RecoveredFileSystem};

use crate::tree::{node, Content, Kind, Node, Tree, ROOT};

/// The folder a `--deleted` mount adds at its root.
pub const RECOVERED_DIR: &str = ".recovered";

/// The longest symlink target read (Linux PATH_MAX); longer means a damaged FD.
const SYMLINK_TARGET_MAX: u64 = 4096;

/// Builds the tree of `volume`. `options` open the VMDK chains (mode, extent policy);
/// their file system is set to the volume. Entries the walk cannot read are left out
/// (salvage mode records them as findings on the volume).
pub fn vmfs_tree(
    volume: &Arc<Volume>,
    options: &OpenOptions,
    recovered: Option<&LostReport>,
) -> Result<Tree, String> {
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
    if let Some(report) = recovered {
        add_recovered(&mut tree, volume, options, report)?;
    }
    Ok(tree)
}

/// Adds `.recovered/` (see the module doc) to `tree`.
fn add_recovered(
    tree: &mut Tree,
    volume: &Arc<Volume>,
    options: &OpenOptions,
    report: &LostReport,
) -> Result<(), String> {
    let now = SystemTime::now();
    let top = tree
        .add(
            ROOT,
            RECOVERED_DIR,
            node(Kind::Dir(Default::default()), now),
        )
        .ok_or_else(|| format!("the volume's root already holds {RECOVERED_DIR}"))?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    tree.add(
        top,
        "report.json",
        node(Kind::File(Content::Bytes(Arc::from(json))), now),
    );
    for status in ["deleted", "orphaned"] {
        tree.add(top, status, node(Kind::Dir(Default::default()), now));
    }
    let fs = FileSystemRef(Arc::new(RecoveredFileSystem::new(volume.clone(), report)));
    // Directories first, so files named inside lost directories find them.
    let mut files: Vec<&LostFile> = report.files.iter().collect();
    files.sort_by_key(|f| (f.kind != "dir", f.path.clone()));
    for f in files {
        let (dir_path, name) = f.path.rsplit_once('/').unwrap_or(("", f.path.as_str()));
        let parent = ensure_dir(tree, top, dir_path, now);
        let kind = match f.kind {
            "dir" => Kind::Dir(Default::default()),
            "symlink" => Kind::Symlink(recovered_target(volume, f)),
            _ => {
                let disk: Arc<dyn VirtualDisk> = Arc::new(RawDisk::new(Arc::new(f.open(volume))));
                let len = disk.size();
                Kind::File(Content::Disk {
                    disk,
                    start: 0,
                    len,
                })
            }
        };
        if tree.add(parent, name, fd_node(kind, &f.fd)).is_none() {
            if f.kind != "dir" {
                eprintln!(
                    "vdr mount: {RECOVERED_DIR}/{}: the name is taken; left out",
                    f.path
                );
            }
            continue;
        }
        if f.is_vmdk_disk(volume) {
            let raw_name = format!("{}.raw", &name[..name.len() - ".vmdk".len()]);
            let mut options = options.clone();
            options.file_system = Some(fs.clone());
            let lazy = Content::Lazy {
                open: recovered_chain_opener(volume.clone(), f.clone(), options),
                disk: OnceLock::new(),
            };
            tree.add(parent, &raw_name, fd_node(Kind::File(lazy), &f.fd));
        }
    }
    Ok(())
}

/// The inode of directory `path` (relative, '/'-separated) under `top`, made as needed.
fn ensure_dir(tree: &mut Tree, top: u64, path: &str, time: SystemTime) -> u64 {
    let mut dir = top;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir = match tree.child(dir, part) {
            Some(d) => d,
            None => tree
                .add(dir, part, node(Kind::Dir(Default::default()), time))
                .unwrap_or(dir),
        };
    }
    dir
}

fn recovered_target(volume: &Arc<Volume>, f: &LostFile) -> Vec<u8> {
    if f.size > SYMLINK_TARGET_MAX {
        return Vec::new();
    }
    let mut target = vec![0u8; f.size as usize];
    match f.open(volume).read_exact_at(&mut target, 0) {
        Ok(()) => target,
        Err(e) => {
            eprintln!("vdr mount: {RECOVERED_DIR}/{}: {e}", f.path);
            Vec::new()
        }
    }
}

/// Opens the chain of a lost VMDK, extents and parents resolved by `options`' file
/// system (the lost files, then the live tree).
fn recovered_chain_opener(
    volume: Arc<Volume>,
    f: LostFile,
    options: OpenOptions,
) -> crate::tree::Opener {
    let identity = format!("{}::{RECOVERED_DIR}/{}", volume.name(), f.path);
    lazy_chain(identity, options, move || Ok(Arc::new(f.open(&volume))))
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
    detect_bytes(&head[..n]).is_vmdk_entry_point()
}

/// Opens the chain of the VMDK at `path` inside `volume`, parents and extents included.
fn chain_opener(volume: Arc<Volume>, path: String, options: OpenOptions) -> crate::tree::Opener {
    let mut options = options;
    options.file_system = Some(FileSystemRef(Arc::new(VolumeFileSystem(volume.clone()))));
    let identity = format!("{}::{}", volume.name(), path);
    lazy_chain(identity, options, move || {
        Ok(Arc::new(volume.open_file(&path)?))
    })
}

/// Opens, on first access, the chain whose leaf `leaf` gives, named `identity` in
/// messages and cycle checks; a failure is logged and kept.
fn lazy_chain(
    identity: String,
    options: OpenOptions,
    leaf: impl Fn() -> Result<SourceRef, vdr_formats::Error> + Send + Sync + 'static,
) -> crate::tree::Opener {
    Box::new(move || {
        let open = || -> Result<Arc<dyn VirtualDisk>, vdr_formats::Error> {
            let leaf = open_layer(leaf()?, &options)?;
            let chain = Chain::build(
                leaf,
                Some(identity.clone()),
                &FileParentResolver::new(&options),
                options.max_depth,
            )?;
            Ok(Arc::new(chain))
        };
        open().map_err(|e| {
            let message = format!("{identity}: {e}");
            eprintln!("vdr mount: {message}");
            message
        })
    })
}
