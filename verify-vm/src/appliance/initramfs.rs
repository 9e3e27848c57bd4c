//! The appliance's initramfs, built in memory: static busybox and e2fsck from the host,
//! the kernel modules in load order, the /init script (guest/appliance/init), the /plan
//! and an e2fsck.conf, as an uncompressed newc archive ([`super::cpio`] says why).
//!
//! The tools must be static: the initramfs has no libc. An ELF with a PT_INTERP program
//! header names a dynamic loader and is refused with the package to install instead.
//! Modules are copied as they are; a kernel whose modules are compressed (.ko.xz) relies
//! on busybox insmod or the kernel (CONFIG_MODULE_DECOMPRESS) to take them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::cpio::CpioWriter;
use super::modules::ModuleFile;
use super::Error;

/// The /init script.
pub const INIT_SCRIPT: &str = include_str!("../../guest/appliance/init");

/// e2fsck must not call a filesystem damaged because the guest's clock differs from the
/// times in its superblock (a microVM without an RTC starts in 1970): e2fsck.conf(5).
const E2FSCK_CONF: &str = "[options]\n\tbroken_system_clock = 1\n";

/// Where static busybox is looked for (Debian: busybox-static).
pub const BUSYBOX_CANDIDATES: &[&str] = &["/usr/bin/busybox", "/bin/busybox"];
/// Where static e2fsck is looked for (Debian: e2fsck-static).
pub const E2FSCK_CANDIDATES: &[&str] = &["/usr/sbin/e2fsck.static", "/sbin/e2fsck.static"];

/// A static tool for the initramfs.
#[derive(Clone, Debug)]
pub struct Tool {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Reads the tool at `explicit` or the first candidate that exists, and checks it is a
/// static x86-64 ELF.
pub fn find_tool(
    name: &str,
    explicit: Option<&Path>,
    candidates: &[&str],
    package: &str,
) -> Result<Tool, Error> {
    let tried: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => candidates.iter().map(PathBuf::from).collect(),
    };
    let path = tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::ToolMissing {
            tool: name.to_string(),
            tried: tried.clone(),
            package: package.to_string(),
        })?;
    let bytes = std::fs::read(&path).map_err(|source| Error::Read {
        what: name.to_string(),
        path: path.clone(),
        source,
    })?;
    match elf_interpreter(&bytes) {
        ElfKind::Static => Ok(Tool { path, bytes }),
        ElfKind::Dynamic => Err(Error::NotStatic {
            path,
            why: format!("it names a dynamic loader (PT_INTERP); install {package}"),
        }),
        ElfKind::NotElf64 => Err(Error::NotStatic {
            path,
            why: "it is not a 64-bit little-endian ELF executable".into(),
        }),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ElfKind {
    Static,
    Dynamic,
    NotElf64,
}

/// Whether an ELF64 executable has a PT_INTERP program header (System V gABI: e_phoff at
/// 0x20, e_phentsize at 0x36, e_phnum at 0x38; p_type is a phdr's first word, 3 = INTERP).
fn elf_interpreter(elf: &[u8]) -> ElfKind {
    const PT_INTERP: u32 = 3;
    let header = |at: usize, len: usize| elf.get(at..at.checked_add(len)?);
    let valid = header(0, 4) == Some(b"\x7fELF")
        && header(4, 1) == Some(&[2]) // ELFCLASS64
        && header(5, 1) == Some(&[1]); // ELFDATA2LSB
    if !valid {
        return ElfKind::NotElf64;
    }
    let read_u64 = |at| {
        header(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let read_u16 = |at| {
        header(at, 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let (Some(phoff), Some(entsize), Some(count)) =
        (read_u64(0x20), read_u16(0x36), read_u16(0x38))
    else {
        return ElfKind::NotElf64;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return ElfKind::NotElf64;
    };
    for index in 0..usize::from(count) {
        let at = usize::from(entsize)
            .checked_mul(index)
            .and_then(|o| o.checked_add(phoff));
        let p_type = at
            .and_then(|at| header(at, 4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        match p_type {
            Some(PT_INTERP) => return ElfKind::Dynamic,
            Some(_) => {}
            None => return ElfKind::NotElf64,
        }
    }
    ElfKind::Static
}

/// Everything the initramfs holds.
pub struct Contents<'a> {
    pub busybox: &'a Tool,
    pub e2fsck: &'a Tool,
    /// In load order.
    pub modules: &'a [ModuleFile],
    /// The /plan file.
    pub plan: &'a str,
}

/// Builds the gzip-compressed archive.
pub fn build(contents: &Contents<'_>) -> Result<Vec<u8>, Error> {
    let mut cpio = CpioWriter::new();
    let mut dirs = HashSet::new();
    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "etc",
        "lib/modules",
    ] {
        directory_with_parents(&mut cpio, &mut dirs, dir)?;
    }
    cpio.char_device("dev/console", 5, 1)?;
    cpio.file("bin/busybox", 0o755, &contents.busybox.bytes)?;
    cpio.file("sbin/e2fsck", 0o755, &contents.e2fsck.bytes)?;
    cpio.file("etc/e2fsck.conf", 0o644, E2FSCK_CONF.as_bytes())?;
    let mut list = String::new();
    for module in contents.modules {
        let bytes = std::fs::read(&module.path).map_err(|source| Error::Read {
            what: "a kernel module".into(),
            path: module.path.clone(),
            source,
        })?;
        let target = format!("lib/modules/{}", module.relative);
        if let Some((parent, _)) = target.rsplit_once('/') {
            directory_with_parents(&mut cpio, &mut dirs, parent)?;
        }
        cpio.file(&target, 0o644, &bytes)?;
        list.push_str(&module.relative);
        list.push('\n');
    }
    cpio.file("modules", 0o644, list.as_bytes())?;
    cpio.file("plan", 0o644, contents.plan.as_bytes())?;
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    Ok(cpio.finish()?)
}

fn directory_with_parents(
    cpio: &mut CpioWriter,
    dirs: &mut HashSet<String>,
    path: &str,
) -> Result<(), Error> {
    let mut prefix = String::new();
    for part in path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
    {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if dirs.insert(prefix.clone()) {
            cpio.directory(&prefix)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(interp: bool) -> Vec<u8> {
        let mut image = vec![0u8; 0x40 + 2 * 56];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        image[5] = 1;
        image[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        image[0x38..0x3A].copy_from_slice(&2u16.to_le_bytes());
        image[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let second = if interp { 3u32 } else { 4 };
        image[0x40 + 56..0x40 + 60].copy_from_slice(&second.to_le_bytes());
        image
    }

    #[test]
    fn elf_without_interpreter_is_static() {
        assert_eq!(elf_interpreter(&elf(false)), ElfKind::Static);
    }

    #[test]
    fn elf_with_pt_interp_is_dynamic() {
        assert_eq!(elf_interpreter(&elf(true)), ElfKind::Dynamic);
    }

    #[test]
    fn truncated_program_headers_are_not_an_elf() {
        let image = elf(false);
        assert_eq!(elf_interpreter(&image[..0x50]), ElfKind::NotElf64);
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), ElfKind::NotElf64);
    }

    #[test]
    fn host_dynamic_binary_is_refused_naming_the_package() {
        let err = find_tool("sh", Some(Path::new("/bin/sh")), &[], "busybox-static").unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn missing_tool_lists_the_paths_tried() {
        let err = find_tool(
            "e2fsck",
            None,
            &["/nonexistent/e2fsck.static"],
            "e2fsck-static",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/e2fsck.static") && text.contains("e2fsck-static"));
    }

    #[test]
    fn module_directories_are_created_once_before_their_files() {
        let mut cpio = CpioWriter::new();
        let mut dirs = HashSet::new();
        directory_with_parents(&mut cpio, &mut dirs, "lib/modules/kernel/fs").unwrap();
        directory_with_parents(&mut cpio, &mut dirs, "lib/modules/kernel/drivers").unwrap();
        assert_eq!(dirs.len(), 5);
    }
}
