//! Kernel modules for the appliance: names resolved through the kernel's modules.dep
//! (depmod(8) format: `path: dependency-path ...`) into files in load order, each
//! module's dependencies first, as modprobe would load them. Modules the kernel has built
//! in (modules.builtin) need no file and are skipped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::Error;

/// The virtio-mmio block device, in load order (backend.rs: both backends present it).
pub const DISK_MODULES: &[&str] = &["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"];

/// Modules a filesystem needs beyond the disk's (none when it is built in or unknown).
pub fn filesystem_modules(fs: &str) -> &'static [&'static str] {
    match fs {
        "ext2" | "ext3" | "ext4" => &["ext4"],
        "xfs" => &["xfs"],
        "btrfs" => &["btrfs"],
        // FAT's default codepage and iocharsets (Debian: CONFIG_FAT_DEFAULT_CODEPAGE=437,
        // CONFIG_FAT_DEFAULT_IOCHARSET="ascii"; without nls_ascii mount says EINVAL)
        "vfat" => &["vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1"],
        "ntfs" => &["ntfs3"],
        _ => &[],
    }
}

/// A module file to put in the initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile {
    /// Path relative to lib/modules/<version> ("kernel/drivers/block/virtio_blk.ko").
    pub relative: String,
    pub path: PathBuf,
}

/// What one kernel's modules.dep and modules.builtin say.
pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name ('-' as '_') → (relative path, dependencies' relative paths).
    entries: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Reads `modules_dir`/modules.dep and modules.builtin (which may be absent).
    pub fn load(modules_dir: &Path) -> Result<ModuleIndex, Error> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| Error::Read {
            what: "modules.dep".into(),
            path: dep_path,
            source,
        })?;
        let builtin =
            std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        Ok(ModuleIndex::parse(modules_dir, &dep, &builtin))
    }

    /// Builds the index from the two files' text.
    pub fn parse(modules_dir: &Path, dep: &str, builtin: &str) -> ModuleIndex {
        let entries = dep
            .lines()
            .filter_map(|line| {
                let (path, deps) = line.split_once(':')?;
                let path = path.trim();
                let deps = deps.split_whitespace().map(str::to_string).collect();
                Some((module_name(path)?, (path.to_string(), deps)))
            })
            .collect();
        let builtin = builtin.lines().filter_map(module_name).collect();
        ModuleIndex {
            dir: modules_dir.to_path_buf(),
            entries,
            builtin,
        }
    }

    /// The files for `names`, dependencies first, each once; built-in modules are skipped.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<ModuleFile>, Error> {
        let by_path: HashMap<&str, &(String, Vec<String>)> = self
            .entries
            .values()
            .map(|entry| (entry.0.as_str(), entry))
            .collect();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let key = normalize(name);
            if self.builtin.contains(&key) {
                continue;
            }
            let Some(entry) = self.entries.get(&key) else {
                return Err(Error::ModuleMissing {
                    module: (*name).to_string(),
                    modules_dir: self.dir.clone(),
                });
            };
            self.visit(entry, &by_path, &mut seen, &mut order, 0);
        }
        Ok(order
            .into_iter()
            .map(|relative: String| ModuleFile {
                path: self.dir.join(&relative),
                relative,
            })
            .collect())
    }

    /// Depth-first: a module after all of its dependencies. modules.dep lists the
    /// dependencies a module needs last-loaded-first, so they are visited in reverse.
    fn visit(
        &self,
        entry: &(String, Vec<String>),
        by_path: &HashMap<&str, &(String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        // depmod refuses cycles; a bound keeps a hand-edited file from recursing forever
        if depth > 64 || !seen.insert(entry.0.clone()) {
            return;
        }
        for dep in entry.1.iter().rev() {
            match by_path.get(dep.as_str()) {
                Some(dep_entry) => self.visit(dep_entry, by_path, seen, order, depth + 1),
                None => {
                    if seen.insert(dep.clone()) {
                        order.push(dep.clone());
                    }
                }
            }
        }
        order.push(entry.0.clone());
    }
}

/// "kernel/fs/nls/nls_iso8859-1.ko.xz" → "nls_iso8859_1".
fn module_name(path: &str) -> Option<String> {
    let file = path.trim().rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (!stem.is_empty()).then(|| normalize(stem))
}

/// Module names treat '-' and '_' alike (kmod's modname normalisation).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/zstd/zstd_compress.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/lib/zstd/zstd_compress.ko:
kernel/lib/libcrc32c.ko:
kernel/fs/nls/nls_iso8859-1.ko:
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/m"), DEP, "kernel/fs/ext4/ext4.ko\n")
    }

    fn relative(files: &[ModuleFile]) -> Vec<&str> {
        files.iter().map(|f| f.relative.as_str()).collect()
    }

    #[test]
    fn disk_modules_load_in_dependency_order() {
        let files = index().resolve(DISK_MODULES).unwrap();
        assert_eq!(
            relative(&files),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko",
            ]
        );
        assert_eq!(
            files[0].path,
            Path::new("/m/kernel/drivers/virtio/virtio_ring.ko")
        );
    }

    #[test]
    fn dependencies_come_last_listed_first() {
        let files = index().resolve(&["btrfs"]).unwrap();
        assert_eq!(
            relative(&files),
            [
                "kernel/lib/libcrc32c.ko",
                "kernel/lib/zstd/zstd_compress.ko",
                "kernel/lib/raid6/raid6_pq.ko",
                "kernel/crypto/xor.ko",
                "kernel/fs/btrfs/btrfs.ko",
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped_and_dashes_match_underscores() {
        let files = index().resolve(&["ext4", "nls_iso8859_1"]).unwrap();
        assert_eq!(relative(&files), ["kernel/fs/nls/nls_iso8859-1.ko"]);
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let err = index().resolve(&["xfs"]).unwrap_err();
        assert!(err.to_string().contains("xfs"), "{err}");
    }

    #[test]
    fn cyclic_dependencies_terminate() {
        let dep = "a.ko: b.ko\nb.ko: a.ko\n";
        let files = ModuleIndex::parse(Path::new("/m"), dep, "")
            .resolve(&["a"])
            .unwrap();
        assert_eq!(relative(&files), ["b.ko", "a.ko"]);
    }
}
