//! HTTP/2 frames (RFC 9113, sections 4 and 6): the 9-byte header, parsing
//! a payload into a [`Frame`] that borrows it, and writing frames.
//!
//! Parsing checks everything a single frame can get wrong on its own:
//! sizes, stream ids of zero where one is needed (and the reverse), padding
//! longer than the frame, a zero WINDOW_UPDATE, a PRIORITY frame that
//! makes a stream depend on itself. Each failure is a [`FrameError`] that names the error the RFC
//! prescribes and whether it ends the connection or only the stream.
//! What depends on the connection's state (stream states, CONTINUATION
//! order, flow control) is the connection's to check.
//!
//! Frame kinds this code does not know are [`Frame::Unknown`]: RFC 9113
//! section 4.1 says to ignore them.

use bytes::BufMut;

/// What a client sends before its first frame (section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The length of a frame header.
pub const HEAD_LEN: usize = 9;

/// The largest stream id, and the largest flow-control window.
pub const MAX_ID: u32 = (1 << 31) - 1;

/// Frame types (section 6).
#[allow(missing_docs)]
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

/// Frame flags (section 6); ACK and END_STREAM share a bit.
#[allow(missing_docs)]
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// An error code (section 7).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

#[allow(missing_docs)]
impl ErrorCode {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const SETTINGS_TIMEOUT: Self = Self(0x4);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const CONNECT_ERROR: Self = Self(0xa);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
    pub const INADEQUATE_SECURITY: Self = Self(0xc);
    pub const HTTP_1_1_REQUIRED: Self = Self(0xd);

    /// The RFC's name for the code, if it has one.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "0x{:x}", self.0),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A frame that breaks a rule of section 6 on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Ends the connection with GOAWAY.
    #[error("connection error {0}: {1}")]
    Connection(ErrorCode, &'static str),
    /// Ends only this stream, with RST_STREAM.
    #[error("stream {0} error {1}: {2}")]
    Stream(u32, ErrorCode, &'static str),
}

fn connection<T>(code: ErrorCode, why: &'static str) -> Result<T, FrameError> {
    Err(FrameError::Connection(code, why))
}

/// A frame header (section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload's length.
    pub length: u32,
    /// The frame type.
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream id, reserved bit cleared.
    pub stream: u32,
}

impl Head {
    /// Reads a header.
    pub fn parse(bytes: &[u8; HEAD_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & MAX_ID,
        }
    }

    /// The header's nine bytes.
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let l = self.length.to_be_bytes();
        let s = self.stream.to_be_bytes();
        [
            l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }

    /// Checks the length against our SETTINGS_MAX_FRAME_SIZE before the
    /// payload is read (section 4.2). Every oversized frame is treated as
    /// a connection error: the RFC requires that for any frame that carries
    /// a field block or could change the connection's state, and allows it
    /// for the rest.
    pub fn check_size(&self, max_frame_size: u32) -> Result<(), FrameError> {
        if self.length > max_frame_size {
            return connection(
                ErrorCode::FRAME_SIZE_ERROR,
                "frame larger than SETTINGS_MAX_FRAME_SIZE",
            );
        }
        Ok(())
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A stream's priority fields (section 5.3.2 of RFC 7540), read only so
/// that they can be skipped: RFC 9113 deprecates the scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// The stream this one depends on.
    pub dependency: u32,
    /// The exclusive flag.
    pub exclusive: bool,
    /// The weight, minus one.
    pub weight: u8,
}

/// A parsed frame, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// DATA (6.1).
    Data {
        /// The stream.
        stream: u32,
        /// END_STREAM is set.
        end_stream: bool,
        /// The data, padding removed.
        data: &'a [u8],
        /// What the frame counts against flow control: its whole payload,
        /// padding included.
        flow: u32,
    },
    /// HEADERS (6.2).
    Headers {
        /// The stream.
        stream: u32,
        /// END_STREAM is set.
        end_stream: bool,
        /// END_HEADERS is set: no CONTINUATION follows.
        end_headers: bool,
        /// The priority fields, if present.
        priority: Option<Priority>,
        /// The field block fragment, padding removed.
        fragment: &'a [u8],
    },
    /// PRIORITY (6.3).
    Priority {
        /// The stream.
        stream: u32,
        /// Its fields.
        priority: Priority,
    },
    /// RST_STREAM (6.4).
    RstStream {
        /// The stream.
        stream: u32,
        /// Why.
        code: ErrorCode,
    },
    /// SETTINGS (6.5).
    Settings {
        /// An acknowledgement (with no parameters).
        ack: bool,
        /// The parameters, six bytes each; see [`params`].
        params: &'a [u8],
    },
    /// PUSH_PROMISE (6.6).
    PushPromise {
        /// The stream it was sent on.
        stream: u32,
        /// The stream it promises.
        promised: u32,
        /// END_HEADERS is set.
        end_headers: bool,
        /// The field block fragment.
        fragment: &'a [u8],
    },
    /// PING (6.7).
    Ping {
        /// An answer to our PING.
        ack: bool,
        /// The opaque data.
        data: [u8; 8],
    },
    /// GOAWAY (6.8).
    GoAway {
        /// The highest stream the sender may have processed.
        last_stream: u32,
        /// Why.
        code: ErrorCode,
        /// Debug data.
        debug: &'a [u8],
    },
    /// WINDOW_UPDATE (6.9).
    WindowUpdate {
        /// The stream, or 0 for the connection.
        stream: u32,
        /// The credit added, 1 to 2^31 - 1.
        increment: u32,
    },
    /// CONTINUATION (6.10).
    Continuation {
        /// The stream.
        stream: u32,
        /// END_HEADERS is set.
        end_headers: bool,
        /// The field block fragment.
        fragment: &'a [u8],
    },
    /// A frame type this code does not know: to be ignored.
    Unknown {
        /// Its type.
        kind: u8,
        /// Its stream.
        stream: u32,
    },
}

/// Parses a frame whose header is `head` and payload `payload`
/// (`head.length` bytes).
pub fn parse<'a>(head: Head, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
    debug_assert_eq!(payload.len(), head.length as usize);
    let stream = head.stream;
    let need_stream = |name: &'static str| {
        if stream == 0 {
            connection(ErrorCode::PROTOCOL_ERROR, name)
        } else {
            Ok(())
        }
    };
    let no_stream = |name: &'static str| {
        if stream != 0 {
            connection(ErrorCode::PROTOCOL_ERROR, name)
        } else {
            Ok(())
        }
    };
    Ok(match head.kind {
        kind::DATA => {
            need_stream("DATA on stream 0")?;
            let data = unpad(head, payload)?;
            Frame::Data {
                stream,
                end_stream: head.has(flag::END_STREAM),
                data,
                flow: head.length,
            }
        }
        kind::HEADERS => {
            need_stream("HEADERS on stream 0")?;
            let mut fragment = unpad(head, payload)?;
            let priority = if head.has(flag::PRIORITY) {
                let Some((fields, rest)) = fragment.split_first_chunk::<5>() else {
                    return connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "HEADERS too short for its priority",
                    );
                };
                fragment = rest;
                // A stream that depends on itself is a stream error, but
                // the block must be decoded first to keep HPACK's table in
                // step: the connection checks it.
                Some(read_priority(fields))
            } else {
                None
            };
            Frame::Headers {
                stream,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                priority,
                fragment,
            }
        }
        kind::PRIORITY => {
            need_stream("PRIORITY on stream 0")?;
            let Ok(fields) = <&[u8; 5]>::try_from(payload) else {
                return Err(FrameError::Stream(
                    stream,
                    ErrorCode::FRAME_SIZE_ERROR,
                    "PRIORITY not 5 bytes",
                ));
            };
            let priority = read_priority(fields);
            if priority.dependency == stream {
                return Err(FrameError::Stream(
                    stream,
                    ErrorCode::PROTOCOL_ERROR,
                    "stream depends on itself",
                ));
            }
            Frame::Priority { stream, priority }
        }
        kind::RST_STREAM => {
            need_stream("RST_STREAM on stream 0")?;
            let Ok(code) = <[u8; 4]>::try_from(payload) else {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes");
            };
            Frame::RstStream {
                stream,
                code: ErrorCode(u32::from_be_bytes(code)),
            }
        }
        kind::SETTINGS => {
            no_stream("SETTINGS on a stream")?;
            let ack = head.has(flag::ACK);
            if ack && !payload.is_empty() {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS ack with a payload");
            }
            if payload.len() % 6 != 0 {
                return connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "SETTINGS not a multiple of 6 bytes",
                );
            }
            Frame::Settings {
                ack,
                params: payload,
            }
        }
        kind::PUSH_PROMISE => {
            need_stream("PUSH_PROMISE on stream 0")?;
            let fragment = unpad(head, payload)?;
            let Some((promised, fragment)) = fragment.split_first_chunk::<4>() else {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "PUSH_PROMISE too short");
            };
            Frame::PushPromise {
                stream,
                promised: u32::from_be_bytes(*promised) & MAX_ID,
                end_headers: head.has(flag::END_HEADERS),
                fragment,
            }
        }
        kind::PING => {
            no_stream("PING on a stream")?;
            let Ok(data) = <[u8; 8]>::try_from(payload) else {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "PING not 8 bytes");
            };
            Frame::Ping {
                ack: head.has(flag::ACK),
                data,
            }
        }
        kind::GOAWAY => {
            no_stream("GOAWAY on a stream")?;
            let Some((fixed, debug)) = payload.split_first_chunk::<8>() else {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes");
            };
            let (last, code) = fixed.split_at(4);
            Frame::GoAway {
                last_stream: u32::from_be_bytes([last[0], last[1], last[2], last[3]]) & MAX_ID,
                code: ErrorCode(u32::from_be_bytes([code[0], code[1], code[2], code[3]])),
                debug,
            }
        }
        kind::WINDOW_UPDATE => {
            let Ok(increment) = <[u8; 4]>::try_from(payload) else {
                return connection(ErrorCode::FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes");
            };
            let increment = u32::from_be_bytes(increment) & MAX_ID;
            if increment == 0 {
                let why = "WINDOW_UPDATE of 0";
                return Err(if stream == 0 {
                    FrameError::Connection(ErrorCode::PROTOCOL_ERROR, why)
                } else {
                    FrameError::Stream(stream, ErrorCode::PROTOCOL_ERROR, why)
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            need_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: head.has(flag::END_HEADERS),
                fragment: payload,
            }
        }
        kind => Frame::Unknown { kind, stream },
    })
}

/// The payload without its padding (section 6.1): padding that fills the
/// whole frame or more is a connection error.
fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], FrameError> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "padded frame without a pad length",
        );
    };
    match rest.len().checked_sub(usize::from(pad)) {
        Some(len) => Ok(&rest[..len]),
        None => connection(ErrorCode::PROTOCOL_ERROR, "padding longer than the frame"),
    }
}

fn read_priority(fields: &[u8; 5]) -> Priority {
    let word = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]);
    Priority {
        dependency: word & MAX_ID,
        exclusive: word & !MAX_ID != 0,
        weight: fields[4],
    }
}

/// A SETTINGS parameter's identifier (section 6.5.2).
#[allow(missing_docs)]
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// The parameters of a SETTINGS payload, in order.
pub fn params(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload.chunks_exact(6).map(|p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        )
    })
}

/// One side's settings (section 6.5.2), with the RFC's initial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub header_table_size: u32,
    /// SETTINGS_ENABLE_PUSH.
    pub enable_push: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS; unlimited until set.
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub initial_window_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; unlimited until set.
    pub max_header_list_size: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_table_size: 4096,
            enable_push: true,
            max_concurrent_streams: None,
            initial_window_size: 65_535,
            max_frame_size: 16_384,
            max_header_list_size: None,
        }
    }
}

impl Settings {
    /// Applies a SETTINGS frame's parameters, checking each value's range;
    /// unknown parameters are ignored (section 6.5.2).
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        for (id, value) in params(payload) {
            match id {
                setting::HEADER_TABLE_SIZE => self.header_table_size = value,
                setting::ENABLE_PUSH => {
                    self.enable_push = match value {
                        0 => false,
                        1 => true,
                        _ => {
                            return connection(
                                ErrorCode::PROTOCOL_ERROR,
                                "SETTINGS_ENABLE_PUSH not 0 or 1",
                            )
                        }
                    }
                }
                setting::MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE => {
                    if value > MAX_ID {
                        return connection(
                            ErrorCode::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31 - 1",
                        );
                    }
                    self.initial_window_size = value;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return connection(
                            ErrorCode::PROTOCOL_ERROR,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        );
                    }
                    self.max_frame_size = value;
                }
                setting::MAX_HEADER_LIST_SIZE => self.max_header_list_size = Some(value),
                _ => {}
            }
        }
        Ok(())
    }

    /// The parameters that differ from `base` (what the peer assumes until
    /// it hears otherwise), to announce in a SETTINGS frame.
    pub fn diff(&self, base: &Settings) -> impl Iterator<Item = (u16, u32)> {
        [
            (
                setting::HEADER_TABLE_SIZE,
                Some(self.header_table_size),
                Some(base.header_table_size),
            ),
            (
                setting::ENABLE_PUSH,
                Some(u32::from(self.enable_push)),
                Some(u32::from(base.enable_push)),
            ),
            (
                setting::MAX_CONCURRENT_STREAMS,
                self.max_concurrent_streams,
                base.max_concurrent_streams,
            ),
            (
                setting::INITIAL_WINDOW_SIZE,
                Some(self.initial_window_size),
                Some(base.initial_window_size),
            ),
            (
                setting::MAX_FRAME_SIZE,
                Some(self.max_frame_size),
                Some(base.max_frame_size),
            ),
            (
                setting::MAX_HEADER_LIST_SIZE,
                self.max_header_list_size,
                base.max_header_list_size,
            ),
        ]
        .into_iter()
        .filter_map(|(id, mine, theirs)| (mine != theirs).then_some((id, mine?)))
    }
}

/// Writes a frame header.
pub fn write_head(dst: &mut impl BufMut, length: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(length < 1 << 24);
    dst.put_slice(
        &Head {
            length: length as u32,
            kind,
            flags,
            stream,
        }
        .encode(),
    );
}

/// Writes a SETTINGS frame with these parameters.
pub fn write_settings(dst: &mut impl BufMut, params: impl IntoIterator<Item = (u16, u32)>) {
    let mut payload = [0u8; 6 * 8];
    let mut len = 0;
    for (id, value) in params.into_iter().take(8) {
        payload[len..len + 2].copy_from_slice(&id.to_be_bytes());
        payload[len + 2..len + 6].copy_from_slice(&value.to_be_bytes());
        len += 6;
    }
    write_head(dst, len, kind::SETTINGS, 0, 0);
    dst.put_slice(&payload[..len]);
}

/// Writes a SETTINGS acknowledgement.
pub fn write_settings_ack(dst: &mut impl BufMut) {
    write_head(dst, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Writes a PING, or its answer.
pub fn write_ping(dst: &mut impl BufMut, ack: bool, data: [u8; 8]) {
    write_head(dst, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    dst.put_slice(&data);
}

/// Writes a GOAWAY.
pub fn write_goaway(dst: &mut impl BufMut, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    write_head(dst, 8 + debug.len(), kind::GOAWAY, 0, 0);
    dst.put_u32(last_stream);
    dst.put_u32(code.0);
    dst.put_slice(debug);
}

/// Writes a RST_STREAM.
pub fn write_rst_stream(dst: &mut impl BufMut, stream: u32, code: ErrorCode) {
    write_head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.put_u32(code.0);
}

/// Writes a WINDOW_UPDATE.
pub fn write_window_update(dst: &mut impl BufMut, stream: u32, increment: u32) {
    debug_assert!((1..=MAX_ID).contains(&increment));
    write_head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.put_u32(increment);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
        let head = Head::parse(bytes[..HEAD_LEN].try_into().expect("a header"));
        parse(head, &bytes[HEAD_LEN..])
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_header_round_trips_and_ignores_the_reserved_bit() {
        let head = Head {
            length: 0x12_3456,
            kind: 7,
            flags: 0xff,
            stream: MAX_ID,
        };
        let mut bytes = head.encode();
        assert_eq!(Head::parse(&bytes), head);
        bytes[5] |= 0x80;
        assert_eq!(Head::parse(&bytes), head);
        assert!(head.check_size(16_384).is_err());
        assert!(head.check_size(0x12_3456).is_ok());
    }

    #[test]
    fn data_padding_counts_against_flow_control() {
        let bytes = frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            b"\x02abc\0\0",
        );
        assert_eq!(
            one(&bytes),
            Ok(Frame::Data {
                stream: 1,
                end_stream: true,
                data: b"abc",
                flow: 6
            })
        );
        let all_padding = frame(kind::DATA, flag::PADDED, 1, b"\x05abcd");
        assert!(matches!(
            one(&all_padding),
            Err(FrameError::Connection(ErrorCode::PROTOCOL_ERROR, _))
        ));
        let exactly = frame(kind::DATA, flag::PADDED, 1, b"\x04abcd");
        assert!(matches!(one(&exactly), Ok(Frame::Data { data: b"", .. })));
        assert!(matches!(
            one(&frame(kind::DATA, 0, 0, b"x")),
            Err(FrameError::Connection(ErrorCode::PROTOCOL_ERROR, _))
        ));
    }

    #[test]
    fn headers_with_priority_and_padding() {
        let payload = b"\x01\x80\0\0\x03\x10\x82\0";
        let bytes = frame(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            5,
            payload,
        );
        assert_eq!(
            one(&bytes),
            Ok(Frame::Headers {
                stream: 5,
                end_stream: false,
                end_headers: true,
                priority: Some(Priority {
                    dependency: 3,
                    exclusive: true,
                    weight: 16
                }),
                fragment: b"\x82",
            })
        );
        let itself = frame(kind::HEADERS, flag::PRIORITY, 3, b"\0\0\0\x03\x10");
        assert!(matches!(
            one(&itself),
            Ok(Frame::Headers {
                priority: Some(Priority { dependency: 3, .. }),
                ..
            })
        ));
        let short = frame(kind::HEADERS, flag::PRIORITY, 3, b"\0\0");
        assert!(matches!(
            one(&short),
            Err(FrameError::Connection(ErrorCode::FRAME_SIZE_ERROR, _))
        ));
    }

    #[test]
    fn each_kind_checks_its_size_and_stream() {
        use ErrorCode as E;
        let cases: Vec<(Vec<u8>, Result<(), FrameError>)> = vec![
            (
                frame(kind::PRIORITY, 0, 1, b"\0\0\0\0"),
                Err(FrameError::Stream(1, E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::PRIORITY, 0, 0, b"\0\0\0\0\0"),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::RST_STREAM, 0, 1, b"\0\0\0"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::RST_STREAM, 0, 0, b"\0\0\0\0"),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::SETTINGS, 0, 1, b""),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::SETTINGS, flag::ACK, 0, b"\0\x01\0\0\0\0"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::SETTINGS, 0, 0, b"\0\x01\0\0\0"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::PING, 0, 0, b"1234567"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::PING, 0, 1, b"12345678"),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::GOAWAY, 0, 0, b"1234567"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::GOAWAY, 0, 1, b"12345678"),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::WINDOW_UPDATE, 0, 0, b"\0\0\0"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (
                frame(kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::WINDOW_UPDATE, 0, 3, b"\x80\0\0\0"),
                Err(FrameError::Stream(3, E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::CONTINUATION, 0, 0, b""),
                Err(FrameError::Connection(E::PROTOCOL_ERROR, "")),
            ),
            (
                frame(kind::PUSH_PROMISE, 0, 1, b"\0\0"),
                Err(FrameError::Connection(E::FRAME_SIZE_ERROR, "")),
            ),
            (frame(0x42, 0xff, 0, b"anything"), Ok(())),
            (frame(kind::WINDOW_UPDATE, 0, 0, b"\x80\0\0\x01"), Ok(())),
        ];
        // Compare kinds and codes, not the words.
        let strip = |r: Result<Frame<'_>, FrameError>| match r {
            Ok(_) => Ok(()),
            Err(FrameError::Connection(c, _)) => Err(FrameError::Connection(c, "")),
            Err(FrameError::Stream(s, c, _)) => Err(FrameError::Stream(s, c, "")),
        };
        for (bytes, want) in cases {
            assert_eq!(strip(one(&bytes)), want, "{:02x?}", &bytes[..HEAD_LEN]);
        }
    }

    #[test]
    fn settings_are_checked_applied_and_announced() {
        let mut s = Settings::default();
        let mut frame = Vec::new();
        let mine = Settings {
            max_concurrent_streams: Some(100),
            initial_window_size: 1 << 20,
            enable_push: false,
            ..Settings::default()
        };
        write_settings(&mut frame, mine.diff(&Settings::default()));
        let Ok(Frame::Settings { ack: false, params }) = one(&frame) else {
            panic!("a SETTINGS frame");
        };
        assert_eq!(params.len(), 18);
        s.apply(params).expect("valid");
        assert_eq!(s, mine);
        let bad = [
            (setting::ENABLE_PUSH, 2, ErrorCode::PROTOCOL_ERROR),
            (
                setting::INITIAL_WINDOW_SIZE,
                1 << 31,
                ErrorCode::FLOW_CONTROL_ERROR,
            ),
            (setting::MAX_FRAME_SIZE, 16_383, ErrorCode::PROTOCOL_ERROR),
            (setting::MAX_FRAME_SIZE, 1 << 24, ErrorCode::PROTOCOL_ERROR),
        ];
        for (id, value, code) in bad {
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(&u32::to_be_bytes(value));
            assert!(matches!(s.apply(&payload), Err(FrameError::Connection(c, _)) if c == code));
        }
        // Unknown ids are ignored.
        s.apply(b"\0\x99\0\0\0\x01").expect("ignored");
    }

    #[test]
    fn writers_produce_frames_the_parser_reads() {
        let mut out = Vec::new();
        write_ping(&mut out, true, *b"12345678");
        assert_eq!(
            one(&out),
            Ok(Frame::Ping {
                ack: true,
                data: *b"12345678"
            })
        );
        out.clear();
        write_goaway(&mut out, 7, ErrorCode::ENHANCE_YOUR_CALM, b"calm");
        assert_eq!(
            one(&out),
            Ok(Frame::GoAway {
                last_stream: 7,
                code: ErrorCode::ENHANCE_YOUR_CALM,
                debug: b"calm"
            })
        );
        out.clear();
        write_rst_stream(&mut out, 9, ErrorCode::CANCEL);
        assert_eq!(
            one(&out),
            Ok(Frame::RstStream {
                stream: 9,
                code: ErrorCode::CANCEL
            })
        );
        out.clear();
        write_window_update(&mut out, 0, MAX_ID);
        assert_eq!(
            one(&out),
            Ok(Frame::WindowUpdate {
                stream: 0,
                increment: MAX_ID
            })
        );
        out.clear();
        write_settings_ack(&mut out);
        assert_eq!(
            one(&out),
            Ok(Frame::Settings {
                ack: true,
                params: b""
            })
        );
        assert_eq!(format!("{}", ErrorCode(0x1)), "PROTOCOL_ERROR");
        assert_eq!(format!("{}", ErrorCode(0x42)), "0x42");
    }

    proptest! {
        #[test]
        fn arbitrary_frames_parse_or_fail_cleanly(
            kind in 0u8..12,
            flags in any::<u8>(),
            stream in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let bytes = frame(kind, flags, stream & MAX_ID, &payload);
            if let Ok(Frame::Data { data, flow, .. }) = one(&bytes) {
                prop_assert!(data.len() <= flow as usize);
            }
            if let Ok(Frame::Settings { params: p, .. }) = one(&bytes) {
                let _ = Settings::default().apply(p);
            }
        }
    }
}
