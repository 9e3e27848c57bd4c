//! Unit tests of the qemu backend that need no qemu: the command line, the exit
//! classification, the console reader's bounds and the emulator lookup.

use super::console::{ConsoleLog, LineSplitter};
use super::*;
use crate::backend::StopWhen;
use crate::console_lines::{MAX_CONSOLE_BYTES, MAX_LINE_BYTES};

fn line(text: &str) -> ConsoleLine {
    ConsoleLine {
        at: Duration::from_millis(1),
        text: text.to_string(),
    }
}

fn command(access: DiskAccess) -> Vec<String> {
    qemu_args(&QemuCommand {
        kernel: Path::new("/tmp/x/kernel"),
        initrd: Some(Path::new("/tmp/x/initrd")),
        cmdline: "console=ttyS0 quiet",
        memory_mib: 256,
        vcpus: 1,
        access,
        nbd_uri: "nbd+unix:///disk?socket=/tmp/x/nbd.sock",
    })
    .into_iter()
    .map(|a| a.into_string().unwrap())
    .collect()
}

fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).unwrap();
    &args[at + 1]
}

#[test]
fn read_only_access_opens_the_nbd_export_read_only() {
    let args = command(DiskAccess::ReadOnly);
    assert_eq!(
        value_after(&args, "-drive"),
        "file=nbd+unix:///disk?socket=/tmp/x/nbd.sock,format=raw,if=none,id=d0,readonly=on"
    );
    assert_eq!(value_after(&args, "-device"), "virtio-blk-device,drive=d0");
}

#[test]
fn overlay_access_keeps_writes_in_a_qemu_snapshot() {
    let args = command(DiskAccess::Overlay);
    let drive = value_after(&args, "-drive");
    assert!(drive.ends_with(",snapshot=on"), "{drive}");
    assert!(!drive.contains("readonly"), "{drive}");
}

#[test]
fn machine_is_a_headless_acpi_microvm_without_reboot() {
    let args = command(DiskAccess::ReadOnly);
    assert_eq!(value_after(&args, "-M"), "microvm,acpi=on,rtc=on");
    assert_eq!(value_after(&args, "-accel"), "tcg");
    assert_eq!(value_after(&args, "-m"), "256");
    assert_eq!(value_after(&args, "-smp"), "1");
    assert_eq!(value_after(&args, "-serial"), "stdio");
    assert_eq!(value_after(&args, "-display"), "none");
    assert_eq!(value_after(&args, "-kernel"), "/tmp/x/kernel");
    assert_eq!(value_after(&args, "-initrd"), "/tmp/x/initrd");
    assert_eq!(value_after(&args, "-append"), "console=ttyS0 quiet");
    for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing");
    }
    assert!(!args.iter().any(|a| a == "-nographic"));
}

#[test]
fn commas_in_the_socket_path_are_doubled() {
    assert_eq!(escape_option_value("/tmp/a,b"), "/tmp/a,,b");
}

#[test]
fn clean_exit_after_power_down_is_power_off() {
    let console = [line("VDR"), line("[    2.1] reboot: Power down")];
    assert_eq!(
        classify_exit(&console, QemuStatus::Code(0), ""),
        GuestExit::PowerOff
    );
}

#[test]
fn clean_exit_without_a_message_is_power_off() {
    assert_eq!(
        classify_exit(&[line("hello")], QemuStatus::Code(0), ""),
        GuestExit::PowerOff
    );
}

#[test]
fn restarting_system_is_reset() {
    let console = [line("reboot: Restarting system")];
    assert_eq!(
        classify_exit(&console, QemuStatus::Code(0), ""),
        GuestExit::Reset
    );
}

#[test]
fn panic_without_restart_message_is_reset() {
    let console = [line(
        "Kernel panic - not syncing: VFS: Unable to mount root fs",
    )];
    assert_eq!(
        classify_exit(&console, QemuStatus::Code(0), ""),
        GuestExit::Reset
    );
}

#[test]
fn the_last_shutdown_message_wins() {
    let console = [
        line("reboot: Restarting system"),
        line("reboot: Power down"),
    ];
    assert_eq!(
        classify_exit(&console, QemuStatus::Code(0), ""),
        GuestExit::PowerOff
    );
}

#[test]
fn error_exit_is_failed_with_stderr_tail() {
    let exit = classify_exit(
        &[],
        QemuStatus::Code(1),
        "qemu-system-x86_64: -drive x: Could not open\n",
    );
    match exit {
        GuestExit::Failed(why) => {
            assert!(why.contains("status 1"), "{why}");
            assert!(why.contains("Could not open"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn killed_by_a_signal_is_failed() {
    let exit = classify_exit(&[], QemuStatus::Signal(9), "");
    assert!(matches!(exit, GuestExit::Failed(why) if why.contains("signal 9")));
}

#[test]
fn timeout_is_timeout_whatever_the_console_says() {
    let console = [line("reboot: Power down")];
    assert_eq!(
        classify_exit(&console, QemuStatus::TimedOut, ""),
        GuestExit::Timeout
    );
}

#[test]
fn splitter_drops_carriage_returns_and_keeps_partial_lines() {
    let mut splitter = LineSplitter::default();
    assert_eq!(splitter.push(b"ab\r\ncd"), vec!["ab".to_string()]);
    assert_eq!(splitter.push(b"e\n"), vec!["cde".to_string()]);
    assert_eq!(splitter.push(b"tail"), Vec::<String>::new());
    assert_eq!(splitter.finish(), Some("tail".to_string()));
    assert_eq!(splitter.finish(), None);
}

#[test]
fn splitter_cuts_endless_lines() {
    let mut splitter = LineSplitter::default();
    let lines = splitter.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 5]);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.len() == MAX_LINE_BYTES));
    assert_eq!(splitter.finish().map(|l| l.len()), Some(5));
}

#[test]
fn splitter_replaces_invalid_utf8() {
    let mut splitter = LineSplitter::default();
    assert_eq!(splitter.push(b"a\xffb\n"), vec!["a\u{fffd}b".to_string()]);
}

#[test]
fn console_log_drops_the_oldest_lines_past_its_bound() {
    let mut log = ConsoleLog::default();
    let long = "y".repeat(MAX_LINE_BYTES);
    let count = MAX_CONSOLE_BYTES / MAX_LINE_BYTES + 10;
    for _ in 0..count {
        log.push(line(&long));
    }
    log.push(line("last"));
    let lines = log.into_lines();
    assert!(lines[0].text.contains("earlier console lines dropped"));
    assert_eq!(lines.last().unwrap().text, "last");
    let kept: usize = lines[1..].iter().map(|l| l.text.len()).sum();
    assert!(kept <= MAX_CONSOLE_BYTES);
}

#[test]
fn read_tail_keeps_the_last_bytes() {
    let input: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let tail = read_tail(&input[..], 100);
    assert_eq!(tail, &input[input.len() - 100..]);
}

#[test]
fn missing_qemu_names_the_debian_package() {
    let dir = tempfile::tempdir().unwrap();
    let err = find_qemu_in(None, Some(dir.path().as_os_str().to_owned())).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(QEMU_PACKAGE), "{text}");
    assert!(matches!(err, BackendError::Unavailable { .. }));
}

#[test]
fn qemu_override_must_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qemu");
    std::fs::write(&file, b"").unwrap();
    let err = find_qemu_in(Some(file.clone().into_os_string()), None).unwrap_err();
    assert!(err.to_string().contains(QEMU_ENV));
}

#[test]
fn qemu_is_found_on_the_search_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(QEMU_BINARY);
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap();
    assert_eq!(find_qemu_in(None, Some(path)).unwrap(), file);
}

#[test]
fn host_tsc_rate_is_plausible() {
    let Some(khz) = host_tsc_khz() else {
        println!("SKIP: no TSC on this architecture");
        return;
    };
    assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    assert!(tsc_cmdline().starts_with("tsc_early_khz="));
}

#[test]
fn a_line_asking_for_a_stop_ends_the_collection_after_its_grace() {
    let (sender, receiver) = std::sync::mpsc::channel();
    // the guest keeps the console open (qemu still running) after the line
    let _keep_open = sender.clone();
    sender
        .send((Duration::from_millis(5), "login: ".to_string()))
        .unwrap();
    sender
        .send((Duration::from_millis(6), "after".to_string()))
        .unwrap();
    let stop: StopWhen = Arc::new(|line: &ConsoleLine| {
        line.text
            .contains("login:")
            .then_some(Duration::from_millis(50))
    });
    let begin = Instant::now();

    let (lines, end) = super::console::collect_console(
        &receiver,
        begin,
        Duration::from_secs(30),
        None,
        Some(&stop),
    );

    assert_eq!(end, super::console::ConsoleEnd::Stopped);
    assert_eq!(lines.len(), 2, "lines within the grace are kept");
    assert!(begin.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_timeout_wins_over_a_later_grace() {
    let (sender, receiver) = std::sync::mpsc::channel();
    sender
        .send((Duration::from_millis(5), "login: ".to_string()))
        .unwrap();
    let stop: StopWhen = Arc::new(|_: &ConsoleLine| Some(Duration::from_secs(60)));

    let (_, end) = super::console::collect_console(
        &receiver,
        Instant::now(),
        Duration::from_millis(100),
        None,
        Some(&stop),
    );

    assert_eq!(end, super::console::ConsoleEnd::TimedOut);
}
