//! The serial console: a vm-superio 16550 on COM1 whose output is split into lines, each
//! stamped with the time since the run started, with bounded memory: lines are cut and
//! kept as [`crate::console_lines`] does for both backends (the last
//! [`MAX_CONSOLE_BYTES`]; a guest that prints forever, or never prints a newline, costs
//! no more).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};

use crate::backend::{ConsoleEcho, ConsoleLine, StopWhen};
use crate::console_lines::{ConsoleLog as Lines, LineSplitter};
pub use crate::console_lines::{MAX_CONSOLE_BYTES, MAX_LINE_BYTES};
use crate::devices::{IrqLine, MmioDevice};

/// The captured console of one run.
pub struct ConsoleLog {
    start: Instant,
    lines: Lines,
    /// The unfinished line and when its first byte came.
    splitter: LineSplitter,
    partial_at: Duration,
    echo: Option<ConsoleEcho>,
    stop_when: Option<StopWhen>,
    /// When a line's `stop_when` asked the run to end (read by the watchdog).
    stop_at: StopAt,
}

/// The instant a console line asked the run to stop at, shared with the watchdog.
pub type StopAt = Arc<Mutex<Option<Instant>>>;

impl Default for ConsoleLog {
    fn default() -> Self {
        ConsoleLog {
            start: Instant::now(),
            lines: Lines::default(),
            splitter: LineSplitter::default(),
            partial_at: Duration::ZERO,
            echo: None,
            stop_when: None,
            stop_at: StopAt::default(),
        }
    }
}

impl ConsoleLog {
    /// Clears what was captured and starts the clock the lines are stamped with.
    pub fn restart(&mut self, start: Instant) {
        self.start = start;
        self.lines = Lines::default();
        self.splitter = LineSplitter::default();
    }

    pub fn set_echo(&mut self, echo: ConsoleEcho) {
        self.echo = Some(echo);
    }

    pub fn set_stop_when(&mut self, stop_when: StopWhen) {
        self.stop_when = Some(stop_when);
    }

    /// Where the stop a line asked for is published.
    pub fn stop_at(&self) -> StopAt {
        self.stop_at.clone()
    }

    /// One byte from the guest. `\r` is dropped (Linux writes `\r\n`).
    pub fn push(&mut self, byte: u8) {
        if self.splitter.is_empty() {
            self.partial_at = self.start.elapsed();
        }
        if let Some(text) = self.splitter.push_byte(byte) {
            self.finish_line(text);
        }
    }

    fn finish_line(&mut self, text: String) {
        let line = ConsoleLine {
            at: self.partial_at,
            text,
        };
        if let Some(echo) = &self.echo {
            echo(&line);
        }
        if let Some(grace) = self
            .stop_when
            .as_ref()
            .and_then(|stop_when| stop_when(&line))
        {
            let stop = Instant::now() + grace;
            let mut stop_at = self.stop_at.lock().unwrap_or_else(|e| e.into_inner());
            *stop_at = Some(stop_at.map_or(stop, |earlier| earlier.min(stop)));
        }
        self.lines.push(line);
    }

    /// The lines so far, the unfinished one included, and how many bytes were dropped.
    pub fn take(&mut self) -> (Vec<ConsoleLine>, u64) {
        if let Some(text) = self.splitter.finish() {
            self.finish_line(text);
        }
        let lines = std::mem::take(&mut self.lines);
        let dropped = lines.dropped_bytes();
        (lines.into_lines(), dropped)
    }
}

/// The `Write` end vm-superio's serial writes its transmitted bytes to.
struct LogWriter(Arc<Mutex<ConsoleLog>>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &byte in buf {
            log.push(byte);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// vm-superio raises its interrupt through this.
struct IrqTrigger(Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The 16550 as a device on the port-I/O bus (offsets 0..8 from COM1's base port).
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, LogWriter>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, log: Arc<Mutex<ConsoleLog>>) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), LogWriter(log)),
        }
    }
}

impl MmioDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are bytes; a wider access reads the first register only.
        let value = u8::try_from(offset).map_or(0xff, |offset| self.serial.read(offset));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // An interrupt that cannot be raised (irqfd write failed) loses one
            // notification; the guest's polling driver recovers, so the byte is kept.
            let _ = self.serial.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn push_str(log: &mut ConsoleLog, s: &[u8]) {
        for &b in s {
            log.push(b);
        }
    }

    #[test]
    fn output_is_split_into_lines_without_carriage_returns() {
        let mut log = ConsoleLog::default();
        push_str(&mut log, b"one\r\ntwo\n\nthree");
        let (lines, dropped) = log.take();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "", "three"]);
        assert_eq!(dropped, 0);
    }

    #[test]
    fn long_lines_are_split_at_the_cap() {
        let mut log = ConsoleLog::default();
        push_str(&mut log, &vec![b'x'; MAX_LINE_BYTES + 10]);
        let (lines, _) = log.take();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].text.len(), 10);
    }

    #[test]
    fn output_beyond_the_total_cap_keeps_the_end_and_counts_the_rest() {
        let mut log = ConsoleLog::default();
        let line = [b'y'; 1024];
        for _ in 0..(MAX_CONSOLE_BYTES / 1024 + 5) {
            push_str(&mut log, &line);
            log.push(b'\n');
        }
        push_str(&mut log, b"Kernel panic\n");
        let (lines, dropped) = log.take();
        assert!(lines[0].text.contains("earlier console lines dropped"));
        assert_eq!(
            lines.last().unwrap().text,
            "Kernel panic",
            "the end is kept"
        );
        assert_eq!(dropped, 6 * 1024);
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let mut log = ConsoleLog::default();
        push_str(&mut log, b"a\xffb\n");
        assert_eq!(log.take().0[0].text, "a\u{fffd}b");
    }

    #[test]
    fn echo_sees_each_finished_line() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut log = ConsoleLog::default();
        let sink = seen.clone();
        log.set_echo(Arc::new(move |line: &ConsoleLine| {
            sink.lock().unwrap().push(line.text.clone())
        }));
        push_str(&mut log, b"hello\nwor");
        assert_eq!(*seen.lock().unwrap(), ["hello"]);
        log.take();
        assert_eq!(*seen.lock().unwrap(), ["hello", "wor"]);
    }

    struct CountingIrq(AtomicUsize);
    impl IrqLine for CountingIrq {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn serial_transmits_into_the_log_and_raises_its_interrupt_when_enabled() {
        let log = Arc::new(Mutex::new(ConsoleLog::default()));
        let irq = Arc::new(CountingIrq(AtomicUsize::new(0)));
        let mut serial = SerialDevice::new(irq.clone(), log.clone());
        // IER: transmitter-holding-register-empty interrupt on.
        serial.write(1, &[0x02]);
        for &b in b"hi\n" {
            serial.write(0, &[b]);
        }
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        assert_eq!(log.lock().unwrap().take().0[0].text, "hi");
        // One interrupt until the driver acknowledges it by reading IIR.
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        let mut iir = [0u8];
        serial.read(2, &mut iir);
        serial.write(0, b"!");
        assert_eq!(irq.0.load(Ordering::SeqCst), 2);
    }
}
