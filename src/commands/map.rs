//! `vdr map`: the extent map of the image as the guest sees it.
//!
//! `--json` prints exactly the fields and layout of `qemu-img map --output=json`, so the two
//! can be diffed; vdr adds `"unreadable": true, "reason"` to ranges it cannot read. The
//! translation from vdr's extent kinds follows qemu's block status flags: data in a file →
//! present+data with the host offset; compressed → present+data+compressed without one;
//! a zero cluster → present+zero; unallocated through the whole chain → zero, not present.

use std::io::{self, Write};

use anyhow::Result;
use vdr_formats::{Chain, Extent, ExtentKind, VirtualDisk};

use super::{open, OpenRequest, Status};
use crate::cli::MapArgs;
use crate::output::{hex, to_stdout};
use crate::walk::for_each_extent;

/// One line of the map, in qemu-img's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset of the data in `file` (uncompressed data only).
    pub offset: Option<u64>,
    /// Why the range cannot be read, when it cannot.
    pub unreadable: Option<String>,
    /// vdr's name of the extent kind (human output only).
    pub kind: &'static str,
    /// The file holding the range (human output only).
    pub file: String,
}

impl MapEntry {
    /// Classifies `extent` of `chain` the way qemu-img map does.
    pub fn from_extent(chain: &Chain, extent: &Extent) -> MapEntry {
        let layer_file = || {
            chain
                .layers()
                .get(extent.depth as usize)
                .and_then(|layer| layer.source())
                .map(|source| source.name().to_string())
                .unwrap_or_default()
        };
        let mut entry = MapEntry {
            start: extent.offset,
            length: extent.len,
            depth: extent.depth,
            present: true,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            unreadable: None,
            kind: extent.kind.name(),
            file: String::new(),
        };
        match &extent.kind {
            ExtentKind::Data { source, at } => {
                entry.data = true;
                entry.offset = Some(*at);
                entry.file = source.name().to_string();
            }
            ExtentKind::Compressed { source, .. } => {
                entry.data = true;
                entry.compressed = true;
                entry.file = source.name().to_string();
            }
            ExtentKind::Zero => {
                entry.zero = true;
                entry.file = layer_file();
            }
            ExtentKind::Unallocated => {
                entry.present = false;
                entry.zero = true;
                entry.file = layer_file();
            }
            ExtentKind::Unreadable { reason } => {
                entry.unreadable = Some(reason.clone());
                entry.file = layer_file();
            }
        }
        entry
    }

    /// Whether `next` continues this entry: contiguous, same flags and, for data, the next
    /// host offset in the same file (qemu-img's merge rule).
    fn continues_with(&self, next: &MapEntry) -> bool {
        let offsets_continue = match (self.offset, next.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
            _ => false,
        };
        self.start + self.length == next.start
            && offsets_continue
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.unreadable == next.unreadable
            && self.kind == next.kind
            && self.file == next.file
    }

    /// One JSON object with qemu-img's field order and spacing.
    pub fn to_qemu_json(&self) -> String {
        let mut text = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            self.start,
            self.length,
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed
        );
        if let Some(offset) = self.offset {
            text.push_str(&format!(", \"offset\": {offset}"));
        }
        if let Some(reason) = &self.unreadable {
            let quoted = serde_json::Value::String(reason.clone()).to_string();
            text.push_str(&format!(", \"unreadable\": true, \"reason\": {quoted}"));
        }
        text.push('}');
        text
    }
}

/// The whole map of `chain`, merged.
pub fn map_entries(chain: &Chain) -> Result<Vec<MapEntry>> {
    let mut entries: Vec<MapEntry> = Vec::new();
    for_each_extent(chain, 0, chain.size(), |extent| {
        let entry = MapEntry::from_extent(chain, &extent);
        match entries.last_mut() {
            Some(last) if last.continues_with(&entry) => last.length += entry.length,
            _ => entries.push(entry),
        }
        Ok(())
    })?;
    Ok(entries)
}

/// Runs `vdr map`.
pub fn run(args: &MapArgs) -> Result<Status> {
    let chain = open(
        &args.image,
        &OpenRequest {
            salvage: args.open.salvage,
            allow_escaping_extents: args.open.allow_escaping_extents,
            snapshot: args.snapshot.clone(),
            no_backing: false,
        },
    )?;
    let entries = map_entries(&chain)?;
    to_stdout(|out| {
        if args.json {
            write_json(out, &entries)
        } else {
            write_table(out, &entries)
        }
    })?;
    Ok(Status::Ok)
}

/// `[{...},\n{...}]` as qemu-img prints it.
fn write_json(out: &mut impl Write, entries: &[MapEntry]) -> io::Result<()> {
    let lines: Vec<String> = entries.iter().map(MapEntry::to_qemu_json).collect();
    writeln!(out, "[{}]", lines.join(",\n"))?;
    Ok(())
}

/// The qemu-img map table, with every range (not only data) and its kind and depth.
fn write_table(out: &mut impl Write, entries: &[MapEntry]) -> io::Result<()> {
    writeln!(
        out,
        "{:<16}{:<16}{:<16}{:<12}{:<7}File",
        "Offset", "Length", "Mapped to", "Kind", "Depth"
    )?;
    for entry in entries {
        let mapped = entry.offset.map(hex).unwrap_or_else(|| "-".to_string());
        writeln!(
            out,
            "{:<16}{:<16}{:<16}{:<12}{:<7}{}",
            hex(entry.start),
            hex(entry.length),
            mapped,
            entry.kind,
            entry.depth,
            entry.file
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, length: u64, offset: Option<u64>) -> MapEntry {
        MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset,
            unreadable: None,
            kind: "data",
            file: "f".into(),
        }
    }

    #[test]
    fn data_entries_merge_only_when_host_offsets_continue() {
        assert!(entry(0, 4096, Some(8192)).continues_with(&entry(4096, 4096, Some(12288))));
        assert!(!entry(0, 4096, Some(8192)).continues_with(&entry(4096, 4096, Some(0))));
    }

    #[test]
    fn json_matches_qemu_img_layout() {
        let text = entry(0, 4096, Some(20480)).to_qemu_json();
        assert_eq!(
            text,
            "{ \"start\": 0, \"length\": 4096, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 20480}"
        );
    }

    #[test]
    fn unreadable_reason_is_escaped_json() {
        let mut e = entry(0, 512, None);
        e.data = false;
        e.unreadable = Some("bad \"L2\"".into());
        let value: serde_json::Value = serde_json::from_str(&e.to_qemu_json()).expect("json");
        assert_eq!(value["unreadable"], true);
        assert_eq!(value["reason"], "bad \"L2\"");
    }
}
