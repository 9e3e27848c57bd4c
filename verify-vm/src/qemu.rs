//! The qemu backend: runs a [`BootSpec`] under qemu-system-x86_64 with TCG, for machines
//! whose /dev/kvm cannot boot Linux (no VMX/SVM, or the software `kvm_pvm` module).
//!
//! The machine matches the KVM microVM's: `-M microvm,acpi=on` describes the virtio-mmio
//! disk in the ACPI DSDT (LNRO0005, the way Firecracker does), the console is the 16550
//! on ttyS0, and the guest has no PCI (`pci=off`), so one initramfs serves both backends.
//!
//! The disk is never converted: a [`vdr_mount::nbd::Server`] on a unix socket in a fresh
//! temporary directory serves the [`VirtualDisk`](vdr_formats::VirtualDisk) read-only,
//! and qemu reads it as `nbd+unix://`. [`DiskAccess::Overlay`] adds `snapshot=on`, so qemu
//! keeps the guest's writes in its own temporary overlay; the export itself refuses
//! writes either way, so nothing the guest does can reach the evidence.
//!
//! `-nographic` is not used: with `-serial stdio` it stalls the console (seen with qemu
//! 10.0 here); `-display none` with no monitor gives the same headless machine.
//!
//! Not for: KVM acceleration (`-accel kvm` fails on `kvm_pvm`), networking, or any device
//! beyond the one disk and the serial console.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vdr_mount::nbd::{Address, Export, Server};

use self::console::{collect_console, read_console, read_tail, ConsoleEnd};
use crate::backend::{
    BackendError, BackendKind, BootOutcome, BootSpec, ConsoleLine, DiskAccess, GuestExit,
    LinuxBackend,
};

/// The emulator this backend runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU_BINARY`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Environment variable naming the emulator to use instead of the one on PATH.
pub const QEMU_ENV: &str = "VDR_QEMU";

/// The part of qemu's stderr kept for [`GuestExit::Failed`].
const MAX_STDERR_BYTES: usize = 4096;
/// The NBD export name qemu asks for.
const EXPORT_NAME: &str = "disk";
/// How often a child that closed its console is polled for its exit.
const REAP_POLL: Duration = Duration::from_millis(20);

/// Called with every console line as it arrives (for `--verbose` progress).
pub use crate::backend::ConsoleEcho;

/// Boots Linux guests under qemu-system-x86_64 (TCG).
pub struct QemuBackend {
    binary: PathBuf,
    echo: Option<ConsoleEcho>,
}

impl QemuBackend {
    /// Finds the emulator ([`QEMU_ENV`], else PATH); [`BackendError::Unavailable`] names
    /// the package to install when there is none.
    pub fn new() -> Result<QemuBackend, BackendError> {
        Ok(QemuBackend::with_binary(find_qemu()?))
    }

    /// Uses the emulator at `binary` as it is.
    pub fn with_binary(binary: PathBuf) -> QemuBackend {
        QemuBackend { binary, echo: None }
    }

    /// Streams each console line to `echo` while the guest runs.
    pub fn with_echo(mut self, echo: ConsoleEcho) -> QemuBackend {
        self.echo = Some(echo);
        self
    }

    /// The emulator that runs the guests.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

/// Finds qemu-system-x86_64: the path in [`QEMU_ENV`], else the first on PATH.
pub fn find_qemu() -> Result<PathBuf, BackendError> {
    find_qemu_in(std::env::var_os(QEMU_ENV), std::env::var_os("PATH"))
}

fn find_qemu_in(
    override_path: Option<OsString>,
    search_path: Option<OsString>,
) -> Result<PathBuf, BackendError> {
    let unavailable = |why: String| BackendError::Unavailable {
        backend: BackendKind::Qemu,
        why,
    };
    if let Some(path) = override_path.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(unavailable(format!(
                "{QEMU_ENV}={} is not an executable file",
                path.display()
            )))
        };
    }
    search_path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(QEMU_BINARY))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            unavailable(format!(
                "{QEMU_BINARY} is not on PATH and {QEMU_ENV} is not set \
                 (Debian: apt-get install {QEMU_PACKAGE})"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Kernel parameters that give a guest its TSC frequency: `tsc_early_khz=N tsc=reliable`
/// with the host's TSC rate, or nothing when it cannot be measured.
///
/// Under TCG the guest's TSC runs at the host's rate (qemu's `cpu_get_host_ticks`), but
/// on a busy host the kernel's PIT calibration fails ("tsc: Unable to calibrate against
/// PIT"), the microvm has no HPET or PM timer to fall back on, and the boot stalls before
/// init (seen here at load 9). A given rate skips the calibration; `tsc=reliable` keeps
/// the clocksource watchdog from discarding the TSC against jiffies. Under KVM the guest
/// TSC also runs at the host's rate, so the same parameters hold for both backends.
pub fn tsc_cmdline() -> String {
    host_tsc_khz()
        .map(|khz| format!("tsc_early_khz={khz} tsc=reliable"))
        .unwrap_or_default()
}

/// The host's TSC rate, measured against CLOCK_MONOTONIC over 20 ms.
#[cfg(target_arch = "x86_64")]
pub fn host_tsc_khz() -> Option<u32> {
    use std::arch::x86_64::_rdtsc;
    let started = Instant::now();
    // SAFETY: RDTSC reads a counter; it has no memory effects and every x86_64 has it.
    let first = unsafe { _rdtsc() };
    thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let last = unsafe { _rdtsc() };
    let micros = u64::try_from(started.elapsed().as_micros()).ok()?;
    let ticks = last.checked_sub(first)?;
    let khz = ticks.checked_mul(1000)?.checked_div(micros)?;
    u32::try_from(khz).ok().filter(|&khz| khz > 0)
}

/// The host's TSC rate: unknown off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn host_tsc_khz() -> Option<u32> {
    None
}

impl LinuxBackend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, BackendError> {
        // dropped in reverse order: the child is killed before the NBD server stops and
        // before its socket's directory goes away
        let dir = tempfile::Builder::new()
            .prefix("vdr-qemu-")
            .tempdir()
            .map_err(|e| io_error("creating a temporary directory", e))?;
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, &spec.kernel).map_err(|e| io_error("writing the kernel", e))?;
        let initrd = match &spec.initrd {
            Some(bytes) => {
                let path = dir.path().join("initrd");
                std::fs::write(&path, bytes).map_err(|e| io_error("writing the initrd", e))?;
                Some(path)
            }
            None => None,
        };
        let nbd = NbdThread::start(&dir.path().join("nbd.sock"), spec)?;
        let args = qemu_args(&QemuCommand {
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &spec.cmdline,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            access: spec.access,
            nbd_uri: &nbd.uri,
        });
        let started = Instant::now();
        let mut child = RunningQemu::spawn(&self.binary, &args)?;
        let (console, end) = collect_console(
            &child.console,
            started,
            spec.timeout,
            self.echo.as_ref(),
            spec.stop_when.as_ref(),
        );
        let status = child.finish(started, spec.timeout, end)?;
        let stderr = child.stderr_tail();
        let elapsed = started.elapsed();
        drop(child);
        drop(nbd);
        Ok(BootOutcome {
            backend: BackendKind::Qemu,
            exit: classify_exit(&console, status, &stderr),
            console,
            elapsed,
        })
    }
}

fn io_error(what: &str, source: io::Error) -> BackendError {
    BackendError::Io {
        backend: BackendKind::Qemu,
        what: what.to_string(),
        source,
    }
}

/// What qemu is asked to run.
struct QemuCommand<'a> {
    kernel: &'a Path,
    initrd: Option<&'a Path>,
    cmdline: &'a str,
    memory_mib: u32,
    vcpus: u8,
    access: DiskAccess,
    nbd_uri: &'a str,
}

/// The emulator's arguments (pure: unit-tested without qemu).
fn qemu_args(command: &QemuCommand<'_>) -> Vec<OsString> {
    let access = match command.access {
        DiskAccess::ReadOnly => "readonly=on",
        // qemu opens the export read-only under a temporary qcow2 overlay
        DiskAccess::Overlay => "snapshot=on",
    };
    let drive = format!(
        "file={},format=raw,if=none,id=d0,{access}",
        escape_option_value(command.nbd_uri)
    );
    let mut args: Vec<OsString> = [
        "-M",
        "microvm,acpi=on,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        &command.memory_mib.to_string(),
        "-smp",
        &command.vcpus.max(1).to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=d0",
        // the reset line of the KVM microVM: with reboot=k a panic (panic=-1) or a
        // reboot resets at once; without it the kernel polls a missing controller for
        // seconds before falling back to a triple fault
        "-device",
        "i8042",
        "-append",
        command.cmdline,
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(command.kernel.as_os_str().to_owned());
    if let Some(initrd) = command.initrd {
        args.push("-initrd".into());
        args.push(initrd.as_os_str().to_owned());
    }
    args
}

/// qemu's option syntax ends a value at ','; a literal comma is written twice.
fn escape_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// How the qemu process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QemuStatus {
    /// vdr stopped it at the timeout.
    TimedOut,
    /// vdr stopped it because the boot's `stop_when` matched a console line.
    Stopped,
    Code(i32),
    Signal(i32),
}

impl QemuStatus {
    fn of(status: ExitStatus) -> QemuStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => QemuStatus::Code(code),
            (None, Some(signal)) => QemuStatus::Signal(signal),
            (None, None) => QemuStatus::Code(-1),
        }
    }
}

/// How the guest stopped, from qemu's status and the last shutdown message on the
/// console. With `-no-reboot` qemu exits 0 on a power-off and on a reset alike; the kernel
/// says which it was (kernel/reboot.c: "reboot: Power down", "reboot: Restarting
/// system", both KERN_EMERG so `loglevel=1` keeps them). A panic with `panic=-1` resets at
/// once without "Restarting system", so a panic is a reset too.
fn classify_exit(console: &[ConsoleLine], status: QemuStatus, stderr_tail: &str) -> GuestExit {
    match status {
        QemuStatus::TimedOut => GuestExit::Timeout,
        QemuStatus::Stopped => GuestExit::Stopped,
        QemuStatus::Code(0) => {
            let last_word = console.iter().rev().find_map(|line| {
                let text = line.text.as_str();
                if text.contains("reboot: Power down") {
                    Some(GuestExit::PowerOff)
                } else if text.contains("reboot: Restarting system")
                    || text.contains("Kernel panic - not syncing")
                {
                    Some(GuestExit::Reset)
                } else {
                    None
                }
            });
            last_word.unwrap_or(GuestExit::PowerOff)
        }
        QemuStatus::Code(code) => GuestExit::Failed(format!(
            "{QEMU_BINARY} exited with status {code}: {}",
            stderr_tail.trim()
        )),
        QemuStatus::Signal(signal) => GuestExit::Failed(format!(
            "{QEMU_BINARY} was killed by signal {signal}: {}",
            stderr_tail.trim()
        )),
    }
}

/// The NBD server of one boot, on its own thread until dropped.
struct NbdThread {
    uri: String,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl NbdThread {
    fn start(socket: &Path, spec: &BootSpec) -> Result<NbdThread, BackendError> {
        let export = Export {
            name: EXPORT_NAME.to_string(),
            description: Some("vdr verify (read-only)".to_string()),
            disk: Arc::clone(&spec.disk),
            min_hole: 0,
        };
        let server = Server::bind(&Address::Unix(socket.to_path_buf()), export)
            .map_err(|e| io_error("binding the NBD socket", e))?;
        let uri = server
            .uri()
            .map_err(|e| io_error("reading the NBD address", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_here = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("vdr-qemu-nbd".into())
            .spawn(move || server.serve(&stop_here, false))
            .map_err(|e| io_error("starting the NBD thread", e))?;
        Ok(NbdThread {
            uri,
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for NbdThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            // the server polls its stop flag every 200 ms; a listener error has no one
            // left to tell once the boot is over
            let _ = handle.join();
        }
    }
}

/// A qemu child with its console and stderr readers; killed and reaped when dropped.
struct RunningQemu {
    child: Child,
    reaped: bool,
    console: mpsc::Receiver<(Duration, String)>,
    console_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<Vec<u8>>>,
}

impl RunningQemu {
    fn spawn(binary: &Path, args: &[OsString]) -> Result<RunningQemu, BackendError> {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io_error(&format!("starting {}", binary.display()), e))?;
        let started = Instant::now();
        let (sender, console) = mpsc::channel();
        let stdout = child.stdout.take();
        let console_reader = stdout.and_then(|out| {
            thread::Builder::new()
                .name("vdr-qemu-console".into())
                .spawn(move || read_console(out, started, &sender))
                .ok()
        });
        let stderr = child.stderr.take();
        let stderr_reader = stderr.and_then(|err| {
            thread::Builder::new()
                .name("vdr-qemu-stderr".into())
                .spawn(move || read_tail(err, MAX_STDERR_BYTES))
                .ok()
        });
        let mut running = RunningQemu {
            child,
            reaped: false,
            console,
            console_reader,
            stderr_reader,
        };
        if running.console_reader.is_none() || running.stderr_reader.is_none() {
            running.kill();
            return Err(BackendError::Setup {
                backend: BackendKind::Qemu,
                what: "cannot start the threads that read qemu's output".into(),
            });
        }
        Ok(running)
    }

    /// Waits for qemu to exit (killing it at the timeout) and joins the console reader.
    fn finish(
        &mut self,
        started: Instant,
        timeout: Duration,
        end: ConsoleEnd,
    ) -> Result<QemuStatus, BackendError> {
        let status = if end == ConsoleEnd::TimedOut {
            self.kill();
            QemuStatus::TimedOut
        } else if end == ConsoleEnd::Stopped {
            self.kill();
            QemuStatus::Stopped
        } else {
            // the console closed: qemu is exiting; it still gets the boot's deadline
            let deadline = started + timeout;
            loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        self.reaped = true;
                        break QemuStatus::of(status);
                    }
                    Ok(None) if Instant::now() >= deadline => {
                        self.kill();
                        break QemuStatus::TimedOut;
                    }
                    Ok(None) => thread::sleep(REAP_POLL),
                    Err(e) => return Err(io_error("waiting for qemu", e)),
                }
            }
        };
        if let Some(reader) = self.console_reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// The end of what qemu wrote to stderr (joins the reader: call after the exit).
    fn stderr_tail(&mut self) -> String {
        let bytes = self
            .stderr_reader
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn kill(&mut self) {
        if !self.reaped {
            // an error means it has exited already; wait() reaps it either way
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        self.kill();
    }
}

#[path = "qemu_console.rs"]
mod console;

#[cfg(test)]
#[path = "qemu_tests.rs"]
mod tests;
