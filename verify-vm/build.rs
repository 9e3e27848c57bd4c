//! Builds the probe guest (guest/probe) with the system gcc: a freestanding x86_64 program
//! linked at layout::HIMEM_START (1 MiB) by guest/probe/probe.ld, flattened with
//! `objcopy -O binary` into `$OUT_DIR/probe.bin` (embedded by src/probe/guest.rs), and
//! `$OUT_DIR/probe_layout.rs` with the image's end (its .bss and stack included), read with
//! `nm`, so the host can check guest memory covers it.
//!
//! There is no extra Rust target on this machine, hence C and the host's gcc/binutils.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_DIR: &str = "guest/probe";
const GUEST_SOURCES: &[&str] = &[
    "entry.S",
    "main.c",
    "virtio_blk.c",
    "analyze.c",
    "fs.c",
    "out.c",
    "libc.c",
];
const GUEST_HEADERS: &[&str] = &["probe.h", "probe_params.h", "virtio_blk.h", "probe.ld"];

const GUEST_FLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-nostartfiles",
    "-static",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-m64",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let dir = manifest.join(GUEST_DIR);
    println!("cargo:rerun-if-changed={}", dir.display());
    for name in GUEST_SOURCES.iter().chain(GUEST_HEADERS) {
        println!("cargo:rerun-if-changed={}", dir.join(name).display());
    }

    let elf = out.join("probe.elf");
    let bin = out.join("probe.bin");
    let mut gcc = Command::new("gcc");
    gcc.args(GUEST_FLAGS)
        .arg(format!("-Wl,-T,{}", dir.join("probe.ld").display()))
        .arg("-o")
        .arg(&elf)
        .args(GUEST_SOURCES.iter().map(|s| dir.join(s)));
    run(
        gcc,
        "gcc (the probe guest is C built with the system gcc: apt-get install gcc)",
    );

    let mut objcopy = Command::new("objcopy");
    objcopy.args(["-O", "binary"]).arg(&elf).arg(&bin);
    run(objcopy, "objcopy (from binutils: apt-get install binutils)");

    let image_end = symbol(&elf, "__image_end");
    let layout = format!(
        "/// End of the probe guest in guest memory: code, data, .bss and its stack.\n\
         pub const PROBE_IMAGE_END: u64 = {image_end:#x};\n"
    );
    if let Err(e) = std::fs::write(out.join("probe_layout.rs"), layout) {
        fail(&format!("cannot write probe_layout.rs: {e}"));
    }
}

fn run(mut command: Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "{what} failed ({status}) building the probe guest"
        )),
        Err(e) => fail(&format!("cannot run {what}: {e}")),
    }
}

/// The address of `name` in `elf`, from `nm`.
fn symbol(elf: &Path, name: &str) -> u64 {
    let output = match Command::new("nm").arg(elf).output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => fail(&format!("nm failed on {}: {}", elf.display(), o.status)),
        Err(e) => fail(&format!("cannot run nm (from binutils): {e}")),
    };
    String::from_utf8_lossy(&output)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let value = fields.next()?;
            let _kind = fields.next()?;
            (fields.next()? == name).then(|| u64::from_str_radix(value, 16).ok())?
        })
        .unwrap_or_else(|| fail(&format!("{} has no symbol {name}", elf.display())))
}

fn fail(message: &str) -> ! {
    eprintln!("error: vdr-verify-vm build: {message}");
    std::process::exit(1)
}
