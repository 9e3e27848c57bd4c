//! A minimal hand-driven NBD client for the tests: it speaks the protocol step by step
//! (from the NBD spec, independently of the server's code) so a test can also break it.
#![allow(dead_code)] // not every test uses every step

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const OPT_LIST: u32 = 3;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const DF: u16 = 1 << 2;
pub const REQ_ONE: u16 = 1 << 3;
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// One chunk of a structured reply.
#[derive(Debug)]
pub enum Chunk {
    Data(u64, Vec<u8>),
    Hole(u64, u32),
    Error(u32, String),
}

pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client { stream }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).expect("read from server");
        buf
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes(2).try_into().expect("2"))
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes(4).try_into().expect("4"))
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.bytes(8).try_into().expect("8"))
    }

    /// Reads the greeting: NBDMAGIC, IHAVEOPT, fixed newstyle + no zeroes.
    pub fn greeting(&mut self) {
        let greeting = self.bytes(18);
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&greeting[16..], &[0, 3]);
    }

    /// Greeting, then client flags fixed newstyle + no zeroes.
    pub fn start(&mut self) {
        self.greeting();
        self.stream.write_all(&3u32.to_be_bytes()).expect("flags");
    }

    pub fn option_header(&mut self, option: u32, len: u32) {
        let mut header = b"IHAVEOPT".to_vec();
        header.extend_from_slice(&option.to_be_bytes());
        header.extend_from_slice(&len.to_be_bytes());
        self.stream.write_all(&header).expect("option header");
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        self.option_header(option, data.len() as u32);
        self.stream.write_all(data).expect("option data");
    }

    /// (option, reply type, data)
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), 0x0003_e889_0455_65a9, "option reply magic");
        let option = self.u32();
        let reply = self.u32();
        let len = self.u32();
        assert!(len < 1 << 20, "reply length {len}");
        (option, reply, self.bytes(len as usize))
    }

    /// NBD_OPT_GO for `name` asking for the block size; checks the export is read-only
    /// (and offers DF exactly when structured replies are on).
    pub fn go(&mut self, name: &[u8], structured: bool) {
        self.option(OPT_GO, &info_request(name));
        let mut flags = None;
        loop {
            let (option, reply, data) = self.option_reply();
            assert_eq!(option, OPT_GO);
            match reply {
                REP_ACK => break,
                REP_INFO if data[..2] == [0, 0] => {
                    flags = Some(u16::from_be_bytes([data[10], data[11]]));
                }
                REP_INFO => {}
                other => panic!(
                    "NBD_OPT_GO failed: {other:#x} {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        let flags = flags.expect("NBD_INFO_EXPORT");
        assert_eq!(flags & 3, 3, "HAS_FLAGS | READ_ONLY");
        assert_eq!(flags & (1 << 7) != 0, structured, "SEND_DF iff structured");
    }

    pub fn request(&mut self, flags: u16, command: u16, cookie: u64, offset: u64, len: u32) {
        let mut request = 0x2560_9513u32.to_be_bytes().to_vec();
        request.extend_from_slice(&flags.to_be_bytes());
        request.extend_from_slice(&command.to_be_bytes());
        request.extend_from_slice(&cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&len.to_be_bytes());
        self.stream.write_all(&request).expect("request");
    }

    /// A simple reply's error field.
    pub fn simple_reply(&mut self, cookie: u64) -> u32 {
        assert_eq!(self.u32(), 0x6744_6698, "simple reply magic");
        let error = self.u32();
        assert_eq!(self.u64(), cookie, "cookie");
        error
    }

    /// A read answered by a simple reply.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, CMD_READ, cookie, offset, len);
        match self.simple_reply(cookie) {
            0 => Ok(self.bytes(len as usize)),
            error => Err(error),
        }
    }

    /// The chunks of a structured reply, up to the one flagged done.
    pub fn chunks(&mut self, cookie: u64) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(self.u32(), 0x668e_33ef, "structured reply magic");
            let flags = self.u16();
            let chunk_type = self.u16();
            assert_eq!(self.u64(), cookie, "cookie");
            let len = self.u32();
            assert!(len <= (32 << 20) + 8, "chunk length {len}");
            out.push((chunk_type, self.bytes(len as usize)));
            if flags & 1 != 0 {
                return out;
            }
        }
    }

    pub fn structured_read(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
        flags: u16,
    ) -> Vec<Chunk> {
        self.request(flags, CMD_READ, cookie, offset, len);
        self.chunks(cookie)
            .into_iter()
            .filter(|(chunk_type, _)| *chunk_type != 0)
            .map(|(chunk_type, payload)| {
                let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8"));
                let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().expect("4"));
                match chunk_type {
                    1 => Chunk::Data(be64(&payload), payload[8..].to_vec()),
                    2 => Chunk::Hole(be64(&payload), be32(&payload[8..])),
                    t if t & 0x8000 != 0 => {
                        let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                        let message =
                            String::from_utf8_lossy(&payload[6..6 + msg_len]).into_owned();
                        Chunk::Error(be32(&payload), message)
                    }
                    t => panic!("unexpected chunk type {t}"),
                }
            })
            .collect()
    }

    /// A structured read put together, or the first error.
    pub fn structured_read_all(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, u32> {
        let mut out = vec![0u8; len as usize];
        let mut covered = 0u64;
        let mut error = None;
        for chunk in self.structured_read(cookie, offset, len, 0) {
            match chunk {
                Chunk::Data(at, data) => {
                    let start = (at - offset) as usize;
                    out[start..start + data.len()].copy_from_slice(&data);
                    covered += data.len() as u64;
                }
                Chunk::Hole(_, hole) => covered += u64::from(hole),
                Chunk::Error(e, _) => error = error.or(Some(e)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => {
                assert_eq!(covered, u64::from(len), "chunks cover the read");
                Ok(out)
            }
        }
    }

    pub fn block_status(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
        context: u32,
    ) -> Vec<(u32, u32)> {
        self.block_status_flags(cookie, offset, len, context, 0)
    }

    pub fn block_status_flags(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
        context: u32,
        flags: u16,
    ) -> Vec<(u32, u32)> {
        self.request(flags, CMD_BLOCK_STATUS, cookie, offset, len);
        let chunks = self.chunks(cookie);
        assert_eq!(chunks.len(), 1, "one block status chunk");
        let (chunk_type, payload) = &chunks[0];
        assert_eq!(*chunk_type, 5, "NBD_REPLY_TYPE_BLOCK_STATUS");
        assert_eq!(
            u32::from_be_bytes(payload[..4].try_into().expect("4")),
            context
        );
        payload[4..]
            .chunks(8)
            .map(|d| {
                (
                    u32::from_be_bytes(d[..4].try_into().expect("4")),
                    u32::from_be_bytes(d[4..].try_into().expect("4")),
                )
            })
            .collect()
    }

    /// True when the server closes the connection (anything it still sends is skipped).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The data of NBD_OPT_GO / NBD_OPT_INFO for `name`, asking for the block size.
pub fn info_request(name: &[u8]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name);
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&3u16.to_be_bytes());
    data
}

/// The data of NBD_OPT_SET/LIST_META_CONTEXT.
pub fn meta_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name);
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for query in queries {
        data.extend_from_slice(&(query.len() as u32).to_be_bytes());
        data.extend_from_slice(query);
    }
    data
}
