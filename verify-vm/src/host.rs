//! What this machine's `/dev/kvm` can do: nothing (absent), run small VMM-prepared guests
//! only (the software `kvm_pvm` module, no VMX/SVM), or run anything including stock Linux
//! kernels (hardware VMX/SVM through kvm_intel/kvm_amd).
//!
//! [`detect`] gathers the facts from the host; [`classify`] is the pure decision over them,
//! so the logic is tested without the host having any particular KVM.

use serde::Serialize;

/// The kind of KVM this host offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum KvmSupport {
    /// /dev/kvm cannot be used.
    Absent { why: String },
    /// A software virtualization module (kvm_pvm): small guests the VMM sets up itself run,
    /// stock Linux kernels do not.
    SoftwareOnly { module: String },
    /// Hardware virtualization (VMX or SVM).
    Hardware { vendor: String },
}

/// What [`classify`] decides from; [`detect`] reads these from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// `Err(why)` when /dev/kvm could not be opened.
    pub dev_kvm: Result<(), String>,
    /// /sys/module/kvm_pvm exists.
    pub kvm_pvm_loaded: bool,
    /// /sys/module/kvm_intel exists.
    pub kvm_intel_loaded: bool,
    /// /sys/module/kvm_amd exists.
    pub kvm_amd_loaded: bool,
    /// The `flags` line of /proc/cpuinfo lists `vmx`.
    pub cpu_has_vmx: bool,
    /// The `flags` line of /proc/cpuinfo lists `svm`.
    pub cpu_has_svm: bool,
}

/// The decision over the facts. kvm_pvm wins over the CPU flags: when it is loaded it is
/// the module behind /dev/kvm (it refuses to load beside kvm_intel/kvm_amd).
pub fn classify(facts: &HostFacts) -> KvmSupport {
    if let Err(why) = &facts.dev_kvm {
        return KvmSupport::Absent { why: why.clone() };
    }
    if facts.kvm_pvm_loaded {
        return KvmSupport::SoftwareOnly {
            module: "kvm_pvm".to_string(),
        };
    }
    if facts.kvm_intel_loaded || facts.cpu_has_vmx {
        return KvmSupport::Hardware {
            vendor: "intel (vmx)".to_string(),
        };
    }
    if facts.kvm_amd_loaded || facts.cpu_has_svm {
        return KvmSupport::Hardware {
            vendor: "amd (svm)".to_string(),
        };
    }
    KvmSupport::Absent {
        why: "/dev/kvm opens but no kvm_intel, kvm_amd or kvm_pvm module is loaded and the \
              CPU lists neither vmx nor svm"
            .to_string(),
    }
}

/// Reads the facts from this host and classifies them.
pub fn detect() -> KvmSupport {
    classify(&host_facts())
}

/// The facts of this host. Never fails: an unreadable file is a missing fact.
pub fn host_facts() -> HostFacts {
    let dev_kvm = kvm_ioctls::Kvm::new()
        .map(drop)
        .map_err(|e| format!("cannot open /dev/kvm: {e}"));
    let module = |name: &str| std::path::Path::new("/sys/module").join(name).exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (cpu_has_vmx, cpu_has_svm) = cpu_flags(&cpuinfo);
    HostFacts {
        dev_kvm,
        kvm_pvm_loaded: module("kvm_pvm"),
        kvm_intel_loaded: module("kvm_intel"),
        kvm_amd_loaded: module("kvm_amd"),
        cpu_has_vmx,
        cpu_has_svm,
    }
}

/// Whether the first `flags` line of /proc/cpuinfo lists vmx and svm.
fn cpu_flags(cpuinfo: &str) -> (bool, bool) {
    let flags = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, flags)| flags)
        .unwrap_or("");
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    (has("vmx"), has("svm"))
}

impl KvmSupport {
    /// The microVM runs (the probe guest works on kvm_pvm too).
    pub fn can_run_vm(&self) -> bool {
        !matches!(self, KvmSupport::Absent { .. })
    }

    /// A stock Linux kernel boots in the microVM: only with hardware virtualization.
    pub fn can_boot_linux(&self) -> bool {
        matches!(self, KvmSupport::Hardware { .. })
    }

    /// One paragraph for the user: what runs here and what to do instead.
    pub fn explain(&self) -> String {
        match self {
            KvmSupport::Absent { why } => format!(
                "KVM is not available ({why}): the microVM cannot run here; use \
                 `--backend qemu` for the appliance and guest-kernel modes"
            ),
            KvmSupport::SoftwareOnly { module } => format!(
                "/dev/kvm is {module}, software virtualization without VMX/SVM: it runs the \
                 probe guest, but cannot boot stock Linux kernels (they fault on cmpxchg16b, \
                 xsave and the int3 self-test); use `--backend qemu` for the appliance and \
                 guest-kernel modes"
            ),
            KvmSupport::Hardware { vendor } => format!(
                "/dev/kvm uses hardware virtualization ({vendor}): the probe guest, the \
                 appliance and guest kernels run in the microVM"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /dev/kvm opens; nothing else is known.
    fn usable() -> HostFacts {
        HostFacts {
            dev_kvm: Ok(()),
            kvm_pvm_loaded: false,
            kvm_intel_loaded: false,
            kvm_amd_loaded: false,
            cpu_has_vmx: false,
            cpu_has_svm: false,
        }
    }

    #[test]
    fn unopenable_dev_kvm_is_absent_with_the_reason() {
        let facts = HostFacts {
            dev_kvm: Err("cannot open /dev/kvm: No such file or directory".into()),
            cpu_has_vmx: true,
            ..usable()
        };
        let support = classify(&facts);
        assert!(matches!(&support, KvmSupport::Absent { why } if why.contains("No such file")));
        assert!(!support.can_run_vm());
        assert!(!support.can_boot_linux());
        assert!(support.explain().contains("--backend qemu"));
    }

    #[test]
    fn kvm_pvm_is_software_only_even_when_the_cpu_lists_vmx() {
        let facts = HostFacts {
            kvm_pvm_loaded: true,
            cpu_has_vmx: true,
            ..usable()
        };
        let support = classify(&facts);
        assert_eq!(
            support,
            KvmSupport::SoftwareOnly {
                module: "kvm_pvm".into()
            }
        );
        assert!(support.can_run_vm());
        assert!(!support.can_boot_linux());
    }

    #[test]
    fn kvm_pvm_explanation_names_what_fails_and_the_way_out() {
        let text = classify(&HostFacts {
            kvm_pvm_loaded: true,
            ..usable()
        })
        .explain();
        for needle in [
            "without VMX/SVM",
            "probe guest",
            "cannot boot stock Linux",
            "cmpxchg16b",
            "xsave",
            "int3",
            "--backend qemu",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
    }

    #[test]
    fn kvm_intel_module_or_vmx_flag_is_hardware() {
        for facts in [
            HostFacts {
                kvm_intel_loaded: true,
                ..usable()
            },
            HostFacts {
                cpu_has_vmx: true,
                ..usable()
            },
        ] {
            let support = classify(&facts);
            assert!(matches!(&support, KvmSupport::Hardware { vendor } if vendor.contains("vmx")));
            assert!(support.can_boot_linux());
        }
    }

    #[test]
    fn kvm_amd_module_or_svm_flag_is_hardware() {
        let support = classify(&HostFacts {
            cpu_has_svm: true,
            ..usable()
        });
        assert!(matches!(&support, KvmSupport::Hardware { vendor } if vendor.contains("svm")));
        let support = classify(&HostFacts {
            kvm_amd_loaded: true,
            ..usable()
        });
        assert!(support.can_boot_linux());
    }

    #[test]
    fn dev_kvm_without_any_known_module_or_flag_is_absent() {
        assert!(matches!(classify(&usable()), KvmSupport::Absent { .. }));
    }

    #[test]
    fn cpuinfo_flags_are_matched_as_whole_words() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu vme svm_lock vmxx sse2\n";
        assert_eq!(cpu_flags(cpuinfo), (false, false));
        let cpuinfo = "flags\t\t: fpu vmx sse2\nflags\t\t: svm\n";
        assert_eq!(cpu_flags(cpuinfo), (true, false));
    }
}
