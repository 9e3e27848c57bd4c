//! Timeline tests: real Debian 6.1 cloud-kernel consoles captured under
//! qemu-system-x86_64 (`-M microvm,acpi=on -cpu max`, the test initramfs of
//! tests/guest_kernel.rs), synthetic systemd/dracut excerpts, and garbage.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

const INITRAMFS_OK: &str = include_str!("testdata/debian-6.1-initramfs-ok.console");
const INITRAMFS_ALERT: &str = include_str!("testdata/debian-6.1-initramfs-alert.console");
const NO_INITRD_PANIC: &str = include_str!("testdata/debian-6.1-no-initrd-panic.console");

/// Console lines 10 ms apart.
fn console(text: &str) -> Vec<ConsoleLine> {
    text.lines()
        .zip(0u64..)
        .map(|(text, i)| ConsoleLine {
            at: Duration::from_millis(i * 10),
            text: text.to_string(),
        })
        .collect()
}

fn stages(timeline: &Timeline) -> Vec<Stage> {
    timeline.stages.iter().map(|m| m.stage).collect()
}

fn kinds(timeline: &Timeline) -> Vec<ProblemKind> {
    timeline.problems.iter().map(|p| p.kind).collect()
}

fn markers() -> Vec<String> {
    vec!["vdr-test-init reached".to_string()]
}

#[test]
fn initramfs_boot_to_image_init_reaches_userspace() {
    let timeline = parse(&console(INITRAMFS_OK), &markers());

    assert_eq!(
        stages(&timeline),
        [
            Stage::KernelStarted,
            Stage::InitramfsUnpacked,
            Stage::InitramfsInit,
            Stage::DiskFound,
            Stage::RootMounted,
            Stage::Userspace
        ]
    );
    assert_eq!(timeline.furthest, Some(Stage::Userspace));
    assert!(timeline.boot_ok());
    assert_eq!(timeline.panic, None);
    assert!(timeline.problems.is_empty());
}

#[test]
fn stage_lines_are_cleaned_and_timed() {
    let timeline = parse(&console(INITRAMFS_OK), &markers());

    let kernel = &timeline.stages[0];
    // Line 3 of the capture: SeaBIOS text and escape sequences before the printk.
    assert_eq!(kernel.at_ms, 20);
    assert!(kernel.line.starts_with(
        "Probing EDD (edd=off to disable)... o[    0.000000] Linux version 6.1.0-56-cloud-amd64"
    ));
    assert!(!kernel.line.contains('\u{1b}'));
    let disk = timeline
        .stages
        .iter()
        .find(|m| m.stage == Stage::DiskFound)
        .unwrap();
    assert!(disk.line.contains("virtio_blk virtio0: [vda]"));
}

#[test]
fn without_a_marker_the_image_init_powering_off_shows_userspace() {
    let timeline = parse(&console(INITRAMFS_OK), &[]);

    assert_eq!(timeline.furthest, Some(Stage::Userspace));
    let last = timeline.stages.last().unwrap();
    assert!(last.line.contains("reboot: Power down"), "{last:?}");
    assert!(timeline.boot_ok());
}

#[test]
fn without_a_marker_or_a_shutdown_a_switch_root_boot_stops_at_root_mounted() {
    let text: String = INITRAMFS_OK
        .lines()
        .filter(|line| !line.contains("reboot: "))
        .map(|line| format!("{line}\n"))
        .collect();

    let timeline = parse(&console(&text), &[]);

    assert_eq!(timeline.furthest, Some(Stage::RootMounted));
    assert!(!timeline.boot_ok());
}

#[test]
fn a_power_off_from_the_initramfs_is_not_the_image_userspace() {
    let text: String = INITRAMFS_OK
        .lines()
        .take_while(|line| !line.contains("EXT4-fs ("))
        .map(|line| format!("{line}\n"))
        .chain(["[    2.2] reboot: Power down\n".to_string()])
        .collect();

    let timeline = parse(&console(&text), &[]);

    assert_ne!(timeline.furthest, Some(Stage::Userspace));
}

#[test]
fn missing_root_in_initramfs_reports_alert_and_panic() {
    let timeline = parse(&console(INITRAMFS_ALERT), &markers());

    assert_eq!(timeline.furthest, Some(Stage::DiskFound));
    assert_eq!(
        kinds(&timeline),
        [
            ProblemKind::RootWaitTimeout,
            ProblemKind::InitramfsShell,
            ProblemKind::Panic
        ]
    );
    assert_eq!(
        timeline.problems[1].line,
        "ALERT!  /dev/vda9 does not exist.  Dropping to a shell!"
    );
    assert_eq!(
        timeline.panic.as_deref(),
        Some("Attempted to kill init! exitcode=0x00000100")
    );
    assert!(!timeline.boot_ok());
}

#[test]
fn kernel_without_disk_driver_panics_unable_to_mount_root() {
    let timeline = parse(&console(NO_INITRD_PANIC), &markers());

    assert_eq!(stages(&timeline), [Stage::KernelStarted]);
    assert_eq!(
        kinds(&timeline),
        [ProblemKind::RootMountFailed, ProblemKind::Panic]
    );
    assert_eq!(
        timeline.panic.as_deref(),
        Some("VFS: Unable to mount root fs on unknown-block(0,0)")
    );
    assert!(!timeline.boot_ok());
}

/// Shaped after a Debian 12 genericcloud boot without an initramfs (synthetic).
const SYSTEMD_NO_INITRAMFS: &str = "\
[    0.000000] Linux version 6.1.0-13-cloud-amd64 (debian-kernel@lists.debian.org)
[    1.020000] virtio_blk virtio0: [vda] 4194304 512-byte logical blocks (2.15 GB/2.00 GiB)
[    1.300000] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.
[    1.301000] VFS: Mounted root (ext4 filesystem) readonly on device 254:1.
[    1.320000] Run /sbin/init as init process
[    1.900000] systemd[1]: systemd 252.17-1~deb12u1 running in system mode
\u{1b}[1;32mWelcome to \u{1b}[0mDebian GNU/Linux 12 (bookworm)\u{1b}[0m!
[  OK  ] Reached target multi-user.target - Multi-User System.
Debian GNU/Linux 12 localhost ttyS0

localhost login:";

#[test]
fn systemd_boot_without_initramfs_reaches_login_prompt() {
    let timeline = parse(&console(SYSTEMD_NO_INITRAMFS), &[]);

    assert_eq!(
        stages(&timeline),
        [
            Stage::KernelStarted,
            Stage::DiskFound,
            Stage::RootMounted,
            Stage::InitStarted,
            Stage::Userspace,
            Stage::LoginPrompt
        ]
    );
    assert!(timeline.boot_ok());
}

/// Shaped after a dracut (systemd-in-initrd) boot of a RHEL-like image (synthetic).
const DRACUT: &str = "\
[    0.000000] Linux version 5.14.0-362.el9.x86_64
[    0.900000] Trying to unpack rootfs image as initramfs...
[    1.500000] Run /init as init process
[    1.700000] systemd[1]: systemd 252-18.el9 running in system mode
Welcome to CentOS Stream 9 dracut-057-44.git20230822.el9 (Initramfs)!
[    2.100000] virtio_blk virtio0: [vda] 20971520 512-byte logical blocks
[    3.000000] XFS (vda4): Ending clean mount
[    3.200000] systemd[1]: Switching root.
[    3.900000] systemd[1]: systemd 252-18.el9 running in system mode
Welcome to CentOS Stream 9!";

#[test]
fn systemd_inside_the_initramfs_is_not_the_image_userspace() {
    let timeline = parse(&console(DRACUT), &[]);

    let userspace = timeline
        .stages
        .iter()
        .find(|m| m.stage == Stage::Userspace)
        .unwrap();
    assert_eq!(userspace.at_ms, 80);
    assert_eq!(timeline.furthest, Some(Stage::Userspace));
}

#[test]
fn emergency_mode_is_a_problem_even_after_userspace() {
    let text = "[    1.0] Run /sbin/init as init process\n\
                systemd[1]: Started x.\n\
                You are in emergency mode. After logging in, type \"journalctl -xb\"";
    let timeline = parse(&console(text), &[]);

    assert_eq!(kinds(&timeline), [ProblemKind::EmergencyMode]);
    assert!(!timeline.boot_ok());
}

#[test]
fn parser_says_when_userspace_is_reached() {
    let mut parser = Parser::new(markers());
    let lines = console(INITRAMFS_OK);
    let first = lines
        .iter()
        .position(|l| {
            parser.feed(l);
            parser.reached_userspace()
        })
        .unwrap();

    assert_eq!(lines[first].text, "vdr-test-init reached");
}

#[test]
fn garbage_console_gives_no_stage_and_no_problem() {
    let text =
        "\u{0}\u{1}\u{7f}\u{1b}[\u{1b}\n\u{fffd}\u{fffd}Linux\nversion\nRun as init process\n";
    let timeline = parse(&console(text), &[String::new()]);

    assert_eq!(timeline, Timeline::default());
    assert!(!timeline.boot_ok());
}

#[test]
fn long_lines_are_cut() {
    let long = format!("Kernel panic - not syncing: {}", "x".repeat(100_000));
    let timeline = parse(&console(&long), &[]);

    assert_eq!(timeline.problems[0].line.chars().count(), MAX_LINE_CHARS);
}

#[test]
fn escape_sequences_and_controls_are_removed() {
    assert_eq!(
        clean_line("\u{1b}[0;1;31mFAILED\u{1b}[0m\tx\r\u{7}"),
        "FAILED x"
    );
    assert_eq!(clean_line("\u{1b}cok\u{1b}"), "ok");
}

proptest! {
    #[test]
    fn any_console_text_parses_without_panicking(lines in proptest::collection::vec(".{0,200}", 0..50)) {
        let console: Vec<ConsoleLine> = lines
            .into_iter()
            .map(|text| ConsoleLine { at: Duration::from_secs(1), text })
            .collect();
        let timeline = parse(&console, &markers());
        prop_assert!(timeline.stages.len() <= 8);
        prop_assert!(timeline.stages.iter().all(|m| m.line.chars().count() <= MAX_LINE_CHARS));
    }
}

#[test]
fn a_rescue_shell_or_a_login_prompt_leaves_nothing_to_wait_for() {
    let mut parser = Parser::new(Vec::new());
    for line in console(INITRAMFS_ALERT) {
        let alert = line.text.contains("Dropping to a shell");
        let before = parser.nothing_more_to_wait_for();
        parser.feed(&line);
        if alert {
            assert!(!before);
            assert!(parser.nothing_more_to_wait_for());
            break;
        }
    }
    assert!(parser.nothing_more_to_wait_for());

    let mut parser = Parser::new(Vec::new());
    for line in console(INITRAMFS_OK) {
        parser.feed(&line);
    }
    assert!(!parser.nothing_more_to_wait_for(), "userspace alone: wait");
    parser.feed(&console("debian login: ")[0]);
    assert!(parser.nothing_more_to_wait_for());
}
