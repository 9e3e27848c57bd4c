//! The commands of `vdr`, one file each, and what they share: opening an image with the
//! user's options and the outcome that becomes the exit code.

mod check;
mod compare;
mod convert;
mod datastore;
mod extract;
mod extract_deleted;
mod info;
mod ls;
mod map;
mod mount;
mod serve;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vdr_formats::source::{FileSource, FileSystemRef, SourceRef};
use vdr_formats::vmfs::{self, VolumeFileSystem};
use vdr_formats::{open_disk, open_layer, Chain, FileParentResolver, OpenOptions, ParseMode};

use crate::cli::Command;

/// How a command that ran to the end came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Nothing to report: exit 0.
    Ok,
    /// The command worked and found problems (check errors, a difference, filled ranges):
    /// exit 1.
    ProblemsFound,
}

impl Status {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::ProblemsFound => 1,
        }
    }
}

/// Runs one parsed command.
pub fn run(command: Command) -> Result<Status> {
    match command {
        Command::Info(args) => info::run(&args),
        Command::Map(args) => map::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Ls(args) => ls::run(&args),
        Command::Extract(args) => extract::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Mount(args) => mount::run(&args),
        Command::Umount(args) => mount::run_umount(&args),
        Command::Verify(args) => verify::run(&args),
    }
}

/// What the user asked for when opening an image.
#[derive(Clone, Debug, Default)]
pub struct OpenRequest {
    pub salvage: bool,
    pub snapshot: Option<String>,
    pub no_backing: bool,
    pub allow_escaping_extents: bool,
}

/// Opens `path` read-only with its backing chain (unless `no_backing`).
pub fn open(path: &Path, request: &OpenRequest) -> Result<Chain> {
    let options = OpenOptions {
        mode: if request.salvage {
            ParseMode::Salvage
        } else {
            ParseMode::Strict
        },
        snapshot: request.snapshot.clone(),
        follow_backing: !request.no_backing,
        allow_escaping_extents: request.allow_escaping_extents,
        ..OpenOptions::default()
    };
    let chain = match datastore_path(path) {
        Some((datastore, inside)) => open_in_datastore(&datastore, &inside, options)?,
        None => open_disk(path, &options)?,
    };
    if let Some(snapshot) = &request.snapshot {
        // Formats without internal snapshots ignore the option; asking for one there is a
        // mistake worth stopping on rather than silently reading the current state.
        let leaf = chain.leaf().info();
        if leaf.snapshots.is_empty() {
            bail!(
                "{}: no internal snapshot '{snapshot}': the image ({}) has no internal snapshots",
                path.display(),
                leaf.format
            );
        }
    }
    Ok(chain)
}

/// `DATASTORE::/path/in/volume`, when `path` has that form and is not itself a file.
fn datastore_path(path: &Path) -> Option<(PathBuf, String)> {
    let text = path.to_str()?;
    let (datastore, inside) = vmfs::split_datastore_path(text)?;
    (!path.exists()).then(|| (PathBuf::from(datastore), inside.to_string()))
}

/// True when `path` names a file inside a datastore.
pub fn is_datastore_path(path: &Path) -> bool {
    datastore_path(path).is_some()
}

/// The host file behind `path`: the datastore for `DATASTORE::/path`, else `path`.
pub fn host_file(path: &Path) -> PathBuf {
    datastore_path(path).map_or_else(|| path.to_path_buf(), |(d, _)| d)
}

/// Opens the disk at `inside` a VMFS datastore without copying it out: its extents and
/// snapshot parents are looked up in the same volume.
fn open_in_datastore(datastore: &Path, inside: &str, mut options: OpenOptions) -> Result<Chain> {
    let device: SourceRef = Arc::new(
        FileSource::open(datastore)
            .with_context(|| format!("{}: cannot open", datastore.display()))?,
    );
    let volume = vmfs::open(&[device], options.mode)?;
    let file = Arc::new(volume.open_file(inside)?);
    options.file_system = Some(FileSystemRef(Arc::new(VolumeFileSystem(volume.clone()))));
    let leaf = open_layer(file, &options)?;
    if !options.follow_backing {
        return Ok(Chain::single(leaf));
    }
    let identity = format!("{}::{}", volume.name(), inside);
    Ok(Chain::build(
        leaf,
        Some(identity),
        &FileParentResolver::new(&options),
        options.max_depth,
    )?)
}
