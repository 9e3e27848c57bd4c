//! Guest-kernel mode: boots the image's own kernel and initrd, found in its /boot, with the
//! image's own command line, and reports how far the boot got.
//!
//! The disk is attached as the guest's virtio-blk `vda` with [`DiskAccess::Overlay`]: an
//! init that remounts its root read-write (every systemd boot does) gets its writes kept in
//! memory, never in the evidence. The answer is a [`GuestKernelReport`]: which kernel, which
//! command line, the [`timeline`] stages seen with their times, and the failures the
//! console shows (a panic, a missing root device, an initramfs shell).
//!
//! Kernels are searched on ext2/3/4 (ext4-view) and XFS ([`vdr_formats::xfs`]) volumes.
//! Not for: images whose /boot is Btrfs (vdr has no reader for it; the error says so), or
//! LVM and LUKS volumes (not opened; the "looked at" list names them).

mod boot_entry;
mod cmdline;
mod locate;
mod reader;
pub mod timeline;
mod volumes;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use vdr_formats::VirtualDisk;

use crate::backend::{
    BackendError, BackendKind, BootSpec, ConsoleLine, DiskAccess, GuestExit, LinuxBackend, StopWhen,
};

pub use cmdline::{boot_cmdline, first_grub_linux, BootCmdline, GrubLinux, MAX_CMDLINE, VDR_ARGS};
pub use locate::{BootFile, Limits};
pub use reader::{PartitionReader, ReadError};
pub use timeline::{Problem, ProblemKind, Stage, StageMark, Timeline};
pub use volumes::FsError;

/// How a guest-kernel boot is run.
#[derive(Clone, Debug)]
pub struct GuestKernelOptions {
    /// The boot is stopped after this long (TCG boots of a systemd image take tens of
    /// seconds).
    pub timeout: Duration,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Appended to the command line after vdr's own arguments and the host's TSC rate.
    pub extra_cmdline: String,
    /// Substrings of console lines that mean the image's own init runs (for images whose
    /// init is neither systemd, sysvinit nor OpenRC).
    pub userspace_markers: Vec<String>,
    /// How many of the last console lines the report keeps.
    pub console_tail_lines: usize,
    pub limits: Limits,
}

impl Default for GuestKernelOptions {
    fn default() -> Self {
        GuestKernelOptions {
            timeout: Duration::from_secs(60),
            memory_mib: 512,
            vcpus: 1,
            extra_cmdline: String::new(),
            userspace_markers: Vec::new(),
            console_tail_lines: 40,
            limits: Limits {
                max_kernel_bytes: 128 << 20,
                max_initrd_bytes: 512 << 20,
            },
        }
    }
}

/// What a guest-kernel boot showed.
#[derive(Clone, Debug, Serialize)]
pub struct GuestKernelReport {
    pub kernel: BootFile,
    pub initrd: Option<BootFile>,
    /// Why this kernel was chosen among those found.
    pub kernel_chosen_because: String,
    /// The image's own kernel arguments, and where they came from.
    pub image_cmdline: String,
    pub image_cmdline_source: String,
    /// What was booted: the image's arguments less [`GuestKernelReport::cmdline_dropped`],
    /// plus vdr's console/panic arguments, the host TSC rate and the caller's extras.
    pub cmdline: String,
    pub cmdline_dropped: Vec<String>,
    /// Arguments vdr rewrote for the VM ("root=/dev/sda1 -> root=/dev/vda1").
    pub cmdline_renamed: Vec<String>,
    pub backend: BackendKind,
    pub stages: Vec<StageMark>,
    pub furthest: Option<Stage>,
    /// Init on the root file system ran and the console shows no failure.
    pub boot_ok: bool,
    pub panic: Option<String>,
    pub problems: Vec<Problem>,
    /// Notes from the search (partition-table damage, unreadable directories, no initrd).
    pub findings: Vec<String>,
    pub exit: GuestExit,
    pub elapsed_ms: u64,
    pub console_tail: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the partition table: {0}")]
    PartitionTable(#[source] vdr_formats::Error),
    #[error(
        "no Linux kernel found in /boot of any ext2/3/4 or XFS partition (looked at: {})",
        if looked_at.is_empty() { "nothing".to_string() } else { looked_at.join("; ") }
    )]
    NoKernel { looked_at: Vec<String> },
    #[error("{what} {path} on {volume} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        what: &'static str,
        path: String,
        volume: String,
        len: u64,
        cap: u64,
    },
    #[error("reading {path} on {volume}: {source}")]
    Read {
        path: String,
        volume: String,
        source: FsError,
    },
    #[error("the boot command line is {len} bytes; the kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A hint when the boot failed looking for its root before the kernel ever saw the disk:
/// the machine has no PCI, so an initramfs built for a PCI cloud (initramfs-tools
/// `MODULES=dep`, dracut host-only) may lack virtio_mmio or virtio_blk.
fn disk_never_appeared(timeline: &Timeline) -> Option<String> {
    let disk_seen = timeline.stages.iter().any(|m| m.stage == Stage::DiskFound);
    let root_missing = timeline.problems.iter().any(|p| {
        matches!(
            p.kind,
            ProblemKind::RootWaitTimeout
                | ProblemKind::InitramfsShell
                | ProblemKind::RootMountFailed
        )
    });
    (!disk_seen && root_missing).then(|| {
        "the kernel never reported the virtio disk (no \"virtio_blk virtio0: [vda]\" line): \
         the image's initrd may lack the virtio_mmio or virtio_blk module (the VM has no PCI)"
            .to_string()
    })
}

/// Finds the image's kernel, boots it on `backend` and reports how far it got.
pub fn run(
    disk: Arc<dyn VirtualDisk>,
    backend: &dyn LinuxBackend,
    options: &GuestKernelOptions,
) -> Result<GuestKernelReport, Error> {
    let volumes = volumes::open_volumes(&disk)?;
    let found = locate::find_kernel(&volumes, options.limits)?;
    // The TSC rate on the command line spares the guest a PIT calibration that fails on a
    // busy TCG host and stalls the boot (see crate::qemu::tsc_cmdline).
    let extra = format!("{} {}", crate::qemu::tsc_cmdline(), options.extra_cmdline);
    let cmdline = boot_cmdline(&found.image_cmdline, &extra);
    // COMMAND_LINE_SIZE counts the terminating NUL.
    if cmdline.line.len() >= MAX_CMDLINE {
        return Err(Error::CmdlineTooLong {
            len: cmdline.line.len(),
            max: MAX_CMDLINE - 1,
        });
    }
    let spec = BootSpec {
        kernel: found.kernel_image,
        initrd: found.initrd_image,
        cmdline: cmdline.line.clone(),
        memory_mib: options.memory_mib,
        vcpus: options.vcpus,
        timeout: options.timeout,
        disk,
        access: DiskAccess::Overlay,
        stop_when: Some(stop_when(options.userspace_markers.clone())),
    };
    let outcome = backend.boot(&spec)?;
    let timeline = timeline::parse(&outcome.console, &options.userspace_markers);
    let boot_ok = timeline.boot_ok();
    let tail_from = outcome
        .console
        .len()
        .saturating_sub(options.console_tail_lines);
    let console_tail = outcome
        .console
        .iter()
        .skip(tail_from)
        .map(|l| timeline::clean_line(&l.text))
        .collect();
    let mut findings = volumes.findings;
    findings.extend(found.notes);
    findings.extend(disk_never_appeared(&timeline));
    Ok(GuestKernelReport {
        kernel: found.kernel,
        initrd: found.initrd,
        kernel_chosen_because: found.chosen_because,
        image_cmdline: found.image_cmdline,
        image_cmdline_source: found.cmdline_source,
        cmdline: cmdline.line,
        cmdline_dropped: cmdline.dropped,
        cmdline_renamed: cmdline.renamed,
        backend: outcome.backend,
        stages: timeline.stages,
        furthest: timeline.furthest,
        boot_ok,
        panic: timeline.panic,
        problems: timeline.problems,
        findings,
        exit: outcome.exit,
        elapsed_ms: u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX),
        console_tail,
    })
}

/// Ends the boot once waiting tells nothing more: a login prompt (the boot is done), or a
/// rescue shell (initramfs-tools' "Dropping to a shell", systemd's emergency mode) that
/// would wait for input until the timeout. The grace keeps what the guest prints right
/// after (a panic when the shell cannot start).
fn stop_when(userspace_markers: Vec<String>) -> StopWhen {
    const GRACE: Duration = Duration::from_secs(2);
    let parser = Mutex::new(timeline::Parser::new(userspace_markers));
    Arc::new(move |line: &ConsoleLine| {
        let mut parser = parser.lock().unwrap_or_else(|e| e.into_inner());
        parser.feed(line);
        parser.nothing_more_to_wait_for().then_some(GRACE)
    })
}
