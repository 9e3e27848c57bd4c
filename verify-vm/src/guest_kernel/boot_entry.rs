//! The image's default boot entry: what its boot loader would start.
//!
//! GRUB first: the first `linux` line of grub.cfg is the first menu entry, which GRUB boots
//! by default (Debian, Ubuntu, SUSE). When grub.cfg has none (Fedora and RHEL 8+ generate a
//! `blscfg` call instead), the Boot Loader Specification entries in /boot/loader/entries
//! are read (uapi-group.org BLS, "Type #1": `linux`, `initrd`, `options`, `version` lines);
//! GRUB's blscfg sorts them by version and boots the newest, and so does vdr. RHEL 8 writes
//! `options $kernelopts` and keeps the value in grubenv, which is substituted here.

use super::cmdline::first_grub_linux;
use super::volumes::FsVolume;
use crate::kernel_version::{compare_versions, kernel_version};

/// Where grub.cfg lives: on the root fs, or at the top of a separate /boot.
const GRUB_CFG_PATHS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub2/grub.cfg",
];
/// Where BLS entries live.
const BLS_DIRS: &[&str] = &["/boot/loader/entries", "/loader/entries"];
/// Where GRUB keeps its environment block (RHEL 8's `kernelopts`).
const GRUBENV_PATHS: &[&str] = &["/boot/grub2/grubenv", "/grub2/grubenv"];
/// Largest configuration file read (grub.cfg, an entry, grubenv).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Most BLS entries read per directory.
const MAX_BLS_ENTRIES: usize = 256;

/// A boot entry: the kernel it names and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Index into the searched volumes of the one holding the configuration.
    pub fs: usize,
    /// "the first linux line of /boot/grub/grub.cfg", "BLS entry /boot/loader/entries/x.conf".
    pub source: String,
    /// The kernel path as the entry names it.
    pub kernel_path: String,
    pub args: String,
}

/// The image's default boot entry, if its configuration names one.
pub fn find_boot_entry(volumes: &[FsVolume]) -> Option<BootEntry> {
    find_grub(volumes).or_else(|| find_bls(volumes))
}

fn find_grub(volumes: &[FsVolume]) -> Option<BootEntry> {
    volumes.iter().enumerate().find_map(|(fs, ext4)| {
        GRUB_CFG_PATHS.iter().find_map(|path| {
            let linux = first_grub_linux(&read_config(ext4, path)?)?;
            Some(BootEntry {
                fs,
                source: format!("the first linux line of {path}"),
                kernel_path: linux.kernel_path,
                args: linux.args,
            })
        })
    })
}

fn find_bls(volumes: &[FsVolume]) -> Option<BootEntry> {
    let mut best: Option<(BlsEntry, BootEntry)> = None;
    for (fs, ext4) in volumes.iter().enumerate() {
        for dir in BLS_DIRS {
            let Ok(entries) = ext4.fs.read_dir(dir, MAX_BLS_ENTRIES) else {
                continue;
            };
            for entry in entries {
                let name = entry.name;
                if !name.ends_with(".conf") {
                    continue;
                }
                let path = format!("{dir}/{name}");
                let Some(bls) = read_config(ext4, &path).and_then(|t| parse_bls(&t)) else {
                    continue;
                };
                let newer = best
                    .as_ref()
                    .is_none_or(|(b, _)| compare_versions(&bls.sort_key(), &b.sort_key()).is_gt());
                if newer {
                    let args = substitute_kernelopts(&bls.options, ext4);
                    let found = BootEntry {
                        fs,
                        source: format!("BLS entry {path} (the newest)"),
                        kernel_path: bls.linux.clone(),
                        args,
                    };
                    best = Some((bls, found));
                }
            }
        }
    }
    best.map(|(_, entry)| entry)
}

/// A file's text, if it exists and is small enough.
fn read_config(ext4: &FsVolume, path: &str) -> Option<String> {
    let len = ext4.fs.file_len(path).ok()??;
    if len > MAX_CONFIG_BYTES {
        return None;
    }
    let bytes = ext4.fs.read(path, MAX_CONFIG_BYTES).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `$kernelopts` replaced by grubenv's `kernelopts=` value, when there is one.
fn substitute_kernelopts(options: &str, ext4: &FsVolume) -> String {
    if !options.contains("$kernelopts") {
        return options.to_string();
    }
    let value = GRUBENV_PATHS
        .iter()
        .filter_map(|path| read_config(ext4, path))
        .find_map(|env| {
            env.lines()
                .find_map(|l| l.strip_prefix("kernelopts=").map(str::to_string))
        });
    match value {
        Some(value) => options.replace("$kernelopts", &value),
        None => options.to_string(),
    }
}

/// The fields of a BLS Type #1 entry vdr uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlsEntry {
    pub version: Option<String>,
    pub linux: String,
    pub options: String,
}

impl BlsEntry {
    /// What entries are ordered by: the version, else the one in the kernel's file name.
    fn sort_key(&self) -> String {
        self.version.clone().unwrap_or_else(|| {
            let name = self.linux.rsplit('/').next().unwrap_or_default();
            kernel_version(name).unwrap_or(name).to_string()
        })
    }
}

/// Parses a BLS entry; `None` without a `linux` line. Several `options` lines are joined.
pub fn parse_bls(text: &str) -> Option<BlsEntry> {
    let mut version = None;
    let mut linux = None;
    let mut options = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match key {
            "version" => version = Some(value.to_string()),
            "linux" => linux = Some(value.to_string()),
            "options" => options.push(value),
            _ => {}
        }
    }
    Some(BlsEntry {
        version,
        linux: linux.filter(|l| !l.is_empty())?,
        options: options.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedora_bls_entry_gives_kernel_and_options() {
        let text = "title Fedora Linux (6.5.6-300.fc39.x86_64) 39 (Cloud Edition)\n\
                    version 6.5.6-300.fc39.x86_64\n\
                    linux /boot/vmlinuz-6.5.6-300.fc39.x86_64\n\
                    initrd /boot/initramfs-6.5.6-300.fc39.x86_64.img\n\
                    options root=UUID=8f1c ro rootflags=subvol=root no_timer_check\n\
                    grub_users $grub_users\n\
                    grub_arg --unrestricted\n";

        let entry = parse_bls(text).unwrap();

        assert_eq!(entry.version.as_deref(), Some("6.5.6-300.fc39.x86_64"));
        assert_eq!(entry.linux, "/boot/vmlinuz-6.5.6-300.fc39.x86_64");
        assert_eq!(
            entry.options,
            "root=UUID=8f1c ro rootflags=subvol=root no_timer_check"
        );
    }

    #[test]
    fn bls_entry_without_linux_line_is_ignored() {
        assert_eq!(parse_bls("title x\noptions ro\n"), None);
        assert_eq!(parse_bls("linux\n"), None);
        assert_eq!(parse_bls(""), None);
    }

    #[test]
    fn bls_entries_sort_by_version_else_file_name() {
        let a = parse_bls("linux /vmlinuz-5.14.0-70.el9\n").unwrap();
        let b = parse_bls("version 5.14.0-362.el9\nlinux /vmlinuz-x\n").unwrap();

        assert!(compare_versions(&b.sort_key(), &a.sort_key()).is_gt());
        assert_eq!(a.sort_key(), "5.14.0-70.el9");
    }
}
