//! The command-line grammar (clap derive): every command, flag and default of `vdr`.
//!
//! This file only describes arguments; checks that clap cannot express (such as `-c` with
//! `-O raw`) live with the command that owns them, and report through [`usage_error`] so
//! they exit 2 like every other usage error.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Recover virtual disks (RAW, QCOW2, VMDK, VMFS) from damaged storage. Inputs are only
/// ever opened read-only.
#[derive(Debug, Parser)]
#[command(name = "vdr", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Format, size, backing chain, snapshots and allocation summary of an image; for a
    /// VMFS datastore: volume, devices, extents, used/free, live heartbeats, held locks.
    Info(InfoArgs),
    /// Extent map of the image as the guest sees it (like `qemu-img map`).
    Map(MapArgs),
    /// Consistency check of the image's metadata (like `qemu-img check`).
    Check(CheckArgs),
    /// Write the image's content (the leaf's view of its chain) to a new file.
    Convert(ConvertArgs),
    /// Compare the content of two images, across formats and sizes.
    Compare(CompareArgs),
    /// List the files of a VMFS datastore.
    Ls(LsArgs),
    /// Copy files, directories or the whole tree out of a VMFS datastore.
    Extract(ExtractArgs),
    /// Export an image read-only over NBD (qemu-img, qemu-nbd clients, nbd-client).
    Serve(ServeArgs),
    /// Mount an image (disk.raw, pN.raw, info.json) or a VMFS datastore read-only (FUSE).
    Mount(MountArgs),
    /// Unmount a `vdr mount` (also one left dead by a killed process).
    Umount(UmountArgs),
    /// Boot-test a disk in a microVM (read-only, writes to an in-memory overlay) and report
    /// what the guest saw.
    Verify(VerifyArgs),
}

/// Options shared by the commands that open one image.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Go on past inconsistencies where possible and report each one as a finding,
    /// instead of refusing the image.
    #[arg(long)]
    pub salvage: bool,
    /// Let a VMDK descriptor name extent files outside its own directory (`..` or
    /// absolute paths); refused by default so a crafted descriptor cannot read other files.
    #[arg(long)]
    pub allow_escaping_extents: bool,
}

/// `vdr info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The image (or the device or image holding a VMFS datastore) to describe.
    pub image: PathBuf,
    /// Print the documented JSON object (docs/CLI.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read this internal snapshot (name or ID) instead of the current state.
    #[arg(long, value_name = "S")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
    /// Open the named image alone, without its backing files.
    #[arg(long)]
    pub no_backing: bool,
    /// Describe IMAGE as a VMFS datastore even when its first sectors do not say so
    /// (the partition table is searched, then the first 4 GiB are scanned).
    #[arg(long)]
    pub vmfs: bool,
    /// Another device of a spanned VMFS datastore (repeatable); implies --vmfs.
    #[arg(long, value_name = "PATH")]
    pub extent: Vec<PathBuf>,
}

/// `vdr map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// The image to map.
    pub image: PathBuf,
    /// Print a JSON array with the fields of `qemu-img map --output=json`.
    #[arg(long)]
    pub json: bool,
    /// Map this internal snapshot (name or ID) instead of the current state.
    #[arg(long, value_name = "S")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
}

/// `vdr check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image to check (its backing files are not checked).
    pub image: PathBuf,
    /// Print the check report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub open: OpenArgs,
}

/// Output formats of `vdr convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormatArg {
    Raw,
    Qcow2,
    Vmdk,
}

/// VMDK layouts for `vdr convert -O vmdk --subformat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SubformatArg {
    /// One sparse file with the descriptor inside (the default).
    #[value(name = "monolithicSparse")]
    MonolithicSparse,
    /// One compressed sparse file with markers, VMware's OVF/OVA layout (implies -c).
    #[value(name = "streamOptimized")]
    StreamOptimized,
    /// OUTPUT is a descriptor; the raw data goes to NAME-flat.EXT beside it.
    #[value(name = "monolithicFlat")]
    MonolithicFlat,
}

/// Compression algorithms for `vdr convert -c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Deflate,
    Zstd,
}

/// What `--fill-unreadable` may fill unreadable ranges with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FillArg {
    Zeros,
}

/// `vdr convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The image to read (with its backing chain).
    pub input: PathBuf,
    /// The file to create. It must not exist (see --force) and must not be an input.
    pub output: PathBuf,
    /// Output format.
    #[arg(short = 'O', value_enum, default_value_t = OutputFormatArg::Raw, value_name = "FORMAT")]
    pub format: OutputFormatArg,
    /// VMDK layout (with -O vmdk; default monolithicSparse).
    #[arg(long, value_enum, value_name = "SUBFORMAT")]
    pub subformat: Option<SubformatArg>,
    /// Compress data clusters (qcow2 output; implied by -O vmdk --subformat
    /// streamOptimized).
    #[arg(short = 'c')]
    pub compress: bool,
    /// Compression algorithm used with -c.
    #[arg(long, value_enum, default_value_t = CompressionArg::Deflate)]
    pub compression: CompressionArg,
    /// Worker threads; 0 uses all cores.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Cluster size of qcow2 output, in bytes (a power of two from 512 to 2 MiB).
    #[arg(long, default_value_t = 65536, value_name = "BYTES")]
    pub cluster_size: u64,
    /// Convert this internal snapshot (name or ID) instead of the current state.
    #[arg(long, value_name = "S")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
    /// Write unreadable input ranges as zeros and list them (exit 1), instead of stopping.
    #[arg(long, value_enum, value_name = "WITH")]
    pub fill_unreadable: Option<FillArg>,
    /// Replace OUTPUT if it exists (never when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
    /// Print the conversion report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `vdr compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
    /// Print {"identical", "first_difference", "size_a", "size_b"} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub open: OpenArgs,
    /// Images of different sizes differ (by default the extra part of the larger one
    /// only has to read as zeros, as with `qemu-img compare`).
    #[arg(long)]
    pub strict_size: bool,
}

/// Options shared by the commands that open a VMFS datastore.
#[derive(Debug, Args)]
pub struct DatastoreArgs {
    /// Another device of a spanned datastore (repeatable; any order).
    #[arg(long, value_name = "PATH")]
    pub extent: Vec<PathBuf>,
    /// Open a damaged volume as far as possible and report each inconsistency as a
    /// finding, instead of refusing it.
    #[arg(long)]
    pub salvage: bool,
}

/// `vdr ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The device or image holding the datastore (a disk with GPT/MBR, or a partition).
    pub datastore: PathBuf,
    /// The directory (or file) inside the datastore to list.
    #[arg(default_value = "/")]
    pub path: String,
    /// Long format: type, mode, size, allocated bytes, mtime, FD address, address type,
    /// lock holder.
    #[arg(short = 'l')]
    pub long: bool,
    /// List every entry under PATH, depth first.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// List the deleted and orphaned files under PATH instead of the live entries
    /// (every FD slot is read; `--json` gives recovery's full record of each).
    #[arg(long)]
    pub deleted: bool,
    /// Print a JSON array of entries (docs/CLI.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub datastore_args: DatastoreArgs,
}

/// `vdr extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The device or image holding the datastore.
    pub datastore: PathBuf,
    /// The file or directory inside the datastore to copy out.
    #[arg(required_unless_present_any = ["all", "deleted"], conflicts_with_all = ["all", "deleted"])]
    pub path: Option<String>,
    /// Where to write it: a file, or for a directory the directory to hold its tree.
    #[arg(required_unless_present_any = ["all", "deleted"], conflicts_with_all = ["all", "deleted"])]
    pub out: Option<PathBuf>,
    /// Copy the whole volume tree into OUT_DIR.
    #[arg(long, value_name = "OUT_DIR", conflicts_with = "deleted")]
    pub all: Option<PathBuf>,
    /// Copy the deleted and orphaned files recovery finds into OUT_DIR (as
    /// `OUT_DIR/deleted/...` and `OUT_DIR/orphaned/...`, the paths `vdr ls --deleted`
    /// shows); ranges recovery does not trust are left as holes and listed.
    #[arg(long, value_name = "OUT_DIR")]
    pub deleted: Option<PathBuf>,
    /// Also write the VMFS system files (/.fbb.sf, /.fdc.sf, ..., /.sdd.sf).
    #[arg(long)]
    pub system_files: bool,
    /// Replace existing output files (never an input, never a directory).
    #[arg(long)]
    pub force: bool,
    /// Print the extraction report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub datastore_args: DatastoreArgs,
}

/// `vdr serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The image to export (with its backing chain), or DATASTORE::/path.
    pub source: PathBuf,
    /// Where to listen: HOST:PORT (port 0 picks a free one) or unix:/path/to/socket.
    #[arg(long, value_name = "ADDR")]
    pub nbd: String,
    /// The export name clients ask for (default: the file name of SOURCE).
    #[arg(long, value_name = "NAME")]
    pub export: Option<String>,
    /// Exit when the first client disconnects.
    #[arg(long)]
    pub once: bool,
    /// Report holes shorter than BYTES between data as data in block status (fewer round
    /// trips for copying clients; reads still send them as holes). 0: every hole.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub min_hole: u32,
    #[command(flatten)]
    pub open: OpenArgs,
}

/// `vdr mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// An image or chain (qcow2, vmdk, raw, `DATASTORE::/path`), or a VMFS datastore
    /// (device or image).
    pub source: PathBuf,
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Serve in this process until Ctrl-C/SIGTERM or `vdr umount`, logging read errors,
    /// instead of returning once mounted.
    #[arg(long)]
    pub foreground: bool,
    #[command(flatten)]
    pub open: OpenArgs,
    /// Read unreadable ranges as zeros instead of failing those reads with EIO.
    #[arg(long, value_enum, value_name = "WITH")]
    pub fill_unreadable: Option<FillArg>,
    /// Mount SOURCE as a VMFS datastore even when its first sectors do not say so.
    #[arg(long)]
    pub vmfs: bool,
    /// Another device of a spanned VMFS datastore (repeatable); implies --vmfs.
    #[arg(long, value_name = "PATH")]
    pub extent: Vec<PathBuf>,
    /// Datastores: add `.recovered/` with the deleted and orphaned files recovery
    /// finds (and `NAME.raw` beside each lost VMDK).
    #[arg(long)]
    pub deleted: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,
}

/// `vdr umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point of a `vdr mount`.
    pub mountpoint: PathBuf,
    /// Detach it even while busy; it goes away when the last user closes it.
    #[arg(long)]
    pub lazy: bool,
}

/// `vdr verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image or chain (qcow2, vmdk, raw, any mix), or DATASTORE::/path.
    pub source: PathBuf,
    /// probe: vdr's own small guest reads the disk through virtio-blk (partitions,
    /// filesystems, sample checksums compared with the host's reads); appliance: a Linux
    /// kernel with vdr's initramfs mounts and fsck-checks every filesystem; guest-kernel:
    /// boots the image's own kernel and initrd from its /boot.
    #[arg(long, value_enum, default_value_t = VerifyMode::Probe)]
    pub mode: VerifyMode,
    /// Where Linux guests run: vdr's KVM microVM (needs VMX/SVM) or qemu-system-x86_64
    /// under TCG (slower, works anywhere). Probe mode always uses KVM.
    #[arg(long, value_enum, default_value_t = VerifyBackend::Kvm)]
    pub backend: VerifyBackend,
    /// Stop the guest after this many seconds (default: 10 for probe, 120 otherwise).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// The kernel for appliance mode (default: the newest /boot/vmlinuz-*, else the one
    /// scripts/guest-kernel unpacked).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest memory.
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub memory: u32,
    /// vCPUs of a Linux guest (appliance, guest-kernel); the probe guest uses one.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=8))]
    pub vcpus: u8,
    /// Let the guest write (to an in-memory overlay that is dropped afterwards) instead of
    /// presenting a read-only disk. guest-kernel mode always uses the overlay.
    #[arg(long)]
    pub overlay: bool,
    /// Print the guest's serial console on stderr while it runs.
    #[arg(long)]
    pub console: bool,
    /// Print the documented JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub open: OpenArgs,
}

/// `vdr verify --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyMode {
    Probe,
    Appliance,
    GuestKernel,
}

/// `vdr verify --backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyBackend {
    Kvm,
    Qemu,
}

/// Reports a usage error of `subcommand` the way clap does (message, usage line) and
/// exits with 2.
pub fn usage_error(subcommand: &str, message: impl std::fmt::Display) -> ! {
    let mut command = Cli::command();
    command.build();
    match command.find_subcommand_mut(subcommand) {
        Some(sub) => sub
            .clone()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
        None => command
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn convert_defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["vdr", "convert", "in", "out"]).expect("parses");
        let Command::Convert(args) = cli.command else {
            panic!("not convert");
        };
        assert_eq!(args.format, OutputFormatArg::Raw);
        assert_eq!(args.compression, CompressionArg::Deflate);
        assert_eq!(args.threads, 0);
        assert!(!args.compress && !args.force && args.fill_unreadable.is_none());
        assert!(args.subformat.is_none());
    }

    #[test]
    fn vmdk_subformats_use_vmwares_spelling() {
        let cli = Cli::try_parse_from([
            "vdr",
            "convert",
            "in",
            "out",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ])
        .expect("parses");
        let Command::Convert(args) = cli.command else {
            panic!("not convert");
        };
        assert_eq!(args.format, OutputFormatArg::Vmdk);
        assert_eq!(args.subformat, Some(SubformatArg::StreamOptimized));
    }

    #[test]
    fn extract_takes_path_and_out_or_all() {
        let cli =
            Cli::try_parse_from(["vdr", "extract", "ds.img", "--all", "out"]).expect("parses");
        let Command::Extract(args) = cli.command else {
            panic!("not extract");
        };
        assert_eq!(args.all, Some(PathBuf::from("out")));
        assert!(args.path.is_none() && args.out.is_none() && !args.system_files);

        let cli = Cli::try_parse_from(["vdr", "extract", "ds.img", "/vm/a.vmdk", "a.vmdk"])
            .expect("parses");
        let Command::Extract(args) = cli.command else {
            panic!("not extract");
        };
        assert_eq!(args.path.as_deref(), Some("/vm/a.vmdk"));
        assert!(args.all.is_none());

        assert!(Cli::try_parse_from(["vdr", "extract", "ds.img", "/vm/a.vmdk"]).is_err());
        assert!(
            Cli::try_parse_from(["vdr", "extract", "ds.img", "/a", "b", "--all", "c"]).is_err()
        );
    }

    #[test]
    fn mount_serves_in_the_background_by_default() {
        let cli = Cli::try_parse_from(["vdr", "mount", "ds.img", "/mnt", "--extent", "b.img"])
            .expect("parses");
        let Command::Mount(args) = cli.command else {
            panic!("not mount");
        };
        assert!(!args.foreground && !args.open.salvage && args.fill_unreadable.is_none());
        assert_eq!(args.extent.len(), 1);
        assert_eq!(args.threads, 4);
        assert!(Cli::try_parse_from(["vdr", "mount", "a.qcow2"]).is_err());
        let cli = Cli::try_parse_from(["vdr", "umount", "/mnt", "--lazy"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Umount(UmountArgs { lazy: true, .. })
        ));
    }

    #[test]
    fn ls_lists_the_root_by_default_and_takes_extents() {
        let cli = Cli::try_parse_from([
            "vdr", "ls", "a.img", "--extent", "b.img", "--extent", "c.img",
        ])
        .expect("parses");
        let Command::Ls(args) = cli.command else {
            panic!("not ls");
        };
        assert_eq!(args.path, "/");
        assert_eq!(args.datastore_args.extent.len(), 2);
    }
}
