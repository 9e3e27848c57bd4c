//! Appliance mode: boots a Linux kernel with an initramfs vdr builds (static busybox and
//! e2fsck, the virtio and filesystem modules) that checks every partition read-only and
//! prints a JSON report on the serial console, which vdr parses into an
//! [`ApplianceReport`]. The same initramfs and command line run on either backend.
//!
//! - [`kernel`]: which kernel boots, and where its modules are.
//! - [`plan`]: the partitions and filesystems, found on the host (the guest has no blkid).
//! - [`modules`]: modules.dep resolution into load order.
//! - [`cpio`], [`initramfs`]: the archive and what goes in it.
//! - [`guest_output`]: reading the guest's report off the console, robustly.
//! - [`etc_files`]: os-release and fstab, fstab devices resolved against the plan.
//! - [`report`]: the report and its verdict.
//!
//! Not for: repairing anything. The disk is attached read-only (or behind a throw-away
//! overlay), e2fsck runs with `-n`, and ext4 and XFS are mounted without journal replay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vdr_formats::VirtualDisk;

use crate::backend::{BackendError, BootSpec, DiskAccess, LinuxBackend};

pub mod cpio;
pub mod etc_files;
pub mod guest_output;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod plan;
pub mod report;

pub use kernel::KernelInfo;
pub use report::{ApplianceReport, FsckReport, PartitionReport, Stage};

/// The appliance's kernel command line, the same for both backends: the console on the
/// 16550, kernel messages kept off it (they would interleave with the report), a panic
/// resets at once, no PCI probing (the disk is virtio-mmio, described in the DSDT), and
/// the initramfs's /init runs as PID 1.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 quiet loglevel=1 panic=-1 reboot=k pci=off rdinit=/init";

/// How appliance mode runs.
#[derive(Clone, Debug)]
pub struct ApplianceOptions {
    /// `--kernel`: else /boot, else the unpacked package ([`kernel::find_kernel`]).
    pub kernel: Option<PathBuf>,
    /// Static busybox; else /usr/bin/busybox or /bin/busybox.
    pub busybox: Option<PathBuf>,
    /// Static e2fsck; else /usr/sbin/e2fsck.static or /sbin/e2fsck.static.
    pub e2fsck: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The guest is stopped after this long (TCG on a busy host is slow).
    pub timeout: Duration,
    pub access: DiskAccess,
    /// Appended to [`BASE_CMDLINE`] (after the TSC hint).
    pub extra_cmdline: Option<String>,
}

impl Default for ApplianceOptions {
    fn default() -> ApplianceOptions {
        ApplianceOptions {
            kernel: None,
            busybox: None,
            e2fsck: None,
            memory_mib: 512,
            vcpus: 1,
            timeout: Duration::from_secs(300),
            access: DiskAccess::ReadOnly,
            extra_cmdline: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no kernel for the appliance; tried: {}. Pass --kernel PATH or run \
         scripts/guest-kernel to unpack Debian's cloud kernel",
        tried.join(", ")
    )]
    KernelNotFound { tried: Vec<String> },
    #[error(
        "kernel {} (version {version}) has no modules: none of {} has modules.dep",
        kernel.display(),
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ModulesMissing {
        kernel: PathBuf,
        version: String,
        tried: Vec<PathBuf>,
    },
    #[error("kernel {}: cannot tell its version: {why}", kernel.display())]
    KernelVersion { kernel: PathBuf, why: String },
    #[error("kernel module {module} is neither built in nor in {}/modules.dep", modules_dir.display())]
    ModuleMissing {
        module: String,
        modules_dir: PathBuf,
    },
    #[error(
        "{tool} not found (tried {}); Debian: apt-get install {package}",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ToolMissing {
        tool: String,
        tried: Vec<PathBuf>,
        package: String,
    },
    #[error("{} cannot go in the initramfs: {why}", path.display())]
    NotStatic { path: PathBuf, why: String },
    #[error("reading {what} at {}: {source}", path.display())]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the disk's partition table: {0}")]
    Disk(vdr_formats::Error),
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Checks `disk` in the appliance on `backend`. A guest that fails, hangs or prints no
/// report still gives a report (with `usable: false` and the reason in `problems`);
/// errors are for what stops the appliance from starting at all.
pub fn run(
    disk: Arc<dyn VirtualDisk>,
    backend: &dyn LinuxBackend,
    options: &ApplianceOptions,
) -> Result<ApplianceReport, Error> {
    let kernel = kernel::find_kernel(options.kernel.as_deref())?;
    let kernel_bytes = std::fs::read(&kernel.path).map_err(|source| Error::Read {
        what: "the kernel".into(),
        path: kernel.path.clone(),
        source,
    })?;
    let plan = plan::Plan::of_disk(disk.as_ref())?;
    let index = modules::ModuleIndex::load(&kernel.modules_dir)?;
    let mut module_files = index.resolve(modules::DISK_MODULES)?;
    // a kernel without a filesystem's driver still checks the other filesystems
    let mut missing_drivers = Vec::new();
    for fs in plan.filesystems() {
        match index.resolve(modules::filesystem_modules(fs)) {
            Ok(files) => {
                for file in files {
                    if !module_files.contains(&file) {
                        module_files.push(file);
                    }
                }
            }
            Err(err) => missing_drivers.push(format!("no {fs} driver for the appliance: {err}")),
        }
    }
    let busybox = initramfs::find_tool(
        "busybox",
        options.busybox.as_deref(),
        initramfs::BUSYBOX_CANDIDATES,
        "busybox-static",
    )?;
    let e2fsck = initramfs::find_tool(
        "e2fsck",
        options.e2fsck.as_deref(),
        initramfs::E2FSCK_CANDIDATES,
        "e2fsck-static",
    )?;
    let initrd = initramfs::build(&initramfs::Contents {
        busybox: &busybox,
        e2fsck: &e2fsck,
        modules: &module_files,
        plan: &plan.to_guest_text(),
    })?;
    let spec = BootSpec {
        kernel: kernel_bytes,
        initrd: Some(initrd),
        cmdline: cmdline(options.extra_cmdline.as_deref()),
        memory_mib: options.memory_mib,
        vcpus: options.vcpus,
        timeout: options.timeout,
        disk,
        access: options.access,
        // the guest powers off after its report
        stop_when: None,
    };
    let outcome = backend.boot(&spec)?;
    let mut report = report::build(kernel, &plan, &outcome);
    report.problems.extend(missing_drivers);
    Ok(report)
}

/// [`BASE_CMDLINE`], the TSC hint ([`crate::qemu::tsc_cmdline`]) and `extra`.
pub fn cmdline(extra: Option<&str>) -> String {
    let mut line = BASE_CMDLINE.to_string();
    for part in [
        crate::qemu::tsc_cmdline().as_str(),
        extra.unwrap_or_default(),
    ] {
        if !part.trim().is_empty() {
            line.push(' ');
            line.push_str(part.trim());
        }
    }
    line
}
