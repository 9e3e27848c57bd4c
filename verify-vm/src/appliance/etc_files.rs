//! The guest's /etc files as the appliance reports them: os-release(5) key/value pairs
//! and fstab(5) entries, with each fstab device resolved against the plan (the devices
//! vdr told the guest about and the guest saw), since the guest has no blkid.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::plan::{PlanEntry, DISK_DEVICE};

/// At most this many os-release keys and fstab entries are kept.
const MAX_KEYS: usize = 64;
const MAX_FSTAB_ENTRIES: usize = 256;

/// os-release(5): `KEY=value` lines, the value optionally in double or single quotes with
/// backslash escapes; comments and malformed lines are skipped.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if fields.len() == MAX_KEYS {
            break;
        }
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        fields.insert(key.to_string(), unquote(value));
    }
    fields
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
    let Some(quote) = quote else {
        return value.to_string();
    };
    let inner = value.get(1..).unwrap_or_default();
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c == quote => break,
            '\\' if quote == '"' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One fstab line and whether its device is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FstabEntry {
    pub spec: String,
    pub mountpoint: String,
    pub fstype: String,
    pub options: String,
    /// The planned device that holds `spec`, when it is one.
    pub device: Option<String>,
    /// Whether the device exists: None for what is no local block device (proc, tmpfs,
    /// network filesystems, bind mounts) or what the plan cannot resolve (LVM, md).
    pub found: Option<bool>,
    /// Why `found` is None, or which option excuses a missing device ("nofail").
    pub note: Option<String>,
}

/// Parses `text` and resolves each device against `plan`; `seen` holds the block devices
/// the guest saw ("vda", "vda1").
pub fn parse_fstab(text: &str, plan: &[PlanEntry], seen: &HashSet<String>) -> Vec<FstabEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(unescape_octal);
            let spec = fields.next()?;
            let mountpoint = fields.next().unwrap_or_default();
            let fstype = fields.next().unwrap_or_default();
            let options = fields.next().unwrap_or_default();
            Some(resolve(spec, mountpoint, fstype, options, plan, seen))
        })
        .take(MAX_FSTAB_ENTRIES)
        .collect()
}

/// fstab(5) writes blanks in names as `\040` (and tabs as `\011`).
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let octal = bytes
            .get(at + 1..at + 4)
            .filter(|d| byte == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(value) => {
                out.push(value);
                at += 4;
            }
            None => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which planned attribute a device spec names.
enum Lookup<'a> {
    Uuid(&'a str),
    Label(&'a str),
    PartUuid(&'a str),
    PartLabel(&'a str),
    /// A kernel name's partition number ("/dev/sda2" → 2; 0 is the whole disk).
    Partition(u32),
    /// Not a local block device.
    NotADevice,
    /// A partition of another of the VM's disks ("/dev/sdb1"): not attached here.
    OtherDisk,
    /// A block device the plan knows nothing of (LVM, md, dm).
    Unresolvable,
}

fn lookup(spec: &str) -> Lookup<'_> {
    let tagged = [
        ("UUID=", "/dev/disk/by-uuid/"),
        ("LABEL=", "/dev/disk/by-label/"),
        ("PARTUUID=", "/dev/disk/by-partuuid/"),
        ("PARTLABEL=", "/dev/disk/by-partlabel/"),
    ];
    for (index, (tag, path)) in tagged.iter().enumerate() {
        if let Some(value) = spec.strip_prefix(tag).or_else(|| spec.strip_prefix(path)) {
            let value = value.trim_matches('"');
            return match index {
                0 => Lookup::Uuid(value),
                1 => Lookup::Label(value),
                2 => Lookup::PartUuid(value),
                _ => Lookup::PartLabel(value),
            };
        }
    }
    let Some(name) = spec.strip_prefix("/dev/") else {
        return Lookup::NotADevice;
    };
    // sdaN, vdaN, hdaN, xvdaN: the VM's first disk, which is the image (whatever the bus
    // was); the number is the partition. Other letters are other disks of the VM.
    for prefix in ["xvd", "sd", "vd", "hd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let digits = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
            if digits.len() < rest.len() && digits.chars().all(|c| c.is_ascii_digit()) {
                if &rest[..rest.len() - digits.len()] != "a" {
                    return Lookup::OtherDisk;
                }
                if digits.is_empty() {
                    return Lookup::Partition(0);
                }
                return digits
                    .parse()
                    .map_or(Lookup::Unresolvable, Lookup::Partition);
            }
        }
    }
    Lookup::Unresolvable
}

fn resolve(
    spec: String,
    mountpoint: String,
    fstype: String,
    options: String,
    plan: &[PlanEntry],
    seen: &HashSet<String>,
) -> FstabEntry {
    let same =
        |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
    let planned: Result<Option<&PlanEntry>, &str> = match lookup(&spec) {
        Lookup::Uuid(v) => Ok(plan.iter().find(|e| same(&e.uuid, v))),
        Lookup::Label(v) => Ok(plan.iter().find(|e| e.label.as_deref() == Some(v))),
        Lookup::PartUuid(v) => Ok(plan.iter().find(|e| same(&e.partuuid, v))),
        Lookup::PartLabel(v) => Ok(plan.iter().find(|e| e.partlabel.as_deref() == Some(v))),
        Lookup::Partition(0) => Ok(plan.iter().find(|e| e.device == DISK_DEVICE)),
        Lookup::Partition(n) => {
            let device = format!("{DISK_DEVICE}{n}");
            Ok(plan.iter().find(|e| e.device == device))
        }
        Lookup::NotADevice => Err("not a local block device"),
        Lookup::OtherDisk => Err("on another disk of the VM, which is not attached here"),
        Lookup::Unresolvable => Err("a device the plan cannot resolve (LVM, md, dm?)"),
    };
    let (device, found, mut note) = match planned {
        Ok(Some(entry)) => {
            let there = seen.contains(&entry.device);
            (Some(entry.device.clone()), Some(there), None)
        }
        Ok(None) => (None, Some(false), None),
        Err(why) => (None, None, Some(why.to_string())),
    };
    if found == Some(false) && options.split(',').any(|o| o == "nofail" || o == "noauto") {
        note = Some("missing, but marked nofail/noauto".into());
    }
    FstabEntry {
        spec,
        mountpoint,
        fstype,
        options,
        device,
        found,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(device: &str, uuid: &str, label: &str) -> PlanEntry {
        PlanEntry {
            device: device.into(),
            offset: 0,
            len: 0,
            fs: Some("ext4".into()),
            uuid: Some(uuid.into()),
            label: Some(label.into()),
            partuuid: Some(format!("part-{device}")),
            partlabel: None,
        }
    }

    fn seen(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nVERSION_ID='12'\n# c\nID=debian\nPRETTY_NAME=\"A \\\"q\\\"\"\nbad line\n";
        let fields = parse_os_release(text);
        assert_eq!(fields["NAME"], "Debian GNU/Linux");
        assert_eq!(fields["VERSION_ID"], "12");
        assert_eq!(fields["ID"], "debian");
        assert_eq!(fields["PRETTY_NAME"], "A \"q\"");
        assert_eq!(fields.len(), 4);
    }

    #[test]
    fn fstab_devices_resolve_against_the_plan() {
        let plan = [
            entry("vda1", "AbCd-1", "root"),
            entry("vda2", "ef-2", "data"),
        ];
        let text = "\
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=abcd-1 / ext4 errors=remount-ro 0 1
LABEL=data /srv ext4 defaults 0 2
UUID=0000-missing /home ext4 defaults 0 2
/dev/sda2 /mnt/a ext4 defaults 0 0
PARTUUID=part-vda1 /mnt/b ext4 defaults 0 0
proc /proc proc defaults 0 0
/dev/mapper/vg-lv /var ext4 defaults 0 2
UUID=gone /opt ext4 nofail 0 2
/dev/sdb1 /backup ext4 defaults 0 2
";
        let entries = parse_fstab(text, &plan, &seen(&["vda", "vda1"]));
        let found: Vec<_> = entries
            .iter()
            .map(|e| (e.mountpoint.as_str(), e.found))
            .collect();
        assert_eq!(
            found,
            [
                ("/", Some(true)),
                ("/srv", Some(false)), // planned, but the guest did not see vda2
                ("/home", Some(false)),
                ("/mnt/a", Some(false)),
                ("/mnt/b", Some(true)),
                ("/proc", None),
                ("/var", None),
                ("/opt", Some(false)),
                ("/backup", None),
            ]
        );
        assert_eq!(entries[0].device.as_deref(), Some("vda1"));
        assert!(entries[7].note.as_deref().unwrap().contains("nofail"));
        assert!(entries[8].note.as_deref().unwrap().contains("another disk"));
    }

    #[test]
    fn octal_escapes_in_fstab_are_decoded() {
        let entries = parse_fstab(
            "LABEL=my\\040disk /mnt\\040x vfat ro 0 0\n",
            &[],
            &seen(&[]),
        );
        assert_eq!(entries[0].spec, "LABEL=my disk");
        assert_eq!(entries[0].mountpoint, "/mnt x");
    }

    #[test]
    fn garbage_fstab_never_panics() {
        let text = "\\\\\\0\n\\7\n \t \nUUID=\n/dev/\n/dev/sd\n/dev/sda99999999999999999\n";
        let entries = parse_fstab(text, &[entry("vda1", "x", "y")], &seen(&["vda1"]));
        assert_eq!(entries.len(), 6);
    }
}
