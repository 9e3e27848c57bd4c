//! The matrix harness: a `Case` is an image set built with qemu-img/qemu-io in a temp
//! dir, and `verify` runs the checks of tests/qemu_matrix.rs and tests/qemu_chain.rs on it:
//!
//! (a) `vdr convert -O raw` has the bytes of `qemu-img convert -O raw` (and `vdr compare`
//!     agrees);
//! (b) `vdr map --json` agrees with `qemu-img map --output=json` (see `merge_flags`,
//!     `data_offsets`);
//! (c) `vdr convert -O qcow2` (plain, `-c`, `-c --compression zstd`, two threads) passes
//!     `qemu-img check` and `qemu-img compare` with the source;
//! (d) no input file changed;
//! (e) `vdr info --json` reports version, cluster size, chain, snapshots, data file;
//!     and each internal snapshot converts like `qemu-img convert -l snapshot.name=S`.

use std::path::PathBuf;

use serde_json::Value;
use tempfile::TempDir;
use vdr_fixtures::qemu::{create, qemu_img, qemu_io};

use super::*;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// What `vdr info --json` must say about one layer (leaf first).
pub struct Layer {
    pub format: &'static str,
    /// qcow2 version ("2", "3") and cluster size; None for raw layers.
    pub qcow2: Option<(&'static str, u64)>,
    /// Backing file name and format as the layer records them.
    pub backing: Option<(&'static str, &'static str)>,
}

/// One image of the matrix, built in `dir/in`.
pub struct Case {
    pub name: &'static str,
    pub dir: TempDir,
    pub image: &'static str,
    pub layers: Vec<Layer>,
    pub features: Vec<&'static str>,
    pub snapshots: Vec<&'static str>,
    pub data_file: Option<&'static str>,
}

impl Case {
    pub fn new(name: &'static str, image: &'static str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdr-{name}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("in")).expect("mkdir in");
        std::fs::create_dir(dir.path().join("out")).expect("mkdir out");
        Case {
            name,
            dir,
            image,
            layers: Vec::new(),
            features: Vec::new(),
            snapshots: Vec::new(),
            data_file: None,
        }
    }

    pub fn input(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    pub fn layer(mut self, format: &'static str, qcow2: Option<(&'static str, u64)>) -> Case {
        self.layers.push(Layer {
            format,
            qcow2,
            backing: None,
        });
        self
    }

    pub fn backed_by(mut self, name: &'static str, format: &'static str) -> Case {
        self.layers.last_mut().expect("a layer first").backing = Some((name, format));
        self
    }

    pub fn io(&self, format: &str, image: &str, commands: &[String]) {
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        qemu_io(&self.input(), format, image, &commands);
    }

    pub fn create(&self, format: &str, name: &str, options: &str, size: u64) -> PathBuf {
        create(
            &self.input(),
            format,
            name,
            options,
            None,
            &size.to_string(),
        )
    }

    pub fn create_over(
        &self,
        name: &str,
        options: &str,
        backing: (&str, &str),
        size: u64,
    ) -> PathBuf {
        create(
            &self.input(),
            "qcow2",
            name,
            options,
            Some(backing),
            &size.to_string(),
        )
    }

    pub fn img(&self, args: &[&str]) {
        qemu_img(&self.input(), args);
    }
}

/// `write -P` commands with distinct patterns at odd offsets, partial clusters, across
/// cluster boundaries and on the last bytes of a `size`-byte disk with `cs`-byte clusters
/// (spots past the end of a small disk with huge clusters are left out).
pub fn patterns(size: u64, cs: u64, first: u8) -> Vec<String> {
    let spots = [
        (0, cs.min(64 * KIB)),
        (cs + 0x1234, 0x3011),
        (3 * cs + 7, cs / 2 + 99),
        (size / 2 - 777, 2 * cs + 1555),
        (size / 3 + 5, 64 * KIB),
        (size - 1001, 1001),
    ];
    spots
        .iter()
        .enumerate()
        .filter(|(_, &(off, _))| off < size)
        .map(|(i, &(off, len))| {
            let len = len.min(size - off);
            format!(
                "write -P {:#04x} {off:#x} {len:#x}",
                first.wrapping_add(i as u8)
            )
        })
        .collect()
}

/// Zero writes and discards over data that `patterns` wrote: whole clusters (zero flag in
/// v3) and unaligned pieces (qemu writes zeros or leaves the cluster).
pub fn zero_and_discard(size: u64, cs: u64) -> Vec<String> {
    let down = |x: u64| x / cs * cs;
    let ops = [
        ("write -z", cs, cs),
        ("write -z", size / 2, 0x300),
        ("discard", down(size / 3 + 5), cs),
        ("discard", 3 * cs + 512, 0x200),
        (
            "write -P 0x7e",
            down(size / 3 + 5) + 1024.min(cs / 2),
            0x200,
        ),
    ];
    ops.iter()
        .filter(|&&(_, off, _)| off < size)
        .map(|&(op, off, len)| format!("{op} {off:#x} {:#x}", len.min(size - off)))
        .collect()
}

/// Runs checks (a)–(e) on a built case.
pub fn verify(case: &Case) {
    let dir = case.input();
    let image = dir.join(case.image);
    let image_s = image.to_str().expect("utf-8");
    let before = hash_tree(&dir);

    // (a) raw content
    let want = case.out("qemu.raw");
    qemu_raw(&dir, &image, &[], &want);
    let got = case.out("vdr.raw");
    let report = vdr(
        &dir,
        &[
            "convert",
            image_s,
            got.to_str().unwrap(),
            "-O",
            "raw",
            "--json",
        ],
    );
    report.expect_code(0);
    assert_same_content(case.name, &got, &want);
    let report = report.json();
    let size = std::fs::metadata(&want).expect("oracle").len();
    assert_eq!(report["virtual_size"].as_u64(), Some(size), "{report}");
    assert_eq!(report["unreadable"], Value::Array(vec![]), "{report}");
    let cmp = vdr(
        &dir,
        &["compare", image_s, want.to_str().unwrap(), "--json"],
    );
    cmp.expect_code(0);
    assert_eq!(cmp.json()["identical"], Value::Bool(true), "{}", cmp.stdout);

    // (b) map
    let theirs = qemu_map(&dir, &image);
    let run = vdr(&dir, &["map", image_s, "--json"]);
    run.expect_code(0);
    let ours = parse_map(&run.json());
    assert_tiles(case.name, &ours, size);
    assert_eq!(
        merge_flags(&ours),
        merge_flags(&theirs),
        "{}: map differs from qemu-img map",
        case.name
    );
    assert_eq!(
        data_offsets(&ours),
        data_offsets(&theirs),
        "{}: data offsets differ from qemu-img map",
        case.name
    );

    // (c) qcow2 output, plain and compressed, two threads
    let variants: [(&str, &[&str]); 3] = [
        ("plain", &[]),
        ("deflate", &["-c"]),
        ("zstd", &["-c", "--compression", "zstd"]),
    ];
    for (label, extra) in variants {
        let out = case.out(&format!("vdr-{label}.qcow2"));
        let out_s = out.to_str().unwrap();
        let mut args = vec!["convert", image_s, out_s, "-O", "qcow2", "--threads", "2"];
        args.extend(extra);
        vdr(&dir, &args).expect_code(0);
        assert_qemu_check_clean(&dir, &out);
        assert_qemu_identical(&dir, &image, &out);
    }

    // internal snapshots: vdr convert --snapshot S == qemu-img convert -l snapshot.name=S
    for snap in &case.snapshots {
        let want = case.out(&format!("qemu-{snap}.raw"));
        let opt = format!("snapshot.name={snap}");
        qemu_raw(&dir, &image, &["-l", &opt], &want);
        let got = case.out(&format!("vdr-{snap}.raw"));
        vdr(
            &dir,
            &[
                "convert",
                image_s,
                got.to_str().unwrap(),
                "-O",
                "raw",
                "--snapshot",
                snap,
            ],
        )
        .expect_code(0);
        assert_same_content(&format!("{} snapshot {snap}", case.name), &got, &want);
    }

    // (e) info
    let info = vdr(&dir, &["info", image_s, "--json"]);
    info.expect_code(0);
    check_info(case, &info.json(), size);

    // (d) the inputs are untouched
    assert_eq!(
        hash_tree(&dir),
        before,
        "{}: an input file changed",
        case.name
    );
}

fn check_info(case: &Case, info: &Value, size: u64) {
    let name = case.name;
    assert_eq!(info["format"], "qcow2", "{name}: {info}");
    assert_eq!(info["virtual_size"].as_u64(), Some(size), "{name}: {info}");
    let layers = info["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), case.layers.len(), "{name}: layers: {info}");
    assert_eq!(
        info["chain_depth"].as_u64(),
        Some(case.layers.len() as u64),
        "{name}: chain_depth counts the layers: {info}"
    );
    for (got, want) in layers.iter().zip(&case.layers) {
        assert_eq!(got["format"], want.format, "{name}: {got}");
        if let Some((version, cluster_size)) = want.qcow2 {
            assert_eq!(got["format_version"], version, "{name}: {got}");
            assert_eq!(
                got["cluster_size"].as_u64(),
                Some(cluster_size),
                "{name}: {got}"
            );
        }
        match want.backing {
            Some((file, format)) => {
                assert_eq!(got["backing"]["name"], file, "{name}: {got}");
                assert_eq!(got["backing"]["format"], format, "{name}: {got}");
            }
            None => assert!(got["backing"].is_null(), "{name}: {got}"),
        }
    }
    let leaf = &layers[0];
    let features: Vec<&str> = leaf["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for f in &case.features {
        assert!(features.contains(f), "{name}: feature {f} missing: {leaf}");
    }
    let snapshots: Vec<&str> = leaf["snapshots"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(snapshots, case.snapshots, "{name}: snapshots: {leaf}");
    match case.data_file {
        Some(file) => assert_eq!(leaf["data_file"], file, "{name}: {leaf}"),
        None => assert!(leaf["data_file"].is_null(), "{name}: {leaf}"),
    }
}
