//! The qemu backend's serial console: qemu's stdout cut into timestamped lines on a
//! reader thread, collected until qemu exits or the boot times out. Bounded throughout, as
//! [`crate::console_lines`] cuts and keeps lines for both backends (the last 4 MiB), so a
//! guest that floods its console costs no more than that.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::backend::{ConsoleEcho, ConsoleLine, StopWhen};
pub(super) use crate::console_lines::{ConsoleLog, LineSplitter};

/// Why [`collect_console`] stopped collecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConsoleEnd {
    /// qemu closed its stdout: it is exiting.
    Closed,
    TimedOut,
    /// A line asked for a stop through the boot's `stop_when`, and its grace passed.
    Stopped,
}

/// Receives console lines until qemu closes its stdout, the timeout passes, or the grace
/// a line's `stop_when` asked for passes; returns the lines kept and why it ended.
pub(super) fn collect_console(
    lines: &mpsc::Receiver<(Duration, String)>,
    started: Instant,
    timeout: Duration,
    echo: Option<&ConsoleEcho>,
    stop_when: Option<&StopWhen>,
) -> (Vec<ConsoleLine>, ConsoleEnd) {
    let deadline = started + timeout;
    let mut stop_at: Option<Instant> = None;
    let mut log = ConsoleLog::default();
    loop {
        let until = stop_at.map_or(deadline, |stop| stop.min(deadline));
        let left = until.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((at, text)) => {
                let line = ConsoleLine { at, text };
                if let Some(echo) = echo {
                    echo(&line);
                }
                if let Some(grace) = stop_when.and_then(|stop_when| stop_when(&line)) {
                    let stop = Instant::now() + grace;
                    stop_at = Some(stop_at.map_or(stop, |earlier| earlier.min(stop)));
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let end = if Instant::now() >= deadline {
                    ConsoleEnd::TimedOut
                } else {
                    ConsoleEnd::Stopped
                };
                return (log.into_lines(), end);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return (log.into_lines(), ConsoleEnd::Closed)
            }
        }
    }
}

/// Splits qemu's stdout into lines stamped with the time since `started`.
pub(super) fn read_console(
    mut out: impl Read,
    started: Instant,
    lines: &mpsc::Sender<(Duration, String)>,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let at = started.elapsed();
        for text in splitter.push(buf.get(..n).unwrap_or_default()) {
            if lines.send((at, text)).is_err() {
                return;
            }
        }
    }
    if let Some(text) = splitter.finish() {
        let _ = lines.send((started.elapsed(), text));
    }
}

/// Reads `input` to its end, keeping its last `limit` bytes.
pub(super) fn read_tail(mut input: impl Read, limit: usize) -> Vec<u8> {
    let mut kept = VecDeque::with_capacity(limit);
    let mut buf = [0u8; 4096];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for &byte in buf.get(..n).unwrap_or_default() {
                    if kept.len() == limit {
                        kept.pop_front();
                    }
                    kept.push_back(byte);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    kept.into()
}
