//! `vdr serve --nbd` against real NBD clients (qemu-img, qemu-io) and against a
//! hand-driven client that breaks the protocol: qemu-img reads through NBD exactly what it
//! reads from the file, sees the same holes, cannot write; malformed requests get the
//! protocol's errors or a closed connection while other clients are still served; a
//! damaged range read with --salvage fails with EIO and nothing else does.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use tempfile::TempDir;
use vdr_fixtures::damage::{write_variants, Expect};
use vdr_fixtures::qemu::{create, qemu_io};

mod nbd_client;
use nbd_client::*;

/// A running `vdr serve`, killed when dropped so no test leaves a server behind.
struct Served {
    child: Child,
    uri: String,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }
}

/// Starts `vdr serve ARGS` (with `--nbd` given in `args`) and waits for its "serving"
/// line; the rest of its stderr is collected in the background.
fn serve(dir: &Path, args: &[&str]) -> Served {
    let mut child = Command::new(vdr_bin())
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vdr serve");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read the serving line");
    let served = Served {
        child,
        uri: line.rsplit(" as ").next().unwrap_or("").trim().to_string(),
        port: 0,
        stderr: Arc::new(Mutex::new(line.clone())),
    };
    assert!(
        line.starts_with("serving ") && served.uri.starts_with("nbd"),
        "vdr serve {args:?}: {line}"
    );
    let rest = Arc::clone(&served.stderr);
    std::thread::spawn(move || {
        let mut line = String::new();
        while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
            rest.lock().expect("stderr lock").push_str(&line);
            line.clear();
        }
    });
    let port = served
        .uri
        .strip_prefix("nbd://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or(0);
    let mut served = served;
    served.port = port;
    served
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A qcow2 chain made by qemu-img: data in the base, data, zero clusters and
/// unallocated ranges in the top; and qemu-img's raw of it.
struct Chain {
    dir: TempDir,
    top: PathBuf,
    raw: PathBuf,
}

fn chain() -> Option<Chain> {
    if skip_without_qemu() {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("vdr-serve-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    create(d, "qcow2", "base.qcow2", "", None, "64M");
    qemu_io(
        d,
        "qcow2",
        "base.qcow2",
        &["write -P 0x11 0 4M", "write -P 0x22 20M 3M"],
    );
    create(
        d,
        "qcow2",
        "top.qcow2",
        "",
        Some(("base.qcow2", "qcow2")),
        "64M",
    );
    qemu_io(
        d,
        "qcow2",
        "top.qcow2",
        &[
            "write -P 0x33 1M 1M",
            "write -z 2M 1M",
            "write -P 0x44 40M 64k",
            "write -z 21M 512k",
            "write -P 0x55 63M 4k",
        ],
    );
    let top = d.join("top.qcow2");
    let raw = d.join("top.raw");
    qemu_raw(d, &top, &[], &raw);
    Some(Chain { dir, top, raw })
}

/// (start, length, data, zero) runs of a `qemu-img map --output=json`, neighbours with
/// the same flags merged: how reads would treat each range, whatever the layer.
fn allocation(entries: &[MapEntry]) -> Vec<(u64, u64, bool, bool)> {
    let mut out: Vec<(u64, u64, bool, bool)> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == e.start && (last.2, last.3) == (e.data, e.zero) => {
                last.1 += e.length;
            }
            _ => out.push((e.start, e.length, e.data, e.zero)),
        }
    }
    out
}

#[test]
fn qemu_img_reads_through_nbd_what_it_reads_from_the_file() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let inputs = [d.join("base.qcow2"), fx.top.clone()];
    let before: Vec<String> = inputs.iter().map(|p| sha256_file(p)).collect();
    let served = serve(
        d,
        &["top.qcow2", "--nbd", "127.0.0.1:0", "--export", "disk"],
    );
    assert!(served.uri.ends_with("/disk"), "{}", served.uri);

    let out = d.join("out.raw");
    let convert = run(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &served.uri,
            path_str(&out),
        ],
    );
    assert!(convert.status.success(), "{convert:?}");
    assert_eq!(
        sha256_file(&out),
        sha256_file(&fx.raw),
        "content through NBD"
    );

    let map = run(
        d,
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &served.uri],
    );
    assert!(map.status.success(), "{map:?}");
    let nbd_map = parse_map(&serde_json::from_slice(&map.stdout).expect("map JSON"));
    let file_map = qemu_map(d, &fx.top);
    assert_eq!(
        allocation(&nbd_map),
        allocation(&file_map),
        "holes and zeros"
    );
    assert!(
        allocation(&nbd_map).iter().any(|r| !r.2 && r.3),
        "the chain has holes that NBD must report"
    );

    let info = run(d, "qemu-img", &["info", "--output=json", &served.uri]);
    assert!(info.status.success(), "{info:?}");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("info JSON");
    assert_eq!(info["virtual-size"].as_u64(), Some(64 << 20));

    let after: Vec<String> = inputs.iter().map(|p| sha256_file(p)).collect();
    assert_eq!(before, after, "inputs unchanged");
    assert!(!served.stderr().contains("panicked"), "{}", served.stderr());
}

#[test]
fn writes_through_nbd_are_refused() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let before = sha256_file(&fx.top);
    let served = serve(d, &["top.qcow2", "--nbd", "127.0.0.1:0"]);
    let write = run(
        d,
        "qemu-io",
        &["-f", "raw", "-c", "write 0 512", &served.uri],
    );
    let text = String::from_utf8_lossy(&write.stdout).to_string()
        + &String::from_utf8_lossy(&write.stderr);
    assert!(
        !write.status.success() || text.contains("failed"),
        "write must fail: {text}"
    );
    assert!(
        text.contains("Permission denied")
            || text.contains("read-only")
            || text.contains("Operation not permitted"),
        "the refusal says why: {text}"
    );

    // a client that ignores the read-only flag gets EPERM for each write, and goes on
    let mut client = Client::connect(served.port);
    client.start();
    client.go(b"", false);
    let payload = [0xaau8; 512];
    client.request(0, CMD_WRITE, 1, 0, 512);
    client.stream.write_all(&payload).expect("payload");
    assert_eq!(client.simple_reply(1), EPERM);
    client.request(0, CMD_TRIM, 2, 0, 4096);
    assert_eq!(client.simple_reply(2), EPERM);
    client.request(0, CMD_WRITE_ZEROES, 3, 0, 4096);
    assert_eq!(client.simple_reply(3), EPERM);
    client.request(0, CMD_FLUSH, 4, 0, 0);
    assert_eq!(client.simple_reply(4), 0);
    assert_eq!(
        client.read(5, 0, 512),
        Ok(std::fs::read(&fx.raw).expect("raw")[..512].to_vec())
    );
    assert_eq!(sha256_file(&fx.top), before, "input unchanged");
}

#[test]
fn malformed_clients_get_errors_while_others_are_served() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let served = serve(
        d,
        &["top.qcow2", "--nbd", "127.0.0.1:0", "--export", "disk"],
    );
    let raw = std::fs::read(&fx.raw).expect("raw");

    // a client that stalls in the handshake holds its connection throughout
    let mut stalled = Client::connect(served.port);
    stalled.greeting();

    let mut bad_flags = Client::connect(served.port);
    bad_flags.greeting();
    bad_flags
        .stream
        .write_all(&0xffff_ffffu32.to_be_bytes())
        .expect("flags");
    assert!(
        bad_flags.is_closed(),
        "unknown client flags close the connection"
    );

    let mut bad_magic = Client::connect(served.port);
    bad_magic.start();
    bad_magic
        .stream
        .write_all(b"NOTAMAGI\0\0\0\x07\0\0\0\0")
        .expect("option");
    assert!(
        bad_magic.is_closed(),
        "a bad option magic closes the connection"
    );

    let mut huge = Client::connect(served.port);
    huge.start();
    huge.option_header(OPT_GO, 0xffff_fff0);
    let (option, reply, _) = huge.option_reply();
    assert_eq!((option, reply), (OPT_GO, REP_ERR_TOO_BIG));
    assert!(
        huge.is_closed(),
        "an oversized option closes the connection"
    );

    let mut haggler = Client::connect(served.port);
    haggler.start();
    haggler.option(99, b"");
    assert_eq!(haggler.option_reply().1, REP_ERR_UNSUP);
    haggler.option(OPT_LIST, b"");
    let (_, reply, data) = haggler.option_reply();
    assert_eq!((reply, &data[4..]), (REP_SERVER, &b"disk"[..]));
    assert_eq!(haggler.option_reply().1, REP_ACK);
    haggler.option(OPT_GO, &info_request(b"nope"));
    assert_eq!(haggler.option_reply().1, REP_ERR_UNKNOWN);
    haggler.option(OPT_SET_META_CONTEXT, b"");
    assert_eq!(
        haggler.option_reply().1,
        REP_ERR_INVALID,
        "meta contexts need structured replies"
    );
    haggler.go(b"disk", false);
    let size = raw.len() as u64;
    assert_eq!(
        haggler.read(1, size - 512, 1024),
        Err(EINVAL),
        "read past the end"
    );
    assert_eq!(
        haggler.read(2, u64::MAX - 10, 512),
        Err(EINVAL),
        "offset overflow"
    );
    assert_eq!(
        haggler.read(3, 0, 64 << 20),
        Err(EINVAL),
        "read over the maximum block size"
    );
    haggler.request(0, CMD_BLOCK_STATUS, 4, 0, 4096);
    assert_eq!(
        haggler.simple_reply(4),
        EINVAL,
        "block status without a context"
    );
    assert_eq!(
        haggler.read(5, 1 << 20, 4096),
        Ok(raw[1 << 20..(1 << 20) + 4096].to_vec())
    );
    haggler.stream.write_all(&[0x55; 28]).expect("bad request");
    assert!(
        haggler.is_closed(),
        "a bad request magic closes the connection"
    );

    // meanwhile a well-behaved client is served in full
    let out = d.join("out.raw");
    let convert = run(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &served.uri,
            path_str(&out),
        ],
    );
    assert!(convert.status.success(), "{convert:?}");
    assert_eq!(sha256_file(&out), sha256_file(&fx.raw));
    drop(stalled);
    let log = served.stderr();
    assert!(
        log.contains("bad request magic"),
        "the server says why it closed: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn structured_reads_send_holes_and_block_status_reports_them() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let served = serve(d, &["top.qcow2", "--nbd", "127.0.0.1:0"]);
    let raw = std::fs::read(&fx.raw).expect("raw");
    let mut client = Client::connect(served.port);
    client.start();
    client.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(client.option_reply().1, REP_ACK);
    client.option(
        OPT_SET_META_CONTEXT,
        &meta_request(b"", &[b"base:allocation"]),
    );
    let (_, reply, data) = client.option_reply();
    assert_eq!(
        (reply, &data[4..]),
        (REP_META_CONTEXT, &b"base:allocation"[..])
    );
    let context = u32::from_be_bytes(data[..4].try_into().expect("id"));
    assert_eq!(client.option_reply().1, REP_ACK);
    client.go(b"", true);

    // 1 MiB of data (top), 1 MiB zero cluster, 1 MiB data (base), 1 MiB unallocated
    let chunks = client.structured_read(7, 1 << 20, 4 << 20, 0);
    let mut holes = 0;
    for chunk in &chunks {
        match chunk {
            Chunk::Data(offset, data) => {
                let at = *offset as usize;
                assert_eq!(&data[..], &raw[at..at + data.len()], "data at {offset:#x}");
            }
            Chunk::Hole(offset, len) => {
                holes += len;
                let at = *offset as usize;
                assert!(raw[at..at + *len as usize].iter().all(|&b| b == 0));
            }
            Chunk::Error(error, _) => panic!("error {error}"),
        }
    }
    assert_eq!(holes, 2 << 20, "the zero cluster and the unallocated MiB");

    // don't fragment: one data chunk with the zeros written out
    let chunks = client.structured_read(8, 1 << 20, 2 << 20, DF);
    assert!(
        matches!(&chunks[..], [Chunk::Data(o, data)] if *o == 1 << 20 && data[..] == raw[1 << 20..3 << 20])
    );

    let status = client.block_status(9, 0, 8 << 20, context);
    assert_eq!(
        status,
        vec![(2 << 20, 0), (1 << 20, 3), (1 << 20, 0), (4 << 20, 3)],
        "data, zero cluster, base data, unallocated"
    );
    let status = client.block_status_flags(10, 2 << 20, 8 << 20, context, REQ_ONE);
    assert_eq!(status, vec![(1 << 20, 3)]);
}

#[test]
fn damaged_ranges_read_eio_and_the_rest_reads_fine() {
    if skip_without_qemu() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("vdr-serve-damage-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    create(d, "qcow2", "good.qcow2", "cluster_size=4096", None, "6M");
    qemu_io(
        d,
        "qcow2",
        "good.qcow2",
        &[
            "write -P 0x01 0x0 0x1000",
            "write -P 0x02 0x200000 0x1000",
            "write -P 0x03 0x400000 0x1000",
            "write -P 0x11 0x1234 0x40000",
            "write -P 0x14 0x500000 0x80000",
        ],
    );
    let good_raw = d.join("good.raw");
    qemu_raw(d, &d.join("good.qcow2"), &[], &good_raw);
    let variants_dir = d.join("in");
    std::fs::create_dir(&variants_dir).expect("mkdir");
    let variants = write_variants(&d.join("good.qcow2"), &variants_dir).expect("damage");
    let variant = variants
        .iter()
        .find(|v| v.name == "l2_past_eof")
        .expect("variant");
    let Expect::Unreadable { lost, .. } = &variant.expect else {
        panic!("l2_past_eof loses data");
    };
    let before = sha256_file(&variant.path);
    let served = serve(
        d,
        &[path_str(&variant.path), "--nbd", "127.0.0.1:0", "--salvage"],
    );
    let good = std::fs::read(&good_raw).expect("raw");

    let lost = lost.first().expect("a lost range").clone();
    let read_lost = run(
        d,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            &format!("read {} 4096", lost.start),
            &served.uri,
        ],
    );
    let text = String::from_utf8_lossy(&read_lost.stdout).to_string()
        + &String::from_utf8_lossy(&read_lost.stderr);
    assert!(
        text.contains("Input/output error"),
        "a damaged range reads EIO: {text}"
    );

    // every range outside the lost one reads as the good image, over plain and
    // structured replies
    for structured in [false, true] {
        let mut client = Client::connect(served.port);
        client.start();
        if structured {
            client.option(OPT_STRUCTURED_REPLY, b"");
            assert_eq!(client.option_reply().1, REP_ACK);
        }
        client.go(b"", structured);
        let mut cookie = 100;
        for offset in (0..good.len() as u64).step_by(64 << 10) {
            let range = offset..offset + (64 << 10);
            let touches = range.start < lost.end && lost.start < range.end;
            cookie += 1;
            let got = if structured {
                client.structured_read_all(cookie, offset, 64 << 10)
            } else {
                client.read(cookie, offset, 64 << 10)
            };
            if touches {
                assert_eq!(got, Err(EIO), "{offset:#x}: unreadable");
            } else {
                assert_eq!(
                    got.as_deref(),
                    Ok(&good[range.start as usize..range.end as usize]),
                    "{offset:#x}"
                );
            }
        }
    }
    assert_eq!(sha256_file(&variant.path), before, "input unchanged");
}

#[test]
fn unix_socket_serves_and_sigterm_stops_the_server() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let socket = d.join("nbd.sock");
    let mut served = serve(
        d,
        &["top.qcow2", "--nbd", &format!("unix:{}", socket.display())],
    );
    let info = run(d, "qemu-img", &["info", "--output=json", &served.uri]);
    assert!(info.status.success(), "{info:?} {}", served.uri);

    // SAFETY: sends SIGTERM to the child this test started and still owns.
    let sent = unsafe { libc::kill(served.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let status = served.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "a clean stop: {}", served.stderr());
    assert!(!socket.exists(), "the socket file is removed");
}

#[test]
fn min_hole_reports_short_holes_between_data_as_data_and_content_stays() {
    let Some(fx) = chain() else { return };
    let d = fx.dir.path();
    let served = serve(
        d,
        &["top.qcow2", "--nbd", "127.0.0.1:0", "--min-hole", "2097152"],
    );
    let mut client = Client::connect(served.port);
    client.start();
    client.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(client.option_reply().1, REP_ACK);
    client.option(
        OPT_SET_META_CONTEXT,
        &meta_request(b"", &[b"base:allocation"]),
    );
    let (_, _, data) = client.option_reply();
    let context = u32::from_be_bytes(data[..4].try_into().expect("id"));
    assert_eq!(client.option_reply().1, REP_ACK);
    client.go(b"", true);
    // the 1 MiB zero cluster at 2 MiB lies between data: reported as data; the 16 MiB
    // unallocated range after 4 MiB stays a hole
    let status = client.block_status(1, 0, 8 << 20, context);
    assert_eq!(status, vec![(4 << 20, 0), (4 << 20, 3)]);
    // reads still send it as a hole
    let chunks = client.structured_read(2, 2 << 20, 1 << 20, 0);
    assert!(matches!(&chunks[..], [Chunk::Hole(o, l)] if *o == 2 << 20 && *l == 1 << 20));
    drop(client);

    let out = d.join("out.raw");
    let convert = run(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &served.uri,
            path_str(&out),
        ],
    );
    assert!(convert.status.success(), "{convert:?}");
    assert_eq!(sha256_file(&out), sha256_file(&fx.raw));
}
