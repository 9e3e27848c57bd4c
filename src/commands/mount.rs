//! `vdr mount` and `vdr umount`: a read-only FUSE view of an image or a datastore.
//!
//! Without `--foreground`, `vdr mount` starts itself again with `--foreground` in a new
//! process group, relays its error output until the mount appears, prints the mount point
//! and returns; the served process's later messages are dropped (use `--foreground` to
//! see them).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use vdr_formats::source::FileSource;
use vdr_formats::{detect_format, vmfs, Format, OpenOptions, ParseMode};
use vdr_mount::mountpoint::{self, State};
use vdr_mount::{fs_image, fs_vmfs, Ended, FillUnreadable, ServeOptions};

use super::datastore::open_volume;
use super::{open, OpenRequest, Status};
use crate::cli::{FillArg, MountArgs, UmountArgs};

/// Set in the environment of the served process started by a background `vdr mount`.
const DAEMON_ENV: &str = "VDR_MOUNT_DAEMON";
/// How long a background `vdr mount` waits for the mount to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(300);

/// `vdr mount SOURCE MOUNTPOINT`.
pub fn run(args: &MountArgs) -> Result<Status> {
    check_mount_point(&args.mountpoint)?;
    if !args.foreground {
        return run_in_background(args);
    }
    let tree = if wants_datastore(args) {
        let volume = open_volume(&args.source, &args.extent, args.open.salvage)?;
        let options = OpenOptions {
            mode: mode(args.open.salvage),
            allow_escaping_extents: args.open.allow_escaping_extents,
            ..OpenOptions::default()
        };
        let lost = if args.deleted {
            Some(
                vdr_recover::find_lost(&volume, &mut |_, _| {}).with_context(|| {
                    format!("{}: looking for lost files", args.source.display())
                })?,
            )
        } else {
            None
        };
        fs_vmfs::vmfs_tree(&volume, &options, lost.as_ref())
            .map_err(|e| anyhow!("{}: {e}", args.source.display()))?
    } else {
        if args.deleted {
            bail!(
                "{}: --deleted shows the lost files of a VMFS datastore; this is a disk image",
                args.source.display()
            );
        }
        let request = OpenRequest {
            salvage: args.open.salvage,
            allow_escaping_extents: args.open.allow_escaping_extents,
            ..OpenRequest::default()
        };
        let chain = open(&args.source, &request)?;
        let time = std::fs::metadata(super::host_file(&args.source))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        fs_image::image_tree(chain, &args.source.display().to_string(), time)
    };
    let options = ServeOptions {
        fill: match args.fill_unreadable {
            Some(FillArg::Zeros) => FillUnreadable::Zeros,
            None => FillUnreadable::Error,
        },
        threads: args.threads.max(1),
    };
    let daemon = std::env::var_os(DAEMON_ENV).is_some();
    let shown = args.mountpoint.display();
    let ended = vdr_mount::serve(tree, &args.mountpoint, &options, || {
        if daemon {
            detach_stderr();
        } else {
            eprintln!(
                "vdr: mounted on {shown} (read-only); Ctrl-C or `vdr umount {shown}` ends it"
            );
        }
    })
    .with_context(|| format!("{shown}: cannot mount"))?;
    if !daemon {
        match ended {
            Ended::Signal(_) => eprintln!("vdr: {shown} unmounted"),
            Ended::Unmounted => eprintln!("vdr: {shown} was unmounted"),
        }
    }
    Ok(Status::Ok)
}

/// `vdr umount MOUNTPOINT`.
pub fn run_umount(args: &UmountArgs) -> Result<Status> {
    let shown = args.mountpoint.display();
    match mountpoint::state(&args.mountpoint).with_context(|| format!("{shown}"))? {
        State::NotMounted => bail!("{shown}: not mounted"),
        State::Mounted { fs_type, source } | State::Stale { fs_type, source }
            if !mountpoint::is_vdr(&fs_type, &source) =>
        {
            bail!("{shown}: a {fs_type} mount of {source}, not vdr's; not unmounted")
        }
        _ => {}
    }
    let path = mountpoint::absolute(&args.mountpoint)?;
    mountpoint::unmount(&path, args.lazy).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EBUSY) {
            " (still in use: close the files or loop devices on it, or use --lazy)"
        } else {
            ""
        };
        anyhow!("{shown}: cannot unmount: {e}{hint}")
    })?;
    Ok(Status::Ok)
}

/// Refuses a mount point that is not a usable empty place for a mount: explains a
/// stale FUSE mount left by a killed process.
fn check_mount_point(path: &Path) -> Result<()> {
    let shown = path.display();
    match mountpoint::state(path).with_context(|| format!("{shown}"))? {
        State::Stale { fs_type, .. } => bail!(
            "{shown}: a dead {fs_type} mount (Transport endpoint is not connected): the \
             process that served it was killed. Run `vdr umount {shown}` (add --lazy if it \
             is busy), then mount again"
        ),
        State::Mounted { fs_type, source } => {
            bail!("{shown}: already a mount point ({fs_type} of {source})")
        }
        State::NotMounted => {}
    }
    let meta = std::fs::metadata(path).with_context(|| format!("{shown}"))?;
    if !meta.is_dir() {
        bail!("{shown}: not a directory");
    }
    Ok(())
}

/// Whether SOURCE is a datastore: asked for (`--vmfs`, `--extent`), or a raw-looking
/// file whose partition table or LVM header says VMFS (with `--salvage`, also a
/// signature found by the scan).
fn wants_datastore(args: &MountArgs) -> bool {
    if args.vmfs || !args.extent.is_empty() {
        return true;
    }
    let Ok(source) = FileSource::open(&args.source) else {
        return false;
    };
    if !matches!(detect_format(&source), Ok(Format::Raw)) {
        return false;
    }
    vmfs::looks_like_vmfs(&source)
        || (args.open.salvage && !vmfs::find_partitions(&source).is_empty())
}

fn mode(salvage: bool) -> ParseMode {
    if salvage {
        ParseMode::Salvage
    } else {
        ParseMode::Strict
    }
}

/// Starts `vdr mount ... --foreground` in its own process group and waits until the
/// mount appears (success) or the process ends (its error output is relayed).
fn run_in_background(args: &MountArgs) -> Result<Status> {
    let exe = std::env::current_exe().context("cannot find the vdr executable")?;
    let mut child = Process::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("cannot start the mount process")?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let errors = errors.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            if let Ok(mut e) = errors.lock() {
                *e = buf;
            }
        });
    }
    let start = Instant::now();
    let shown = args.mountpoint.display();
    loop {
        if let Some(status) = child.try_wait()? {
            std::thread::sleep(Duration::from_millis(50));
            let text = errors.lock().map(|e| e.clone()).unwrap_or_default();
            eprint!("{}", String::from_utf8_lossy(&text));
            bail!("{shown}: the mount process ended ({status})");
        }
        if let State::Mounted { fs_type, source } = mountpoint::state(&args.mountpoint)? {
            if mountpoint::is_vdr(&fs_type, &source) {
                println!("{shown}");
                eprintln!(
                    "vdr: mounted on {shown} (read-only, process {}); `vdr umount {shown}` ends it",
                    child.id()
                );
                return Ok(Status::Ok);
            }
        }
        if start.elapsed() > MOUNT_TIMEOUT {
            let _ = child.kill();
            bail!("{shown}: the mount did not appear within {MOUNT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Points stderr at /dev/null: the background `vdr mount` that relayed it has returned.
fn detach_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open; dup2 replaces fd 2 atomically and `null`
        // is closed when dropped, leaving fd 2 pointing at /dev/null.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO);
        }
    }
}
