//! The qemu backend's serial console: qemu's stdout cut into timestamped lines on a
//! reader thread, collected until qemu exits or the boot times out. Bounded throughout: a
//! line is cut at [`MAX_LINE_BYTES`], a boot keeps at most [`MAX_CONSOLE_BYTES`] (oldest
//! lines dropped first), so a guest that floods its console costs no more than that.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::backend::{ConsoleEcho, ConsoleLine, StopWhen};

/// The console kept per boot; older lines are dropped first (the end holds the report
/// or the panic).
pub(super) const MAX_CONSOLE_BYTES: usize = 4 << 20;
/// A longer console line is split: a guest that never sends '\n' cannot grow a buffer.
pub(super) const MAX_LINE_BYTES: usize = 4096;

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

/// Cuts a byte stream into lines: '\n' ends a line, '\r' is dropped, and a line longer
/// than [`MAX_LINE_BYTES`] is cut there. Invalid UTF-8 becomes U+FFFD.
#[derive(Default)]
pub(super) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub(super) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            match byte {
                b'\n' => lines.push(self.take()),
                b'\r' => {}
                _ => {
                    self.pending.push(byte);
                    if self.pending.len() >= MAX_LINE_BYTES {
                        lines.push(self.take());
                    }
                }
            }
        }
        lines
    }

    /// The unterminated last line, if any.
    pub(super) fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// The console of one boot, at most [`MAX_CONSOLE_BYTES`]: the oldest lines go first.
#[derive(Default)]
pub(super) struct ConsoleLog {
    lines: VecDeque<ConsoleLine>,
    bytes: usize,
    dropped: usize,
}

impl ConsoleLog {
    pub(super) fn push(&mut self, line: ConsoleLine) {
        self.bytes = self.bytes.saturating_add(line.text.len());
        self.lines.push_back(line);
        while self.bytes > MAX_CONSOLE_BYTES {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes = self.bytes.saturating_sub(old.text.len());
                    self.dropped = self.dropped.saturating_add(1);
                }
                None => break,
            }
        }
    }

    pub(super) fn into_lines(self) -> Vec<ConsoleLine> {
        let mut lines = Vec::with_capacity(self.lines.len().saturating_add(1));
        if self.dropped > 0 {
            let at = self.lines.front().map(|l| l.at).unwrap_or_default();
            lines.push(ConsoleLine {
                at,
                text: format!("[vdr: {} earlier console lines dropped]", self.dropped),
            });
        }
        lines.extend(self.lines);
        lines
    }
}
