//! The text descriptor (VMware "Virtual Disk Format 1.1", section "The Descriptor File"):
//! `key=value` lines (`version`, `CID`, `parentCID`, `createType`, `parentFileNameHint`,
//! `ddb.*` and any other key, kept as found), comments (`#`), blank lines, CRLF line ends,
//! and extent lines `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
//!
//! The parser is lenient in what it keeps and precise in what it refuses: every line it
//! cannot read is a [`LineProblem`] naming the line number. Strict opening refuses the first
//! one; salvage goes on without the line and records a finding.

use std::collections::BTreeMap;

/// Largest descriptor read (qemu reads at most 1 MiB too).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Most extent lines accepted (a 62 TiB twoGbMaxExtent disk has about 31 000).
pub const MAX_EXTENTS: usize = 65_536;
/// `parentCID` value meaning "no parent".
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// How an extent may be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
    /// The extent's content must not be read (VMware: "NOACCESS").
    NoAccess,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// The extent types of the specification and of ESXi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentType {
    Sparse,
    Flat,
    Zero,
    /// ESXi flat extent (offset 0).
    Vmfs,
    /// ESXi vmfsSparse (COWD) delta.
    VmfsSparse,
    /// ESXi seSparse delta.
    SeSparse,
    /// Raw device mapping (virtual or physical compatibility).
    VmfsRdm,
    VmfsRaw,
}

impl ExtentType {
    fn parse(word: &str) -> Option<ExtentType> {
        Some(match word {
            "SPARSE" => ExtentType::Sparse,
            "FLAT" => ExtentType::Flat,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "SESPARSE" => ExtentType::SeSparse,
            "VMFSRDM" => ExtentType::VmfsRdm,
            "VMFSRAW" => ExtentType::VmfsRaw,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::SeSparse => "SESPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
        }
    }
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// 1-based line number in the descriptor.
    pub line: usize,
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    pub kind: ExtentType,
    /// File name as written (None for ZERO extents).
    pub file: Option<String>,
    /// Offset in sectors into the file (FLAT extents).
    pub offset: u64,
}

/// A line the parser could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    pub what: String,
}

/// A parsed descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub version: Option<String>,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub create_type: Option<String>,
    pub parent_file_name_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` keys, without quotes around the values.
    pub ddb: BTreeMap<String, String>,
    /// Every other key, kept as found.
    pub other: BTreeMap<String, String>,
    /// Lines that could not be read (each also refused by [`Descriptor::parse_strict`]).
    pub problems: Vec<LineProblem>,
    /// The text was not UTF-8 and was read as Latin-1 (one char per byte; VMware writes
    /// `encoding="windows-1252"` descriptors): file names are turned back into their
    /// bytes by [`Descriptor::file_name_bytes`].
    pub latin1: bool,
}

impl Descriptor {
    /// Parses `bytes` (up to the first NUL: embedded descriptors are zero-padded), keeping
    /// every line it cannot read as a problem.
    pub fn parse(bytes: &[u8]) -> Descriptor {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = bytes.get(..end).unwrap_or_default();
        let (text, latin1) = match std::str::from_utf8(bytes) {
            Ok(t) => (t.to_string(), false),
            Err(_) => (bytes.iter().map(|&b| char::from(b)).collect(), true),
        };
        let mut d = Descriptor {
            latin1,
            ..Descriptor::default()
        };
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let content = raw.trim_end_matches('\r').trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if let Err(what) = d.parse_line(line, content) {
                d.problems.push(LineProblem { line, what });
            }
        }
        d
    }

    /// Parses `bytes`, refusing the first line it cannot read.
    pub fn parse_strict(bytes: &[u8]) -> Result<Descriptor, LineProblem> {
        let d = Descriptor::parse(bytes);
        match d.problems.first() {
            Some(p) => Err(p.clone()),
            None => Ok(d),
        }
    }

    /// True when nothing descriptor-like was found (an empty or zeroed descriptor area).
    pub fn is_empty(&self) -> bool {
        self.version.is_none()
            && self.create_type.is_none()
            && self.cid.is_none()
            && self.extents.is_empty()
            && self.ddb.is_empty()
            && self.other.is_empty()
    }

    /// The bytes of a file name as the descriptor stores them (file names are bytes on
    /// Unix: a Latin-1 name must be looked up by its original bytes).
    pub fn file_name_bytes(&self, name: &str) -> Vec<u8> {
        if self.latin1 {
            name.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect()
        } else {
            name.as_bytes().to_vec()
        }
    }

    /// True when the descriptor names a parent (parentCID other than ffffffff).
    pub fn has_parent(&self) -> bool {
        self.parent_cid.is_some_and(|c| c != NO_PARENT_CID)
    }

    fn parse_line(&mut self, line: usize, content: &str) -> Result<(), String> {
        let first = content.split_whitespace().next().unwrap_or_default();
        let access = match first {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        };
        if let Some(access) = access {
            if !content.contains('=') || content.contains('"') {
                if self.extents.len() >= MAX_EXTENTS {
                    return Err(format!("more than {MAX_EXTENTS} extent lines"));
                }
                let extent = parse_extent(line, access, content)?;
                self.extents.push(extent);
                return Ok(());
            }
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(format!(
                "neither 'key = value' nor an extent line: {content:?}"
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("bad key {key:?}"));
        }
        let value = unquote(value.trim());
        match key {
            "version" => self.version = Some(value.to_string()),
            "CID" => self.cid = Some(parse_cid(key, value)?),
            "parentCID" => self.parent_cid = Some(parse_cid(key, value)?),
            "createType" => self.create_type = Some(value.to_string()),
            "parentFileNameHint" => self.parent_file_name_hint = Some(value.to_string()),
            k if k.starts_with("ddb.") => {
                self.ddb.insert(k.to_string(), value.to_string());
            }
            k => {
                self.other.insert(k.to_string(), value.to_string());
            }
        }
        Ok(())
    }
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_cid(key: &str, value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 16).map_err(|_| format!("{key} {value:?} is not 8 hex digits"))
}

/// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`; the file name may hold spaces.
fn parse_extent(line: usize, access: Access, content: &str) -> Result<ExtentLine, String> {
    let rest = content
        .get(access.name().len()..)
        .unwrap_or_default()
        .trim_start();
    let (sectors, rest) = split_word(rest);
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| format!("extent size {sectors:?} is not a number of sectors"))?;
    let (kind_word, rest) = split_word(rest);
    let kind =
        ExtentType::parse(kind_word).ok_or_else(|| format!("unknown extent type {kind_word:?}"))?;
    let rest = rest.trim_start();
    let (file, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let close = quoted
            .find('"')
            .ok_or_else(|| "extent file name has no closing quote".to_string())?;
        let name = quoted.get(..close).unwrap_or_default();
        (
            Some(name.to_string()),
            quoted.get(close + 1..).unwrap_or_default(),
        )
    } else {
        (None, rest)
    };
    let (offset_word, rest) = split_word(rest.trim_start());
    let offset = if offset_word.is_empty() {
        0
    } else {
        offset_word
            .parse()
            .map_err(|_| format!("extent offset {offset_word:?} is not a number of sectors"))?
    };
    if !rest.trim().is_empty() {
        return Err(format!(
            "unexpected text after the extent: {:?}",
            rest.trim()
        ));
    }
    if file.is_none() && kind != ExtentType::Zero {
        return Err(format!("{} extent without a file name", kind.name()));
    }
    Ok(ExtentLine {
        line,
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (
            s.get(..i).unwrap_or_default(),
            s.get(i..).unwrap_or_default(),
        ),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "# Disk DescriptorFile\nversion=1\nCID=aa90dace\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 20480 SPARSE \"t-s001.vmdk\"\n\
        RW 100 FLAT \"my disk-f001.vmdk\" 7\nRDONLY 8 ZERO\nNOACCESS 16 VMFSRDM \"rdm.vmdk\"\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n\
        isNativeSnapshot = \"no\"\n";

    #[test]
    fn qemu_descriptor_parses_keys_extents_and_ddb() {
        let d = Descriptor::parse_strict(QEMU.as_bytes()).unwrap();
        assert_eq!(d.version.as_deref(), Some("1"));
        assert_eq!(d.cid, Some(0xaa90_dace));
        assert!(!d.has_parent());
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentSparse"));
        assert_eq!(d.extents.len(), 4);
        assert_eq!(d.extents[0].file.as_deref(), Some("t-s001.vmdk"));
        assert_eq!(d.extents[1].file.as_deref(), Some("my disk-f001.vmdk"));
        assert_eq!(
            (d.extents[1].kind, d.extents[1].offset),
            (ExtentType::Flat, 7)
        );
        assert_eq!(
            (d.extents[2].kind, d.extents[2].file.as_deref()),
            (ExtentType::Zero, None)
        );
        assert_eq!(d.extents[3].access, Access::NoAccess);
        assert_eq!(d.ddb["ddb.adapterType"], "ide");
        assert_eq!(d.other["isNativeSnapshot"], "no");
    }

    #[test]
    fn crlf_line_ends_and_zero_padding_are_accepted() {
        let mut bytes = QEMU.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(&[0u8; 512]);
        let d = Descriptor::parse_strict(&bytes).unwrap();
        assert_eq!(d.extents.len(), 4);
        assert_eq!(d.ddb["ddb.virtualHWVersion"], "4");
    }

    #[test]
    fn bad_line_is_refused_with_its_line_number() {
        let text = "version=1\nCID=fffffffe\nRW abc SPARSE \"x.vmdk\"\n";
        let err = Descriptor::parse_strict(text.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.what.contains("abc"), "{}", err.what);
        let err = Descriptor::parse_strict(b"version=1\n\nthis is not a line\n").unwrap_err();
        assert_eq!(err.line, 3);
        let err = Descriptor::parse_strict(b"CID=zz\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = Descriptor::parse_strict(b"RW 10 WEIRD \"a\"\n").unwrap_err();
        assert!(err.what.contains("WEIRD"));
        let err = Descriptor::parse_strict(b"RW 10 SPARSE \"a\n").unwrap_err();
        assert!(err.what.contains("quote"));
    }

    #[test]
    fn lenient_parse_keeps_the_good_lines() {
        let d = Descriptor::parse(b"version=1\ngarbage\nRW 8 ZERO\n");
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.extents.len(), 1);
    }

    #[test]
    fn parent_hint_and_cid_are_read() {
        let d = Descriptor::parse_strict(
            b"parentCID=0172e8a4\nparentFileNameHint=\"base disk.vmdk\"\n",
        )
        .unwrap();
        assert!(d.has_parent());
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("base disk.vmdk"));
    }

    proptest::proptest! {
        /// Any bytes parse without a panic, and every problem names a line that exists.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let d = Descriptor::parse(&bytes);
            let lines = bytes.split(|&b| b == b'\n').count();
            for p in &d.problems {
                proptest::prop_assert!(p.line >= 1 && p.line <= lines);
            }
        }

        /// Mutated real descriptors parse without a panic.
        #[test]
        fn mutated_descriptor_never_panics(at in 0usize..600, byte in proptest::prelude::any::<u8>()) {
            let mut bytes = QEMU.as_bytes().to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b = byte;
            }
            let _ = Descriptor::parse(&bytes);
        }
    }

    #[test]
    fn latin1_file_names_keep_their_bytes() {
        let d = Descriptor::parse_strict(b"RW 8 FLAT \"disque-\xe9t\xe9.vmdk\" 0\n").unwrap();
        assert!(d.latin1);
        let name = d.extents[0].file.clone().unwrap();
        assert_eq!(name, "disque-\u{e9}t\u{e9}.vmdk");
        assert_eq!(d.file_name_bytes(&name), b"disque-\xe9t\xe9.vmdk");
    }

    #[test]
    fn zeroed_area_is_empty() {
        assert!(Descriptor::parse(&[0u8; 1024]).is_empty());
    }
}
