//! Serving a tree over FUSE: the mount options, the worker threads, and a clean unmount
//! on SIGINT/SIGTERM/SIGHUP.

use std::io;
use std::path::Path;
use std::time::Duration;

use fuser::{Config, MountOption, Session};

use crate::fs::{FillUnreadable, ReadOnlyFs};
use crate::mountpoint;
use crate::tree::Tree;

/// How to serve a mount.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub fill: FillUnreadable,
    /// FUSE worker threads.
    pub threads: usize,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            fill: FillUnreadable::Error,
            threads: 4,
        }
    }
}

/// Why serving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A signal (its number) arrived and the file system was unmounted.
    Signal(i32),
    /// Someone else unmounted it (`vdr umount`, `fusermount3 -u`, `umount`).
    Unmounted,
}

/// Signals that end a mount cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Mounts `tree` read-only on `mount_point` and serves it until SIGINT/SIGTERM/SIGHUP
/// (then unmounts) or until it is unmounted from outside. `on_mounted` runs once the
/// kernel has the mount. A first signal while the mount is busy reports why and keeps
/// serving; a second one detaches it lazily.
pub fn serve(
    tree: Tree,
    mount_point: &Path,
    options: &ServeOptions,
    on_mounted: impl FnOnce(),
) -> io::Result<Ended> {
    let signals = block_stop_signals()?;
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = ReadOnlyFs::new(tree, options.fill, uid, gid);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(mountpoint::FS_NAME.into()),
        MountOption::Subtype("vdr".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = options.threads > 1;
    let session = Session::new(fs, mount_point, &config)?;
    on_mounted();
    let background = session.spawn()?;
    let mut asked = 0;
    loop {
        if background.guard.is_finished() {
            let _ = background.join();
            return Ok(Ended::Unmounted);
        }
        let Some(signal) = wait_for_signal(&signals, Duration::from_millis(200)) else {
            continue;
        };
        asked += 1;
        match mountpoint::unmount(mount_point, asked > 1) {
            Ok(()) => {
                let _ = background.join();
                return Ok(Ended::Signal(signal));
            }
            Err(e) => eprintln!(
                "vdr mount: cannot unmount {}: {e}; still serving (send the signal again \
                 to detach it lazily)",
                mount_point.display()
            ),
        }
    }
}

/// Blocks the stop signals in this thread (and so in the FUSE threads it starts) so
/// they are taken by [`wait_for_signal`] instead of killing the process mid-mount.
fn block_stop_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// The next blocked stop signal, or `None` after `timeout`.
fn wait_for_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` was initialised by block_stop_signals; a null siginfo pointer is
    // allowed; `ts` lives across the call.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (signal > 0).then_some(signal)
}
