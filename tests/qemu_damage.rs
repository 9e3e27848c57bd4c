//! Damaged QCOW2 images from the injector (vdr-fixtures::damage) over a good image that
//! qemu-img made: strict mode refuses with a precise message, salvage returns every
//! readable byte exactly as qemu-img reads the good image and lists exactly the damaged
//! ranges, check finds the leak, and nothing panics or touches the inputs.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;
use tempfile::TempDir;
use vdr_fixtures::damage::{write_variants, Expect, Variant};
use vdr_fixtures::qemu::{create, qemu_io};

/// The good image, qemu-img's raw of it, and the damaged variants.
struct Fixture {
    dir: TempDir,
    good_raw: PathBuf,
    variants: Vec<Variant>,
}

impl Fixture {
    fn variant(&self, name: &str) -> &Variant {
        self.variants
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no variant {name}"))
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }
}

/// v3, 4 KiB clusters (one L2 table covers 2 MiB), 6 MiB: a small write in each L2 range
/// first, so every L2 table sits before the bulk of the data clusters written after.
fn fixture() -> Option<Fixture> {
    if skip_without_qemu() {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("vdr-damage-")
        .tempdir()
        .expect("tempdir");
    let good_dir = dir.path().join("good");
    let variants_dir = dir.path().join("in");
    for d in [&good_dir, &variants_dir, &dir.path().join("out")] {
        std::fs::create_dir(d).expect("mkdir");
    }
    create(
        &good_dir,
        "qcow2",
        "good.qcow2",
        "cluster_size=4096",
        None,
        "6M",
    );
    qemu_io(
        &good_dir,
        "qcow2",
        "good.qcow2",
        &[
            "write -P 0x01 0x0 0x1000",
            "write -P 0x02 0x200000 0x1000",
            "write -P 0x03 0x400000 0x1000",
            "write -P 0x11 0x1234 0x40000",
            "write -P 0x12 0x280000 0x30000",
            "write -P 0x13 0x3fe000 0x4000",
            "write -P 0x14 0x500000 0x80000",
            "write -z 0x100000 0x10000",
            "write -P 0x15 0x5ff000 0x1000",
        ],
    );
    let good = good_dir.join("good.qcow2");
    let good_raw = dir.path().join("good.raw");
    qemu_raw(&good_dir, &good, &[], &good_raw);
    let variants = write_variants(&good, &variants_dir).expect("inject damage");
    Some(Fixture {
        dir,
        good_raw,
        variants,
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Strict mode (the default) refuses the image: exit 2, one `vdr:` message naming the
/// file, the structure and (`with_offset`) an offset.
fn assert_strict_refusal(fx: &Fixture, variant: &Variant, structure: &[&str]) {
    let dir = fx.dir.path();
    let out = fx.out(&format!("{}-strict.raw", variant.name));
    let run = vdr(
        dir,
        &[
            "convert",
            path_str(&variant.path),
            path_str(&out),
            "-O",
            "raw",
        ],
    );
    run.expect_code(2);
    let err = &run.stderr;
    let file = variant.path.file_name().and_then(|n| n.to_str()).unwrap();
    assert!(err.contains("vdr: "), "{}: {err}", variant.name);
    assert!(
        err.contains(file),
        "{}: message must name {file}: {err}",
        variant.name
    );
    assert!(
        err.contains("0x"),
        "{}: message must give an offset: {err}",
        variant.name
    );
    assert!(
        structure
            .iter()
            .any(|s| err.to_lowercase().contains(&s.to_lowercase())),
        "{}: message must name the structure ({structure:?}): {err}",
        variant.name
    );
}

/// The unreadable ranges a `--json` report lists.
fn unreadable_ranges(report: &Value) -> Vec<Range<u64>> {
    report["unreadable"]
        .as_array()
        .expect("unreadable array")
        .iter()
        .map(|r| {
            let offset = r["offset"].as_u64().expect("offset");
            let len = r["len"].as_u64().expect("len");
            assert!(
                r["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "every unreadable range says why: {r}"
            );
            offset..offset + len
        })
        .collect()
}

/// Salvage: exit 1, the listed ranges lie inside `damaged` and cover `lost`, they read as
/// zeros, every other byte equals qemu-img's raw of the good image; `map --salvage` marks
/// the same ranges unreadable.
fn assert_salvage(fx: &Fixture, variant: &Variant, damaged: &[Range<u64>], lost: &[Range<u64>]) {
    let dir = fx.dir.path();
    let out = fx.out(&format!("{}-salvage.raw", variant.name));
    let run = vdr(
        dir,
        &[
            "convert",
            "--salvage",
            path_str(&variant.path),
            path_str(&out),
            "-O",
            "raw",
            "--fill-unreadable",
            "zeros",
            "--json",
        ],
    );
    run.expect_code(1);
    let listed = union(unreadable_ranges(&run.json()));
    let damaged = union(damaged.to_vec());
    let lost = union(lost.to_vec());
    assert!(
        covered(&listed, &damaged),
        "{}: unreadable {listed:x?} reach outside the damaged clusters {damaged:x?}",
        variant.name
    );
    assert!(
        covered(&lost, &listed),
        "{}: unreadable {listed:x?} miss lost bytes {lost:x?}",
        variant.name
    );

    let got = std::fs::read(&out).expect("salvaged output");
    let want = std::fs::read(&fx.good_raw).expect("oracle");
    assert_eq!(got.len(), want.len(), "{}: output size", variant.name);
    let inside = |pos: usize| listed.iter().any(|r| r.contains(&(pos as u64)));
    let wrong = (0..got.len()).find(|&i| {
        if inside(i) {
            got[i] != 0
        } else {
            got[i] != want[i]
        }
    });
    assert!(
        wrong.is_none(),
        "{}: byte {:#x} is wrong (outside the unreadable ranges it must equal the good \
         image, inside them zero)",
        variant.name,
        wrong.unwrap_or(0)
    );

    let map = vdr(
        dir,
        &["map", "--salvage", path_str(&variant.path), "--json"],
    );
    assert!(
        map.code == 0 || map.code == 1,
        "{}: map exit {}",
        variant.name,
        map.code
    );
    let entries = parse_map(&map.json());
    let mapped = union(
        entries
            .iter()
            .filter(|e| e.unreadable)
            .map(|e| e.start..e.end())
            .collect(),
    );
    assert_eq!(mapped, listed, "{}: map and convert disagree", variant.name);
}

/// Runs the expectations of one variant and checks its input was not modified.
fn check_variant(name: &str) {
    let Some(fx) = fixture() else {
        return;
    };
    let variant = fx.variant(name);
    let before = sha256_file(&variant.path);
    match &variant.expect {
        Expect::Unreadable {
            structure,
            damaged,
            lost,
        } => {
            assert_strict_refusal(&fx, variant, structure);
            assert_salvage(&fx, variant, damaged, lost);
        }
        Expect::Refused { structure } => {
            assert_strict_refusal(&fx, variant, structure);
            let dir = fx.dir.path();
            let out = fx.out(&format!("{name}-salvage.raw"));
            let image = path_str(&variant.path);
            let salvage = vdr(
                dir,
                &["convert", "--salvage", image, path_str(&out), "-O", "raw"],
            );
            salvage.expect_code(2);
            assert!(salvage.stderr.contains("vdr: "), "{}", salvage.stderr);
            for mode in [&[][..], &["--salvage"][..]] {
                let mut args = vec!["info", image];
                args.extend(mode);
                vdr(dir, &args).expect_code(2);
            }
        }
        Expect::Leak { leaked_clusters } => {
            let dir = fx.dir.path();
            let image = path_str(&variant.path);
            let check = vdr(dir, &["check", image, "--json"]);
            check.expect_code(1);
            let report = check.json();
            assert_eq!(
                report["leaked_clusters"].as_u64(),
                Some(*leaked_clusters),
                "{report}"
            );
            assert!(
                report["errors"].as_array().is_some_and(Vec::is_empty),
                "a leak is not a corruption: {report}"
            );
            // A leak is harmless to the content: strict reading goes on.
            let out = fx.out("leak.raw");
            vdr(dir, &["convert", image, path_str(&out), "-O", "raw"]).expect_code(0);
            assert_same_content(name, &out, &fx.good_raw);
        }
    }
    assert_eq!(
        sha256_file(&variant.path),
        before,
        "{name}: the input was modified"
    );
}

#[test]
fn truncated_is_refused_strict_and_salvaged_around_the_lost_clusters() {
    check_variant("truncated");
}

#[test]
fn l2_entry_past_eof_is_refused_strict_and_salvaged_as_one_cluster() {
    check_variant("l2_past_eof");
}

#[test]
fn l1_entry_past_eof_is_refused_strict_and_salvaged_as_its_l2_range() {
    check_variant("l1_past_eof");
}

#[test]
fn zeroed_header_is_refused_in_both_modes() {
    check_variant("zeroed_header");
}

#[test]
fn refcount_leak_is_found_by_check_and_content_is_intact() {
    check_variant("refcount_leak");
}

/// `vdr check` on the good image is clean (exit 0), like `qemu-img check`.
#[test]
fn good_image_checks_clean() {
    let Some(fx) = fixture() else {
        return;
    };
    let good = fx.dir.path().join("good").join("good.qcow2");
    let run = vdr(fx.dir.path(), &["check", path_str(&good), "--json"]);
    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["leaked_clusters"].as_u64(), Some(0), "{report}");
    assert_eq!(report["supported"], Value::Bool(true), "{report}");
}

fn qemu_check_code(image: &Path) -> (i32, Value) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(image)
        .output()
        .expect("qemu-img check");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

/// The injector does what the names say, as qemu-img sees it: the leak is a leak (exit 3,
/// one cluster), the past-EOF variants are corruptions, the zeroed header does not open,
/// and qemu-img's reading of the salvageable variants differs from the good image only
/// inside the ranges the injector declares damaged. Needs no vdr.
#[test]
fn injected_damage_is_what_qemu_img_sees() {
    let Some(fx) = fixture() else {
        return;
    };
    let good = std::fs::read(&fx.good_raw).expect("good raw");
    for v in &fx.variants {
        let (code, report) = qemu_check_code(&v.path);
        match &v.expect {
            Expect::Leak { leaked_clusters } => {
                assert_eq!(code, 3, "{}: {report}", v.name);
                assert_eq!(report["leaks"].as_u64(), Some(*leaked_clusters), "{report}");
                assert!(report.get("corruptions").is_none(), "{report}");
            }
            Expect::Refused { .. } => {
                assert_ne!(code, 0, "{}: qemu-img check accepted it", v.name);
                let info = Command::new("qemu-img")
                    .arg("info")
                    .arg(&v.path)
                    .output()
                    .expect("qemu-img info");
                assert!(!info.status.success(), "{}: qemu-img opened it", v.name);
            }
            Expect::Unreadable { damaged, lost, .. } => {
                assert_ne!(
                    code, 0,
                    "{}: qemu-img check found nothing: {report}",
                    v.name
                );
                let raw = fx.out(&format!("{}-qemu.raw", v.name));
                let converted = Command::new("qemu-img")
                    .args(["convert", "-O", "raw"])
                    .arg(&v.path)
                    .arg(&raw)
                    .output()
                    .expect("qemu-img convert");
                if !converted.status.success() {
                    continue; // qemu refuses: nothing to compare
                }
                let theirs = std::fs::read(&raw).expect("qemu raw of variant");
                assert_eq!(theirs.len(), good.len(), "{}", v.name);
                let damaged = union(damaged.clone());
                let outside = (0..good.len()).find(|&i| {
                    good[i] != theirs[i] && !damaged.iter().any(|r| r.contains(&(i as u64)))
                });
                assert!(
                    outside.is_none(),
                    "{}: qemu-img reads a difference at {outside:#x?} outside {damaged:x?}",
                    v.name
                );
                let lost_nonzero = union(lost.clone()).iter().any(|r| {
                    good[r.start as usize..r.end as usize]
                        .iter()
                        .any(|&b| b != 0)
                });
                assert!(lost_nonzero, "{}: the lost bytes held no data", v.name);
            }
        }
    }
    assert!(fx.variants.len() >= 5);
}
