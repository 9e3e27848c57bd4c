//! Running the vCPUs: one thread each, a watchdog (the calling thread) that stops them on
//! the first stop reason or the timeout, and the kick that gets a thread out of KVM_RUN.
//!
//! The kick follows Firecracker: a real-time signal whose handler sets `immediate_exit` in
//! the interrupted thread's `kvm_run`. If the signal lands inside KVM_RUN the ioctl returns
//! EINTR; if it lands just before, `immediate_exit` makes the next KVM_RUN return at once,
//! so no kick is lost to that race.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::bus::Bus;
use super::console::StopAt;
use super::exit::{self, ExitAction, VmExit};
use super::Error;
use crate::backend::GuestExit;

/// The kick signal: SIGRTMIN + this (Firecracker uses the same offset for its vCPUs).
const KICK_SIGNAL_OFFSET: i32 = 0;
/// How often the watchdog checks, and re-kicks, vCPU threads that have not yet ended.
const REKICK_INTERVAL: Duration = Duration::from_millis(1);
/// How often the watchdog looks whether a console line asked for a stop.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the watchdog waits for a kicked thread before giving up on joining it.
const JOIN_LIMIT: Duration = Duration::from_secs(5);

thread_local! {
    /// This vCPU thread's `kvm_run` page, for the kick handler; null outside KVM_RUN loops.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_signal: i32, _info: *mut libc::siginfo_t, _context: *mut c_void) {
    // `try_with` because the signal may arrive while the thread's locals are torn down.
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` points at this thread's mapped kvm_run page: KickTarget sets it
            // while the VcpuFd owning the mapping is alive on this thread and clears it
            // before the VcpuFd is dropped. A volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), Error> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::KickSignal)
}

/// Publishes a vCPU's kvm_run page to the kick handler for as long as it lives; declare it
/// after the VcpuFd so it is dropped first.
struct KickTarget;

impl KickTarget {
    fn new(vcpu: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        let _ = KVM_RUN.try_with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// A stop reason and the exit-port status byte.
type Stop = (GuestExit, Option<u8>);

enum Event {
    Stopped(Stop),
    /// A vCPU thread ended; `panicked` when by a panic.
    Finished {
        index: usize,
        panicked: bool,
    },
}

/// Sends [`Event::Finished`] however the thread ends, panics included.
struct FinishNotice {
    index: usize,
    events: mpsc::Sender<Event>,
}

impl Drop for FinishNotice {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Finished {
            index: self.index,
            panicked: thread::panicking(),
        });
    }
}

/// Runs `vcpus` (index = vCPU id) until one stops the VM or `timeout` passes; every thread
/// is joined (or, after a kick that did not take within [`JOIN_LIMIT`], reported) before
/// this returns.
pub fn run_vcpus(
    vcpus: Vec<VcpuFd>,
    bus: Arc<Bus>,
    timeout: Duration,
    stop_at: &StopAt,
) -> Result<Stop, Error> {
    install_kick_handler()?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (events, inbox) = mpsc::channel();
    let mut threads = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let notice = FinishNotice {
            index,
            events: events.clone(),
        };
        let (bus, stop, events) = (bus.clone(), stop.clone(), events.clone());
        let spawned = thread::Builder::new()
            .name(format!("vdr-vcpu{index}"))
            .spawn(move || {
                let _notice = notice;
                if let Some(reason) = vcpu_loop(index, vcpu, &bus, &stop) {
                    let _ = events.send(Event::Stopped(reason));
                }
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(source) => {
                spawn_error = Some(Error::Thread { index, source });
                break;
            }
        }
    }
    drop(events);

    let mut reason: Option<Stop> = None;
    let mut panicked = None;
    let mut running = threads.len();
    if spawn_error.is_none() {
        while reason.is_none() && panicked.is_none() && running > 0 {
            // a console line may ask for an earlier stop at any time: look every so often
            let left = timeout
                .saturating_sub(start.elapsed())
                .min(STOP_POLL_INTERVAL);
            match inbox.recv_timeout(left) {
                Ok(Event::Stopped(stop)) => reason = Some(stop),
                Ok(Event::Finished { index, panicked: p }) => {
                    running -= 1;
                    if p {
                        panicked = Some(index);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let asked = *stop_at.lock().unwrap_or_else(|e| e.into_inner());
                    if start.elapsed() >= timeout {
                        reason = Some((GuestExit::Timeout, None));
                    } else if asked.is_some_and(|at| Instant::now() >= at) {
                        reason = Some((GuestExit::Stopped, None));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    stop.store(true, Ordering::SeqCst);
    let joined = stop_and_join(threads);
    if let Some(error) = spawn_error {
        return Err(error);
    }
    let failure = |why: String| (GuestExit::Failed(why), None);
    Ok(match (panicked, reason) {
        (Some(index), _) => failure(format!(
            "vCPU {index}: the vCPU thread panicked{}",
            joined.panic_message(index)
        )),
        (None, _) if !joined.abandoned.is_empty() => failure(format!(
            "vCPU {:?}: still running {JOIN_LIMIT:?} after being stopped; left behind",
            joined.abandoned
        )),
        (None, Some(reason)) => reason,
        (None, None) => failure("every vCPU thread ended without a stop reason".into()),
    })
}

/// What joining the threads found.
#[derive(Default)]
struct Joined {
    panics: Vec<(usize, String)>,
    /// vCPUs whose threads did not end within [`JOIN_LIMIT`] of the stop.
    abandoned: Vec<usize>,
}

impl Joined {
    fn panic_message(&self, index: usize) -> String {
        self.panics
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, message)| format!(": {message}"))
            .unwrap_or_default()
    }
}

/// Kicks every thread until it leaves KVM_RUN, then joins it.
fn stop_and_join(threads: Vec<JoinHandle<()>>) -> Joined {
    let begin = Instant::now();
    loop {
        for handle in threads.iter().filter(|h| !h.is_finished()) {
            // ESRCH for a thread that just ended is harmless.
            let _ = handle.kill(kick_signal());
        }
        if threads.iter().all(|h| h.is_finished()) || begin.elapsed() > JOIN_LIMIT {
            break;
        }
        thread::sleep(REKICK_INTERVAL);
    }
    let mut joined = Joined::default();
    for (index, handle) in threads.into_iter().enumerate() {
        // A thread still running after JOIN_LIMIT is left detached rather than hanging
        // the caller; it exits at its next loop turn since `stop` is set.
        if !handle.is_finished() {
            joined.abandoned.push(index);
            continue;
        }
        if let Err(payload) = handle.join() {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            joined.panics.push((index, message));
        }
    }
    joined
}

/// One vCPU's KVM_RUN loop; `None` when stopped from outside.
fn vcpu_loop(index: usize, mut vcpu: VcpuFd, bus: &Bus, stop: &AtomicBool) -> Option<Stop> {
    let _kick = KickTarget::new(&mut vcpu);
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let action = match vcpu.run() {
            // The suberror is in kvm_run, read below once the exit's borrow has ended.
            Ok(VcpuExit::InternalError) => None,
            Ok(exit) => Some(exit::handle(VmExit::from(exit), bus)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Some(ExitAction::Continue)
            }
            Err(e) => Some(ExitAction::Stop {
                exit: GuestExit::Failed(format!("KVM_RUN failed: {e}")),
                status: None,
            }),
        };
        let action = match action {
            Some(action) => action,
            None => {
                let suberror = internal_error_suberror(&mut vcpu);
                exit::handle(VmExit::InternalError { suberror }, bus)
            }
        };
        if let ExitAction::Stop { exit, status } = action {
            let exit = match exit {
                GuestExit::Failed(why) => {
                    GuestExit::Failed(format!("vCPU {index}: {why}{}", where_it_stopped(&vcpu)))
                }
                other => other,
            };
            return Some((exit, status));
        }
    }
}

/// " at rip 0x...": where the guest was when the vCPU failed, for whoever debugs it.
fn where_it_stopped(vcpu: &VcpuFd) -> String {
    vcpu.get_regs()
        .map(|regs| format!(" (guest rip {:#x})", regs.rip))
        .unwrap_or_default()
}

/// `kvm_run.internal.suberror` after a KVM_EXIT_INTERNAL_ERROR.
fn internal_error_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, for which the kernel fills the
    // `internal` member of the union; every bit pattern is a valid u32.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}
