//! The handshake phase: greeting, client flags, and option haggling until the client
//! enters transmission (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or leaves.

use std::io::{self, Read, Write};

use super::proto::{self, OptionHeader};
use super::{Export, MAX_OPTION_LEN, MAX_PAYLOAD, PREFERRED_BLOCK};

/// The id of the `base:allocation` context (the only one this server offers).
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// What the haggling settled for the transmission phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected with NBD_OPT_SET_META_CONTEXT.
    pub base_allocation: bool,
}

/// How the handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Negotiated {
    Transmission(Session),
    /// The client aborted (NBD_OPT_ABORT).
    Closed,
}

/// The transmission flags of the export: read-only, flush and cache accepted (they have
/// nothing to do), several connections may be used at once (nothing ever changes), and
/// unfragmented reads when structured replies are on.
pub(crate) fn transmission_flags(session: &Session) -> u16 {
    let mut flags = proto::FLAG_HAS_FLAGS
        | proto::FLAG_READ_ONLY
        | proto::FLAG_SEND_FLUSH
        | proto::FLAG_CAN_MULTI_CONN
        | proto::FLAG_SEND_CACHE;
    if session.structured {
        flags |= proto::FLAG_SEND_DF;
    }
    flags
}

/// Runs the handshake on `stream`. An `Err` means the connection must be closed (the
/// client broke the protocol in a way that cannot be answered, or went away).
pub(crate) fn negotiate<S: Read + Write>(
    stream: &mut S,
    export: &Export,
) -> io::Result<Negotiated> {
    stream.write_all(&proto::greeting())?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags)?;
    let client = proto::parse_client_flags(u32::from_be_bytes(flags)).map_err(invalid)?;
    let mut session = Session::default();
    loop {
        let mut header = [0u8; 16];
        stream.read_exact(&mut header)?;
        let header = OptionHeader::parse(&header);
        if header.magic != proto::IHAVEOPT {
            return Err(invalid(format!(
                "bad option magic {:#018x}; closing the connection",
                header.magic
            )));
        }
        if header.len > MAX_OPTION_LEN {
            // The data cannot be skipped without reading it all, so the stream cannot be
            // resynchronised: say why (NBD_OPT_EXPORT_NAME has no error replies) and close.
            if header.option != proto::OPT_EXPORT_NAME {
                let message = format!(
                    "option data of {} bytes exceeds {MAX_OPTION_LEN}",
                    header.len
                );
                reply(
                    stream,
                    header.option,
                    proto::REP_ERR_TOO_BIG,
                    message.as_bytes(),
                )?;
            }
            return Err(invalid(format!(
                "option {} with {} bytes of data (limit {MAX_OPTION_LEN}); closing the connection",
                header.option, header.len
            )));
        }
        // bounded by MAX_OPTION_LEN just above
        let mut data = vec![0u8; header.len as usize];
        stream.read_exact(&mut data)?;
        match header.option {
            proto::OPT_EXPORT_NAME => {
                if !export.is_named(&data) {
                    return Err(invalid(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}; closing the connection",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let flags = transmission_flags(&session);
                let size = export.disk.size();
                stream.write_all(&proto::export_name_reply(size, flags, client.no_zeroes))?;
                return Ok(Negotiated::Transmission(session));
            }
            proto::OPT_ABORT => {
                // the spec asks for an ACK; the client may already have closed
                let _ = reply(stream, header.option, proto::REP_ACK, &[]);
                return Ok(Negotiated::Closed);
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    error(
                        stream,
                        &header,
                        proto::REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    )?;
                    continue;
                }
                reply(
                    stream,
                    header.option,
                    proto::REP_SERVER,
                    &proto::server_entry(&export.name),
                )?;
                reply(stream, header.option, proto::REP_ACK, &[])?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                if answer_info(stream, &header, &data, export, &session)?
                    && header.option == proto::OPT_GO
                {
                    return Ok(Negotiated::Transmission(session));
                }
            }
            proto::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    error(
                        stream,
                        &header,
                        proto::REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                session.structured = true;
                reply(stream, header.option, proto::REP_ACK, &[])?;
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                answer_meta_context(stream, &header, &data, export, &mut session)?;
            }
            _ => {
                let message = format!("option {} is not supported", header.option);
                error(stream, &header, proto::REP_ERR_UNSUP, &message)?;
            }
        }
    }
}

/// Answers NBD_OPT_INFO / NBD_OPT_GO; true when it ended with NBD_REP_ACK.
fn answer_info<S: Write>(
    stream: &mut S,
    header: &OptionHeader,
    data: &[u8],
    export: &Export,
    session: &Session,
) -> io::Result<bool> {
    let Some(request) = proto::parse_info_request(data) else {
        error(
            stream,
            header,
            proto::REP_ERR_INVALID,
            "malformed NBD_OPT_INFO/GO data",
        )?;
        return Ok(false);
    };
    if !export.is_named(&request.name) {
        let message = format!(
            "no export named {:?} (this server exports {:?})",
            String::from_utf8_lossy(&request.name),
            export.name
        );
        error(stream, header, proto::REP_ERR_UNKNOWN, &message)?;
        return Ok(false);
    }
    let export_info = proto::info_export(export.disk.size(), transmission_flags(session));
    reply(stream, header.option, proto::REP_INFO, &export_info)?;
    for &request in &request.requests {
        let info = match request {
            proto::INFO_NAME => proto::info_text(proto::INFO_NAME, &export.name),
            proto::INFO_DESCRIPTION => match &export.description {
                Some(text) => proto::info_text(proto::INFO_DESCRIPTION, text),
                None => continue,
            },
            // sent below whether asked for or not
            _ => continue,
        };
        reply(stream, header.option, proto::REP_INFO, &info)?;
    }
    let block_size = proto::info_block_size(1, PREFERRED_BLOCK, MAX_PAYLOAD);
    reply(stream, header.option, proto::REP_INFO, &block_size)?;
    reply(stream, header.option, proto::REP_ACK, &[])?;
    Ok(true)
}

/// Answers NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: `base:allocation` is
/// the one context offered.
fn answer_meta_context<S: Write>(
    stream: &mut S,
    header: &OptionHeader,
    data: &[u8],
    export: &Export,
    session: &mut Session,
) -> io::Result<()> {
    let set = header.option == proto::OPT_SET_META_CONTEXT;
    if !session.structured {
        let message = "negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts";
        return error(stream, header, proto::REP_ERR_INVALID, message);
    }
    let Some(request) = proto::parse_meta_context_request(data) else {
        return error(
            stream,
            header,
            proto::REP_ERR_INVALID,
            "malformed metadata context request",
        );
    };
    if !export.is_named(&request.name) {
        let message = format!(
            "no export named {:?}",
            String::from_utf8_lossy(&request.name)
        );
        return error(stream, header, proto::REP_ERR_UNKNOWN, &message);
    }
    // listing with no query lists everything; "base:" lists the namespace
    let offered = request.queries.iter().any(|query| {
        query.as_slice() == proto::BASE_ALLOCATION.as_bytes()
            || (!set && query.as_slice() == b"base:")
    }) || (!set && request.queries.is_empty());
    if set {
        session.base_allocation = offered;
    }
    if offered {
        let entry = proto::meta_context_entry(BASE_ALLOCATION_ID, proto::BASE_ALLOCATION);
        reply(stream, header.option, proto::REP_META_CONTEXT, &entry)?;
    }
    reply(stream, header.option, proto::REP_ACK, &[])
}

fn reply<S: Write>(stream: &mut S, option: u32, reply_type: u32, data: &[u8]) -> io::Result<()> {
    stream.write_all(&proto::option_reply(option, reply_type, data))
}

/// An error reply, with a human-readable message as its data (the spec allows one).
fn error<S: Write>(
    stream: &mut S,
    header: &OptionHeader,
    reply_type: u32,
    message: &str,
) -> io::Result<()> {
    reply(stream, header.option, reply_type, message.as_bytes())
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Arc;

    use vdr_formats::raw::RawDisk;
    use vdr_formats::SliceSource;

    use super::*;

    /// A client's bytes in, the server's bytes out.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn export() -> Export {
        let source = Arc::new(SliceSource::new(vec![7u8; 8192], "mem"));
        Export {
            name: "disk".to_string(),
            description: None,
            disk: Arc::new(RawDisk::new(source)),
            min_hole: 0,
        }
    }

    fn option(option: u32, data: &[u8]) -> Vec<u8> {
        let mut out = proto::IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// One option reply: (option, type, data).
    type Reply = (u32, u32, Vec<u8>);

    /// The option replies in `bytes`.
    fn replies(mut bytes: &[u8]) -> Vec<Reply> {
        let mut out = Vec::new();
        while bytes.len() >= 20 {
            let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            assert_eq!(&bytes[..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
            let len = word(16) as usize;
            out.push((word(8), word(12), bytes[20..20 + len].to_vec()));
            bytes = &bytes[20 + len..];
        }
        out
    }

    fn negotiate_with(client: Vec<u8>) -> (io::Result<Negotiated>, Vec<Reply>) {
        let mut stream = Duplex {
            input: Cursor::new(client),
            output: Vec::new(),
        };
        let result = negotiate(&mut stream, &export());
        assert_eq!(&stream.output[..18], &proto::greeting());
        (result, replies(&stream.output[18..]))
    }

    fn go(name: &[u8]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&proto::INFO_NAME.to_be_bytes());
        option(proto::OPT_GO, &data)
    }

    #[test]
    fn go_after_structured_replies_enters_transmission_with_read_only_flags() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(proto::OPT_STRUCTURED_REPLY, &[]));
        client.extend(go(b"disk"));
        let (result, replies) = negotiate_with(client);
        let session = Session {
            structured: true,
            base_allocation: false,
        };
        assert_eq!(result.unwrap(), Negotiated::Transmission(session));
        assert_eq!(replies[0].1, proto::REP_ACK);
        let infos: Vec<&Vec<u8>> = replies[1..]
            .iter()
            .filter(|r| r.1 == proto::REP_INFO)
            .map(|r| &r.2)
            .collect();
        assert_eq!(infos[0][..10], proto::info_export(8192, 0)[..10]);
        let flags = u16::from_be_bytes([infos[0][10], infos[0][11]]);
        assert_ne!(flags & proto::FLAG_READ_ONLY, 0);
        assert_ne!(flags & proto::FLAG_SEND_DF, 0);
        assert!(infos
            .iter()
            .any(|i| i[..] == proto::info_text(proto::INFO_NAME, "disk")[..]));
        assert_eq!(replies.last().unwrap().1, proto::REP_ACK);
    }

    #[test]
    fn unknown_export_and_unknown_option_get_errors_and_haggling_goes_on() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(go(b"other"));
        client.extend(option(42, b"x"));
        client.extend(option(proto::OPT_LIST, b"junk"));
        client.extend(option(proto::OPT_ABORT, &[]));
        let (result, replies) = negotiate_with(client);
        assert_eq!(result.unwrap(), Negotiated::Closed);
        let types: Vec<u32> = replies.iter().map(|r| r.1).collect();
        assert_eq!(
            types,
            vec![
                proto::REP_ERR_UNKNOWN,
                proto::REP_ERR_UNSUP,
                proto::REP_ERR_INVALID,
                proto::REP_ACK
            ]
        );
    }

    #[test]
    fn oversized_option_is_refused_without_reading_it() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(proto::IHAVEOPT.to_be_bytes());
        client.extend(proto::OPT_INFO.to_be_bytes());
        client.extend((MAX_OPTION_LEN + 1).to_be_bytes());
        let (result, replies) = negotiate_with(client);
        assert!(result.is_err());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].1, proto::REP_ERR_TOO_BIG);
    }

    #[test]
    fn meta_context_needs_structured_replies_and_selects_base_allocation() {
        let mut query = 0u32.to_be_bytes().to_vec();
        query.extend(1u32.to_be_bytes());
        query.extend(15u32.to_be_bytes());
        query.extend(proto::BASE_ALLOCATION.as_bytes());
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(proto::OPT_SET_META_CONTEXT, &query));
        client.extend(option(proto::OPT_STRUCTURED_REPLY, &[]));
        client.extend(option(proto::OPT_SET_META_CONTEXT, &query));
        client.extend(go(b""));
        let (result, replies) = negotiate_with(client);
        let Negotiated::Transmission(session) = result.unwrap() else {
            panic!("not in transmission");
        };
        assert!(session.base_allocation);
        assert_eq!(replies[0].1, proto::REP_ERR_INVALID);
        assert_eq!(replies[2].1, proto::REP_META_CONTEXT);
        assert_eq!(&replies[2].2[4..], proto::BASE_ALLOCATION.as_bytes());
    }

    #[test]
    fn bad_option_magic_and_unknown_client_flags_close_the_connection() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(b"IHAVEOPS");
        client.extend([0u8; 8]);
        assert!(negotiate_with(client).0.is_err());
        assert!(negotiate_with(0x10u32.to_be_bytes().to_vec()).0.is_err());
    }
}
