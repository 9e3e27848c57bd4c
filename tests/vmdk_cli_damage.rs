//! Every variant of the VMDK damage injector (vdr-fixtures::vmdk_damage) through the `vdr`
//! binary: strict mode refuses with the message the variant states (file, structure, and
//! an offset where there is one), salvage (`convert --salvage --fill-unreadable zeros
//! --json`) returns exactly the variant's content outside the unreadable ranges it
//! reports, reports the ranges whose data is gone (and `map --salvage` marks the same
//! ranges unreadable), and records a finding; no input file changes. Where qemu-img is wrong (a zeroed primary grain directory) its behaviour is
//! asserted too, as the documented peer bug it is.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};

use common::vmdk::*;
use common::*;
use serde_json::Value;
use tempfile::TempDir;
use vdr_fixtures::qemu::{create, qemu_img, qemu_io};
use vdr_fixtures::vmdk_damage::{
    cid_mismatch, missing_extent, split_extent_alone, truncated_stream, zero_only_descriptor,
    zeroed_primary_gd, Content, Strict, Variant,
};
use vdr_fixtures::vmdk_fixture::cowd_chain;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// `good/` holds the good images, `in/` the variants, `out/` every output.
struct Dirs {
    tmp: TempDir,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("vdr-vmdk-{name}-"))
            .tempdir()
            .expect("tempdir");
        for d in ["good", "in", "out"] {
            std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
        }
        Dirs { tmp }
    }

    fn good(&self) -> PathBuf {
        self.tmp.path().join("good")
    }

    fn input(&self) -> PathBuf {
        self.tmp.path().join("in")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.tmp.path().join("out").join(name)
    }
}

/// Strict mode (the default) refuses: exit 2, a `vdr:` message naming the variant's
/// file, one of the words the variant states and all of the values it states, and an
/// offset when `with_offset`.
fn assert_strict_refuses(dirs: &Dirs, variant: &Variant, with_offset: bool) -> String {
    let Strict::Refuses { any_of, all_of } = &variant.expect.strict else {
        panic!("{}: strict mode reads this variant", variant.name);
    };
    let out = dirs.out(&format!("{}-strict.raw", variant.name));
    let run = vdr_raw(dirs.tmp.path(), &variant.path, &out, &[]);
    run.expect_code(2);
    let err = &run.stderr;
    let file = variant.path.file_name().and_then(|n| n.to_str()).unwrap();
    assert!(err.starts_with("vdr: "), "{}: {err}", variant.name);
    assert!(
        err.contains(file),
        "{}: must name {file}: {err}",
        variant.name
    );
    let lower = err.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{}: must name one of {any_of:?}: {err}",
        variant.name
    );
    for value in all_of {
        assert!(
            err.contains(value.as_str()),
            "{}: must contain {value}: {err}",
            variant.name
        );
    }
    if with_offset {
        assert!(
            err.contains("0x"),
            "{}: must give an offset: {err}",
            variant.name
        );
    }
    assert!(
        !out.exists(),
        "{}: a refused conversion leaves no output",
        variant.name
    );
    err.clone()
}

/// The raw bytes the variant's content is taken from, and the offset in it.
fn oracle(dirs: &Dirs, variant: &Variant) -> (PathBuf, u64) {
    let raw = dirs.out(&format!("{}-oracle.raw", variant.name));
    match &variant.expect.content {
        Content::Good { image, offset } => {
            qemu_raw(image.parent().expect("dir"), image, &[], &raw);
            (raw, *offset)
        }
        Content::Zeros => {
            let f = std::fs::File::create(&raw).expect("create");
            f.set_len(variant.expect.size).expect("set_len");
            (raw, 0)
        }
    }
}

/// Salvage: the report's unreadable ranges lie in `damaged` and cover `lost`; they read as
/// zeros and are the ranges `map --salvage` marks unreadable; every other byte is the
/// variant's content; the exit code says whether ranges were filled. Returns the
/// unreadable ranges.
fn assert_salvage_returns_the_content(dirs: &Dirs, variant: &Variant) -> Vec<Range<u64>> {
    let e = &variant.expect;
    let out = dirs.out(&format!("{}-salvage.raw", variant.name));
    let run = vdr_raw(
        dirs.tmp.path(),
        &variant.path,
        &out,
        &["--salvage", "--fill-unreadable", "zeros", "--json"],
    );
    let report = run.json();
    let unreadable = union(unreadable_ranges(&report));
    run.expect_code(if unreadable.is_empty() { 0 } else { 1 });
    assert_eq!(report["virtual_size"], e.size, "{}: {report}", variant.name);
    assert_eq!(std::fs::metadata(&out).expect("output").len(), e.size);
    assert!(
        covered(&unreadable, &union(e.damaged.clone())),
        "{}: unreadable {unreadable:x?} outside the damaged ranges {:x?}",
        variant.name,
        e.damaged
    );
    assert!(
        covered(&union(e.lost.clone()), &unreadable),
        "{}: lost ranges {:x?} not all reported unreadable ({unreadable:x?})",
        variant.name,
        e.lost
    );
    for r in &unreadable {
        assert!(
            is_zero_range(&out, r.clone()),
            "{}: {r:x?} not zero-filled",
            variant.name
        );
    }
    let map = vdr(
        dirs.tmp.path(),
        &["map", "--salvage", "--json", s(&variant.path)],
    );
    let entries = parse_map(&map.expect_code(0).json());
    assert_tiles(variant.name, &entries, e.size);
    let mapped: Vec<Range<u64>> = entries
        .iter()
        .filter(|m| m.unreadable)
        .map(|m| m.start..m.end())
        .collect();
    assert_eq!(
        union(mapped),
        unreadable,
        "{}: map and convert disagree",
        variant.name
    );
    let (raw, offset) = oracle(dirs, variant);
    assert_eq!(
        first_difference(&out, &raw, offset, e.size, &unreadable),
        None,
        "{}: salvage output differs from the content outside the unreadable ranges",
        variant.name
    );
    std::fs::remove_file(&out).expect("rm");
    std::fs::remove_file(&raw).expect("rm");
    unreadable
}

/// `info --salvage --json` records a finding with one of the variant's words.
fn assert_salvage_finding(dirs: &Dirs, variant: &Variant) -> Value {
    let run = vdr(
        dirs.tmp.path(),
        &["info", "--salvage", "--json", s(&variant.path)],
    );
    assert!(run.code == 0 || run.code == 1, "{}: {run:?}", variant.name);
    let info = run.json();
    let findings = info["findings"].as_array().expect("findings").clone();
    match variant.expect.finding {
        Some(words) => assert!(
            findings.iter().any(|f| {
                let text = format!("{} {}", f["structure"], f["what"]).to_lowercase();
                words.iter().any(|w| text.contains(&w.to_lowercase()))
            }),
            "{}: no finding naming {words:?}: {findings:?}",
            variant.name
        ),
        None => assert!(findings.is_empty(), "{}: {findings:?}", variant.name),
    }
    info
}

/// Both modes, and no input (good images and variants) changed.
fn assert_variant(dirs: &Dirs, variant: &Variant, with_offset: bool) {
    let before = (hash_tree(&dirs.good()), hash_tree(&dirs.input()));
    assert_strict_refuses(dirs, variant, with_offset);
    assert_salvage_returns_the_content(dirs, variant);
    assert_salvage_finding(dirs, variant);
    let after = (hash_tree(&dirs.good()), hash_tree(&dirs.input()));
    assert!(before == after, "{}: an input changed", variant.name);
}

/// A monolithicSparse image (qemu-img) with data under both of its grain tables (one
/// covers 32 MiB at 64 KiB grains).
fn sparse_image(dir: &Path) -> PathBuf {
    let good = create(dir, "vmdk", "good.vmdk", "", None, "40M");
    qemu_io(
        dir,
        "vmdk",
        "good.vmdk",
        &["write -P 0x11 0 1M", "write -P 0x22 33M 100k"],
    );
    good
}

#[test]
fn zeroed_primary_gd_salvage_reads_the_redundant_gd_where_qemu_returns_zeros() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("zeroed-gd");
    let good = sparse_image(&dirs.good());
    let variant = zeroed_primary_gd(&good, &dirs.input()).expect("inject");

    assert_variant(&dirs, &variant, true);

    // qemu-img reads only the primary directory: silent zeros (its bug, documented here).
    let qemu = dirs.out("qemu-variant.raw");
    qemu_raw(&dirs.input(), &variant.path, &[], &qemu);
    assert!(
        is_zero_range(&qemu, 0..variant.expect.size),
        "qemu-img no longer loses the data"
    );
    let (raw, _) = oracle(&dirs, &variant);
    assert!(!is_zero_range(&raw, 0..MIB), "the good image has data");
}

#[test]
fn truncated_stream_salvage_keeps_every_grain_before_the_cut() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("truncated-stream");
    let g = dirs.good();
    create(&g, "raw", "src.raw", "", None, "4M");
    qemu_io(
        &g,
        "raw",
        "src.raw",
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 1M 1M",
            "write -P 0x33 3M 512k",
        ],
    );
    qemu_img(
        &g,
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "src.raw",
            "good.vmdk",
        ],
    );
    let variant = truncated_stream(&g.join("good.vmdk"), &dirs.input()).expect("inject");

    assert_variant(&dirs, &variant, true);
}

#[test]
fn cid_mismatch_strict_names_both_cids_and_salvage_reads_the_chain_with_a_finding() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("cid");
    let g = dirs.good();
    create(&g, "vmdk", "base.vmdk", "", None, "4M");
    qemu_io(&g, "vmdk", "base.vmdk", &["write -P 0x44 0 2M"]);
    create(
        &g,
        "vmdk",
        "child.vmdk",
        "",
        Some(("base.vmdk", "vmdk")),
        "4M",
    );
    qemu_io(&g, "vmdk", "child.vmdk", &["write -P 0x55 1M 64k"]);
    // Written next to the child (its parent must resolve): the variant lives in good/.
    let variant = cid_mismatch(&g.join("child.vmdk")).expect("inject");

    let before = hash_tree(&g);
    assert_strict_refuses(&dirs, &variant, false);
    assert_salvage_returns_the_content(&dirs, &variant);
    assert_salvage_finding(&dirs, &variant);
    let after = hash_tree(&g);
    assert!(before == after, "an input changed");
}

#[test]
fn cid_mismatch_in_a_cowd_chain_descriptor_is_refused_naming_both_cids() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("cid-cowd");
    let chain = cowd_chain(&dirs.good(), "disk", 4 * MIB).expect("build");
    let variant = cid_mismatch(&chain[2].descriptor).expect("inject");

    let before = hash_tree(&dirs.good());
    assert_strict_refuses(&dirs, &variant, false);
    assert_salvage_returns_the_content(&dirs, &variant);
    assert_salvage_finding(&dirs, &variant);
    assert!(before == hash_tree(&dirs.good()), "an input changed");
}

/// A twoGbMaxExtentSparse disk of 3 GiB (extents of 2 GiB and 1 GiB), data in both.
fn split_image(dir: &Path) -> PathBuf {
    let desc = create(
        dir,
        "vmdk",
        "split.vmdk",
        "subformat=twoGbMaxExtentSparse",
        None,
        "3G",
    );
    qemu_io(
        dir,
        "vmdk",
        "split.vmdk",
        &["write -P 0x66 0 64k", "write -P 0x77 2147487744 64k"],
    );
    desc
}

#[test]
fn missing_extent_strict_names_the_path_it_looked_for() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("missing-extent");
    let desc = split_image(&dirs.good());
    let variant = missing_extent(&desc, &dirs.input()).expect("inject");
    let before = hash_tree(&dirs.input());

    let err = assert_strict_refuses(&dirs, &variant, false);

    let path = dirs.input().join("split-s002.vmdk");
    assert!(
        err.contains(s(&path)),
        "must name the path looked for: {err}"
    );
    assert!(before == hash_tree(&dirs.input()), "an input changed");
}

#[test]
fn missing_extent_salvage_loses_only_its_range() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("missing-extent-salvage");
    let desc = split_image(&dirs.good());
    let variant = missing_extent(&desc, &dirs.input()).expect("inject");

    let unreadable = assert_salvage_returns_the_content(&dirs, &variant);

    assert_eq!(unreadable, vec![2 * GIB..3 * GIB]);
    assert_salvage_finding(&dirs, &variant);
}

#[test]
fn split_extent_alone_strict_is_a_clear_error_and_salvage_reads_its_slice() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("split-alone");
    let desc = split_image(&dirs.good());
    let variant = split_extent_alone(&desc, 0, &dirs.input()).expect("inject");

    let err = assert_strict_refuses(&dirs, &variant, false);
    assert!(
        err.contains("split") || err.contains("s001"),
        "say what it is: {err}"
    );
    assert_variant(&dirs, &variant, false);
}

#[test]
fn zero_only_descriptor_reads_as_zeros_in_both_modes() {
    let dirs = Dirs::new("zero-only");
    let variant = zero_only_descriptor(&dirs.input(), &[2048, 4096]).expect("inject");
    let before = hash_tree(&dirs.input());

    let out = dirs.out("strict.raw");
    vdr_raw(dirs.tmp.path(), &variant.path, &out, &[]).expect_code(0);
    let info = vdr_info(dirs.tmp.path(), &variant.path, &[]);

    assert_eq!(std::fs::metadata(&out).expect("output").len(), 3 * MIB);
    assert!(is_zero_range(&out, 0..3 * MIB));
    assert_eq!(info["virtual_size"], 3 * MIB);
    assert_eq!(info["findings"], serde_json::json!([]));
    assert_salvage_returns_the_content(&dirs, &variant);
    assert_salvage_finding(&dirs, &variant);
    assert!(before == hash_tree(&dirs.input()), "an input changed");
}

/// Found by the vmdk_sparse fuzz target (a 64 KiB input): a stream whose header claims
/// far more grains than its directory holds. Minimised by hand to a qemu-made 1 MiB
/// streamOptimized image with the header capacity (offset 12) set to 2^36 sectors.
#[test]
fn huge_claimed_capacity_with_a_cut_directory_is_salvaged_quickly() {
    if skip_without_qemu() {
        return;
    }
    let dirs = Dirs::new("huge-capacity");
    let g = dirs.good();
    create(&g, "raw", "src.raw", "", None, "1M");
    qemu_io(&g, "raw", "src.raw", &["write -P 0x41 0 64k"]);
    qemu_img(
        &g,
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "src.raw",
            "s.vmdk",
        ],
    );
    let mut image = std::fs::read(g.join("s.vmdk")).expect("read");
    image[12..20].copy_from_slice(&(1u64 << 36).to_le_bytes());
    let path = dirs.input().join("huge.vmdk");
    std::fs::write(&path, image).expect("write");

    assert_salvage_info_is_quick(&dirs, &path);
}

/// `vdr info --salvage --json` on `path` ends (exit 0 or 1) within 10 s; run under
/// `timeout`, as the bugs above make vdr run for many minutes.
fn assert_salvage_info_is_quick(dirs: &Dirs, path: &Path) {
    let started = std::time::Instant::now();
    let status = std::process::Command::new("timeout")
        .arg("20")
        .arg(vdr_bin())
        .args(["info", "--salvage", "--json", s(path)])
        .stdout(std::process::Stdio::null())
        .current_dir(dirs.tmp.path())
        .status()
        .expect("run vdr");
    let took = started.elapsed();

    assert!(
        status.code() == Some(0) || status.code() == Some(1),
        "{status} after {took:?}"
    );
    assert!(took.as_secs() < 10, "info --salvage took {took:?}");
}

/// Found by the vmdk_sesparse fuzz target: the same per-grain walk through a seSparse
/// extent whose header capacity (2 TiB) exceeds what its 512-entry grain directory maps
/// (8 GiB). Minimised by hand: a fixture-built seSparse extent, opened alone, with the
/// constant header's capacity (offset 16) set to 0x100000100 sectors.
#[test]
fn sesparse_capacity_beyond_its_directory_is_salvaged_quickly() {
    let dirs = Dirs::new("se-capacity");
    let fixture = vdr_fixtures::sesparse::build(
        &dirs.good(),
        "se",
        256 * 1024,
        &[vdr_fixtures::sesparse::Op::Write(0, &[0x5a; 4096])],
        None,
    )
    .expect("build");
    let mut image = std::fs::read(&fixture.extent).expect("read");
    image[16..24].copy_from_slice(&0x1_0000_0100u64.to_le_bytes());
    let path = dirs.input().join("se-sesparse.vmdk");
    std::fs::write(&path, image).expect("write");

    assert_salvage_info_is_quick(&dirs, &path);
}

/// The same per-grain walk through a COWD extent (the vmdk_cowd fuzz target runs at about
/// 15 inputs/s for it): a fixture-built COWD extent with one-sector grains, opened alone,
/// its header capacity (offset 12) set to 0xffffffff sectors (2 TiB) while its one grain
/// directory entry maps 2 MiB.
#[test]
fn cowd_capacity_beyond_its_directory_is_salvaged_quickly() {
    let dirs = Dirs::new("cowd-capacity");
    let fixture =
        vdr_fixtures::cowd::build(&dirs.good(), "c", 256 * 1024, &[(0, &[0x5a; 4096])], None)
            .expect("build");
    let mut image = std::fs::read(&fixture.extent).expect("read");
    image[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let path = dirs.input().join("c-delta.vmdk");
    std::fs::write(&path, image).expect("write");

    assert_salvage_info_is_quick(&dirs, &path);
}
