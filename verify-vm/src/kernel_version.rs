//! Kernel file names and versions: which names in /boot are kernels and initrds, and which
//! kernel version is the newest — for the image's /boot (guest-kernel mode) and the host's
//! (the appliance's kernel) alike.
//!
//! Names follow the distributions' install scripts: Debian/Ubuntu `vmlinuz-<ver>` with
//! `initrd.img-<ver>` (initramfs-tools), Fedora/RHEL/Arch-style dracut `initramfs-<ver>.img`,
//! SUSE `initrd-<ver>`. Versions compare like `sort -V` / dpkg's digit runs: runs of digits
//! numerically, everything else byte-wise, so `6.1.0-56` is newer than `6.1.0-13` and
//! `5.15.0-100` newer than `5.15.0-99`.

use std::cmp::Ordering;

/// Prefix of a kernel image's file name.
const KERNEL_PREFIX: &str = "vmlinuz-";

/// Suffixes that mark a file beside a kernel rather than a kernel (signatures, backups).
const NOT_A_KERNEL_SUFFIXES: &[&str] = &[".sig", ".bak", ".old", ".hmac", ".dpkg-tmp"];

/// The version in a kernel file name (`vmlinuz-6.1.0-56-cloud-amd64` → `6.1.0-56-cloud-amd64`),
/// or `None` when the name is not a kernel image.
pub fn kernel_version(file_name: &str) -> Option<&str> {
    let version = file_name.strip_prefix(KERNEL_PREFIX)?;
    if version.is_empty() || NOT_A_KERNEL_SUFFIXES.iter().any(|s| version.ends_with(s)) {
        return None;
    }
    Some(version)
}

/// The initrd names that go with kernel `version`, most common first.
pub fn initrd_names(version: &str) -> [String; 4] {
    [
        format!("initrd.img-{version}"),
        format!("initramfs-{version}.img"),
        format!("initrd-{version}"),
        format!("initramfs-{version}"),
    ]
}

/// Orders kernel versions: runs of ASCII digits compare as numbers, other runs byte-wise.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut a = Runs(a.as_bytes());
    let mut b = Runs(b.as_bytes());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = compare_runs(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_runs(x: &[u8], y: &[u8]) -> Ordering {
    let x_digits = x.first().is_some_and(u8::is_ascii_digit);
    let y_digits = y.first().is_some_and(u8::is_ascii_digit);
    match (x_digits, y_digits) {
        // Numbers of any length: drop leading zeros, then the longer one is larger.
        (true, true) => {
            let x = trim_leading_zeros(x);
            let y = trim_leading_zeros(y);
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        }
        // A number sorts after text at the same position ("6.1.0-13" > "6.1.0-rc").
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => x.cmp(y),
    }
}

fn trim_leading_zeros(run: &[u8]) -> &[u8] {
    let zeros = run.iter().take_while(|&&b| b == b'0').count();
    run.get(zeros..).unwrap_or_default()
}

/// Splits a byte string into maximal runs of digits and of non-digits.
struct Runs<'a>(&'a [u8]);

impl<'a> Iterator for Runs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let first = self.0.first()?;
        let digits = first.is_ascii_digit();
        let len = self
            .0
            .iter()
            .take_while(|b| b.is_ascii_digit() == digits)
            .count();
        let (run, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_give_their_version() {
        assert_eq!(
            kernel_version("vmlinuz-6.1.0-56-cloud-amd64"),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            kernel_version("vmlinuz-5.14.0-362.8.1.el9_3.x86_64"),
            Some("5.14.0-362.8.1.el9_3.x86_64")
        );
    }

    #[test]
    fn non_kernel_names_are_refused() {
        for name in [
            "vmlinuz",
            "vmlinuz-",
            "config-6.1.0-13-amd64",
            "System.map-6.1.0-13-amd64",
            "vmlinuz-6.1.0-13-amd64.sig",
            "initrd.img-6.1.0-13-amd64",
        ] {
            assert_eq!(kernel_version(name), None, "{name}");
        }
    }

    #[test]
    fn digit_runs_compare_as_numbers() {
        assert_eq!(
            compare_versions("6.1.0-56-cloud-amd64", "6.1.0-13-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("5.15.0-100-generic", "5.15.0-99-generic"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("6.10.1", "6.9.12"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.0-013", "6.1.0-13"), Ordering::Equal);
    }

    #[test]
    fn rescue_kernels_sort_below_real_ones() {
        assert_eq!(
            compare_versions("0-rescue-0123abcd", "5.14.0-70.el9.x86_64"),
            Ordering::Less
        );
    }

    #[test]
    fn longer_version_with_equal_prefix_is_newer() {
        assert_eq!(compare_versions("6.1.0", "6.1"), Ordering::Greater);
        assert_eq!(compare_versions("", "1"), Ordering::Less);
    }

    #[test]
    fn initrd_names_cover_the_common_generators() {
        let names = initrd_names("6.1.0-13-amd64");
        assert!(names.contains(&"initrd.img-6.1.0-13-amd64".to_string()));
        assert!(names.contains(&"initramfs-6.1.0-13-amd64.img".to_string()));
    }
}
