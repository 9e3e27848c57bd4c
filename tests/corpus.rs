//! The acceptance check of ../shared/corpus/check.sh, for every row of its MANIFEST.tsv
//! (qcow2 and every VMDK kind; `extent` rows are data files of a multi-file image, read
//! through their descriptor's row): every row with a hash converts to exactly those bytes
//! (and each snapshot view the notes list, to its hash); rows with oracle `none` fail
//! cleanly: exit neither 0 nor 101, no signal or timeout, a message.
//!
//! The raw output is written sparse: the 16 GiB streamOptimized sample (604 KiB of data)
//! converts in about a second and its output must allocate little; hashing its 16 GiB
//! of (mostly hole) output is what takes time, so it goes through openssl when present.
//!
//! The corpus is found at `$VDR_CORPUS` or `../shared/corpus` beside the repository, and
//! skipped when absent. It is copied to a temp dir first and the copy's hashes are
//! verified afterwards against SHA256SUMS: the corpus itself is never opened by vdr.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::vdr_bin;

/// Per-file limits, as check.sh sets them.
const TIMEOUT_S: &str = "300";
const MEM_LIMIT_KB: &str = "8388608";

/// One MANIFEST.tsv row (the columns this check uses).
struct Row {
    file: String,
    sha256: String,
    oracle: String,
    notes: String,
}

fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("VDR_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"),
    };
    dir.join("MANIFEST.tsv").is_file().then_some(dir)
}

fn parse_manifest(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            Row {
                file: field(0),
                sha256: field(6),
                oracle: field(7),
                notes: field(8),
            }
        })
        .collect()
}

/// Snapshot views listed in the notes as "ID <n> <sha256>".
fn snapshot_views(notes: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = notes
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == ':')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(3)
        .filter(|w| {
            w[0] == "ID"
                && w[1].chars().all(|c| c.is_ascii_digit())
                && w[2].len() == 64
                && w[2].chars().all(|c| c.is_ascii_hexdigit())
        })
        .map(|w| (w[1].to_string(), w[2].to_string()))
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read corpus") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            let mut perms = std::fs::metadata(&target).expect("meta").permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&target, perms).expect("chmod");
        }
    }
}

/// sha256 through openssl (the CPU's SHA instructions) or coreutils: outputs are up to
/// 16 GiB (sparse), which an unoptimised test build of sha2 would hash far too slowly.
fn sha256sum(path: &Path) -> String {
    let tools: [(&str, &[&str]); 2] = [("openssl", &["dgst", "-sha256", "-r"]), ("sha256sum", &[])];
    for (tool, args) in tools {
        let Ok(out) = Command::new(tool).args(args).arg(path).output() else {
            continue;
        };
        let hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        if out.status.success() && hex.len() == 64 {
            return hex;
        }
    }
    panic!(
        "neither openssl nor sha256sum could hash {}",
        path.display()
    );
}

/// Longest a conversion may take (the hash is not counted): the largest row is 16 GiB
/// virtual with 604 KiB of data; a writer that writes its zeros takes minutes.
const CONVERT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most disk space an output may take beyond its data: the raw writer leaves zeros as
/// holes.
const SPARSE_SLACK: u64 = 64 << 20;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `vdr ARGS` under check.sh's limits (timeout, address-space cap), in `dir`.
fn run_limited(dir: &Path, args: &[&str]) -> Outcome {
    let script = format!("ulimit -v {MEM_LIMIT_KB}; exec timeout -k 5 {TIMEOUT_S} \"$@\"");
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(vdr_bin())
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vdr");
    Outcome {
        // a signal shows as 128+n, as in a shell
        code: out.status.code().unwrap_or(128),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// Converts `input` (optionally a snapshot of it) and compares with `want`; None when
/// it matches, else what went wrong.
fn converts_to(out_dir: &Path, input: &Path, snapshot: Option<&str>, want: &str) -> Option<String> {
    let out = out_dir.join("out.raw");
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "convert",
        input.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
        "-O",
        "raw",
        "--json",
    ];
    if let Some(s) = snapshot {
        args.extend(["--snapshot", s]);
    }
    let started = std::time::Instant::now();
    let run = run_limited(out_dir, &args);
    let took = started.elapsed();
    let result = if run.code == 101 || run.stderr.contains("panicked at") {
        Some(format!(
            "panic (rc={}): {}",
            run.code,
            first_line(&run.stderr)
        ))
    } else if run.code != 0 {
        Some(format!(
            "convert failed (rc={}): {}",
            run.code,
            first_line(&run.stderr)
        ))
    } else if !out.is_file() {
        Some("exit 0 but no output file".to_string())
    } else if took > CONVERT_LIMIT {
        Some(format!("convert took {took:?} (limit {CONVERT_LIMIT:?})"))
    } else if let Some(p) = not_sparse(&run.stdout, &out) {
        Some(p)
    } else {
        let got = sha256sum(&out);
        (got != want).then(|| format!("sha256 {got} != {want}"))
    };
    let _ = std::fs::remove_file(&out);
    result
}

/// Whether the raw output `out` allocates more than the data bytes the conversion report
/// (`--json`) counts, plus slack: zeros must be left as holes.
fn not_sparse(report: &str, out: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let report: serde_json::Value = serde_json::from_str(report).ok()?;
    let data = report["data_bytes"].as_u64()?;
    let allocated = std::fs::metadata(out).ok()?.blocks() * 512;
    (allocated > data + SPARSE_SLACK)
        .then(|| format!("output allocates {allocated} bytes for {data} data bytes: not sparse"))
}

fn rejects_cleanly(out_dir: &Path, input: &Path) -> Option<String> {
    let out = out_dir.join("out.raw");
    let args = [
        "convert",
        input.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
        "-O",
        "raw",
    ];
    let run = run_limited(out_dir, &args);
    let _ = std::fs::remove_file(&out);
    let msg = first_line(&run.stderr);
    if run.code == 101 || run.stderr.contains("panicked at") {
        Some(format!("panic (rc={}): {msg}", run.code))
    } else if run.code == 0 {
        Some("accepted an input that should be rejected (rc=0)".into())
    } else if run.code == 124 || run.code >= 128 {
        Some(format!("timeout/signal/OOM (rc={}): {msg}", run.code))
    } else if msg.is_empty() {
        Some(format!(
            "failed (rc={}) but printed no error message",
            run.code
        ))
    } else {
        None
    }
}

#[test]
fn corpus_rows_convert_to_their_hashes_or_fail_cleanly() {
    let Some(corpus) = corpus_dir() else {
        println!("SKIP: corpus not found (set VDR_CORPUS or place ../shared/corpus)");
        return;
    };
    let manifest = std::fs::read_to_string(corpus.join("MANIFEST.tsv")).expect("manifest");
    let rows: Vec<Row> = parse_manifest(&manifest)
        .into_iter()
        .filter(|r| r.oracle != "extent")
        .collect();
    assert!(!rows.is_empty(), "no rows in {}", corpus.display());

    let tmp = tempfile::Builder::new()
        .prefix("vdr-corpus-")
        .tempdir()
        .expect("tempdir");
    let input = tmp.path().join("in");
    let out_dir = tmp.path().join("out");
    copy_tree(&corpus, &input);
    std::fs::create_dir(&out_dir).expect("mkdir out");

    let mut failures = Vec::new();
    let mut passed = 0;
    let mut verdict = |what: String, problem: Option<String>| match problem {
        None => {
            println!("PASS\t{what}");
            passed += 1;
        }
        Some(p) => {
            println!("FAIL\t{what}\t{p}");
            failures.push(format!("{what}: {p}"));
        }
    };
    for row in &rows {
        let path = input.join(&row.file);
        if row.oracle == "none" {
            verdict(row.file.clone(), rejects_cleanly(&out_dir, &path));
            continue;
        }
        if row.sha256.len() != 64 {
            verdict(
                row.file.clone(),
                Some(format!("row has no hash (oracle {})", row.oracle)),
            );
            continue;
        }
        verdict(
            row.file.clone(),
            converts_to(&out_dir, &path, None, &row.sha256),
        );
        for (id, sha) in snapshot_views(&row.notes) {
            verdict(
                format!("{} --snapshot {id}", row.file),
                converts_to(&out_dir, &path, Some(&id), &sha),
            );
        }
    }

    // the copies must be unchanged
    let sums = std::fs::read_to_string(input.join("SHA256SUMS")).unwrap_or_default();
    for line in sums.lines() {
        let Some((sha, name)) = line.split_once("  ") else {
            continue;
        };
        let path = input.join(name.trim_start_matches("./"));
        if path.is_file() && sha256sum(&path) != sha {
            verdict(format!("(input) {name}"), Some("modified by vdr".into()));
        }
    }
    println!("{passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn snapshot_views_are_read_from_the_notes() {
    let notes = "the hash is the active layer. Snapshot views (qemu-img convert -l \
                 snapshot.id=N -O raw): ID 1 dcaa5c00cf9dd477e4f866cc492007d28800938c634db39710f6634afef69aee, \
                 ID 2 0b3429b0a152c45d87f4e1068b9030c47490da4f29089bf8152d526944e771a7.";
    let views = snapshot_views(notes);
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].0, "1");
    assert!(views[1].1.starts_with("0b3429b0"));
}
