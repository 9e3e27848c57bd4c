//! A read-only NBD server for one virtual disk (`vdr serve --nbd`).
//!
//! It speaks the fixed newstyle handshake of the NBD protocol (NetworkBlockDevice
//! doc/proto.md) with `NBD_OPT_GO`/`INFO`/`LIST`/`EXPORT_NAME`, structured replies and
//! the `base:allocation` metadata context, so clients such as `qemu-img convert nbd://…`
//! learn from block status which ranges are holes and read only the data. Zero and
//! unallocated ranges of [`VirtualDisk::map`] are sent as holes; unreadable ranges fail
//! the read that touches them with `NBD_EIO`, never with made-up bytes. Writes, trims
//! and write-zeroes are refused with `NBD_EPERM`.
//!
//! - [`proto`]: constants and pure encode/decode functions (no sockets).
//! - `handshake`: the greeting and option haggling.
//! - `transmission`: the requests of one connection: block status answered on its
//!   reading thread, reads on a few workers;
//!   `prefetch` asks the kernel to load the data a copying client will read next;
//!   `zerocopy` sends reads of plain-file data with sendfile(2).
//! - [`server`]: the listener; one thread per client.
//!
//! Hand-written on std::net and threads: the protocol is small, and an async runtime or
//! an NBD crate would add more than it saves. Client-sent lengths are checked against
//! [`MAX_OPTION_LEN`] and [`MAX_PAYLOAD`] before anything is allocated for them.

use std::sync::Arc;

use vdr_formats::VirtualDisk;

mod allocation;
mod handshake;
mod prefetch;
pub mod proto;
pub mod server;
mod transmission;
mod zerocopy;

pub use server::{Address, Server};

/// The largest option data accepted during the handshake (the spec's suggested limit);
/// longer options get `NBD_REP_ERR_TOO_BIG` and the connection is closed.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The largest read served in one request, advertised as the maximum block size.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The preferred block size advertised to clients.
pub const PREFERRED_BLOCK: u32 = 4096;

/// What the server exports: one disk under one name.
pub struct Export {
    /// The export name clients ask for (an empty name also selects it).
    pub name: String,
    /// Sent to clients that ask for `NBD_INFO_DESCRIPTION`.
    pub description: Option<String>,
    pub disk: Arc<dyn VirtualDisk>,
    /// Block status reports holes shorter than this between data as data (0: every
    /// hole), trading detail for fewer round trips of copying clients.
    pub min_hole: u32,
}

impl Export {
    /// True when a client's export name selects this export.
    fn is_named(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}
