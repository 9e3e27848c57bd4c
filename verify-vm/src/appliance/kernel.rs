//! Finding the appliance's kernel and the modules built for it.
//!
//! In order: the `--kernel` path; the newest /boot/vmlinuz-* that has /lib/modules/<version>;
//! an unpacked linux-image package under `$VDR_GUEST_KERNEL_DIR` or
//! /var/cache/vdr/linux-image (boot/vmlinuz-*, lib/modules/<version>/), which
//! `scripts/guest-kernel` prepares. The version is the file name's suffix, or the string
//! a bzImage's setup header points at (Documentation/arch/x86/boot.rst, `kernel_version`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Error;
use crate::kernel_version::{compare_versions, kernel_version};

/// Environment variable naming the directory `scripts/guest-kernel` unpacks into.
pub const GUEST_KERNEL_DIR_ENV: &str = "VDR_GUEST_KERNEL_DIR";
/// Where `scripts/guest-kernel` unpacks the kernel package by default.
pub const DEFAULT_GUEST_KERNEL_DIR: &str = "/var/cache/vdr/linux-image";

/// The kernel the appliance boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelInfo {
    pub path: PathBuf,
    /// `uname -r` of the kernel ("6.1.0-56-cloud-amd64").
    pub version: String,
    /// lib/modules/<version> of this kernel.
    pub modules_dir: PathBuf,
}

/// Finds the kernel: `explicit` (`--kernel`), else the host's /boot, else the unpacked
/// package. The error lists every place tried.
pub fn find_kernel(explicit: Option<&Path>) -> Result<KernelInfo, Error> {
    let package_dir = std::env::var_os(GUEST_KERNEL_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_KERNEL_DIR));
    find_kernel_in(explicit, Path::new("/"), &package_dir)
}

/// [`find_kernel`] with the host root and the package directory given (for tests).
pub fn find_kernel_in(
    explicit: Option<&Path>,
    host_root: &Path,
    package_dir: &Path,
) -> Result<KernelInfo, Error> {
    if let Some(path) = explicit {
        return explicit_kernel(path, host_root);
    }
    let mut tried = Vec::new();
    for root in [host_root, package_dir] {
        let boot = root.join("boot");
        let mut kernels = vmlinuz_files(&boot);
        // newest version first: "6.1.0-56" sorts after "6.1.0-9"
        kernels.sort_by(|(_, a), (_, b)| compare_versions(b, a));
        if kernels.is_empty() {
            tried.push(format!("{}/vmlinuz-* (none)", boot.display()));
        }
        for (path, version) in kernels {
            let modules_dir = root.join("lib/modules").join(&version);
            if modules_dir.join("modules.dep").is_file() {
                return Ok(KernelInfo {
                    path,
                    version,
                    modules_dir,
                });
            }
            tried.push(format!(
                "{} (no {}/modules.dep)",
                path.display(),
                modules_dir.display()
            ));
        }
    }
    Err(Error::KernelNotFound { tried })
}

/// `--kernel PATH`: its modules are in /lib/modules/<version>, or beside it in an unpacked
/// package (PATH/../../lib/modules/<version>).
fn explicit_kernel(path: &Path, host_root: &Path) -> Result<KernelInfo, Error> {
    let version = version_from_name(path)
        .map(Ok)
        .unwrap_or_else(|| bzimage_version(path))?;
    let mut candidates = vec![host_root.join("lib/modules").join(&version)];
    if let Some(package_root) = path.parent().and_then(Path::parent) {
        candidates.insert(0, package_root.join("lib/modules").join(&version));
    }
    match candidates
        .iter()
        .find(|dir| dir.join("modules.dep").is_file())
    {
        Some(dir) => Ok(KernelInfo {
            path: path.to_path_buf(),
            version,
            modules_dir: dir.clone(),
        }),
        None => Err(Error::ModulesMissing {
            kernel: path.to_path_buf(),
            version,
            tried: candidates,
        }),
    }
}

/// The vmlinuz-<version> files in `boot`, with their versions.
fn vmlinuz_files(boot: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(boot) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter_map(|path| version_from_name(&path).map(|version| (path, version)))
        .collect()
}

fn version_from_name(path: &Path) -> Option<String> {
    kernel_version(path.file_name()?.to_str()?).map(str::to_string)
}

/// The version string of a bzImage: the setup header's `kernel_version` (offset 0x20E) is
/// the string's offset minus 0x200; the string starts with the `uname -r` text.
fn bzimage_version(path: &Path) -> Result<String, Error> {
    let unreadable = |why: &str| Error::KernelVersion {
        kernel: path.to_path_buf(),
        why: why.to_string(),
    };
    let image = std::fs::read(path).map_err(|source| Error::Read {
        what: "the kernel".into(),
        path: path.to_path_buf(),
        source,
    })?;
    bzimage_version_of(&image)
        .ok_or_else(|| unreadable("not a vmlinuz-<version> file and no bzImage version string"))
}

fn bzimage_version_of(image: &[u8]) -> Option<String> {
    // "HdrS" at 0x202 marks a boot protocol 2.x setup header
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes([*image.get(0x20E)?, *image.get(0x20F)?]);
    let start = usize::from(pointer).checked_add(0x200)?;
    let text = image.get(start..start.checked_add(256)?.min(image.len()))?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(text.get(..end)?).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn newest_boot_kernel_with_modules_wins() {
        let root = tempfile::tempdir().unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64"] {
            touch(&root.path().join(format!("boot/vmlinuz-{v}")));
        }
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64"] {
            touch(&root.path().join(format!("lib/modules/{v}/modules.dep")));
        }
        let found = find_kernel_in(None, root.path(), Path::new("/nonexistent")).unwrap();
        assert_eq!(found.version, "6.1.0-56-amd64");
    }

    #[test]
    fn unpacked_package_is_used_when_boot_has_none() {
        let host = tempfile::tempdir().unwrap();
        let package = tempfile::tempdir().unwrap();
        touch(&package.path().join("boot/vmlinuz-6.1.0-56-cloud-amd64"));
        touch(
            &package
                .path()
                .join("lib/modules/6.1.0-56-cloud-amd64/modules.dep"),
        );
        let found = find_kernel_in(None, host.path(), package.path()).unwrap();
        assert_eq!(found.version, "6.1.0-56-cloud-amd64");
        assert!(found.modules_dir.starts_with(package.path()));
    }

    #[test]
    fn no_kernel_lists_what_was_tried() {
        let host = tempfile::tempdir().unwrap();
        touch(&host.path().join("boot/vmlinuz-6.1.0-1-amd64"));
        let err = find_kernel_in(None, host.path(), Path::new("/nonexistent/pkg")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("vmlinuz-6.1.0-1-amd64 (no "), "{text}");
        assert!(text.contains("/nonexistent/pkg/boot"), "{text}");
        assert!(text.contains("scripts/guest-kernel"), "{text}");
    }

    #[test]
    fn explicit_kernel_without_modules_is_an_error_naming_the_version() {
        let host = tempfile::tempdir().unwrap();
        let kernel = host.path().join("k/boot/vmlinuz-7.0-test");
        touch(&kernel);
        let err = find_kernel_in(Some(&kernel), host.path(), Path::new("/x")).unwrap_err();
        assert!(matches!(err, Error::ModulesMissing { ref version, .. } if version == "7.0-test"));
    }

    #[test]
    fn bzimage_version_string_is_read_from_the_setup_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20E..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let text = b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        image[0x500..0x500 + text.len()].copy_from_slice(text);
        assert_eq!(
            bzimage_version_of(&image).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn truncated_bzimage_has_no_version() {
        let mut image = vec![0u8; 0x210];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20E..0x210].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert_eq!(bzimage_version_of(&image), None);
        assert_eq!(bzimage_version_of(&[]), None);
    }
}
