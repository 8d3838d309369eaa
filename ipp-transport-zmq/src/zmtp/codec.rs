//! ZMTP 3.1 on the wire, without IO: the greeting, frame headers, commands and a frame
//! decoder that reads into one reused buffer (large frames into a buffer of their own).
//!
//! See <https://rfc.zeromq.org/spec/23/> (ZMTP 3.0) and <https://rfc.zeromq.org/spec/37/>
//! (ZMTP 3.1). Only the NULL security mechanism is spoken.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::pool;

/// Length of the greeting each side sends first.
pub(crate) const GREETING_LEN: usize = 64;

/// Frame flag: more frames of this message follow.
const FLAG_MORE: u8 = 0x01;
/// Frame flag: the size is 8 bytes, not 1.
const FLAG_LONG: u8 = 0x02;
/// Frame flag: the frame is a command, not part of a message.
const FLAG_COMMAND: u8 = 0x04;

/// Frames at least this large are read into a buffer of their own, straight from the
/// socket, instead of through the shared read buffer (no second copy).
pub(crate) const LARGE_FRAME: usize = 32 * 1024;

/// The read buffer grows by this much when it runs out of room.
const READ_CHUNK: usize = 64 * 1024;

/// A large frame's buffer is allocated up front up to this size (larger ones grow as the
/// data arrives, so a bogus size cannot make us allocate it all at once).
const EAGER_ALLOCATION: usize = 1 << 30;

/// Frames larger than this are refused as malformed.
pub(crate) const MAX_FRAME: u64 = 1 << 40;

/// Malformed input from a peer: the connection is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The first bytes are not a ZMTP 3 greeting.
    #[error("not a ZMTP greeting")]
    NotZmtp,
    /// A ZMTP version older than 3.0.
    #[error("unsupported ZMTP version {0}.{1} (3.0 or later is required)")]
    Version(u8, u8),
    /// A security mechanism other than NULL.
    #[error("unsupported security mechanism {0:?} (only NULL is supported)")]
    Mechanism(String),
    /// A frame larger than 1 TiB.
    #[error("frame of {0} bytes is too large")]
    FrameTooLarge(u64),
    /// A command frame whose body is not a command.
    #[error("malformed command")]
    BadCommand,
    /// A READY command whose properties do not parse.
    #[error("malformed READY properties")]
    BadProperties,
    /// The handshake did not start with READY.
    #[error("expected READY, got {0:?}")]
    ExpectedReady(String),
    /// The peer's socket type cannot talk to ours.
    #[error("peer socket type {theirs:?} is not compatible with {ours}")]
    Incompatible {
        /// Our socket type.
        ours: &'static str,
        /// What the peer announced.
        theirs: String,
    },
    /// The peer sent an ERROR command.
    #[error("peer reported an error: {0}")]
    PeerError(String),
}

/// Our greeting: signature, version 3.1, NULL mechanism, not a server.
pub(crate) fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0] = 0xFF;
    out[9] = 0x7F;
    out[10] = 3;
    out[11] = 1;
    out[12..16].copy_from_slice(b"NULL");
    out
}

/// Checks a peer's greeting; returns its (major, minor) version.
pub(crate) fn check_greeting(greeting: &[u8]) -> Result<(u8, u8), ProtocolError> {
    if greeting.len() < GREETING_LEN || greeting[0] != 0xFF || greeting[9] & 0x01 == 0 {
        return Err(ProtocolError::NotZmtp);
    }
    let (major, minor) = (greeting[10], greeting[11]);
    if major < 3 {
        return Err(ProtocolError::Version(major, minor));
    }
    let mechanism = &greeting[12..32];
    let end = mechanism
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(mechanism.len());
    if &mechanism[..end] != b"NULL" {
        return Err(ProtocolError::Mechanism(
            String::from_utf8_lossy(&mechanism[..end]).into_owned(),
        ));
    }
    Ok((major, minor))
}

/// Appends the header of one frame of `len` bytes.
pub(crate) fn put_header(out: &mut BytesMut, len: usize, more: bool, command: bool) {
    let mut flags = 0;
    if more {
        flags |= FLAG_MORE;
    }
    if command {
        flags |= FLAG_COMMAND;
    }
    if len > 255 {
        out.put_u8(flags | FLAG_LONG);
        out.put_u64(len as u64);
    } else {
        out.put_u8(flags);
        out.put_u8(len as u8);
    }
}

/// Encodes a message for writing: headers and small frames are coalesced into shared
/// chunks; frames of [`LARGE_FRAME`] bytes or more are passed on as they are (no copy).
pub(crate) fn encode_message(frames: &[Bytes]) -> Vec<Bytes> {
    let small: usize = frames
        .iter()
        .map(|frame| {
            9 + if frame.len() < LARGE_FRAME {
                frame.len()
            } else {
                0
            }
        })
        .sum();
    let mut chunks = Vec::with_capacity(1);
    let mut current = BytesMut::with_capacity(small);
    let last = frames.len().saturating_sub(1);
    for (index, frame) in frames.iter().enumerate() {
        put_header(&mut current, frame.len(), index < last, false);
        if frame.len() < LARGE_FRAME {
            current.extend_from_slice(frame);
        } else {
            chunks.push(current.split().freeze());
            chunks.push(frame.clone());
        }
    }
    if !current.is_empty() {
        chunks.push(current.freeze());
    }
    chunks
}

/// Encodes a command frame: name, then `data`.
pub(crate) fn encode_command(name: &str, data: &[u8]) -> Bytes {
    let body = 1 + name.len() + data.len();
    let mut out = BytesMut::with_capacity(9 + body);
    put_header(&mut out, body, false, true);
    out.put_u8(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    out.freeze()
}

/// Encodes READY with `Socket-Type` and, when given, `Identity`.
pub(crate) fn encode_ready(socket_type: &str, identity: Option<&[u8]>) -> Bytes {
    let mut data = BytesMut::new();
    let mut property = |name: &str, value: &[u8]| {
        data.put_u8(name.len() as u8);
        data.extend_from_slice(name.as_bytes());
        data.put_u32(value.len() as u32);
        data.extend_from_slice(value);
    };
    property("Socket-Type", socket_type.as_bytes());
    if let Some(identity) = identity {
        property("Identity", identity);
    }
    encode_command("READY", &data)
}

/// A subscription message as ZMTP 3.0 sends it: 0x01 (subscribe) or 0x00 (cancel), then
/// the prefix, as a one-frame message.
pub(crate) fn subscription_message(subscribe: bool, prefix: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(prefix.len() + 1);
    frame.put_u8(u8::from(subscribe));
    frame.extend_from_slice(prefix);
    frame.freeze()
}

/// One command received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// READY with its properties (name, value).
    Ready(Vec<(String, Bytes)>),
    /// ERROR with its reason.
    Error(String),
    /// PING: answer with PONG carrying `context`.
    Ping {
        /// What the PONG must echo.
        context: Bytes,
    },
    /// PONG (we never ping, so it is ignored).
    Pong,
    /// SUBSCRIBE (ZMTP 3.1) with its prefix.
    Subscribe(Bytes),
    /// CANCEL (ZMTP 3.1) with its prefix.
    Cancel(Bytes),
    /// Any other command (ignored).
    Other(String),
}

impl Command {
    /// Parses a command frame's body.
    pub(crate) fn parse(mut body: Bytes) -> Result<Self, ProtocolError> {
        if body.is_empty() {
            return Err(ProtocolError::BadCommand);
        }
        let name_len = usize::from(body.get_u8());
        if body.len() < name_len {
            return Err(ProtocolError::BadCommand);
        }
        let name = body.split_to(name_len);
        Ok(match &name[..] {
            b"READY" => Self::Ready(parse_properties(body)?),
            b"ERROR" => {
                let reason = match body.first() {
                    Some(&len) if body.len() > usize::from(len) => {
                        String::from_utf8_lossy(&body[1..=usize::from(len)]).into_owned()
                    }
                    _ => String::from_utf8_lossy(&body).into_owned(),
                };
                Self::Error(reason)
            }
            b"PING" => {
                if body.len() < 2 {
                    return Err(ProtocolError::BadCommand);
                }
                body.advance(2); // TTL
                body.truncate(16);
                Self::Ping { context: body }
            }
            b"PONG" => Self::Pong,
            b"SUBSCRIBE" => Self::Subscribe(body),
            b"CANCEL" => Self::Cancel(body),
            other => Self::Other(String::from_utf8_lossy(other).into_owned()),
        })
    }
}

/// Parses READY's metadata: (name-len u8, name, value-len u32 BE, value)*.
fn parse_properties(mut data: Bytes) -> Result<Vec<(String, Bytes)>, ProtocolError> {
    let mut properties = Vec::new();
    while data.has_remaining() {
        let name_len = usize::from(data.get_u8());
        if data.len() < name_len + 4 {
            return Err(ProtocolError::BadProperties);
        }
        let name = String::from_utf8_lossy(&data.split_to(name_len)).into_owned();
        let value_len = data.get_u32() as usize;
        if data.len() < value_len {
            return Err(ProtocolError::BadProperties);
        }
        properties.push((name, data.split_to(value_len)));
    }
    Ok(properties)
}

/// The value of property `name` (names compare case-insensitively).
pub(crate) fn property<'a>(properties: &'a [(String, Bytes)], name: &str) -> Option<&'a Bytes> {
    properties
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// One frame received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A frame of a message; `more` when more frames of it follow.
    Message {
        /// More frames of this message follow.
        more: bool,
        /// The frame's bytes.
        body: Bytes,
    },
    /// A command frame's body.
    Command(Bytes),
}

/// A large frame being read straight into its own buffer.
#[derive(Debug)]
struct Large {
    flags: u8,
    size: usize,
    /// From the buffer pool when the frame is very large (see `pool`).
    body: Vec<u8>,
}

/// Splits incoming bytes into frames.
///
/// Small frames are cut out of one read buffer (handed out as `Bytes` sharing it; the
/// buffer is reused once they are dropped). A frame of [`LARGE_FRAME`] bytes or more gets a
/// buffer of exactly its size, which the socket then reads into directly
/// ([`Decoder::read_buf`]), so its bytes are copied once, by the kernel.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buf: BytesMut,
    large: Option<Large>,
}

impl Decoder {
    /// Bytes received and not yet decoded (in the shared buffer).
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the first `len` buffered bytes (the greeting).
    pub(crate) fn take(&mut self, len: usize) -> Bytes {
        self.buf.split_to(len).freeze()
    }

    /// Where the next read from the socket should go (at most what the current frame
    /// still needs when a large frame is being read).
    pub(crate) fn read_buf(&mut self) -> ReadBuf<'_> {
        if let Some(large) = &mut self.large {
            let missing = large.size - large.body.len();
            // A complete large frame is decoded first; what follows it goes to the buffer.
            if missing > 0 {
                if large.body.capacity() == large.body.len() {
                    large.body.reserve(missing.min(EAGER_ALLOCATION));
                }
                return ReadBuf::Large((&mut large.body).limit(missing));
            }
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        ReadBuf::Small(&mut self.buf)
    }

    /// Appends received bytes as reads from a socket would.
    #[cfg(test)]
    pub(crate) fn extend(&mut self, data: &[u8]) {
        let mut data = data;
        while !data.is_empty() {
            let n = match self.read_buf() {
                ReadBuf::Large(mut buf) => {
                    let n = buf.remaining_mut().min(data.len());
                    buf.put_slice(&data[..n]);
                    n
                }
                ReadBuf::Small(buf) => {
                    buf.extend_from_slice(data);
                    data.len()
                }
            };
            data = &data[n..];
        }
    }

    /// The next complete frame, if the buffered bytes hold one.
    ///
    /// # Errors
    /// [`ProtocolError::FrameTooLarge`] for a size over [`MAX_FRAME`].
    pub(crate) fn decode(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(large) = &self.large {
            if large.body.len() < large.size {
                return Ok(None);
            }
            let Some(large) = self.large.take() else {
                return Ok(None);
            };
            return Ok(Some(frame(large.flags, pool::freeze(large.body))));
        }
        let Some(&flags) = self.buf.first() else {
            return Ok(None);
        };
        let (header, size) = if flags & FLAG_LONG != 0 {
            if self.buf.len() < 9 {
                return Ok(None);
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&self.buf[1..9]);
            (9, u64::from_be_bytes(size))
        } else {
            if self.buf.len() < 2 {
                return Ok(None);
            }
            (2, u64::from(self.buf[1]))
        };
        if size > MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge(size));
        }
        let size = size as usize;
        if self.buf.len() - header >= size {
            self.buf.advance(header);
            let body = self.buf.split_to(size).freeze();
            return Ok(Some(frame(flags, body)));
        }
        if size >= LARGE_FRAME {
            // Move what has arrived into the frame's own buffer; the rest is read into it.
            self.buf.advance(header);
            let mut body = pool::buffer_for(size, EAGER_ALLOCATION);
            body.extend_from_slice(&self.buf);
            self.buf.clear();
            self.large = Some(Large { flags, size, body });
        }
        Ok(None)
    }
}

/// Where to read next: see [`Decoder::read_buf`].
pub(crate) enum ReadBuf<'a> {
    /// The shared buffer.
    Small(&'a mut BytesMut),
    /// A large frame's own buffer, limited to what it still needs.
    Large(bytes::buf::Limit<&'a mut Vec<u8>>),
}

fn frame(flags: u8, body: Bytes) -> Frame {
    if flags & FLAG_COMMAND != 0 {
        Frame::Command(body)
    } else {
        Frame::Message {
            more: flags & FLAG_MORE != 0,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn decode_all(decoder: &mut Decoder) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode().unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn greeting_is_version_3_1_null_and_checks_back() {
        let ours = greeting();
        assert_eq!(ours.len(), 64);
        assert_eq!(&ours[..10], &[0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F]);
        assert_eq!(check_greeting(&ours), Ok((3, 1)));
    }

    #[test]
    fn bad_greetings_are_refused() {
        let mut other = greeting();
        other[0] = b'G'; // "GET / HTTP/1.1"…
        assert_eq!(check_greeting(&other), Err(ProtocolError::NotZmtp));
        let mut old = greeting();
        old[10] = 2;
        assert_eq!(check_greeting(&old), Err(ProtocolError::Version(2, 1)));
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert_eq!(
            check_greeting(&curve),
            Err(ProtocolError::Mechanism("CURVE".into()))
        );
        assert_eq!(check_greeting(&[0xFF; 10]), Err(ProtocolError::NotZmtp));
    }

    #[test]
    fn short_and_long_frames_round_trip() {
        let big = Bytes::from(vec![7u8; LARGE_FRAME + 5]);
        let medium = Bytes::from(vec![3u8; 300]);
        let frames = vec![Bytes::from_static(b"id"), Bytes::new(), medium, big.clone()];
        let chunks = encode_message(&frames);
        // The large frame is passed through as is (no copy).
        assert!(chunks.iter().any(|c| c.as_ptr() == big.as_ptr()));
        let wire = concat(&chunks);
        assert_eq!(&wire[..4], &[0x01, 2, b'i', b'd']);
        assert_eq!(&wire[4..6], &[0x01, 0]);
        assert_eq!(wire[6], 0x03); // MORE | LONG
        assert_eq!(&wire[7..15], &300u64.to_be_bytes());

        let mut decoder = Decoder::default();
        decoder.extend(&wire);
        let got = decode_all(&mut decoder);
        let expected: Vec<Frame> = frames
            .iter()
            .enumerate()
            .map(|(i, body)| Frame::Message {
                more: i < 3,
                body: body.clone(),
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn frames_split_at_every_byte_still_decode() {
        let frames = vec![
            Bytes::from_static(b"topic"),
            Bytes::from(vec![9u8; LARGE_FRAME * 2]),
            Bytes::from_static(b"tail"),
        ];
        let wire = concat(&encode_message(&frames));
        for step in [1, 7, 4096, LARGE_FRAME + 1] {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                decoder.extend(piece);
                got.extend(decode_all(&mut decoder));
            }
            let bodies: Vec<Bytes> = got
                .into_iter()
                .map(|frame| match frame {
                    Frame::Message { body, .. } => body,
                    Frame::Command(_) => panic!("unexpected command"),
                })
                .collect();
            assert_eq!(bodies, frames, "step {step}");
        }
    }

    #[test]
    fn ready_round_trips_with_properties() {
        let wire = encode_ready("ROUTER", Some(b"engine-0"));
        let mut decoder = Decoder::default();
        decoder.extend(&wire);
        let Some(Frame::Command(body)) = decoder.decode().unwrap() else {
            panic!("expected a command");
        };
        let Command::Ready(properties) = Command::parse(body).unwrap() else {
            panic!("expected READY");
        };
        assert_eq!(
            property(&properties, "socket-type").map(|v| &v[..]),
            Some(&b"ROUTER"[..])
        );
        assert_eq!(
            property(&properties, "Identity").map(|v| &v[..]),
            Some(&b"engine-0"[..])
        );
    }

    #[test]
    fn commands_parse() {
        let body = |frame: Bytes| frame.slice(2..);
        assert_eq!(
            Command::parse(body(encode_command("PING", b"\x00\x0actx"))).unwrap(),
            Command::Ping {
                context: Bytes::from_static(b"ctx")
            }
        );
        assert_eq!(
            Command::parse(body(encode_command("SUBSCRIBE", b"news"))).unwrap(),
            Command::Subscribe(Bytes::from_static(b"news"))
        );
        assert_eq!(
            Command::parse(body(encode_command("CANCEL", b""))).unwrap(),
            Command::Cancel(Bytes::new())
        );
        assert_eq!(
            Command::parse(body(encode_command("ERROR", b"\x04oops"))).unwrap(),
            Command::Error("oops".into())
        );
        assert_eq!(
            Command::parse(body(encode_command("PONG", b""))).unwrap(),
            Command::Pong
        );
        assert_eq!(
            subscription_message(true, b"engine."),
            Bytes::from_static(b"\x01engine.")
        );
    }

    #[test]
    fn malformed_commands_are_errors() {
        assert_eq!(Command::parse(Bytes::new()), Err(ProtocolError::BadCommand));
        assert_eq!(
            Command::parse(Bytes::from_static(b"\x09READY")),
            Err(ProtocolError::BadCommand)
        );
        assert_eq!(
            Command::parse(Bytes::from_static(b"\x04PING")),
            Err(ProtocolError::BadCommand)
        );
        // A property whose value runs past the end.
        assert_eq!(
            Command::parse(Bytes::from_static(b"\x05READY\x01x\x00\x00\x00\x09ab")),
            Err(ProtocolError::BadProperties)
        );
    }

    #[test]
    fn absurd_frame_sizes_are_errors() {
        let mut decoder = Decoder::default();
        let mut wire = vec![0x02];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        decoder.extend(&wire);
        assert_eq!(
            decoder.decode(),
            Err(ProtocolError::FrameTooLarge(u64::MAX))
        );
    }
}
