//! Console output as lines, for both backends (the KVM microVM's 16550 and qemu's
//! stdout): a splitter that cuts bytes into lines (`\n` ends one, `\r` is dropped, a
//! line longer than [`MAX_LINE_BYTES`] is cut there, invalid UTF-8 becomes U+FFFD) and a
//! log that keeps the last [`MAX_CONSOLE_BYTES`] of them, dropping the oldest first: the
//! end of a flooded console is where the report or the panic is.

use std::collections::VecDeque;

use crate::backend::ConsoleLine;

/// The console kept per boot; older lines are dropped first.
pub const MAX_CONSOLE_BYTES: usize = 4 << 20;
/// A longer console line is split: a guest that never sends '\n' cannot grow a buffer.
pub const MAX_LINE_BYTES: usize = 4096;

/// Cuts a byte stream into lines: '\n' ends a line, '\r' is dropped, and a line longer
/// than [`MAX_LINE_BYTES`] is cut there. Invalid UTF-8 becomes U+FFFD.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        bytes.iter().filter_map(|b| self.push_byte(*b)).collect()
    }

    /// One byte; a line when it ends one.
    pub fn push_byte(&mut self, byte: u8) -> Option<String> {
        match byte {
            b'\n' => Some(self.take()),
            b'\r' => None,
            _ => {
                self.pending.push(byte);
                (self.pending.len() >= MAX_LINE_BYTES).then(|| self.take())
            }
        }
    }

    /// True when no part of a line is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self) -> Option<String> {
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
pub struct ConsoleLog {
    lines: VecDeque<ConsoleLine>,
    bytes: usize,
    dropped: usize,
    dropped_bytes: u64,
}

impl ConsoleLog {
    pub fn push(&mut self, line: ConsoleLine) {
        self.bytes = self.bytes.saturating_add(line.text.len());
        self.lines.push_back(line);
        while self.bytes > MAX_CONSOLE_BYTES {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes = self.bytes.saturating_sub(old.text.len());
                    self.dropped = self.dropped.saturating_add(1);
                    self.dropped_bytes = self.dropped_bytes.saturating_add(old.text.len() as u64);
                }
                None => break,
            }
        }
    }

    /// Bytes of the lines dropped so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    pub fn into_lines(self) -> Vec<ConsoleLine> {
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
