//! The probe guest's output protocol: lines `VDRPROBE <json object>` on the serial console
//! (written by guest/probe/out.c), parsed into [`Fact`]s.
//!
//! The console is guest-controlled input: the parser takes at most [`MAX_LINES`] lines of
//! at most [`MAX_LINE_LEN`] bytes, skips anything that is not a well-formed fact (noise,
//! cut lines, unknown types) and counts what it skipped; it never panics.

use serde::Deserialize;

/// The prefix of every probe line.
pub const PREFIX: &str = "VDRPROBE ";
/// Longest line considered (the guest's own buffer is 3000 bytes).
pub const MAX_LINE_LEN: usize = 4096;
/// Most lines considered (partitions, notes and samples are bounded in the guest too).
pub const MAX_LINES: usize = 20_000;

/// One fact the guest reported, tagged by its `"t"` field.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Fact {
    /// The guest started (`v`: its protocol version).
    Start { v: u32 },
    /// The device as the guest sees it.
    Disk { sectors: u64, ro: bool },
    /// LBA 0: the 0x55AA signature and whether the boot-code area is non-zero.
    Mbr { signature: bool, boot_code: bool },
    /// The partition table found: "gpt", "gpt-backup", "mbr", "none" or "unreadable".
    Table {
        scheme: String,
        #[serde(default)]
        crc_ok: Option<bool>,
        #[serde(default)]
        primary_ok: Option<bool>,
    },
    /// A partition, in 512-byte sectors.
    Part {
        i: u32,
        start: u64,
        sectors: u64,
        #[serde(rename = "type")]
        type_id: String,
        #[serde(default)]
        name: Option<String>,
    },
    /// What partition `part` (0: the whole disk) holds.
    Fs {
        part: u32,
        kind: Option<String>,
        #[serde(default)]
        label: Option<String>,
        #[serde(default)]
        uuid: Option<String>,
        vbr_signature: bool,
        boot_code: bool,
        #[serde(default)]
        error: Option<String>,
    },
    /// A sample's CRC-32 (8 hex digits) or "ioerr".
    Sample { lba: u64, n: u32, crc: String },
    /// The overlay write test.
    Overlay {
        lba: u64,
        #[serde(default)]
        before_crc: Option<String>,
        write: String,
        matched: bool,
    },
    /// Something noticed on the way (a damaged structure, a failing read).
    Note {
        what: String,
        #[serde(default)]
        lba: Option<u64>,
    },
    /// The guest gave up.
    Error { what: String },
    /// The guest finished.
    Done,
}

/// The facts of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub facts: Vec<Fact>,
    /// `VDRPROBE` lines that did not parse (cut, malformed, unknown).
    pub malformed: usize,
    /// Lines past [`MAX_LINES`], not looked at.
    pub dropped: usize,
}

/// Parses console lines; lines without the prefix (other output) are skipped silently.
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Parsed {
    let mut parsed = Parsed::default();
    for (n, line) in lines.into_iter().enumerate() {
        if n >= MAX_LINES {
            parsed.dropped += 1;
            continue;
        }
        if line.len() > MAX_LINE_LEN {
            if line.starts_with(PREFIX) {
                parsed.malformed += 1;
            }
            continue;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(json) = line.strip_prefix(PREFIX) else {
            continue;
        };
        match serde_json::from_str::<Fact>(json) {
            Ok(fact) => parsed.facts.push(fact),
            Err(_) => parsed.malformed += 1,
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_lines_become_facts() {
        let parsed = parse([
            r#"VDRPROBE {"t":"disk","sectors":131072,"ro":true}"#,
            r#"VDRPROBE {"t":"part","i":1,"start":2048,"sectors":100,"type":"0x83"}"#,
            "VDRPROBE {\"t\":\"done\"}\r",
        ]);
        assert_eq!(
            parsed.facts,
            vec![
                Fact::Disk {
                    sectors: 131072,
                    ro: true
                },
                Fact::Part {
                    i: 1,
                    start: 2048,
                    sectors: 100,
                    type_id: "0x83".into(),
                    name: None
                },
                Fact::Done
            ]
        );
        assert_eq!(parsed.malformed, 0);
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let long = format!("{PREFIX}{}", "x".repeat(MAX_LINE_LEN));
        let parsed = parse([
            "VDRPROBE {\"t\":\"disk\",\"sectors\":-1,\"ro\":true}",
            "VDRPROBE {\"t\":\"sample\",\"lba\":1,\"n\":1,\"crc\":\"0000",
            "VDRPROBE {\"t\":\"warp\"}",
            "VDRPROBE [1,2,3]",
            "VDRPROBE ",
            "VDRPROBE {\"t\":\"disk\",\"sectors\":99999999999999999999999,\"ro\":true}",
            "VDRPROBE {\"t\":\"fs\",\"part\":1,\"kind\":\"ext4\",\"label\":\"\\ud800\"}",
            &"[".repeat(10_000),
            long.as_str(),
        ]);
        assert!(parsed.facts.is_empty(), "{:?}", parsed.facts);
        assert_eq!(parsed.malformed, 8);
    }

    #[test]
    fn other_console_output_is_ignored() {
        let parsed = parse([
            "booting...",
            "",
            "VDRPROBE{\"t\":\"done\"}",
            "\u{fffd}\u{0}",
        ]);
        assert_eq!(parsed, Parsed::default());
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflow() {
        let nested = format!("{PREFIX}{}", "{\"a\":".repeat(1000));
        let parsed = parse([nested.as_str()]);
        assert_eq!(parsed.malformed, 1);
    }

    #[test]
    fn lines_past_the_limit_are_dropped() {
        let line = "VDRPROBE {\"t\":\"done\"}";
        let parsed = parse(std::iter::repeat_n(line, MAX_LINES + 5));
        assert_eq!(parsed.facts.len(), MAX_LINES);
        assert_eq!(parsed.dropped, 5);
    }
}
