//! Finds the image's kernel, initrd and command line in its file systems.
//!
//! Kernels are `vmlinuz-<ver>` files in `/boot` of the root file system or in `/` of a
//! separate boot partition (both places are searched on every ext2/3/4 and XFS volume). Which one
//! boots, in order of authority: the kernel named by the image's default boot entry
//! ([`super::boot_entry`]: grub.cfg's first `linux` line, else the newest BLS entry), the
//! version the root's `/vmlinuz` (or `/boot/vmlinuz`) symlink points at (Debian's
//! linux-update-symlinks keeps it on the newest install), else the newest version. The initrd is the matching `initrd.img-<ver>`/`initramfs-<ver>.img`
//! beside the kernel.

use serde::Serialize;

use super::boot_entry::{find_boot_entry, BootEntry};
use super::volumes::{Fs, FsVolume, Volume, Volumes};
use super::Error;
use crate::kernel_version::{compare_versions, initrd_names, kernel_version};

/// Directories searched for kernels.
const KERNEL_DIRS: &[&str] = &["/boot", "/"];
/// Symlinks to the current kernel.
const KERNEL_SYMLINKS: &[&str] = &["/vmlinuz", "/boot/vmlinuz"];
/// Files whose presence marks the root file system.
const ROOT_MARKERS: &[&str] = &["/etc/os-release", "/sbin/init"];
/// Most directory entries looked at per directory (a damaged directory may loop).
const MAX_DIR_ENTRIES: usize = 10_000;

/// Size limits for what is read into memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_kernel_bytes: u64,
    pub max_initrd_bytes: u64,
}

/// A kernel or initrd file found in the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootFile {
    /// The partition holding it (1-based), or `None` for an unpartitioned disk.
    pub partition: Option<u32>,
    /// Its path in that file system.
    pub path: String,
    pub version: String,
    pub bytes: u64,
}

/// What to boot.
pub struct Found {
    pub kernel: BootFile,
    pub kernel_image: Vec<u8>,
    pub initrd: Option<BootFile>,
    pub initrd_image: Option<Vec<u8>>,
    /// Why this kernel: "the first linux line of /boot/grub/grub.cfg on partition 1", ...
    pub chosen_because: String,
    /// The image's own kernel arguments.
    pub image_cmdline: String,
    /// Where they came from.
    pub cmdline_source: String,
    /// Things noticed on the way (unreadable directories, a missing initrd).
    pub notes: Vec<String>,
}

struct Candidate {
    fs: usize,
    path: String,
    version: String,
    len: u64,
}

/// Searches `volumes` for a kernel and reads it, its initrd and the command line.
pub fn find_kernel(volumes: &Volumes, limits: Limits) -> Result<Found, Error> {
    let mut notes = Vec::new();
    let candidates = kernel_candidates(&volumes.searched, &mut notes);
    let entry = find_boot_entry(&volumes.searched);
    let (chosen, chosen_because) = choose(&candidates, entry.as_ref(), &volumes.searched)
        .ok_or_else(|| Error::NoKernel {
            looked_at: volumes.looked_at.clone(),
        })?;
    let vol = volumes
        .searched
        .get(chosen.fs)
        .ok_or_else(|| Error::NoKernel {
            looked_at: volumes.looked_at.clone(),
        })?;
    let kernel = BootFile {
        partition: vol.volume.partition,
        path: chosen.path.clone(),
        version: chosen.version.clone(),
        bytes: chosen.len,
    };
    let kernel_image = read_capped(vol, &kernel.path, "kernel", limits.max_kernel_bytes)?;

    let initrd = find_initrd(vol, &chosen.path, &chosen.version);
    let initrd_image = match &initrd {
        Some(file) => Some(read_capped(
            vol,
            &file.path,
            "initrd",
            limits.max_initrd_bytes,
        )?),
        None => {
            notes.push(format!(
                "no initrd for {} beside {} on {}",
                chosen.version, chosen.path, vol.volume
            ));
            None
        }
    };

    let (image_cmdline, cmdline_source) = match &entry {
        Some(entry) => (
            entry.args.clone(),
            format!("{} on {}", entry.source, volume_of(volumes, entry.fs)),
        ),
        None => fallback_cmdline(&volumes.searched, initrd.is_some(), &mut notes),
    };
    Ok(Found {
        kernel,
        kernel_image,
        initrd,
        initrd_image,
        chosen_because,
        image_cmdline,
        cmdline_source,
        notes,
    })
}

fn volume_of(volumes: &Volumes, fs: usize) -> String {
    volumes
        .searched
        .get(fs)
        .map_or_else(|| "?".to_string(), |v| v.volume.to_string())
}

/// Every `vmlinuz-<ver>` regular file in the kernel directories.
fn kernel_candidates(volumes: &[FsVolume], notes: &mut Vec<String>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (fs, volume) in volumes.iter().enumerate() {
        for dir in KERNEL_DIRS {
            let entries = match volume.fs.read_dir(dir, MAX_DIR_ENTRIES) {
                Ok(entries) => entries,
                Err(err) if err.is_not_found() => continue,
                Err(err) => {
                    notes.push(format!("{dir} on {}: {err}", volume.volume));
                    continue;
                }
            };
            for entry in entries {
                let Some(version) = kernel_version(&entry.name) else {
                    continue;
                };
                if !entry.is_file {
                    continue;
                }
                let path = join(dir, &entry.name);
                let Ok(Some(len)) = volume.fs.file_len(&path) else {
                    continue;
                };
                out.push(Candidate {
                    fs,
                    path,
                    version: version.to_string(),
                    len,
                });
            }
        }
    }
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Picks the kernel to boot and says why.
fn choose<'c>(
    candidates: &'c [Candidate],
    entry: Option<&BootEntry>,
    volumes: &[FsVolume],
) -> Option<(&'c Candidate, String)> {
    if let Some(entry) = entry {
        let named = entry
            .kernel_path
            .rsplit('/')
            .next()
            .and_then(kernel_version);
        if let Some(c) = named.and_then(|v| candidates.iter().find(|c| c.version == v)) {
            let on = volumes
                .get(entry.fs)
                .map(|v| v.volume.to_string())
                .unwrap_or_default();
            return Some((c, format!("named by {} on {on}", entry.source)));
        }
    }
    for vol in volumes {
        for link in KERNEL_SYMLINKS {
            let Some(target) = vol.fs.read_link(link) else {
                continue;
            };
            let named = target.rsplit('/').next().and_then(kernel_version);
            if let Some(c) = named.and_then(|v| candidates.iter().find(|c| c.version == v)) {
                return Some((
                    c,
                    format!("the {link} symlink on {} points at it", vol.volume),
                ));
            }
        }
    }
    let newest =
        candidates.iter().reduce(
            |best, c| match compare_versions(&c.version, &best.version) {
                std::cmp::Ordering::Greater => c,
                _ => best,
            },
        )?;
    Some((
        newest,
        format!("the newest of {} kernels found", candidates.len()),
    ))
}

/// The initrd beside `kernel_path` for `version`.
fn find_initrd(vol: &FsVolume, kernel_path: &str, version: &str) -> Option<BootFile> {
    let dir = kernel_path
        .rsplit_once('/')
        .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
    initrd_names(version).iter().find_map(|name| {
        let path = join(dir, name);
        let len = vol.fs.file_len(&path).ok()??;
        Some(BootFile {
            partition: vol.volume.partition,
            path,
            version: version.to_string(),
            bytes: len,
        })
    })
}

/// Reads a whole file after checking its size against `cap`.
fn read_capped(vol: &FsVolume, path: &str, what: &'static str, cap: u64) -> Result<Vec<u8>, Error> {
    let read_error = |source| Error::Read {
        path: path.to_string(),
        volume: vol.volume.to_string(),
        source,
    };
    let len = vol.fs.file_len(path).map_err(read_error)?.unwrap_or(0);
    if len > cap {
        return Err(Error::TooLarge {
            what,
            path: path.to_string(),
            volume: vol.volume.to_string(),
            len,
            cap,
        });
    }
    vol.fs.read(path, cap).map_err(read_error)
}

/// The command line when no boot entry names one: the root file system by UUID (an initramfs
/// resolves it with udev/blkid) or, without an initramfs, by device name, since the kernel
/// alone cannot resolve `UUID=` (init/do_mounts.c knows only PARTUUID= and names).
fn fallback_cmdline(
    volumes: &[FsVolume],
    has_initrd: bool,
    notes: &mut Vec<String>,
) -> (String, String) {
    let root = volumes.iter().find(|v| is_root(&v.fs));
    match root {
        Some(root) => {
            let arg = match (has_initrd, root.volume) {
                (true, _) => format!("root=UUID={}", root.fs.uuid()),
                (
                    false,
                    Volume {
                        partition: Some(n), ..
                    },
                ) => format!("root=/dev/vda{n}"),
                (
                    false,
                    Volume {
                        partition: None, ..
                    },
                ) => "root=/dev/vda".to_string(),
            };
            (
                format!("{arg} ro"),
                format!("no boot entry; the root file system is {} (it holds /etc/os-release or /sbin/init)", root.volume),
            )
        }
        None => {
            notes.push("no boot entry and no partition holds /etc/os-release or /sbin/init: booting without root=".into());
            (
                "ro".to_string(),
                "no boot entry and no root file system found".to_string(),
            )
        }
    }
}

fn is_root(fs: &Fs) -> bool {
    ROOT_MARKERS.iter().any(|path| fs.exists(path))
}
