//! `vdr serve`: exports an image read-only over NBD until interrupted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use vdr_formats::VirtualDisk;
use vdr_mount::nbd::{Address, Export, Server};

use super::{open, OpenRequest, Status};
use crate::cli::ServeArgs;

/// Set by SIGINT/SIGTERM; the accept loop looks at it several times a second.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &ServeArgs) -> Result<Status> {
    let request = OpenRequest {
        salvage: args.open.salvage,
        allow_escaping_extents: args.open.allow_escaping_extents,
        ..OpenRequest::default()
    };
    let chain = open(&args.source, &request)?;
    let name = args
        .export
        .clone()
        .unwrap_or_else(|| default_export_name(&args.source));
    let description = format!(
        "{} ({}, {} bytes, read-only)",
        args.source.display(),
        chain.leaf().info().format,
        chain.size()
    );
    let export = Export {
        name,
        description: Some(description),
        disk: Arc::new(chain),
        min_hole: args.min_hole,
    };
    let server = Server::bind(&Address::parse(&args.nbd), export)
        .with_context(|| format!("cannot listen on {}", args.nbd))?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler = request_stop as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
    eprintln!("serving {} as {}", args.source.display(), server.uri()?);
    server
        .serve(&STOP, args.once)
        .context("NBD listener failed")?;
    Ok(Status::Ok)
}

/// The file name of SOURCE (of the path inside the datastore for `DATASTORE::/path`).
fn default_export_name(source: &Path) -> String {
    source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| source.display().to_string())
}
