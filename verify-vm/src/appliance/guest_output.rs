//! Reading the appliance's report off the serial console.
//!
//! The guest's /init (guest/appliance/init) prints one JSON document, base64-encoded, as
//! `VDR-R <chunk>` lines between [`BEGIN_MARKER`] and [`END_MARKER`]; the text inside the
//! JSON (tool output, file contents) is base64 as well. Kernel messages may land between
//! the lines and are skipped. Everything here is bounded and returns errors for truncated
//! or garbled input; nothing panics.

use serde::Deserialize;

use crate::backend::ConsoleLine;

pub const BEGIN_MARKER: &str = "VDR-APPLIANCE-BEGIN";
pub const END_MARKER: &str = "VDR-APPLIANCE-END";
/// The prefix of each payload line.
pub const LINE_PREFIX: &str = "VDR-R ";
/// The largest encoded payload accepted (the console itself is bounded smaller).
const MAX_ENCODED: usize = 8 << 20;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestOutputError {
    #[error("the guest printed no report (no {BEGIN_MARKER} line)")]
    NoReport,
    #[error("the guest's report is truncated (no {END_MARKER} after {BEGIN_MARKER})")]
    Truncated,
    #[error("the guest's report is larger than {MAX_ENCODED} bytes")]
    TooLarge,
    #[error("the guest's report is not valid base64 (at byte {offset} of the payload)")]
    Base64 { offset: usize },
    #[error("the guest's report is not the expected JSON: {0}")]
    Json(String),
}

/// The document the guest prints.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestDocument {
    pub version: u32,
    pub stages: Vec<GuestStage>,
    /// The block devices the guest saw, space-separated ("vda vda1 vda2").
    pub devices: String,
    /// base64: "module: error" lines of the modules that did not load.
    pub insmod_failed: String,
    pub partitions: Vec<GuestPartition>,
    /// base64: the end of the kernel log.
    pub dmesg: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestStage {
    pub stage: String,
    /// /proc/uptime seconds.
    pub at: f64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestPartition {
    pub device: String,
    pub fs: String,
    /// The device node existed in the guest.
    pub present: bool,
    pub fsck: GuestFsck,
    pub mounted: bool,
    /// base64: mount's error output.
    pub mount_error: String,
    /// base64 of the file, None when it does not exist.
    pub os_release: Option<String>,
    pub fstab: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestFsck {
    pub ran: bool,
    pub exit: Option<i32>,
    /// base64: the end of the checker's output.
    pub out: String,
}

/// Finds the last complete report on the console and decodes it.
pub fn parse_console(console: &[ConsoleLine]) -> Result<GuestDocument, GuestOutputError> {
    let encoded = extract_payload(console.iter().map(|l| l.text.as_str()))?;
    let json = decode_base64(&encoded).map_err(|at| GuestOutputError::Base64 { offset: at })?;
    serde_json::from_slice(&json).map_err(|e| GuestOutputError::Json(e.to_string()))
}

/// The base64 text between the last begin marker and the end marker after it.
fn extract_payload<'a>(lines: impl Iterator<Item = &'a str>) -> Result<String, GuestOutputError> {
    let lines: Vec<&str> = lines.collect();
    let begin = lines
        .iter()
        .rposition(|l| l.trim_end() == BEGIN_MARKER)
        .ok_or(GuestOutputError::NoReport)?;
    let mut encoded = String::new();
    for line in lines.iter().skip(begin.saturating_add(1)) {
        if line.trim_end() == END_MARKER {
            return Ok(encoded);
        }
        // anything before the prefix (a kernel message without its newline) is dropped
        if let Some(at) = line.find(LINE_PREFIX) {
            let chunk = line
                .get(at.saturating_add(LINE_PREFIX.len())..)
                .unwrap_or_default()
                .trim();
            if encoded.len().saturating_add(chunk.len()) > MAX_ENCODED {
                return Err(GuestOutputError::TooLarge);
            }
            encoded.push_str(chunk);
        }
    }
    Err(GuestOutputError::Truncated)
}

/// Decodes standard base64 (RFC 4648 §4) with optional padding; the error is the offset
/// of the first byte outside the alphabet.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut accumulator: u32 = 0;
    let mut bits = 0u32;
    let mut padding = false;
    for (at, byte) in text.bytes().enumerate() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            b'\n' | b'\r' | b' ' => continue,
            _ => return Err(at),
        };
        if padding {
            // data after '=' is not base64
            return Err(at);
        }
        accumulator = (accumulator << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits) as u8);
            accumulator &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// A base64 field of the document as text (lossy: the guest's files may be any bytes).
pub fn decode_text(field: &str) -> Option<String> {
    decode_base64(field)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn console(text: &str) -> Vec<ConsoleLine> {
        text.lines()
            .map(|l| ConsoleLine {
                at: Duration::ZERO,
                text: l.to_string(),
            })
            .collect()
    }

    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn framed(json: &str) -> String {
        let encoded = encode(json.as_bytes());
        let mut text = format!("noise\n{BEGIN_MARKER}\n");
        for chunk in encoded.as_bytes().chunks(76) {
            text.push_str(LINE_PREFIX);
            text.push_str(std::str::from_utf8(chunk).unwrap());
            text.push('\n');
        }
        text.push_str(END_MARKER);
        text.push('\n');
        text
    }

    const DOC: &str = r#"{"version":1,"stages":[{"stage":"init","at":0.91}],"devices":"vda vda1 ","insmod_failed":"","partitions":[{"device":"vda1","fs":"ext4","present":true,"fsck":{"ran":true,"exit":0,"out":"Y2xlYW4="},"mounted":true,"mount_error":"","os_release":"SUQ9ZGViaWFu","fstab":null}],"dmesg":""}"#;

    #[test]
    fn framed_report_is_decoded() {
        let doc = parse_console(&console(&framed(DOC))).unwrap();
        assert_eq!(doc.version, 1);
        assert_eq!(doc.stages[0].stage, "init");
        let part = &doc.partitions[0];
        assert_eq!(part.fsck.exit, Some(0));
        assert_eq!(decode_text(&part.fsck.out).as_deref(), Some("clean"));
        assert_eq!(
            decode_text(part.os_release.as_ref().unwrap()).as_deref(),
            Some("ID=debian")
        );
        assert_eq!(part.fstab, None);
    }

    #[test]
    fn kernel_messages_between_lines_are_skipped() {
        let text = framed(DOC).replacen(
            LINE_PREFIX,
            &format!("[    3.1] random: crng init done\n{LINE_PREFIX}"),
            2,
        );
        assert!(parse_console(&console(&text)).is_ok());
    }

    #[test]
    fn missing_begin_is_no_report() {
        assert_eq!(
            parse_console(&console("Kernel panic - not syncing\n")),
            Err(GuestOutputError::NoReport)
        );
    }

    #[test]
    fn missing_end_is_truncated() {
        let text = framed(DOC);
        let cut = text.find(END_MARKER).unwrap();
        assert_eq!(
            parse_console(&console(&text[..cut])),
            Err(GuestOutputError::Truncated)
        );
    }

    #[test]
    fn a_lost_line_is_a_json_or_base64_error_not_a_panic() {
        let text = framed(DOC);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(3);
        let result = parse_console(&console(&lines.join("\n")));
        assert!(
            matches!(
                result,
                Err(GuestOutputError::Json(_) | GuestOutputError::Base64 { .. })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn garbled_characters_are_a_base64_error() {
        let text = framed(DOC).replacen("VDR-R ", "VDR-R *#", 1);
        assert!(matches!(
            parse_console(&console(&text)),
            Err(GuestOutputError::Base64 { .. })
        ));
    }

    #[test]
    fn the_last_complete_report_wins() {
        let text = format!("{}{}", framed(r#"{"version":7}"#), framed(DOC));
        assert_eq!(parse_console(&console(&text)).unwrap().version, 1);
    }

    #[test]
    fn every_truncation_of_a_report_is_handled() {
        let text = framed(DOC);
        for cut in 0..text.len() {
            let _ = parse_console(&console(&text[..cut]));
        }
    }

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..40 {
            assert_eq!(decode_base64(&encode(&data[..len])).unwrap(), &data[..len]);
        }
    }

    #[test]
    fn wrong_types_are_a_json_error() {
        let text = framed(r#"{"version":"x","partitions":5}"#);
        assert!(matches!(
            parse_console(&console(&text)),
            Err(GuestOutputError::Json(_))
        ));
    }
}
