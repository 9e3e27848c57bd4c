//! `vdr mount` / `vdr umount` against the kernel's FUSE: the content of `disk.raw` equals
//! qemu-img's raw of the same image, a partition holding ext4 is mountable and `fsck -n`
//! clean, damage reads as EIO exactly where it is, a datastore mounts as its tree, and
//! the mount goes away on SIGTERM and on `vdr umount`. Needs root, /dev/fuse and
//! fusermount3 (SKIP otherwise); every mount is unmounted by a Drop guard.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sha256_file, skip_without_qemu, vdr, vdr_bin};
use vdr_fixtures::damage::{write_variants, Expect};
use vdr_fixtures::qemu::{create, qemu_io};

/// The SKIP reason when the FUSE tests cannot run here.
fn fuse_missing() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse missing");
    }
    if !on_path("fusermount3") {
        return Some("fusermount3 (fuse3) missing");
    }
    None
}

/// True when `tool` is an executable in a directory of PATH (or /sbin, /usr/sbin).
fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default() + ":/sbin:/usr/sbin";
    path.split(':')
        .any(|dir| Path::new(dir).join(tool).is_file())
}

fn skip() -> bool {
    if let Some(why) = fuse_missing() {
        println!("SKIP: {why}");
        return true;
    }
    skip_without_qemu()
}

/// True when `path` is a vdr FUSE mount point now.
fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_str().expect("utf-8 path");
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path) && l.contains(" - fuse") && l.contains(" vdr "))
}

/// A `vdr mount --foreground` process; Drop ends it and makes sure nothing stays mounted.
struct Mount {
    child: Option<Child>,
    point: PathBuf,
}

impl Mount {
    fn new(source: &Path, point: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(point).expect("mkdir");
        let point = point.canonicalize().expect("canonical");
        let child = Command::new(vdr_bin())
            .arg("mount")
            .arg(source)
            .arg(&point)
            .arg("--foreground")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vdr mount");
        let mut mount = Mount {
            child: Some(child),
            point,
        };
        let start = Instant::now();
        while !is_mounted(&mount.point) {
            if let Some(status) = mount.child_mut().try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = mount.child_mut().stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("vdr mount ended ({status}) before mounting: {err}");
            }
            assert!(start.elapsed() < Duration::from_secs(60), "mount timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.point.join(name)
    }

    fn signal(&mut self, signal: i32) {
        let pid = self.child_mut().id() as i32;
        // SAFETY: kill on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for the process to end and returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("vdr mount did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            let _ = self.wait();
        }
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

fn qemu_raw(dir: &Path, image: &Path, out: &Path) {
    vdr_fixtures::qemu::qemu_img(
        dir,
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
}

#[test]
fn qcow2_chain_reads_as_qemu_img_raw() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "qcow2", "base.qcow2", "cluster_size=65536", None, "8M");
    qemu_io(
        d,
        "qcow2",
        "base.qcow2",
        &["write -P 0x11 0 1M", "write -P 0x12 3M 512k"],
    );
    create(
        d,
        "qcow2",
        "leaf.qcow2",
        "cluster_size=4096",
        Some(("base.qcow2", "qcow2")),
        "8M",
    );
    qemu_io(
        d,
        "qcow2",
        "leaf.qcow2",
        &["write -P 0x21 512k 1M", "write -z 3M 64k"],
    );
    let leaf = d.join("leaf.qcow2");
    let want = d.join("want.raw");
    qemu_raw(d, &leaf, &want);
    let before = [sha256_file(&leaf), sha256_file(&d.join("base.qcow2"))];

    let mount = Mount::new(&leaf, &d.join("mnt"), &[]);
    assert_eq!(sha256_file(&mount.path("disk.raw")), sha256_file(&want));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mount.path("info.json")).unwrap()).unwrap();
    assert_eq!(info["virtual_size"], 8 << 20);
    assert_eq!(info["layers"].as_array().map(Vec::len), Some(2));
    assert!(File::options()
        .write(true)
        .open(mount.path("disk.raw"))
        .is_err());
    drop(mount);
    assert_eq!(
        before,
        [sha256_file(&leaf), sha256_file(&d.join("base.qcow2"))]
    );
}

#[test]
fn stream_optimized_vmdk_reads_as_qemu_img_raw() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "qcow2", "src.qcow2", "", None, "16M");
    qemu_io(
        d,
        "qcow2",
        "src.qcow2",
        &["write -P 0x31 0 3M", "write -P 0x32 9M 100k"],
    );
    let vmdk = d.join("stream.vmdk");
    vdr_fixtures::qemu::qemu_img(
        d,
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "src.qcow2",
            "stream.vmdk",
        ],
    );
    let want = d.join("want.raw");
    qemu_raw(d, &vmdk, &want);
    let mount = Mount::new(&vmdk, &d.join("mnt"), &[]);
    assert_eq!(sha256_file(&mount.path("disk.raw")), sha256_file(&want));
}

/// A 64 MiB disk with a GPT (sfdisk) and one ext4 partition holding a file, as qcow2.
fn ext4_disk(d: &Path) -> Option<PathBuf> {
    for tool in ["sfdisk", "mkfs.ext4", "fsck.ext4"] {
        if !on_path(tool) {
            println!("SKIP: {tool} missing");
            return None;
        }
    }
    let files = d.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("hello.txt"), b"hello from p1\n").unwrap();
    let part = d.join("part.ext4");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(&part)
        .arg("40M")
        .status()
        .unwrap();
    assert!(ok.success(), "mkfs.ext4");
    let raw = d.join("disk.raw");
    let disk = File::create(&raw).unwrap();
    disk.set_len(64 << 20).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=81920, type=L\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk");
    let ext4 = std::fs::read(&part).unwrap();
    disk.write_all_at(&ext4, 1 << 20).unwrap();
    drop(disk);
    let qcow2 = d.join("disk.qcow2");
    vdr_fixtures::qemu::qemu_img(d, &["convert", "-O", "qcow2", "disk.raw", "disk.qcow2"]);
    Some(qcow2)
}

#[test]
fn gpt_partition_with_ext4_mounts_and_fscks_clean() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(qcow2) = ext4_disk(d) else { return };
    let mount = Mount::new(&qcow2, &d.join("mnt"), &[]);
    let p1 = mount.path("p1.raw");
    assert_eq!(sha256_file(&p1), sha256_file(&d.join("part.ext4")));
    let fsck = Command::new("fsck.ext4")
        .args(["-n", "-f"])
        .arg(&p1)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "fsck.ext4 -n: {fsck:?}");
    let inner = d.join("inner");
    std::fs::create_dir(&inner).unwrap();
    let mounted = Command::new("mount")
        .args(["-o", "ro,loop"])
        .arg(&p1)
        .arg(&inner)
        .output()
        .unwrap();
    if mounted.status.success() {
        let text = std::fs::read(inner.join("hello.txt"));
        let _ = Command::new("umount").arg(&inner).status();
        assert_eq!(text.unwrap(), b"hello from p1\n");
    } else {
        // Loop devices may be missing in a container; fsck on the file above still ran.
        println!(
            "note: loop mount unavailable: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
    }
}

#[test]
fn backup_gpt_is_used_when_the_primary_is_damaged() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(_) = ext4_disk(d) else { return };
    let raw = d.join("disk.raw");
    let f = File::options().write(true).open(&raw).unwrap();
    f.write_all_at(&[0u8; 512], 512).unwrap(); // the primary GPT header
    drop(f);
    let mount = Mount::new(&raw, &d.join("mnt"), &[]);
    assert_eq!(
        sha256_file(&mount.path("p1.raw")),
        sha256_file(&d.join("part.ext4"))
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mount.path("info.json")).unwrap()).unwrap();
    assert_eq!(info["partition_table"]["scheme"], "gpt-backup");
}

#[test]
fn sigterm_unmounts_and_a_killed_mount_is_explained() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "qcow2", "a.qcow2", "", None, "1M");
    let image = d.join("a.qcow2");
    let mut mount = Mount::new(&image, &d.join("mnt"), &[]);
    mount.signal(libc::SIGTERM);
    assert_eq!(mount.wait(), Some(0));
    assert!(!is_mounted(&mount.point), "SIGTERM unmounts");

    let mut mount = Mount::new(&image, &mount.point.clone(), &[]);
    mount.signal(libc::SIGKILL);
    let _ = mount.wait();
    let point = mount.point.to_str().unwrap().to_string();
    assert!(is_mounted(&mount.point), "a killed mount stays, dead");
    let again = vdr(d, &["mount", "a.qcow2", &point]);
    again.expect_code(2);
    assert!(
        again.stderr.contains("Transport endpoint is not connected")
            && again.stderr.contains("vdr umount"),
        "{}",
        again.stderr
    );
    vdr(d, &["umount", &point]).expect_code(0);
    assert!(!is_mounted(&mount.point));
    vdr(d, &["umount", &point]).expect_code(2);
}

#[test]
fn background_mount_returns_and_umount_ends_it() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "qcow2", "a.qcow2", "", None, "1M");
    let point = d.join("mnt");
    std::fs::create_dir(&point).unwrap();
    let point = point.canonicalize().unwrap();
    let shown = point.to_str().unwrap();
    let run = vdr(d, &["mount", "a.qcow2", shown]);
    let guard = Mount {
        child: None,
        point: point.clone(),
    };
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), shown);
    assert!(is_mounted(&point));
    assert_eq!(
        std::fs::metadata(point.join("disk.raw")).unwrap().len(),
        1 << 20
    );
    vdr(d, &["umount", shown]).expect_code(0);
    assert!(!is_mounted(&point));
    drop(guard);
}

#[test]
fn damaged_qcow2_gives_eio_only_at_the_damage() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
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
            "write -P 0x12 0x280000 0x30000",
            "write -P 0x14 0x500000 0x80000",
        ],
    );
    let good_raw = std::fs::read({
        let p = d.join("good.raw");
        qemu_raw(d, &d.join("good.qcow2"), &p);
        p
    })
    .unwrap();
    let variants_dir = d.join("variants");
    std::fs::create_dir(&variants_dir).unwrap();
    let variants = write_variants(&d.join("good.qcow2"), &variants_dir).unwrap();
    let variant = variants.iter().find(|v| v.name == "l2_past_eof").unwrap();
    let Expect::Unreadable { damaged, .. } = &variant.expect else {
        panic!("l2_past_eof is unreadable damage");
    };
    let bad = damaged[0].clone();
    let before = sha256_file(&variant.path);

    let mount = Mount::new(&variant.path, &d.join("mnt"), &["--salvage"]);
    let mut disk = File::open(mount.path("disk.raw")).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = disk.read_exact_at(&mut buf, bad.start).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Every 64 KiB piece outside the damage reads exactly as the good image.
    let mut piece = vec![0u8; 64 << 10];
    for at in (0..good_raw.len() as u64).step_by(piece.len()) {
        let end = at + piece.len() as u64;
        if at < bad.end && bad.start < end {
            continue;
        }
        disk.read_exact_at(&mut piece, at).unwrap();
        assert!(piece == good_raw[at as usize..end as usize], "at {at:#x}");
    }
    // A read across the start of the damage returns the bytes before it (short).
    if bad.start >= 4096 {
        disk.seek(SeekFrom::Start(bad.start - 4096)).unwrap();
        let mut head = vec![0u8; 64 << 10];
        let n = disk.read(&mut head).unwrap();
        assert_eq!(n, 4096);
    }
    drop(disk);
    drop(mount);

    let mount = Mount::new(
        &variant.path,
        &d.join("mnt"),
        &["--salvage", "--fill-unreadable", "zeros"],
    );
    let disk = File::open(mount.path("disk.raw")).unwrap();
    disk.read_exact_at(&mut buf, bad.start).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(disk);
    drop(mount);
    assert_eq!(sha256_file(&variant.path), before);
}

/// Every path under `root` (relative, with a leading '/'), depth first.
fn listing(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        out.push(format!("/{}", path.strip_prefix(root).unwrap().display()));
        if e.file_type().unwrap().is_dir() {
            listing(root, &path, out);
        }
    }
}

#[test]
fn datastore_mounts_as_its_tree_with_flat_views() {
    use vdr_fixtures::vmfs::{build, Data, EntryKind, FileSpec, Spec, Version};
    if let Some(why) = fuse_missing() {
        println!("SKIP: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = d.join("host");
    std::fs::create_dir(&host).unwrap();
    let layers = vdr_fixtures::vmdk_fixture::cowd_chain(&host, "vm", 4 << 20).unwrap();
    let mut spec = Spec::new(Version::V5, "mounted", 128 << 20);
    for e in std::fs::read_dir(&host).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        spec.files.push(FileSpec::file(
            &format!("/vm/{name}"),
            Data::Bytes(std::fs::read(e.path()).unwrap()),
        ));
    }
    spec.files.push(FileSpec::file(
        "/iso/big.bin",
        Data::Pattern {
            len: (3 << 20) + 123,
            seed: 7,
        },
    ));
    spec.files.push(FileSpec::dir("/empty"));
    // A descriptor whose extent is missing: its flat view is there, and reads fail.
    spec.files.push(FileSpec::file(
        "/broken/b.vmdk",
        Data::Bytes(
            b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
              createType=\"vmfs\"\n\n# Extent description\nRW 8192 VMFS \"b-flat.vmdk\"\n"
                .to_vec(),
        ),
    ));
    spec.files.push(FileSpec::symlink("/current", "vm"));
    let img = d.join("ds.img");
    let manifest = build(&spec, &img).unwrap();
    let before = sha256_file(&img);

    let mount = Mount::new(&img, &d.join("mnt"), &[]);
    let mut got = Vec::new();
    listing(&mount.point, &mount.point, &mut got);
    got.sort();
    let flat_views: Vec<String> = layers
        .iter()
        .map(|l| {
            let stem = l.descriptor.file_stem().unwrap().to_str().unwrap();
            format!("/vm/{stem}.raw")
        })
        .collect();
    let mut want: Vec<String> = manifest
        .entries
        .iter()
        .filter(|e| e.path != "/" && !e.deleted)
        .map(|e| e.path.clone())
        .chain(flat_views.iter().cloned())
        .chain(["/broken/b.raw".to_string()])
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "the tree is the manifest plus one NAME.raw per descriptor"
    );
    for e in manifest
        .entries
        .iter()
        .filter(|e| e.path != "/" && !e.deleted)
    {
        let path = mount.path(&e.path[1..]);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        match e.kind {
            EntryKind::File => {
                assert_eq!(meta.len(), e.size, "{}", e.path);
                assert_eq!(sha256_file(&path), e.sha256, "{}", e.path);
            }
            EntryKind::Dir => assert!(meta.is_dir(), "{}", e.path),
            EntryKind::Symlink => assert_eq!(
                std::fs::read_link(&path).unwrap().to_str(),
                e.target.as_deref(),
                "{}",
                e.path
            ),
        }
    }
    let broken = File::open(mount.path("broken/b.raw")).unwrap();
    let err = broken.read_exact_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(broken);
    for (layer, view) in layers.iter().zip(&flat_views) {
        let got = std::fs::read(mount.path(&view[1..])).unwrap();
        assert!(got == layer.expected, "{view} is the chain's content");
    }
    drop(mount);
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn deleted_files_appear_under_recovered_with_eio_where_reused() {
    use vdr_fixtures::vmfs::{build, deletion_spec, pattern_fill, Version};
    use vdr_fixtures::vmfs_damage::{apply, VmfsDamage};
    if let Some(why) = fuse_missing() {
        println!("SKIP: {why}");
        return;
    }
    for version in [Version::V5, Version::V6] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let img = d.join("ds.img");
        let m = build(&deletion_spec(version), &img).unwrap();
        let damage = VmfsDamage::BlockReused {
            deleted: "/thin-gone.bin".into(),
            live: "/keep.bin".into(),
        };
        apply(&img, &m, &damage).unwrap();
        // And /vm1's entry unlinked: the directory and its VM become orphans.
        let unlink = VmfsDamage::UnlinkedEntry {
            path: "/vm1".into(),
        };
        apply(&img, &m, &unlink).unwrap();
        let before = sha256_file(&img);

        // Without --deleted the tree is the live one.
        let plain = Mount::new(&img, &d.join("plain"), &[]);
        assert!(!plain.path(".recovered").exists());
        drop(plain);

        let mount = Mount::new(&img, &d.join("mnt"), &["--deleted"]);
        let rec = |p: &str| mount.path(&format!(".recovered/{p}"));
        for path in ["/vm2/vm2-flat.vmdk", "/vm2/vm2.vmdk", "/notes.txt"] {
            let e = m.entry(path).unwrap();
            assert_eq!(
                sha256_file(&rec(&format!("deleted{path}"))),
                e.sha256,
                "{version:?} {path}"
            );
        }
        // The deleted VM's disk, through its deleted descriptor and deleted extent.
        let flat = std::fs::read(rec("deleted/vm2/vm2-flat.vmdk")).unwrap();
        let raw = std::fs::read(rec("deleted/vm2/vm2.raw")).unwrap();
        assert!(
            raw == flat,
            "{version:?}: vm2.raw is the deleted extent's bytes"
        );
        // The reused block: EIO there, the file's own bytes elsewhere.
        let thin = File::open(rec("deleted/thin-gone.bin")).unwrap();
        let err = thin.read_exact_at(&mut [0u8; 4096], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{version:?} {err}");
        let mut got = vec![0u8; 4096];
        thin.read_exact_at(&mut got, 3 << 20).unwrap();
        let mut want = vec![0u8; 4096];
        pattern_fill(24, 3 << 20, &mut want);
        assert!(
            got == want,
            "{version:?}: block 3 is the deleted file's own"
        );
        drop(thin);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rec("report.json")).unwrap()).unwrap();
        let files = report["files"].as_array().unwrap();
        assert_eq!(files.len(), 7, "4 deleted, /vm1 and its 2 files orphaned");
        // The orphaned VM's disk, opened inside its unnamed lost directory.
        let vm1 = files
            .iter()
            .find(|f| f["name"] == "vm1.vmdk")
            .expect("vm1.vmdk recovered");
        let vm1_raw = vm1["path"].as_str().unwrap().replace("vm1.vmdk", "vm1.raw");
        assert!(vm1_raw.starts_with("orphaned/fd-0x"), "{vm1_raw}");
        assert_eq!(
            sha256_file(&rec(&vm1_raw)),
            m.entry("/vm1/vm1-flat.vmdk").unwrap().sha256,
            "{version:?}: {vm1_raw}"
        );
        // The live tree is still there beside it.
        let keep = m.entry("/keep.bin").unwrap();
        assert_eq!(sha256_file(&mount.path("keep.bin")), keep.sha256);
        drop(mount);
        assert_eq!(
            sha256_file(&img),
            before,
            "{version:?}: the image is unchanged"
        );
    }
}
