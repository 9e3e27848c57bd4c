//! The NBD wire format: constants and pure encode/decode functions, no sockets.
//!
//! Everything here follows the protocol document of the NetworkBlockDevice project
//! (doc/proto.md): the fixed newstyle handshake, option haggling, the transmission
//! request, simple and structured replies and the `base:allocation` metadata context.
//! All integers are big-endian on the wire.

/// "NBDMAGIC": the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle magic, sent by the server and prefixed to every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server, 16 bits) and client flags (32 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;

// Commands and command flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

// Error values of replies (the protocol's own numbering, equal to Linux errno).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

// The base:allocation metadata context.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Size of the header of an OFFSET_DATA chunk, offset included.
pub const OFFSET_DATA_HEADER_LEN: usize = CHUNK_HEADER_LEN + 8;

/// The 18 bytes the server opens every connection with.
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// The client's answer to the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Decodes the client flags; unknown bits are refused (the spec says the server must
/// then close the connection).
pub fn parse_client_flags(flags: u32) -> Result<ClientFlags, String> {
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(format!("unknown client flags {flags:#x}"));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// The fixed part of an option request: magic, option, length of the data that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub fn parse(bytes: &[u8; 16]) -> OptionHeader {
        let mut r = Reader::new(bytes);
        // The slice has exactly the three fields: the reads cannot fail.
        OptionHeader {
            magic: r.u64().unwrap_or(0),
            option: r.u32().unwrap_or(0),
            len: r.u32().unwrap_or(0),
        }
    }
}

/// One option reply: magic, the option it answers, its type, its data.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of an NBD_REP_SERVER reply (one export of NBD_OPT_LIST).
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&len_u32(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// NBD_INFO_EXPORT: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a string.
pub fn info_text(info: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum payload size.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for value in [minimum, preferred, maximum] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

/// The data of an NBD_REP_META_CONTEXT reply.
pub fn meta_context_entry(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The server's answer to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless the
/// client asked for NO_ZEROES.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// The data of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub requests: Vec<u16>,
}

/// Decodes the data of NBD_OPT_INFO / NBD_OPT_GO; `None` when the lengths inside do not
/// add up to the data's length.
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let mut r = Reader::new(data);
    let name_len = usize::try_from(r.u32()?).ok()?;
    let name = r.bytes(name_len)?.to_vec();
    let count = usize::from(r.u16()?);
    let mut requests = Vec::with_capacity(count.min(r.remaining() / 2));
    for _ in 0..count {
        requests.push(r.u16()?);
    }
    r.at_end().then_some(InfoRequest { name, requests })
}

/// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: Vec<u8>,
    pub queries: Vec<Vec<u8>>,
}

/// Decodes the data of the meta context options; `None` when the lengths inside do not
/// add up to the data's length.
pub fn parse_meta_context_request(data: &[u8]) -> Option<MetaContextRequest> {
    let mut r = Reader::new(data);
    let name_len = usize::try_from(r.u32()?).ok()?;
    let name = r.bytes(name_len)?.to_vec();
    let count = usize::try_from(r.u32()?).ok()?;
    // every query takes at least its 4-byte length: bounds the allocation
    let mut queries = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        let len = usize::try_from(r.u32()?).ok()?;
        queries.push(r.bytes(len)?.to_vec());
    }
    r.at_end().then_some(MetaContextRequest { name, queries })
}

/// A transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Decodes a request header; `Err(magic)` when the magic is wrong (the stream cannot be
/// resynchronised after that).
pub fn parse_request(bytes: &[u8; REQUEST_LEN]) -> Result<Request, u32> {
    let mut r = Reader::new(bytes);
    let magic = r.u32().unwrap_or(0);
    if magic != REQUEST_MAGIC {
        return Err(magic);
    }
    // The slice has exactly the fields: the reads cannot fail.
    Ok(Request {
        flags: r.u16().unwrap_or(0),
        command: r.u16().unwrap_or(0),
        cookie: r.u64().unwrap_or(0),
        offset: r.u64().unwrap_or(0),
        len: r.u32().unwrap_or(0),
    })
}

/// A simple reply header (data of a successful read follows it).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header; `len` is the length of the payload that follows.
pub fn chunk_header(flags: u16, chunk_type: u16, cookie: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&len.to_be_bytes());
    out
}

/// Writes the header of an OFFSET_DATA chunk of `data_len` bytes at `offset` into the
/// first [`OFFSET_DATA_HEADER_LEN`] bytes of `out`, so the data can be read in place
/// right behind it and the chunk sent with one write.
pub fn offset_data_header(out: &mut [u8], flags: u16, cookie: u64, offset: u64, data_len: u32) {
    let header = chunk_header(
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    );
    out[..CHUNK_HEADER_LEN].copy_from_slice(&header);
    out[CHUNK_HEADER_LEN..OFFSET_DATA_HEADER_LEN].copy_from_slice(&offset.to_be_bytes());
}

/// A whole OFFSET_HOLE chunk: `len` bytes at `offset` read as zeros.
pub fn offset_hole_chunk(flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 12);
    out.extend_from_slice(&chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12));
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// A whole ERROR chunk (no offset), or ERROR_OFFSET when `offset` is given.
pub fn error_chunk(
    flags: u16,
    cookie: u64,
    error: u32,
    message: &str,
    offset: Option<u64>,
) -> Vec<u8> {
    // the message length is 16 bits: cut long messages at a character boundary
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let chunk_type = if offset.is_some() {
        REPLY_TYPE_ERROR_OFFSET
    } else {
        REPLY_TYPE_ERROR
    };
    let payload_len = 6 + message.len() + if offset.is_some() { 8 } else { 0 };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload_len);
    out.extend_from_slice(&chunk_header(
        flags,
        chunk_type,
        cookie,
        len_u32(payload_len),
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    if let Some(offset) = offset {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out
}

/// A whole BLOCK_STATUS chunk: the context id and (length, status flags) descriptors.
pub fn block_status_chunk(
    flags: u16,
    cookie: u64,
    context: u32,
    descriptors: &[(u32, u32)],
) -> Vec<u8> {
    let payload_len = 4 + descriptors.len() * 8;
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload_len);
    out.extend_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len_u32(payload_len),
    ));
    out.extend_from_slice(&context.to_be_bytes());
    for (len, status) in descriptors {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&status.to_be_bytes());
    }
    out
}

/// A length the server itself produced, as the protocol's 32-bit field. Every caller
/// passes a length bounded by the option or payload limits, far below 4 GiB.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Big-endian reads from a byte slice that fail instead of running past its end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.data.len() {
            return None;
        }
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn remaining(&self) -> usize {
        self.data.len()
    }

    fn at_end(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_fixed_newstyle_no_zeroes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn unknown_client_flags_are_refused() {
        assert_eq!(
            parse_client_flags(3),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert!(parse_client_flags(4).is_err());
    }

    #[test]
    fn option_reply_has_magic_option_type_and_length() {
        let r = option_reply(OPT_GO, REP_ERR_UNKNOWN, b"no");
        assert_eq!(&r[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &7u32.to_be_bytes());
        assert_eq!(&r[12..16], &0x8000_0006u32.to_be_bytes());
        assert_eq!(&r[16..20], &2u32.to_be_bytes());
        assert_eq!(&r[20..], b"no");
    }

    #[test]
    fn info_request_round_trips_and_refuses_inconsistent_lengths() {
        let mut data = 4u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"disk");
        data.extend_from_slice(&2u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        data.extend_from_slice(&INFO_NAME.to_be_bytes());
        let parsed = parse_info_request(&data).expect("parses");
        assert_eq!(parsed.name, b"disk");
        assert_eq!(parsed.requests, vec![INFO_BLOCK_SIZE, INFO_NAME]);

        assert!(parse_info_request(&data[..data.len() - 1]).is_none());
        let mut extra = data.clone();
        extra.push(0);
        assert!(parse_info_request(&extra).is_none());
        let mut huge_name = u32::MAX.to_be_bytes().to_vec();
        huge_name.extend_from_slice(&data[4..]);
        assert!(parse_info_request(&huge_name).is_none());
    }

    #[test]
    fn meta_context_request_parses_queries_and_bounds_the_count() {
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&15u32.to_be_bytes());
        data.extend_from_slice(BASE_ALLOCATION.as_bytes());
        let parsed = parse_meta_context_request(&data).expect("parses");
        assert!(parsed.name.is_empty());
        assert_eq!(parsed.queries, vec![BASE_ALLOCATION.as_bytes().to_vec()]);

        let mut lying = 0u32.to_be_bytes().to_vec();
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&lying).is_none());
    }

    #[test]
    fn request_parses_fields_and_rejects_bad_magic() {
        let mut bytes = [0u8; REQUEST_LEN];
        bytes[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        bytes[4..6].copy_from_slice(&CMD_FLAG_DF.to_be_bytes());
        bytes[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        bytes[8..16].copy_from_slice(&0x1122u64.to_be_bytes());
        bytes[16..24].copy_from_slice(&4096u64.to_be_bytes());
        bytes[24..].copy_from_slice(&512u32.to_be_bytes());
        let request = parse_request(&bytes).expect("parses");
        assert_eq!(
            request,
            Request {
                flags: CMD_FLAG_DF,
                command: CMD_READ,
                cookie: 0x1122,
                offset: 4096,
                len: 512
            }
        );
        bytes[0] = 0;
        assert_eq!(parse_request(&bytes), Err(0x0060_9513));
    }

    #[test]
    fn chunks_carry_their_payload_length() {
        let hole = offset_hole_chunk(REPLY_FLAG_DONE, 9, 65536, 4096);
        assert_eq!(hole.len(), CHUNK_HEADER_LEN + 12);
        assert_eq!(&hole[16..20], &12u32.to_be_bytes());
        assert_eq!(&hole[6..8], &REPLY_TYPE_OFFSET_HOLE.to_be_bytes());

        let error = error_chunk(REPLY_FLAG_DONE, 9, EIO, "bad", Some(512));
        assert_eq!(&error[6..8], &REPLY_TYPE_ERROR_OFFSET.to_be_bytes());
        assert_eq!(&error[16..20], &(6u32 + 3 + 8).to_be_bytes());
        assert_eq!(&error[error.len() - 8..], &512u64.to_be_bytes());

        let status = block_status_chunk(REPLY_FLAG_DONE, 9, 1, &[(4096, 0), (8192, 3)]);
        assert_eq!(&status[16..20], &20u32.to_be_bytes());

        let mut data = vec![0u8; OFFSET_DATA_HEADER_LEN + 4];
        offset_data_header(&mut data, 0, 9, 100, 4);
        assert_eq!(&data[16..20], &12u32.to_be_bytes());
        assert_eq!(&data[20..28], &100u64.to_be_bytes());
    }

    #[test]
    fn export_name_reply_pads_unless_no_zeroes() {
        assert_eq!(export_name_reply(1, 3, false).len(), 134);
        assert_eq!(export_name_reply(1, 3, true).len(), 10);
    }
}
