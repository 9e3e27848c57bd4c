//! The boot timeline: how far a Linux boot got, read from its serial console.
//!
//! A pure function of the console lines. The markers are the messages Linux 6.1 and the
//! usual initramfs generators print (checked against captured consoles in `testdata/`):
//! `Linux version` (start_kernel), `Trying to unpack rootfs image as initramfs` /
//! `Freeing initrd memory` (init/initramfs.c; `Unpacking initramfs` in kernels before
//! 5.x), `virtio_blk virtio0: [vda]` (drivers/block/virtio_blk.c), `EXT4-fs (vda1): mounted
//! filesystem` / `VFS: Mounted root` (fs/ext4/super.c, init/do_mounts.c), `Run /init as
//! init process` (the initramfs) versus `Run /sbin/init as init process` (the root fs's
//! init, init/main.c), systemd's `Welcome to` and `systemd[1]:` lines, getty's `login:`.
//! Failures: `Kernel panic - not syncing:` (kernel/panic.c), `VFS: Unable to mount root fs`,
//! initramfs-tools' `Gave up waiting for root file system device` and `ALERT! ... does not
//! exist. Dropping to a shell!`, dracut's initqueue timeout and systemd's emergency mode.

use serde::Serialize;

use crate::backend::ConsoleLine;

/// How far a boot got, in the order a boot passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    KernelStarted,
    InitramfsUnpacked,
    /// The kernel ran the initramfs's `/init`.
    InitramfsInit,
    DiskFound,
    RootMounted,
    /// The kernel ran the root file system's init (no initramfs, or one that ended in
    /// `switch_root`, which the kernel does not announce: then [`Stage::Userspace`] shows it).
    InitStarted,
    Userspace,
    LoginPrompt,
}

/// A failure the console shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    Panic,
    InitramfsUnpackFailed,
    RootMountFailed,
    RootWaitTimeout,
    InitramfsShell,
    EmergencyMode,
}

/// When a stage was first seen, and the line that showed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageMark {
    pub stage: Stage,
    /// Milliseconds since the VM started (host clock).
    pub at_ms: u64,
    pub line: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub at_ms: u64,
    pub line: String,
}

/// What the console says about a boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// Each stage once, at its first sighting, in console order.
    pub stages: Vec<StageMark>,
    pub furthest: Option<Stage>,
    /// The text after `Kernel panic - not syncing: ` of the first panic.
    pub panic: Option<String>,
    pub problems: Vec<Problem>,
}

impl Timeline {
    /// Init on the root file system ran and nothing failed.
    pub fn boot_ok(&self) -> bool {
        self.furthest.is_some_and(|s| s >= Stage::InitStarted) && self.problems.is_empty()
    }
}

/// Longest line kept in a report, in characters (a guest can print anything).
const MAX_LINE_CHARS: usize = 400;

const PANIC_MARKER: &str = "Kernel panic - not syncing: ";

/// Reads the timeline out of `console`. `userspace_markers` are extra substrings that
/// mean the image's own init is running (a line its init prints).
pub fn parse(console: &[ConsoleLine], userspace_markers: &[String]) -> Timeline {
    let mut parser = Parser::new(userspace_markers.to_vec());
    for line in console {
        parser.feed(line);
    }
    parser.finish()
}

/// Builds a [`Timeline`] line by line, so a caller watching a live console can ask
/// [`Parser::reached_userspace`] after each line.
pub struct Parser {
    userspace_markers: Vec<String>,
    timeline: Timeline,
}

impl Parser {
    pub fn new(userspace_markers: Vec<String>) -> Self {
        Parser {
            userspace_markers,
            timeline: Timeline::default(),
        }
    }

    pub fn feed(&mut self, line: &ConsoleLine) {
        let text = clean_line(&line.text);
        let at_ms = u64::try_from(line.at.as_millis()).unwrap_or(u64::MAX);
        if let Some(stage) = self.stage_of(&text) {
            if !self.seen(stage) {
                self.timeline.furthest = self.timeline.furthest.max(Some(stage));
                self.timeline.stages.push(StageMark {
                    stage,
                    at_ms,
                    line: text.clone(),
                });
            }
        }
        if let Some(kind) = problem_of(&text) {
            if kind == ProblemKind::Panic && self.timeline.panic.is_none() {
                self.timeline.panic = text
                    .split_once(PANIC_MARKER)
                    .map(|(_, why)| why.trim().to_string());
            }
            self.timeline.problems.push(Problem {
                kind,
                at_ms,
                line: text,
            });
        }
    }

    /// The boot reached userspace or a login prompt: waiting longer tells nothing more.
    pub fn reached_userspace(&self) -> bool {
        self.timeline
            .furthest
            .is_some_and(|s| s >= Stage::Userspace)
    }

    /// The boot reached a login prompt, or a rescue shell that waits for input: waiting
    /// longer shows nothing new.
    pub fn nothing_more_to_wait_for(&self) -> bool {
        self.timeline.furthest == Some(Stage::LoginPrompt)
            || self.timeline.problems.iter().any(|p| {
                matches!(
                    p.kind,
                    ProblemKind::InitramfsShell | ProblemKind::EmergencyMode
                )
            })
    }

    pub fn finish(self) -> Timeline {
        self.timeline
    }

    fn seen(&self, stage: Stage) -> bool {
        self.timeline.stages.iter().any(|m| m.stage == stage)
    }

    /// Whether lines now come from the initramfs: its /init ran and the root file system
    /// is not mounted yet. systemd inside a dracut initramfs prints `Welcome to` and
    /// `systemd[1]:` lines too; those are not the image's userspace.
    fn in_initramfs(&self) -> bool {
        self.seen(Stage::InitramfsInit) && !self.seen(Stage::RootMounted)
    }

    /// The stage a console line shows, if any.
    fn stage_of(&self, line: &str) -> Option<Stage> {
        let stage =
            kernel_stage_of(line).or_else(|| userspace_stage_of(line, &self.userspace_markers))?;
        if stage >= Stage::Userspace && self.in_initramfs() {
            return None;
        }
        Some(stage)
    }
}

/// The stage a kernel message shows, if any.
fn kernel_stage_of(line: &str) -> Option<Stage> {
    if line.contains("Linux version ") {
        return Some(Stage::KernelStarted);
    }
    if line.contains("Trying to unpack rootfs image as initramfs")
        || line.contains("Unpacking initramfs")
        || line.contains("Freeing initrd memory")
    {
        return Some(Stage::InitramfsUnpacked);
    }
    if let Some(program) = init_program(line) {
        return Some(if program == "/init" {
            Stage::InitramfsInit
        } else {
            Stage::InitStarted
        });
    }
    if line.contains("virtio_blk virtio") && line.contains(": [vd") {
        return Some(Stage::DiskFound);
    }
    if line.contains("VFS: Mounted root")
        || (line.contains("EXT4-fs (") && line.contains("): mounted filesystem"))
        || (line.contains("XFS (") && line.contains("): Ending clean mount"))
    {
        return Some(Stage::RootMounted);
    }
    None
}

/// The stage a line from userspace shows, if any.
fn userspace_stage_of(line: &str, userspace_markers: &[String]) -> Option<Stage> {
    if line.contains("login:") {
        return Some(Stage::LoginPrompt);
    }
    // systemd's last initramfs line; the real init's lines follow it.
    if line.contains("Switching root") {
        return None;
    }
    // kernel/reboot.c prints these only when a process called reboot(2) (a panic with
    // panic=-1 restarts without a word): the image's userspace ran far enough to shut down
    if line.contains("reboot: Power down")
        || line.contains("reboot: Restarting system")
        || line.contains("reboot: System halted")
        || line.contains("Welcome to ")
        || line.contains("systemd[1]: ")
        || line.contains("INIT: version ")
        || line.contains("OpenRC ")
        || userspace_markers
            .iter()
            .any(|m| !m.is_empty() && line.contains(m.as_str()))
    {
        return Some(Stage::Userspace);
    }
    None
}

/// The program in `Run /sbin/init as init process` (init/main.c run_init_process).
fn init_program(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("Run ")?;
    let (program, _) = rest.split_once(" as init process")?;
    Some(program.trim())
}

/// The failure a console line shows, if any.
pub fn problem_of(line: &str) -> Option<ProblemKind> {
    if line.contains(PANIC_MARKER) {
        Some(ProblemKind::Panic)
    } else if line.contains("Initramfs unpacking failed") {
        Some(ProblemKind::InitramfsUnpackFailed)
    } else if line.contains("VFS: Unable to mount root fs")
        || line.contains("VFS: Cannot open root device")
    {
        Some(ProblemKind::RootMountFailed)
    } else if line.contains("Gave up waiting for root")
        || line.contains("dracut-initqueue: timeout")
    {
        Some(ProblemKind::RootWaitTimeout)
    } else if line.contains("ALERT!") && line.contains("Dropping to a shell") {
        Some(ProblemKind::InitramfsShell)
    } else if line.contains("You are in emergency mode") || line.contains("Entering emergency mode")
    {
        Some(ProblemKind::EmergencyMode)
    } else {
        None
    }
}

/// `text` without terminal escape sequences (SeaBIOS and systemd colour their output) and
/// control characters, cut to [`MAX_LINE_CHARS`].
pub fn clean_line(text: &str) -> String {
    let mut out = String::new();
    let mut kept = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if kept >= MAX_LINE_CHARS {
            break;
        }
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            '\t' => {
                out.push(' ');
                kept += 1;
            }
            c if c.is_control() => {}
            c => {
                out.push(c);
                kept += 1;
            }
        }
    }
    out.trim_end().to_string()
}

/// Skips the rest of an escape sequence: CSI (`ESC [ ... final`) or a two-byte `ESC x`.
fn skip_escape(chars: &mut std::str::Chars<'_>) {
    if chars.next() == Some('[') {
        // CSI parameters and intermediates are 0x20..=0x3f; the final byte is 0x40..=0x7e.
        for c in chars.by_ref() {
            if ('\u{40}'..='\u{7e}').contains(&c) {
                break;
            }
        }
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
