//! Removing a partial output when the user interrupts `vdr convert` or `vdr extract`
//! (SIGINT, SIGTERM, SIGHUP): a half-written disk image must not be left behind looking
//! like a result.
//!
//! Hand-written on libc rather than signal-hook: all that is needed is one `unlink` and an
//! `_exit`, both async-signal-safe, from a handler armed only while the output is written.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The outputs to remove on a signal (a VMDK monolithicFlat conversion writes two files);
/// null when nothing is being written. Each pointee is a leaked `CString`, so the handler
/// never sees freed memory.
static PARTIAL_OUTPUTS: [AtomicPtr<libc::c_char>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn remove_partial_output_and_exit(signal: libc::c_int) {
    for slot in &PARTIAL_OUTPUTS {
        let path = slot.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !path.is_null() {
            // SAFETY: `path` points to a NUL-terminated string leaked by `Guard::arm` and
            // never freed; unlink and _exit are async-signal-safe (signal-safety(7)).
            unsafe {
                libc::unlink(path);
            }
        }
    }
    // SAFETY: _exit is async-signal-safe and ends the process without running Rust code.
    unsafe { libc::_exit(128 + signal) }
}

/// While alive, a signal removes the armed outputs and ends vdr with 128 + the signal
/// number.
pub struct Guard {
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

impl Guard {
    /// Arms the handler for `paths` (at most two; more are not armed). A path with an
    /// interior NUL cannot be armed (and cannot be created either).
    pub fn arm(paths: &[&Path]) -> Guard {
        for (slot, path) in PARTIAL_OUTPUTS.iter().zip(paths) {
            if let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) {
                slot.store(c_path.into_raw(), Ordering::SeqCst);
            }
        }
        let handler = remove_partial_output_and_exit as extern "C" fn(libc::c_int);
        let previous = SIGNALS
            .iter()
            .map(|&signal| {
                // SAFETY: installs a handler that only calls async-signal-safe functions;
                // the previous disposition is kept and restored by `Drop`.
                let old = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
                (signal, old)
            })
            .collect();
        Guard { previous }
    }

    /// Points the handler at `path` (or at nothing) in place of the first armed output:
    /// for commands that write many files one after another (`vdr extract`).
    pub fn watch(&self, path: Option<&Path>) {
        let new = path
            .and_then(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .map_or(std::ptr::null_mut(), CString::into_raw);
        let old = PARTIAL_OUTPUTS[0].swap(new, Ordering::SeqCst);
        if !old.is_null() {
            // SAFETY: `old` came from `CString::into_raw` (in `arm` or `watch`). The swap
            // took it out of the slot atomically: a handler that had loaded it would have
            // swapped null in first, and this swap would have returned null. So nothing
            // else can hold it, and it is freed exactly once.
            drop(unsafe { CString::from_raw(old) });
        }
    }
}

impl Drop for Guard {
    /// Disarms: restores the previous dispositions; the output is kept.
    fn drop(&mut self) {
        for &(signal, old) in &self.previous {
            // SAFETY: restores the disposition `arm` replaced.
            unsafe {
                libc::signal(signal, old);
            }
        }
        // The CString stays leaked on purpose: a handler that already loaded the pointer
        // may still be using it.
        for slot in &PARTIAL_OUTPUTS {
            slot.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}
