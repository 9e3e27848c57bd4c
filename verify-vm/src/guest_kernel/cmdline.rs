//! The kernel command line: what the image's boot loader would pass (the first `linux`
//! line of its grub.cfg, as GRUB boots the first menu entry by default), and the line vdr
//! actually boots with.
//!
//! vdr keeps the image's own arguments (root=, rootflags=, init=, ...) and replaces those
//! that would hide or redirect the console or change how a failure ends: `console=` (the
//! last one becomes /dev/console, so an image's `console=tty0` would send init's output to
//! a screen nobody reads), `quiet`/`splash`/`rhgb`/`loglevel=` (they suppress the messages the
//! timeline is read from), `panic=`/`reboot=` (vdr needs a panic to end the VM at once).
//! GRUB's own `BOOT_IMAGE=` and unexpanded `$variables` (Ubuntu's `$vt_handoff`) are dropped.
//! A root named by a SCSI/IDE/Xen device of the first disk (`root=/dev/sda1`, common in
//! images from VMware) is renamed to the VM's virtio disk (`root=/dev/vda1`).

/// x86 COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h): the kernel truncates beyond it.
pub const MAX_CMDLINE: usize = 2048;

/// What vdr always adds: the serial console, reboot at once on panic (the backends end the
/// VM on reset), keyboard-controller reset, and no PCI probing (the machine has none).
pub const VDR_ARGS: &[&str] = &["console=ttyS0", "panic=-1", "reboot=k", "pci=off"];

/// Arguments dropped from the image's line by exact name.
const DROPPED_FLAGS: &[&str] = &["quiet", "splash", "rhgb"];
/// Arguments dropped from the image's line by `name=` prefix.
const DROPPED_KEYS: &[&str] = &[
    "BOOT_IMAGE=",
    "initrd=",
    "console=",
    "loglevel=",
    "panic=",
    "reboot=",
    "vt.handoff=",
];

/// The `linux` line of a GRUB menu entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrubLinux {
    /// The kernel path as GRUB names it (`/boot/vmlinuz-6.1.0-13-amd64`, or
    /// `/vmlinuz-...` when /boot is its own partition).
    pub kernel_path: String,
    /// The arguments after the path.
    pub args: String,
}

/// The first `linux` (or `linuxefi`/`linux16`) line of a grub.cfg, or `None`.
pub fn first_grub_linux(grub_cfg: &str) -> Option<GrubLinux> {
    grub_cfg.lines().find_map(|line| {
        let mut tokens = line.split_whitespace();
        let command = tokens.next()?;
        if !matches!(command, "linux" | "linuxefi" | "linux16") {
            return None;
        }
        let kernel_path = tokens.next()?.trim_matches(['\'', '"']).to_string();
        let args = tokens.collect::<Vec<_>>().join(" ");
        Some(GrubLinux { kernel_path, args })
    })
}

/// The command line vdr boots with, and what it left out of the image's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootCmdline {
    pub line: String,
    pub dropped: Vec<String>,
    /// Arguments vdr rewrote: "root=/dev/sda1 -> root=/dev/vda1".
    pub renamed: Vec<String>,
}

/// Builds the boot command line from the image's arguments and the caller's extras:
/// image arguments (less the dropped ones), [`VDR_ARGS`], `extra`, then anything the image
/// put after `--` (arguments for init, which must stay last).
pub fn boot_cmdline(image_args: &str, extra: &str) -> BootCmdline {
    let mut tokens = image_args.split_whitespace();
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    let mut renamed = Vec::new();
    for token in tokens.by_ref() {
        if token == "--" {
            break;
        }
        if is_dropped(token) {
            dropped.push(token.to_string());
        } else if let Some(virtio) = virtio_root(token) {
            renamed.push(format!("{token} -> {virtio}"));
            kept.push(virtio);
        } else {
            kept.push(token.to_string());
        }
    }
    let init_args: Vec<&str> = tokens.collect();
    kept.extend(VDR_ARGS.iter().map(|a| a.to_string()));
    kept.extend(extra.split_whitespace().map(str::to_string));
    if !init_args.is_empty() {
        kept.push("--".to_string());
        kept.extend(init_args.iter().map(|a| a.to_string()));
    }
    BootCmdline {
        line: kept.join(" "),
        dropped,
        renamed,
    }
}

/// Prefixes of disk device names the image may have booted from (SCSI/SATA on VMware and
/// most hypervisors, IDE, Xen) that the VM's virtio disk replaces.
const FOREIGN_DISK_PREFIXES: &[&str] = &["/dev/sd", "/dev/hd", "/dev/xvd"];

/// `root=/dev/sda1` (or hda1, xvda1) as the VM names the same partition: `root=/dev/vda1`.
/// The image's only disk is the VM's only disk, so its first disk letter maps to `a`; other
/// letters are left alone (their disk is not attached).
fn virtio_root(token: &str) -> Option<String> {
    let device = token.strip_prefix("root=")?;
    let rest = FOREIGN_DISK_PREFIXES
        .iter()
        .find_map(|prefix| device.strip_prefix(prefix))?;
    let partition = rest.strip_prefix('a')?;
    partition
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("root=/dev/vda{partition}"))
}

fn is_dropped(token: &str) -> bool {
    DROPPED_FLAGS.contains(&token)
        || DROPPED_KEYS.iter().any(|key| token.starts_with(key))
        || token.contains('$')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_GRUB: &str = "\
### BEGIN /etc/grub.d/10_linux ###
function gfxmode {
\tset gfxpayload=\"${1}\"
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-0b7c' {
\tload_video
\tinsmod gzio
\tinsmod part_gpt
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root 0b7c6e1a-2f1e-4f57-9d2c-6a4f3a1d2b11
\techo\t'Loading Linux 6.1.0-13-cloud-amd64 ...'
\tlinux\t/boot/vmlinuz-6.1.0-13-cloud-amd64 root=PARTUUID=5e1f2c3a-01 ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0
\techo\t'Loading initial ramdisk ...'
\tinitrd\t/boot/initrd.img-6.1.0-13-cloud-amd64
}
submenu 'Advanced options for Debian GNU/Linux' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-10-cloud-amd64' {
\t\tlinux\t/boot/vmlinuz-6.1.0-10-cloud-amd64 root=PARTUUID=5e1f2c3a-01 ro single
\t}
}
";

    #[test]
    fn first_linux_line_of_debian_grub_cfg_is_found() {
        let entry = first_grub_linux(DEBIAN_GRUB).unwrap();
        assert_eq!(entry.kernel_path, "/boot/vmlinuz-6.1.0-13-cloud-amd64");
        assert_eq!(
            entry.args,
            "root=PARTUUID=5e1f2c3a-01 ro console=tty0 console=ttyS0,115200 \
             earlyprintk=ttyS0,115200 consoleblank=0"
        );
    }

    #[test]
    fn grub_cfg_without_linux_line_gives_none() {
        assert_eq!(
            first_grub_linux("set timeout=5\nmenuentry 'x' {\n}\n"),
            None
        );
        assert_eq!(first_grub_linux("linux\n"), None);
        assert_eq!(first_grub_linux(""), None);
    }

    #[test]
    fn linuxefi_lines_count_as_linux_lines() {
        let entry = first_grub_linux("  linuxefi /vmlinuz-5.14.0 root=/dev/sda2\n").unwrap();
        assert_eq!(entry.kernel_path, "/vmlinuz-5.14.0");
        assert_eq!(entry.args, "root=/dev/sda2");
    }

    #[test]
    fn console_quiet_and_grub_variables_are_replaced_by_vdr_args() {
        let line = boot_cmdline(
            "BOOT_IMAGE=/boot/vmlinuz-6.1 root=UUID=abcd ro quiet splash console=tty0 $vt_handoff",
            "",
        );
        assert_eq!(
            line.line,
            "root=UUID=abcd ro console=ttyS0 panic=-1 reboot=k pci=off"
        );
        assert_eq!(
            line.dropped,
            [
                "BOOT_IMAGE=/boot/vmlinuz-6.1",
                "quiet",
                "splash",
                "console=tty0",
                "$vt_handoff"
            ]
        );
    }

    #[test]
    fn scsi_ide_and_xen_root_devices_become_the_virtio_disk() {
        for (image, booted) in [
            ("root=/dev/sda1", "root=/dev/vda1"),
            ("root=/dev/hda2", "root=/dev/vda2"),
            ("root=/dev/xvda", "root=/dev/vda"),
        ] {
            let line = boot_cmdline(&format!("{image} ro"), "");
            assert!(
                line.line.starts_with(&format!("{booted} ro ")),
                "{}",
                line.line
            );
            assert_eq!(line.renamed, [format!("{image} -> {booted}")]);
        }
    }

    #[test]
    fn other_root_devices_are_left_alone() {
        for image in [
            "root=/dev/sdb1",
            "root=/dev/sda1x",
            "root=UUID=abc",
            "root=/dev/mapper/vg-root",
        ] {
            let line = boot_cmdline(image, "");
            assert!(line.line.starts_with(image), "{}", line.line);
            assert!(line.renamed.is_empty());
        }
    }

    #[test]
    fn extra_args_follow_vdr_args_and_init_args_stay_last() {
        let line = boot_cmdline("root=/dev/vda1 ro -- single", "systemd.unit=rescue.target");
        assert_eq!(
            line.line,
            "root=/dev/vda1 ro console=ttyS0 panic=-1 reboot=k pci=off \
             systemd.unit=rescue.target -- single"
        );
    }
}
