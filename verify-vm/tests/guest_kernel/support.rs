//! Helpers of the guest-kernel tests: a backend that records what it was asked to boot
//! and answers with a fixed console, and disk builders over vdr-fixtures' LinuxDisk.

use std::cell::RefCell;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vdr_fixtures::linux_disk::{self, LinuxDisk};
use vdr_formats::{open_disk, OpenOptions, VirtualDisk};
use vdr_verify_vm::backend::{
    BackendError, BackendKind, BootOutcome, BootSpec, ConsoleLine, DiskAccess, GuestExit,
    LinuxBackend,
};

/// What a [`Recording`] backend was asked to boot: kernel, initrd, command line, disk
/// access, timeout.
pub type RecordedBoot = (Vec<u8>, Option<Vec<u8>>, String, DiskAccess, Duration);

/// A backend that records the boot it was asked for and answers with a fixed console.
pub struct Recording {
    console: &'static str,
    pub spec: RefCell<Option<RecordedBoot>>,
}

impl Recording {
    pub fn new(console: &'static str) -> Self {
        Recording {
            console,
            spec: RefCell::new(None),
        }
    }
}

impl LinuxBackend for Recording {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, BackendError> {
        *self.spec.borrow_mut() = Some((
            spec.kernel.clone(),
            spec.initrd.clone(),
            spec.cmdline.clone(),
            spec.access,
            spec.timeout,
        ));
        let console = self
            .console
            .lines()
            .zip(0u64..)
            .map(|(text, i)| ConsoleLine {
                at: Duration::from_millis(i),
                text: text.to_string(),
            })
            .collect();
        Ok(BootOutcome {
            backend: BackendKind::Qemu,
            console,
            exit: GuestExit::Reset,
            elapsed: Duration::from_millis(1234),
        })
    }
}

/// The tools the image builders need, or a SKIP line naming the missing ones.
pub fn missing(tools: &[&str]) -> Option<String> {
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !linux_disk::on_path(t))
        .collect();
    (!absent.is_empty()).then(|| format!("SKIP: {} not installed", absent.join(", ")))
}

/// Writes `files` (path → content) under `root`, making directories as needed.
pub fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

/// Builds `disk` as raw, converts it to qcow2 when `qcow2`, and opens it with vdr.
pub fn make_disk(dir: &Path, disk: &LinuxDisk, qcow2: bool) -> Arc<dyn VirtualDisk> {
    let raw = dir.join("disk.raw");
    disk.build(&raw).unwrap();
    if qcow2 {
        qcow2_disk(dir, &raw)
    } else {
        Arc::new(open_disk(&raw, &OpenOptions::default()).unwrap())
    }
}

/// `raw` converted to `dir/disk.qcow2` by qemu-img, opened with vdr.
pub fn qcow2_disk(dir: &Path, raw: &Path) -> Arc<dyn VirtualDisk> {
    let out = dir.join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(raw)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    Arc::new(open_disk(&out, &OpenOptions::default()).unwrap())
}

pub fn one_ext4(root: &Path) -> LinuxDisk {
    LinuxDisk::ext4_gpt(32, "root", Some(root))
}
