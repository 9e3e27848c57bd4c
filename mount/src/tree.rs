//! The inode table a mount serves: a fixed tree of directories and read-only files built
//! once at mount time. A file's content is bytes (info.json), a byte range of a
//! [`VirtualDisk`] (disk.raw, pN.raw, a file inside a VMFS volume), or a disk opened on
//! first access (NAME.raw beside a VMDK descriptor in a datastore).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use vdr_formats::VirtualDisk;

/// Inode number of the root directory (FUSE's FUSE_ROOT_ID).
pub const ROOT: u64 = 1;

/// Opens a disk on first access; the error is kept and reported on every access.
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn VirtualDisk>, String> + Send + Sync>;

/// A file's bytes as (disk, start, length) in that disk.
pub type DiskRange = (Arc<dyn VirtualDisk>, u64, u64);

/// What a file holds.
pub enum Content {
    Bytes(Arc<[u8]>),
    /// `len` bytes of `disk` from `start`.
    Disk {
        disk: Arc<dyn VirtualDisk>,
        start: u64,
        len: u64,
    },
    /// A whole disk opened by `open` the first time the file is looked at.
    Lazy {
        open: Opener,
        disk: OnceLock<Result<Arc<dyn VirtualDisk>, String>>,
    },
}

impl Content {
    /// The disk and range behind the file, opening a lazy one; `Ok(None)` for bytes.
    pub fn disk_range(&self) -> Result<Option<DiskRange>, String> {
        match self {
            Content::Bytes(_) => Ok(None),
            Content::Disk { disk, start, len } => Ok(Some((disk.clone(), *start, *len))),
            Content::Lazy { open, disk } => {
                let disk = disk.get_or_init(open).clone()?;
                let len = disk.size();
                Ok(Some((disk, 0, len)))
            }
        }
    }

    /// The file's size (0 for a lazy disk that fails to open).
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            _ => self
                .disk_range()
                .ok()
                .flatten()
                .map_or(0, |(_, _, len)| len),
        }
    }
}

/// What an inode is.
pub enum Kind {
    Dir(BTreeMap<String, u64>),
    File(Content),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
}

/// One inode.
pub struct Node {
    pub parent: u64,
    pub kind: Kind,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
}

/// The whole tree; inode `n` is `nodes[n - 1]`.
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree holding only an empty root directory with time `time`.
    pub fn new(time: SystemTime) -> Tree {
        Tree {
            nodes: vec![Node {
                parent: ROOT,
                kind: Kind::Dir(BTreeMap::new()),
                mtime: time,
                atime: time,
                ctime: time,
            }],
        }
    }

    /// The inode `ino`, if it exists.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// Adds `node` named `name` to the directory `parent` and returns its inode number.
    /// A name already taken in `parent` is kept and the new node is not added (`None`).
    pub fn add(&mut self, parent: u64, name: &str, mut node: Node) -> Option<u64> {
        let ino = self.nodes.len() as u64 + 1;
        node.parent = parent;
        let i = usize::try_from(parent.checked_sub(1)?).ok()?;
        let Kind::Dir(children) = &mut self.nodes.get_mut(i)?.kind else {
            return None;
        };
        if children.contains_key(name) {
            return None;
        }
        children.insert(name.to_string(), ino);
        self.nodes.push(node);
        Some(ino)
    }

    /// The child `name` of directory `parent`.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.get(parent)?.kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }
}

/// A node of `kind` with all three times `time`.
pub fn node(kind: Kind, time: SystemTime) -> Node {
    Node {
        parent: ROOT,
        kind,
        mtime: time,
        atime: time,
        ctime: time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_added_once_per_directory() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut tree = Tree::new(t0);
        let dir = tree
            .add(ROOT, "vm", node(Kind::Dir(BTreeMap::new()), t0))
            .expect("added");
        let bytes = || Kind::File(Content::Bytes(Arc::from(&b"abc"[..])));
        let file = tree.add(dir, "a.raw", node(bytes(), t0)).expect("added");
        assert_eq!(tree.add(dir, "a.raw", node(bytes(), t0)), None);
        assert_eq!(tree.child(dir, "a.raw"), Some(file));
        assert_eq!(tree.get(file).map(|n| n.parent), Some(dir));
        assert_eq!(
            tree.add(file, "x", node(bytes(), t0)),
            None,
            "files hold no children"
        );
        assert!(tree.get(0).is_none() && tree.get(99).is_none());
    }

    #[test]
    fn a_lazy_disk_that_fails_to_open_is_empty_and_says_why() {
        let content = Content::Lazy {
            open: Box::new(|| Err("extent missing".to_string())),
            disk: OnceLock::new(),
        };
        assert_eq!(content.size(), 0);
        assert_eq!(
            content.disk_range().err().as_deref(),
            Some("extent missing")
        );
    }
}
