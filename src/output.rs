//! Output helpers shared by the commands: JSON on stdout, human-readable sizes, offsets
//! in `qemu-img`'s style and UTC dates.

use std::io::{self, StdoutLock, Write};

use anyhow::{anyhow, Result};
use serde::Serialize;

/// Prints `value` as pretty JSON followed by a newline on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    print_line(&text)
}

/// Prints one line on stdout, returning write errors (`println!` would panic on them).
pub fn print_line(text: &str) -> Result<()> {
    to_stdout(|out| writeln!(out, "{text}"))
}

/// Runs `write` on the locked stdout and flushes it; a failed write (a full disk behind a
/// redirection) becomes an error that says where it happened.
pub fn to_stdout(write: impl FnOnce(&mut StdoutLock<'static>) -> io::Result<()>) -> Result<()> {
    let mut out = io::stdout().lock();
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow!("writing to standard output: {e}"))
}

/// `65536` → `"64 KiB (65536 bytes)"`.
pub fn size_text(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", binary_size(bytes))
}

/// `65536` → `"64 KiB"`, `1536` → `"1.5 KiB"`.
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

/// An offset or length as `qemu-img map` prints it: `0`, else hexadecimal with `0x`.
pub fn hex(value: u64) -> String {
    if value == 0 {
        "0".to_string()
    } else {
        format!("{value:#x}")
    }
}

/// Seconds since the epoch → `"YYYY-MM-DD hh:mm:ss"` in UTC.
pub fn utc_date(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's `civil_from_days`
/// restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A duration in nanoseconds → `"hhhh:mm:ss.mmm"`, as `qemu-img snapshot -l` shows VM clocks.
pub fn clock_text(nanoseconds: u64) -> String {
    let millis = nanoseconds / 1_000_000;
    let seconds = millis / 1000;
    format!(
        "{:04}:{:02}:{:02}.{:03}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_qemu_img() {
        assert_eq!(binary_size(512), "512 B");
        assert_eq!(binary_size(65536), "64 KiB");
        assert_eq!(binary_size(1536), "1.5 KiB");
        assert_eq!(size_text(1 << 30), "1 GiB (1073741824 bytes)");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_date(1_764_151_199), "2025-11-26 09:59:59");
    }

    #[test]
    fn zero_offsets_print_without_prefix() {
        assert_eq!(hex(0), "0");
        assert_eq!(hex(4096), "0x1000");
    }
}
