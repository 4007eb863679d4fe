//! A hand-made HTTP/2 peer for conformance tests: every frame is built
//! byte by byte and read back raw, on a blocking socket, so that a test can
//! send what no HTTP/2 library would and see exactly what came back.
//!
//! It shares no code with the engine: its HPACK is literal fields without
//! indexing (and static-table indexes where a test asks for them), and it
//! decodes nothing it receives but frame headers, which is all the
//! conformance rules speak of.
//!
//! A [`Peer`] plays the client against the proxy's listener
//! ([`Peer::connect`]) or the upstream against the proxy's upstream leg
//! ([`Peer::accept`]). The `expect_*` methods read until what they look
//! for arrives and return what they saw instead when it does not.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Frame types (RFC 9113 section 6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 section 7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
}

/// Settings identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an `expect_*` waits for what it looks for.
const PATIENCE: Duration = Duration::from_secs(5);

/// One frame as it came off the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Whether END_STREAM is set on a DATA or HEADERS.
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, kind::DATA | kind::HEADERS) && self.flags & flag::END_STREAM != 0
    }

    fn describe(&self) -> String {
        let name = match self.kind {
            kind::DATA => "DATA",
            kind::HEADERS => "HEADERS",
            kind::PRIORITY => "PRIORITY",
            kind::RST_STREAM => "RST_STREAM",
            kind::SETTINGS => "SETTINGS",
            kind::PUSH_PROMISE => "PUSH_PROMISE",
            kind::PING => "PING",
            kind::GOAWAY => "GOAWAY",
            kind::WINDOW_UPDATE => "WINDOW_UPDATE",
            kind::CONTINUATION => "CONTINUATION",
            _ => "unknown",
        };
        let mut text = format!(
            "{name} stream {} flags {:#x} length {}",
            self.stream,
            self.flags,
            self.payload.len()
        );
        if let Some(code) = self.error_code() {
            text.push_str(&format!(" code {code:#x}"));
        }
        if self.kind == kind::GOAWAY && self.payload.len() > 8 {
            text.push_str(&format!(
                " debug {:?}",
                String::from_utf8_lossy(&self.payload[8..])
            ));
        }
        text
    }
}

/// What reading brought.
#[derive(Debug)]
pub enum Seen {
    Frame(Frame),
    /// The peer closed the connection (or reset it).
    Closed,
    /// Nothing came in time.
    Timeout,
}

impl Seen {
    fn describe(&self) -> String {
        match self {
            Seen::Frame(f) => f.describe(),
            Seen::Closed => "the connection closed".into(),
            Seen::Timeout => "nothing in time".into(),
        }
    }
}

/// The result of one conformance expectation: what was seen instead.
pub type Verdict = Result<(), String>;

/// One end of a raw HTTP/2 connection.
pub struct Peer {
    tcp: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    /// Frames read while waiting for something else, in order.
    pub seen: Vec<String>,
    /// The settings the other side announced in its first SETTINGS.
    pub settings: Vec<(u16, u32)>,
    /// Frames the handshake read past, for the next reads.
    pending: VecDeque<Frame>,
}

impl Peer {
    fn new(tcp: TcpStream) -> Peer {
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        Peer {
            tcp,
            buf: Vec::new(),
            closed: false,
            seen: Vec::new(),
            settings: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// A client connection to `addr` that has sent the preface and these
    /// settings, acknowledged the server's and had its own acknowledged.
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Peer {
        let mut peer = Peer::connect_raw(addr);
        peer.send_raw(PREFACE);
        peer.send(&settings_frame(settings));
        peer.handshake();
        peer
    }

    /// A client connection to `addr` that has sent nothing.
    pub fn connect_raw(addr: SocketAddr) -> Peer {
        Peer::new(TcpStream::connect(addr).expect("connect"))
    }

    /// The upstream end of the next connection the proxy makes to
    /// `listener` (within `PATIENCE`), once it has read the client preface,
    /// sent these settings, and exchanged acknowledgements.
    pub fn accept(listener: &TcpListener, settings: &[(u16, u32)]) -> Result<Peer, String> {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match listener.accept() {
                Ok((tcp, _)) => {
                    tcp.set_nonblocking(false).expect("blocking");
                    return Peer::accepted(tcp, settings);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("the proxy never connected: {e}")),
            }
        }
    }

    /// The upstream end of `tcp`, as [`Peer::accept`].
    pub fn accepted(tcp: TcpStream, settings: &[(u16, u32)]) -> Result<Peer, String> {
        let mut peer = Peer::new(tcp);
        let mut preface = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while preface.len() < PREFACE.len() {
            let mut byte = [0u8; 1];
            match peer.tcp.read(&mut byte) {
                Ok(1) => preface.push(byte[0]),
                Ok(_) => return Err("the proxy closed before its preface".into()),
                Err(_) if Instant::now() < deadline => {}
                Err(e) => return Err(format!("no client preface: {e}")),
            }
        }
        if preface != PREFACE {
            return Err(format!("not the client preface: {preface:?}"));
        }
        peer.send(&settings_frame(settings));
        peer.handshake();
        Ok(peer)
    }

    /// Reads until the other side's SETTINGS (acknowledged) and the
    /// acknowledgement of ours have both come.
    fn handshake(&mut self) {
        let (mut theirs, mut acked) = (false, false);
        while !(theirs && acked) {
            match self.read_wire(PATIENCE) {
                Seen::Frame(f) if f.kind == kind::SETTINGS && f.flags & flag::ACK != 0 => {
                    acked = true
                }
                Seen::Frame(f) if f.kind == kind::SETTINGS => {
                    theirs = true;
                    self.settings = f
                        .payload
                        .chunks_exact(6)
                        .map(|c| {
                            let id = u16::from_be_bytes([c[0], c[1]]);
                            (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
                        })
                        .collect();
                    self.send(&frame(kind::SETTINGS, flag::ACK, 0, &[]));
                }
                Seen::Frame(f) => self.pending.push_back(f),
                other => panic!("handshake: {}", other.describe()),
            }
        }
    }

    /// The value the other side announced for `id`, if it did.
    pub fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Writes bytes as they are; a peer that has closed may make this fail,
    /// which the reads after it report.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes);
    }

    /// Writes one or more frames.
    pub fn send(&mut self, frames: &[u8]) {
        self.send_raw(frames)
    }

    /// The next frame, a close, or a timeout after `PATIENCE`.
    pub fn read(&mut self) -> Seen {
        self.read_within(PATIENCE)
    }

    /// The next frame, a close, or a timeout after `patience`.
    pub fn read_within(&mut self, patience: Duration) -> Seen {
        match self.pending.pop_front() {
            Some(f) => Seen::Frame(f),
            None => self.read_wire(patience),
        }
    }

    /// The next frame off the socket itself.
    fn read_wire(&mut self, patience: Duration) -> Seen {
        let deadline = Instant::now() + patience;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Seen::Frame(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            if self.closed {
                return Seen::Closed;
            }
            if Instant::now() >= deadline {
                return Seen::Timeout;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tcp.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// Reads until `wanted` says a frame is what it looks for, answering
    /// PINGs on the way; fails with what was seen when the connection
    /// closes or nothing comes. Stream frames passed over are read again
    /// by the next reads (a request that overtook a PING ACK is not lost).
    /// The frames read while waiting for something else: the first and
    /// last few of a long run (a burst of a thousand answers would
    /// otherwise fill a failure's message).
    fn seen_so_far(&self) -> String {
        const ENDS: usize = 8;
        if self.seen.len() <= 2 * ENDS {
            return format!("{:?}", self.seen);
        }
        format!(
            "{:?} ... {} more ... {:?}",
            &self.seen[..ENDS],
            self.seen.len() - 2 * ENDS,
            &self.seen[self.seen.len() - ENDS..]
        )
    }

    fn until(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> Result<Frame, String> {
        let mut passed = Vec::new();
        let found = loop {
            match self.read() {
                Seen::Frame(f) if wanted(&f) => break Ok(f),
                Seen::Frame(f) => {
                    if f.kind == kind::PING && f.flags & flag::ACK == 0 {
                        self.send(&frame(kind::PING, flag::ACK, 0, &f.payload));
                    }
                    self.seen.push(f.describe());
                    if f.stream != 0 {
                        passed.push(f);
                    }
                }
                other => {
                    break Err(format!(
                        "expected {what}; saw {} then {}",
                        self.seen_so_far(),
                        other.describe()
                    ))
                }
            }
        };
        for f in passed.into_iter().rev() {
            self.pending.push_front(f);
        }
        found
    }

    /// A connection error: GOAWAY with `code`, then the connection closes.
    pub fn expect_connection_error(&mut self, code: u32) -> Verdict {
        self.expect_connection_error_of(&[code])
    }

    /// The connection closes (frames before that are allowed, but for
    /// anything that looks like a successful answer).
    pub fn expect_closed(&mut self) -> Verdict {
        loop {
            match self.read() {
                Seen::Closed => return Ok(()),
                Seen::Frame(f) => self.seen.push(f.describe()),
                Seen::Timeout => {
                    return Err(format!(
                        "expected the connection to close; saw {}",
                        self.seen_so_far()
                    ))
                }
            }
        }
    }

    /// A stream error on `stream`: RST_STREAM with `code`, or a
    /// connection error with it (which the RFC always allows).
    pub fn expect_stream_error(&mut self, stream: u32, code: u32) -> Verdict {
        self.expect_stream_error_of(stream, &[code])
    }

    /// A stream error with one of `codes` (for rules that allow several).
    pub fn expect_stream_error_of(&mut self, stream: u32, codes: &[u32]) -> Verdict {
        let f = self.until(&format!("RST_STREAM {codes:x?} on stream {stream}"), |f| {
            f.kind == kind::GOAWAY || (f.kind == kind::RST_STREAM && f.stream == stream)
        })?;
        match f.error_code() {
            Some(c) if codes.contains(&c) && f.kind == kind::GOAWAY => self.expect_closed(),
            Some(c) if codes.contains(&c) => Ok(()),
            _ => Err(format!(
                "expected RST_STREAM {codes:x?} on stream {stream}; saw {} then {}",
                self.seen_so_far(),
                f.describe()
            )),
        }
    }

    /// A connection error with one of `codes`.
    pub fn expect_connection_error_of(&mut self, codes: &[u32]) -> Verdict {
        let goaway = self.until(&format!("GOAWAY {codes:x?}"), |f| f.kind == kind::GOAWAY)?;
        match goaway.error_code() {
            Some(c) if codes.contains(&c) => self.expect_closed(),
            _ => Err(format!(
                "expected GOAWAY {codes:x?}; saw {}",
                goaway.describe()
            )),
        }
    }

    /// A HEADERS frame on `stream`.
    pub fn expect_headers(&mut self, stream: u32) -> Result<Frame, String> {
        self.until(&format!("HEADERS on stream {stream}"), |f| {
            f.kind == kind::HEADERS && f.stream == stream
        })
    }

    /// A DATA frame on `stream`.
    pub fn expect_data(&mut self, stream: u32) -> Result<Frame, String> {
        self.until(&format!("DATA on stream {stream}"), |f| {
            f.kind == kind::DATA && f.stream == stream
        })
    }

    /// The end of `stream` (DATA or HEADERS with END_STREAM).
    pub fn expect_stream_end(&mut self, stream: u32) -> Verdict {
        self.until(&format!("the end of stream {stream}"), |f| {
            f.stream == stream && (f.ends_stream() || f.kind == kind::RST_STREAM)
        })
        .and_then(|f| {
            if f.kind == kind::RST_STREAM {
                Err(format!(
                    "expected the end of stream {stream}; saw {}",
                    f.describe()
                ))
            } else {
                Ok(())
            }
        })
    }

    /// A PING with ACK carrying `data`: the connection is alive and has
    /// handled everything sent before the PING.
    pub fn expect_ping_ack(&mut self, data: [u8; 8]) -> Verdict {
        let f = self.until("a PING ACK", |f| {
            f.kind == kind::PING && f.flags & flag::ACK != 0
        })?;
        if f.payload != data {
            return Err(format!("PING ACK with {:?}, not {data:?}", f.payload));
        }
        Ok(())
    }

    /// Sends a PING and expects its ACK, with no GOAWAY or RST_STREAM
    /// before it: what was sent before was accepted.
    pub fn expect_alive(&mut self) -> Verdict {
        let data = *b"alive?!!";
        self.send(&frame(kind::PING, 0, 0, &data));
        let f = self.until("a PING ACK", |f| {
            (f.kind == kind::PING && f.flags & flag::ACK != 0)
                || f.kind == kind::GOAWAY
                || f.kind == kind::RST_STREAM
        })?;
        if f.kind != kind::PING || f.payload != data {
            return Err(format!(
                "expected the connection to go on; saw {} then {}",
                self.seen_so_far(),
                f.describe()
            ));
        }
        Ok(())
    }
}

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with these values.
pub fn settings_frame(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &payload)
}

/// A WINDOW_UPDATE of `increment` on `stream`.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A RST_STREAM with `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A PRIORITY frame: depends on `on`, weight `weight`.
pub fn priority(stream: u32, on: u32, weight: u8) -> Vec<u8> {
    let mut p = on.to_be_bytes().to_vec();
    p.push(weight);
    frame(kind::PRIORITY, 0, stream, &p)
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, new names, raw
/// (not Huffman) strings, in the order given.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The fields of a gRPC call to `/test.Echo/Unary`.
pub fn grpc_fields() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/test.Echo/Unary"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
}

/// The header block of a gRPC call to `/test.Echo/Unary`.
pub fn grpc_block() -> Vec<u8> {
    block(&grpc_fields())
}

/// HEADERS of a gRPC call on `stream`, whole (END_HEADERS), ending the
/// stream if `end`.
pub fn grpc_headers(stream: u32, end: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    frame(kind::HEADERS, flags, stream, &grpc_block())
}

/// One gRPC message of `payload` (the 5-byte prefix, then the bytes).
pub fn message(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A whole unary gRPC call on `stream`: HEADERS, then one DATA carrying
/// one message of `payload` and ending the stream.
pub fn grpc_call(stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = grpc_headers(stream, false);
    out.extend(frame(
        kind::DATA,
        flag::END_STREAM,
        stream,
        &message(payload),
    ));
    out
}
