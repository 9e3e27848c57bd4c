//! The listener: binds a TCP address or a unix socket, accepts clients and serves each
//! one on its own thread, so a client that misbehaves, stalls or panics its thread only
//! ends its own connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::handshake::{self, Negotiated};
use super::transmission;
use super::Export;

/// At most this many clients are served at once; more are refused (closed at once).
pub const MAX_CLIENTS: usize = 64;

/// How long a client may take over the handshake before it is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to listen: `HOST:PORT` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// Reads `HOST:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Address {
        match text.strip_prefix("unix:") {
            Some(path) => Address::Unix(PathBuf::from(path)),
            None => Address::Tcp(text.to_string()),
        }
    }
}

/// A client connection, over TCP or a unix socket.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Closes the connection for both sides (every clone of it included).
    pub(crate) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A bound NBD server for one export.
pub struct Server {
    listener: Listener,
    export: Arc<Export>,
}

impl Server {
    /// Binds `address` (a TCP port of 0 picks a free one; see [`Server::local_address`]).
    /// A unix socket path must not exist yet.
    pub fn bind(address: &Address, export: Export) -> io::Result<Server> {
        let listener = match address {
            Address::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr.as_str())?),
            Address::Unix(path) => Listener::Unix(UnixListener::bind(path)?, path.clone()),
        };
        Ok(Server {
            listener,
            export: Arc::new(export),
        })
    }

    /// The NBD URI of the export (`nbd://127.0.0.1:10809/NAME`,
    /// `nbd+unix:///NAME?socket=/path`); with a TCP port of 0, the port picked.
    pub fn uri(&self) -> io::Result<String> {
        let name = &self.export.name;
        Ok(match &self.listener {
            Listener::Tcp(l) => format!("nbd://{}/{name}", l.local_addr()?),
            Listener::Unix(_, path) => format!("nbd+unix:///{name}?socket={}", path.display()),
        })
    }

    /// Accepts and serves clients until `stop` is set, or, with `once`, until the first
    /// client has disconnected. Returns errors of the listener only; a client's errors end
    /// that client's connection and are reported on stderr.
    pub fn serve(&self, stop: &AtomicBool, once: bool) -> io::Result<()> {
        let finished = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let mut next_id = 0u64;
        let done = || stop.load(Ordering::SeqCst) || (once && finished.load(Ordering::SeqCst) > 0);
        while !done() {
            if !wait_readable(self.listener_fd(), 200)? {
                continue;
            }
            let (stream, peer) = match self.accept() {
                Ok(accepted) => accepted,
                // the client gave up between poll and accept, or a descriptor limit: keep
                // serving the others
                Err(err) => {
                    eprintln!("nbd: accept failed: {err}");
                    continue;
                }
            };
            if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
                // each client may hold a 32 MiB read buffer: bound the total
                eprintln!("nbd: client {peer}: refused, {MAX_CLIENTS} clients are connected");
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            next_id += 1;
            let export = Arc::clone(&self.export);
            let finished = Arc::clone(&finished);
            let active_here = Arc::clone(&active);
            let name = format!("nbd-client-{next_id}");
            let spawned = thread::Builder::new().name(name).spawn(move || {
                let served =
                    panic::catch_unwind(AssertUnwindSafe(|| serve_client(stream, &export)));
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) if is_disconnect(&err) => {}
                    Ok(Err(err)) if is_timeout(&err) => eprintln!(
                        "nbd: client {peer}: no handshake within {}s; disconnected",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ),
                    Ok(Err(err)) => eprintln!("nbd: client {peer}: {err}"),
                    Err(_) => eprintln!("nbd: client {peer}: internal error; connection closed"),
                }
                active_here.fetch_sub(1, Ordering::SeqCst);
                finished.fetch_add(1, Ordering::SeqCst);
            });
            if let Err(err) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                eprintln!("nbd: cannot start a thread for a client: {err}");
            }
        }
        Ok(())
    }

    fn listener_fd(&self) -> RawFd {
        match &self.listener {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<(Stream, String)> {
        match &self.listener {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept()?;
                // replies are written whole; small ones must not wait for Nagle
                stream.set_nodelay(true)?;
                Ok((Stream::Tcp(stream), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (stream, _) = l.accept()?;
                Ok((Stream::Unix(stream), path.display().to_string()))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            // the socket file is ours; a failure leaves a stale file, nothing worse
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One client from the greeting to the end of the connection.
fn serve_client(mut stream: Stream, export: &Export) -> io::Result<()> {
    // a client that connects and says nothing must not hold one of the slots forever
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    match handshake::negotiate(&mut stream, export)? {
        Negotiated::Transmission(session) => {
            // in transmission, an idle client is normal (a mounted nbd device)
            stream.set_read_timeout(None)?;
            transmission::run(stream.try_clone()?, stream, export, session)
        }
        Negotiated::Closed => Ok(()),
    }
}

/// A read timed out (only the handshake has a timeout).
fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The client went away: not worth a message.
fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Waits up to `timeout_ms` for `fd` to be readable (a client to accept); false on a
/// timeout or a signal, so the caller looks at its stop flag again.
fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll_fd` is a valid pollfd for the duration of the call and the count is 1.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(ready > 0)
}
