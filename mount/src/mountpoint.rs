//! The mount point's state as the kernel sees it (/proc/self/mountinfo), stale-mount
//! detection, and unmounting (`umount2` as root, `fusermount3 -u` otherwise).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file-system name vdr mounts with (`FSName`): the "source" column of `mount`.
pub const FS_NAME: &str = "vdr";

/// What is at a mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing is mounted there.
    NotMounted,
    /// A live mount of file-system type `fs_type` from `source`.
    Mounted { fs_type: String, source: String },
    /// A FUSE mount whose process is gone: every access fails with ENOTCONN
    /// ("Transport endpoint is not connected").
    Stale { fs_type: String, source: String },
}

/// The absolute path of `path` as mountinfo spells it, without touching `path` itself
/// (a stale mount point cannot be resolved): its parent is canonicalised.
pub fn absolute(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match name {
        Some(name) if name != ".." => Ok(parent.canonicalize()?.join(name)),
        _ => path.canonicalize(),
    }
}

/// What is mounted at `path` now.
pub fn state(path: &Path) -> io::Result<State> {
    let abs = absolute(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some((fs_type, source)) = find_mount(&mountinfo, &abs) else {
        return Ok(State::NotMounted);
    };
    match std::fs::metadata(&abs) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(State::Stale { fs_type, source }),
        _ => Ok(State::Mounted { fs_type, source }),
    }
}

/// The (file-system type, source) of the last mount at `mount_point` in `mountinfo`
/// (proc(5): field 5 is the mount point; after the " - " separator come the type and
/// the source; spaces and the like are octal escapes).
fn find_mount(mountinfo: &str, mount_point: &Path) -> Option<(String, String)> {
    let target = mount_point.as_os_str().as_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let point = before.split(' ').nth(4)?;
        let mut rest = after.split(' ');
        let fs_type = rest.next()?.to_string();
        let source = unescape(rest.next()?);
        (unescape(point).as_bytes() == target).then_some((fs_type, source))
    })
}

/// Undoes mountinfo's `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `fs_type`/`source` is a vdr FUSE mount.
pub fn is_vdr(fs_type: &str, source: &str) -> bool {
    fs_type.starts_with("fuse") && source == FS_NAME
}

/// Unmounts `path`; `lazy` detaches it even while busy (MNT_DETACH: it goes away once
/// the last user closes it). As root this is umount2(2); otherwise `fusermount3 -u`.
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        return Err(io::Error::last_os_error());
    }
    let mut command = Command::new("fusermount3");
    command.arg(if lazy { "-uz" } else { "-u" }).arg(path);
    let output = command.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run fusermount3 (package fuse3): {e}"),
        )
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:55 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:60 - fuse.vdr vdr ro,user_id=0
99 22 0:56 / /mnt/x rw - fuse.sshfs host:/ rw
";

    #[test]
    fn finds_an_escaped_mount_point() {
        assert_eq!(
            find_mount(MOUNTINFO, Path::new("/tmp/a b")),
            Some(("fuse.vdr".into(), "vdr".into()))
        );
        assert!(is_vdr("fuse.vdr", "vdr"));
        assert!(!is_vdr("fuse.sshfs", "host:/"));
    }

    #[test]
    fn a_path_that_is_not_a_mount_point_is_not_found() {
        assert_eq!(find_mount(MOUNTINFO, Path::new("/tmp")), None);
        assert_eq!(find_mount(MOUNTINFO, Path::new("/tmp/a")), None);
    }
}
