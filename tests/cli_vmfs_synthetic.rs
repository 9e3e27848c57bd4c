//! `vdr ls` and `vdr extract` end to end on synthetic VMFS5 and VMFS6 volumes from the
//! fixture builder (vdr_fixtures::vmfs), against the builder's manifest, which the fixture
//! tests check against vmfs-tools, vmfs6-tools and dissect.vmfs (tests/vmfs_synthetic.rs
//! does the same for vdr's library). The feature volume uses every address type and
//! feature; the damaged variants (vdr_fixtures::vmfs_damage) check that strict mode
//! refuses with a message naming the structure and that `--salvage` returns what can be
//! read, with findings and the exit code docs/CLI.md documents.

mod cli_support;
mod vmfs_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use cli_support::{sha256, vdr};
use serde_json::Value;
use vdr_fixtures::vmfs::{build, damage_spec, feature_spec, Data, EntryKind, Manifest, Version};
use vdr_fixtures::vmfs_damage::{apply, VmfsDamage};
use vmfs_support::synthetic::{built, Built};
use vmfs_support::{is_system, json, os};

const MIB: u64 = 1 << 20;

use vdr_fixtures::per_vmfs_version as per_version;

// ---- the feature volume -------------------------------------------------------------

/// The feature volume of one version and `vdr extract --all` of it, made once per test
/// process (the VMFS6 one holds a 515 MiB file) under the target's test tmpdir, which the
/// next run clears.
struct Features {
    img: PathBuf,
    manifest: Manifest,
    image_sha: String,
    out: PathBuf,
    extract: Output,
}

fn features(version: Version) -> &'static Features {
    static V5: OnceLock<Features> = OnceLock::new();
    static V6: OnceLock<Features> = OnceLock::new();
    let cell = match version {
        Version::V5 => &V5,
        Version::V6 => &V6,
    };
    cell.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-vmfs-{version:?}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("fixture dir");
        let img = dir.join("volume.img");
        let manifest = build(&feature_spec(version), &img).expect("the builder writes");
        let image_sha = sha256(&img);
        let out = dir.join("out");
        let extract = vdr()
            .arg("extract")
            .arg(&img)
            .arg("--all")
            .arg(&out)
            .arg("--json")
            .output()
            .expect("run vdr extract");
        Features {
            img,
            manifest,
            image_sha,
            out,
            extract,
        }
    })
}

/// The manifest's live entries below the root, by path.
fn live(m: &Manifest) -> BTreeMap<&str, &vdr_fixtures::vmfs::Entry> {
    m.entries
        .iter()
        .filter(|e| !e.deleted && e.path != "/")
        .map(|e| (e.path.as_str(), e))
        .collect()
}

fn ls_json_lists_exactly_the_live_entries(version: Version) {
    let f = features(version);

    let listing = json(&[os("ls"), f.img.as_os_str(), os("-R"), os("--json")]);

    let listed: BTreeMap<&str, &Value> = listing
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| (e["path"].as_str().expect("path"), e))
        .collect();
    let live = live(&f.manifest);
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        live.keys().collect::<Vec<_>>()
    );
    for (path, e) in live {
        let got = listed[path];
        let system = is_system(path);
        assert_eq!(got["system"], system, "{path}");
        let kind = match e.kind {
            EntryKind::File if system => "sysfile",
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        };
        assert_eq!(got["type"], kind, "{path}");
        assert_eq!(got["size"], e.size, "{path}");
        assert_eq!(got["fd_address"], e.fd_address, "{path}");
        if let Some(target) = &e.target {
            assert_eq!(got["target"], target.as_str(), "{path}");
        }
    }
}

/// Every path under `dir`, relative, with a leading `/`.
fn tree(dir: &Path, prefix: &str, into: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).expect("read output dir") {
        let e = e.expect("dir entry");
        let path = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if e.file_type().expect("file type").is_dir() {
            tree(&e.path(), &path, into);
        }
        into.insert(path);
    }
}

fn extract_all_writes_exactly_the_live_entries(version: Version) {
    let f = features(version);

    let mut written = BTreeSet::new();
    tree(&f.out, "", &mut written);

    assert!(f.extract.status.success(), "{:?}", f.extract);
    let wanted: BTreeSet<String> = live(&f.manifest)
        .into_keys()
        .filter(|p| !is_system(p))
        .map(str::to_string)
        .collect();
    assert_eq!(written, wanted);
    let report: Value = serde_json::from_slice(&f.extract.stdout).expect("json report");
    assert_eq!(report["unreadable"], Value::Array(Vec::new()), "{report}");
}

fn extract_all_writes_every_file_with_the_manifest_sha256(version: Version) {
    let f = features(version);

    for e in live(&f.manifest).into_values() {
        if e.kind != EntryKind::File || is_system(&e.path) {
            continue;
        }
        let out = f.out.join(e.path.trim_start_matches('/'));
        assert_eq!(fs::metadata(&out).expect("written").len(), e.size);
        assert_eq!(sha256(&out), e.sha256, "{}", e.path);
    }
}

fn extract_all_writes_symlinks_as_symlinks(version: Version) {
    let f = features(version);

    let link = f.out.join("link");

    let meta = fs::symlink_metadata(&link).expect("written");
    assert!(meta.file_type().is_symlink());
    let target = f.manifest.entry("/link").and_then(|e| e.target.clone());
    assert_eq!(
        fs::read_link(&link).expect("readlink"),
        PathBuf::from(target.expect("a target"))
    );
}

/// Holes and TBZ blocks are not written: a file occupies at most its data blocks (plus
/// 64 KiB of slack per zeroed block for the host file system), never its whole length.
fn extract_all_keeps_thin_and_tbz_blocks_sparse(version: Version) {
    let f = features(version);
    let spec = feature_spec(version);

    let zeroed: Vec<_> = spec
        .files
        .iter()
        .filter(|s| !s.holes.is_empty() || !s.tbz.is_empty())
        .collect();

    assert!(zeroed.len() >= 5, "the spec has thin and TBZ files");
    for s in zeroed {
        let e = f.manifest.entry(&s.path).expect("in the manifest");
        let zero_blocks = (s.holes.len() + s.tbz.len()) as u64;
        let data = e.size - zero_blocks * e.block_size;
        let on_disk = fs::metadata(f.out.join(s.path.trim_start_matches('/')))
            .expect("written")
            .blocks()
            * 512;
        assert!(
            on_disk <= data + (zero_blocks + 1) * 64 * 1024 && on_disk < e.size,
            "{}: {on_disk} bytes on disk for {data} bytes of data",
            s.path
        );
    }
}

fn deleted_files_are_neither_listed_nor_extracted(version: Version) {
    let f = features(version);

    let listing = json(&[os("ls"), f.img.as_os_str(), os("/vm"), os("--json")]);

    let deleted: Vec<_> = f.manifest.entries.iter().filter(|e| e.deleted).collect();
    assert!(!deleted.is_empty());
    for e in deleted {
        assert!(
            !listing.to_string().contains(&e.path),
            "{} listed: {listing}",
            e.path
        );
        assert!(fs::symlink_metadata(f.out.join(e.path.trim_start_matches('/'))).is_err());
    }
}

fn ls_and_extract_leave_the_image_unchanged(version: Version) {
    let f = features(version);

    json(&[os("ls"), f.img.as_os_str(), os("-lR"), os("--json")]);

    assert_eq!(sha256(&f.img), f.image_sha);
}

/// Every check of the feature volume, in one test per version: the volume and its
/// extraction are made once, and nextest runs each test in its own process, so checks
/// split across tests would each rebuild (or race on) the 1.5 GiB VMFS6 volume.
fn feature_volume(version: Version) {
    ls_json_lists_exactly_the_live_entries(version);
    extract_all_writes_exactly_the_live_entries(version);
    extract_all_writes_every_file_with_the_manifest_sha256(version);
    extract_all_writes_symlinks_as_symlinks(version);
    extract_all_keeps_thin_and_tbz_blocks_sparse(version);
    deleted_files_are_neither_listed_nor_extracted(version);
    ls_and_extract_leave_the_image_unchanged(version);
}

per_version! {
    feature_volume_lists_and_extracts_as_the_manifest_says => feature_volume;
}

// ---- damaged variants ---------------------------------------------------------------

fn damaged(version: Version, damage: VmfsDamage) -> Built {
    let b = built(&damage_spec(version));
    apply(&b.img, &b.manifest, &damage).expect("damage applies");
    b
}

/// `vdr ARGS` exits 2 and its message holds each of `names`.
fn strict_refuses(args: &[&std::ffi::OsStr], names: &[&str]) {
    let run = vdr().args(args).output().expect("run vdr");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "vdr {args:?}: {stderr}");
    for name in names {
        assert!(
            stderr.contains(name),
            "vdr {args:?} names no {name}: {stderr}"
        );
    }
}

/// `vdr extract IMG PATH OUT` exits 2 naming each of `names`, and writes no OUT.
fn strict_extract_refuses(b: &Built, path: &str, names: &[&str]) {
    let out = b.dir.path().join("strict");
    strict_refuses(
        &[os("extract"), b.img.as_os_str(), os(path), out.as_os_str()],
        names,
    );
    assert!(!out.exists(), "strict extraction left a file");
}

/// `vdr extract IMG --all OUT --salvage --json`: the report, and OUT. The exit code is
/// the documented one: 1 when a range was written as zeros or a finding is an error,
/// else 0.
fn salvage_extract(b: &Built) -> (Value, PathBuf) {
    let out = b.dir.path().join("salvaged");
    let run = vdr()
        .arg("extract")
        .arg(&b.img)
        .arg("--all")
        .arg(&out)
        .arg("--salvage")
        .arg("--json")
        .output()
        .expect("run vdr extract");
    let report: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|_| {
        panic!(
            "extract --salvage prints a report: {}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let errors = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["severity"] == "error");
    let zeros = !report["unreadable"]
        .as_array()
        .expect("unreadable")
        .is_empty();
    assert_eq!(
        run.status.code(),
        Some(i32::from(errors || zeros)),
        "{report}"
    );
    (report, out)
}

/// `vdr ls IMG -R --salvage`: its stderr. The exit code is the documented one: 1 when a
/// finding is an error (an entry was left out or the volume was rebuilt), else 0.
fn salvage_ls(b: &Built) -> String {
    let run = vdr()
        .arg("ls")
        .arg(&b.img)
        .arg("-R")
        .arg("--salvage")
        .output()
        .expect("run vdr ls");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let errors = stderr.lines().any(|l| l.starts_with("vdr: finding: Error"));
    assert_eq!(run.status.code(), Some(i32::from(errors)), "{stderr}");
    stderr
}

/// Whether a finding of the report names `what` (in its structure or description).
fn has_finding(report: &Value, what: &str) -> bool {
    report["findings"].as_array().is_some_and(|all| {
        all.iter().any(|f| {
            f["structure"].as_str().is_some_and(|s| s.contains(what))
                || f["what"].as_str().is_some_and(|s| s.contains(what))
        })
    })
}

/// The paths of the report's unreadable ranges.
fn unreadable_paths(report: &Value) -> BTreeSet<String> {
    report["unreadable"]
        .as_array()
        .expect("unreadable")
        .iter()
        .map(|u| u["path"].as_str().expect("path").to_string())
        .collect()
}

/// Every file of the manifest written under `out` has its manifest content, except the
/// ones the report lists as unreadable; `required` files must have been written.
fn salvaged_files_are_right(b: &Built, report: &Value, out: &Path, required: &[&str]) {
    let unreadable = unreadable_paths(report);
    for e in live(&b.manifest).into_values() {
        if e.kind != EntryKind::File || is_system(&e.path) || unreadable.contains(&e.path) {
            continue;
        }
        let file = out.join(e.path.trim_start_matches('/'));
        if file.exists() || required.contains(&e.path.as_str()) {
            assert_eq!(sha256(&file), e.sha256, "{}", e.path);
        }
    }
}

/// Damage salvage reads past: strict `ls ARGS` exits 2 naming each of `names`; salvage
/// reports a finding naming `names[0]` (from `ls` and `extract`), and every file comes
/// out right.
fn refused_strict_and_salvaged(version: Version, damage: VmfsDamage, ls: &[&str], names: &[&str]) {
    let b = damaged(version, damage);
    let mut args = vec![os("ls"), b.img.as_os_str()];
    args.extend(ls.iter().map(os));

    strict_refuses(&args, names);
    let stderr = salvage_ls(&b);
    let (report, out) = salvage_extract(&b);

    assert!(stderr.contains(names[0]), "{stderr}");
    assert!(has_finding(&report, names[0]), "{report}");
    salvaged_files_are_right(&b, &report, &out, &["/vm/vm-flat.vmdk", "/vm/notes.txt"]);
}

fn zeroed_fs_descriptor(version: Version) {
    refused_strict_and_salvaged(
        version,
        VmfsDamage::ZeroedFsDescriptor,
        &[],
        &["FS descriptor"],
    );
}

fn zeroed_fdc_header(version: Version) {
    refused_strict_and_salvaged(version, VmfsDamage::ZeroedFdcHeader, &[], &[".fdc.sf"]);
}

/// Sub-block data is unreadable without `.sbc.sf`: never written as other bytes.
fn zeroed_sbc_header(version: Version) {
    let b = damaged(version, VmfsDamage::ZeroedSbcHeader);

    strict_refuses(&[os("ls"), b.img.as_os_str()], &[".sbc.sf"]);
    salvage_ls(&b);
    let (report, out) = salvage_extract(&b);

    assert!(has_finding(&report, ".sbc.sf"), "{report}");
    let notes = out.join("vm/notes.txt");
    assert!(
        !notes.exists() || unreadable_paths(&report).contains("/vm/notes.txt"),
        "{report}"
    );
    salvaged_files_are_right(&b, &report, &out, &[]);
}

/// The file's first 1 MiB block lies outside the volume: strict extraction fails naming
/// it; salvage writes zeros for exactly that block and the right bytes around it.
fn pointer_block_outside_the_volume(version: Version) {
    let path = "/vm/vm-flat.vmdk";
    let b = damaged(
        version,
        VmfsDamage::PointerBlockOutsideVolume { path: path.into() },
    );

    strict_extract_refuses(&b, path, &[path, "outside"]);
    let listed = vdr()
        .arg("ls")
        .arg(&b.img)
        .arg("-lR")
        .output()
        .expect("run");
    let (report, out) = salvage_extract(&b);

    assert!(
        listed.status.success(),
        "the FD itself is intact: ls lists it"
    );

    let unreadable = report["unreadable"].as_array().expect("unreadable");
    assert_eq!(unreadable.len(), 1, "{report}");
    assert_eq!(unreadable[0]["path"], path);
    assert_eq!(unreadable[0]["offset"], 0);
    assert_eq!(unreadable[0]["len"], MIB);
    let got = fs::read(out.join("vm/vm-flat.vmdk")).expect("written");
    let mut want = vec![0u8; 3 * MIB as usize];
    Data::Pattern {
        len: 3 * MIB,
        seed: 2,
    }
    .read_at(&mut want[MIB as usize..], MIB);
    assert!(got == want, "zeros for the damaged block, the rest right");
    salvaged_files_are_right(&b, &report, &out, &["/vm/notes.txt", "/vm/sub/deeper.bin"]);
}

fn directory_loop(version: Version) {
    let damage = VmfsDamage::DirectoryLoop {
        child: "/vm/sub".into(),
    };
    refused_strict_and_salvaged(version, damage, &["-R"], &["directory loop", "/vm/sub"]);
}

fn impossible_file_size(version: Version) {
    let path = "/vm/sub/deeper.bin";
    let b = damaged(
        version,
        VmfsDamage::ImpossibleFileSize { path: path.into() },
    );

    strict_extract_refuses(&b, path, &["maps at most"]);
    strict_refuses(
        &[os("ls"), b.img.as_os_str(), os("-lR")],
        &["bad file descriptor", "maps at most"],
    );
    let stderr = salvage_ls(&b);
    let (report, out) = salvage_extract(&b);

    assert!(stderr.contains("cut"), "{stderr}");
    assert!(has_finding(&report, "cut"), "{report}");
    // Cut to what the address type maps (far past the data): the real content, then
    // holes. Truncated to its real length, it reads like the manifest.
    let cut = out.join("vm/sub/deeper.bin");
    let meta = fs::metadata(&cut).expect("written");
    let size = b.manifest.entry(path).expect("entry").size;
    assert!(meta.len() > size && meta.len() < 1 << 40, "{}", meta.len());
    assert!(
        meta.blocks() * 512 <= 2 * MIB + 128 * 1024,
        "the rest are holes"
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .and_then(|f| f.set_len(size))
        .expect("truncate");
    salvaged_files_are_right(
        &b,
        &report,
        &out,
        &[path, "/vm/vm-flat.vmdk", "/vm/notes.txt"],
    );
}

per_version! {
    zeroed_fs_descriptor_is_refused_strict_and_rebuilt_with_salvage => zeroed_fs_descriptor;
    zeroed_fdc_header_is_refused_strict_and_rebuilt_with_salvage => zeroed_fdc_header;
    zeroed_sbc_header_is_refused_strict_and_sub_block_data_is_unreadable_with_salvage
        => zeroed_sbc_header;
    pointer_block_outside_the_volume_is_zeros_for_exactly_that_block_with_salvage
        => pointer_block_outside_the_volume;
    directory_loop_is_refused_strict_and_cut_with_salvage => directory_loop;
    impossible_file_size_is_refused_strict_and_cut_with_salvage => impossible_file_size;
}

// ---- deleted and orphaned files -------------------------------------------------------

fn ls_deleted_lists_what_recovery_finds(version: Version) {
    use vdr_fixtures::vmfs::deletion_spec;
    use vdr_fixtures::vmfs_damage::{apply, VmfsDamage};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&deletion_spec(version), &img).unwrap();
    apply(
        &img,
        &m,
        &VmfsDamage::UnlinkedEntry {
            path: "/keep.bin".into(),
        },
    )
    .unwrap();
    let before = sha256(&img);

    let listing = json(&[os("ls"), img.as_os_str(), os("--deleted"), os("--json")]);
    let files = listing.as_array().expect("array");
    let mut got: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let keep = m.entry("/keep.bin").unwrap();
    let orphan = got
        .iter()
        .find(|(_, s)| s == "orphaned")
        .expect("the unlinked file is an orphan")
        .0
        .clone();
    assert!(orphan.starts_with("orphaned/"), "{orphan}");
    let mut want: Vec<(String, String)> = m
        .entries
        .iter()
        .filter(|e| e.deleted)
        .map(|e| (format!("deleted{}", e.path), "deleted".to_string()))
        .chain([(orphan.clone(), "orphaned".to_string())])
        .collect();
    want.sort();
    assert_eq!(got, want);
    for f in files {
        let fd = f["fd_address"].as_u64().unwrap() as u32;
        let e = m
            .entries
            .iter()
            .find(|e| e.fd_address == fd)
            .expect("a manifest entry");
        assert_eq!(f["size"].as_u64(), Some(e.size), "{f}");
        assert_eq!(f["recoverable_bytes"].as_u64(), Some(e.size), "{f}");
        assert_eq!(f["unreadable"].as_array().map(|a| a.len()), Some(0));
        if e.fd_address == keep.fd_address {
            assert_eq!(f["fd_bitmap_free"], Value::Bool(false));
        } else {
            assert_eq!(f["original_path"].as_str(), Some(e.path.as_str()), "{f}");
        }
    }

    // Text, limited to a directory: the names with their original paths.
    let out = vdr()
        .args([os("ls"), img.as_os_str(), os("/vm2"), os("--deleted")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "deleted/vm2/vm2-flat.vmdk (/vm2/vm2-flat.vmdk)",
            "deleted/vm2/vm2.vmdk (/vm2/vm2.vmdk)"
        ]
    );
    let long = vdr()
        .args([os("ls"), img.as_os_str(), os("--deleted"), os("-l")])
        .output()
        .unwrap();
    let long = String::from_utf8(long.stdout).unwrap();
    assert!(long.starts_with("STATUS"), "{long}");
    assert!(long.contains("orphaned file"), "{long}");
    assert_eq!(sha256(&img), before, "the image is unchanged");
}

per_version! {
    ls_deleted_lists_deleted_and_orphaned_files => ls_deleted_lists_what_recovery_finds;
}

fn extract_deleted_writes_what_recovery_finds(version: Version) {
    use vdr_fixtures::vmfs::deletion_spec;
    use vdr_fixtures::vmfs_damage::{apply, VmfsDamage};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ds.img");
    let m = build(&deletion_spec(version), &img).unwrap();
    let damage = VmfsDamage::BlockReused {
        deleted: "/thin-gone.bin".into(),
        live: "/keep.bin".into(),
    };
    apply(&img, &m, &damage).unwrap();
    let before = sha256(&img);
    let out = dir.path().join("out");

    let run = vdr()
        .args([os("extract"), img.as_os_str(), os("--deleted")])
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "an unreadable range is a problem found: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["files"].as_u64(), Some(4), "{report}");
    for path in ["/vm2/vm2-flat.vmdk", "/vm2/vm2.vmdk", "/notes.txt"] {
        let e = m.entry(path).unwrap();
        assert_eq!(
            sha256(&out.join(format!("deleted{path}"))),
            e.sha256,
            "{path}"
        );
    }
    let unreadable = report["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{report}");
    assert_eq!(unreadable[0]["path"], "deleted/thin-gone.bin");
    assert_eq!(unreadable[0]["offset"].as_u64(), Some(0));
    assert_eq!(unreadable[0]["len"].as_u64(), Some(MIB));
    // The reused block is a hole in the output, not keep.bin's bytes; the rest is the
    // deleted file's own.
    let thin = fs::read(out.join("deleted/thin-gone.bin")).unwrap();
    assert_eq!(thin.len() as u64, 4 * MIB);
    assert!(thin[..MIB as usize].iter().all(|b| *b == 0));
    let mut want = vec![0u8; MIB as usize];
    vdr_fixtures::vmfs::pattern_fill(24, 3 * MIB, &mut want);
    assert!(thin[3 * MIB as usize..] == want[..]);
    assert!(out.join("deleted/vm2").is_dir());
    assert_eq!(sha256(&img), before, "the image is unchanged");
}

per_version! {
    extract_deleted_writes_the_lost_files => extract_deleted_writes_what_recovery_finds;
}
