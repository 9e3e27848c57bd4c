//! The bootable test image: the Debian cloud kernel from its unpacked package, an
//! initramfs built here (busybox, the virtio modules, an initramfs-tools-style /init),
//! and a root file system whose /sbin/init prints [`USERSPACE_MARKER`] and powers off.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdr_fixtures::linux_disk::LinuxDisk;
use vdr_formats::VirtualDisk;

use super::support::{make_disk, missing, write_tree};

/// The kernel package, its version, and busybox, or a SKIP line.
pub struct BootKit {
    pub kernel_dir: PathBuf,
    pub version: String,
    pub busybox: PathBuf,
}

/// The virtio modules in load order (backend.rs: one initramfs works on both backends).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
];

pub const USERSPACE_MARKER: &str = "vdr-test-init reached";

pub fn boot_kit() -> Result<BootKit, String> {
    if let Some(skip) = missing(&["qemu-system-x86_64", "qemu-img", "sfdisk", "mkfs.ext4"]) {
        return Err(skip);
    }
    let kernel_dir = std::env::var_os("VDR_GUEST_KERNEL_DIR").map_or_else(
        || PathBuf::from("/var/cache/vdr/linux-image"),
        PathBuf::from,
    );
    let version = fs::read_dir(kernel_dir.join("boot"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| name.strip_prefix("vmlinuz-").map(str::to_string))
        .ok_or_else(|| format!("SKIP: no boot/vmlinuz-* in {}", kernel_dir.display()))?;
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("SKIP: busybox (busybox-static) not installed")?;
    Ok(BootKit {
        kernel_dir,
        version,
        busybox,
    })
}

/// A newc cpio archive (the initramfs format, Documentation/driver-api/early-userspace/
/// buffer-format.rst), gzip-compressed. Written here rather than with cpio(1) so that
/// /dev/console can be a device node without mknod on the host.
#[derive(Default)]
struct Cpio(Vec<u8>, u32);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.1 += 1;
        let fields = [
            self.1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.0.extend_from_slice(b"070701");
        for field in fields {
            self.0.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish_gzip(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.0).unwrap();
        gz.finish().unwrap()
    }
}

/// /init of the test initramfs: loads the virtio modules, waits up to 5 s for `root=`,
/// mounts it read-only and switches to it; a missing root gets initramfs-tools' messages
/// and an exit (the kernel then panics, and panic=-1 ends the VM).
const INITRAMFS_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do /bin/busybox insmod /lib/modules/$m.ko; done
root=
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in root=*) root="${arg#root=}";; esac
done
echo "vdr-test-initramfs: waiting for $root"
i=0
while [ ! -b "$root" ] && [ $i -lt 50 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
if [ ! -b "$root" ]; then
  echo "Gave up waiting for root file system device."
  echo "ALERT!  $root does not exist.  Dropping to a shell!"
  exit 1
fi
/bin/busybox mount -o ro -t ext4 "$root" /newroot
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
"#;

fn build_initramfs(kit: &BootKit) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.entry(dir, 0o040755, (0, 0), b"");
    }
    cpio.entry("dev/console", 0o020600, (5, 1), b"");
    cpio.entry(
        "bin/busybox",
        0o100755,
        (0, 0),
        &fs::read(&kit.busybox).unwrap(),
    );
    cpio.entry("init", 0o100755, (0, 0), INITRAMFS_INIT.as_bytes());
    let modules = kit
        .kernel_dir
        .join("lib/modules")
        .join(&kit.version)
        .join("kernel");
    for module in MODULES {
        let name = Path::new(module).file_name().unwrap().to_str().unwrap();
        let data = fs::read(modules.join(module)).unwrap();
        cpio.entry(&format!("lib/modules/{name}"), 0o100644, (0, 0), &data);
    }
    cpio.finish_gzip()
}

/// A bootable single-partition GPT image as qcow2 whose grub.cfg names `root_device`.
pub fn bootable_image(kit: &BootKit, dir: &Path, root_device: &str) -> Arc<dyn VirtualDisk> {
    let v = &kit.version;
    let root = dir.join("root");
    let kernel = fs::read(kit.kernel_dir.join(format!("boot/vmlinuz-{v}"))).unwrap();
    let init =
        format!("#!/bin/busybox sh\necho \"{USERSPACE_MARKER}\"\n/bin/busybox poweroff -f\n");
    let grub = format!(
        "menuentry 'vdr test' {{\n\tlinux\t/boot/vmlinuz-{v} root={root_device} ro quiet\n\
         \tinitrd\t/boot/initrd.img-{v}\n}}\n"
    );
    write_tree(
        &root,
        &[
            (&format!("boot/vmlinuz-{v}"), &kernel),
            (&format!("boot/initrd.img-{v}"), &build_initramfs(kit)),
            ("boot/grub/grub.cfg", grub.as_bytes()),
            ("bin/busybox", &fs::read(&kit.busybox).unwrap()),
            ("sbin/init", init.as_bytes()),
            ("etc/os-release", b"PRETTY_NAME=\"vdr test\"\nID=vdrtest\n"),
        ],
    );
    for dir in ["dev", "proc", "sys"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for exe in ["bin/busybox", "sbin/init"] {
        fs::set_permissions(root.join(exe), fs::Permissions::from_mode(0o755)).unwrap();
    }
    make_disk(dir, &LinuxDisk::ext4_gpt(64, "vdrroot", Some(&root)), true)
}
