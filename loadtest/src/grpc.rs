//! gRPC message framing and the echo service's names, shared by `serve`
//! and `run`.
//!
//! A gRPC message on the wire is a 5-byte prefix (compressed flag, 4-byte
//! big-endian length) and the payload. [`Deframer`] collects DATA chunks and
//! yields whole messages without copying when a message sits in one chunk.

use bytes::{BufMut, Bytes, BytesMut};

/// The echo service's methods.
pub const UNARY: &str = "/loadtest.Echo/Unary";
/// Server streaming: `x-messages` responses to one request.
pub const SERVER_STREAM: &str = "/loadtest.Echo/ServerStream";
/// Client streaming: one response after the request stream ends.
pub const CLIENT_STREAM: &str = "/loadtest.Echo/ClientStream";
/// Bidirectional: one response per request message.
pub const BIDI: &str = "/loadtest.Echo/Bidi";

/// Request metadata: response payload size in bytes (default: echo).
pub const RESPONSE_SIZE: &str = "x-response-size";
/// Request metadata: messages per server stream.
pub const MESSAGES: &str = "x-messages";
/// Request metadata: delay before each response, e.g. `2ms`.
pub const DELAY: &str = "x-delay";
/// Request metadata: answer with this gRPC status code instead.
pub const FAIL_CODE: &str = "x-fail-code";

/// Frames one message.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// A framed message of `size` zero bytes.
pub fn frame_zeros(size: usize) -> Bytes {
    let mut b = BytesMut::zeroed(5 + size);
    b[1..5].copy_from_slice(&(size as u32).to_be_bytes());
    b.freeze()
}

/// Reassembles messages from DATA chunks.
#[derive(Default)]
pub struct Deframer {
    buf: BytesMut,
}

/// A framing error: the peer sent something that is not gRPC.
#[derive(Debug, thiserror::Error)]
#[error("malformed gRPC message: {0}")]
pub struct FrameError(&'static str);

impl Deframer {
    /// Adds a chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if self.buf.is_empty() {
            // Keep the common case cheap: a BytesMut from a unique Bytes
            // reuses its memory.
            self.buf = BytesMut::from(chunk);
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next whole message, prefix included (so it can be sent on as
    /// is), if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] > 1 {
            return Err(FrameError("compressed flag is neither 0 nor 1"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(5 + len).freeze()))
    }

    /// Whether a partial message is left over.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_chunks_reassemble() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&frame(b"hello"));
        all.extend_from_slice(&frame(b""));
        all.extend_from_slice(&frame_zeros(3));
        let all = all.freeze();
        let mut d = Deframer::default();
        let mut got = Vec::new();
        for i in 0..all.len() {
            d.push(all.slice(i..i + 1));
            while let Some(m) = d.next_frame().expect("well formed") {
                got.push(m.slice(5..));
            }
        }
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"hello"),
                Bytes::new(),
                Bytes::from_static(&[0, 0, 0])
            ]
        );
        assert!(!d.has_partial());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Deframer::default();
        d.push(Bytes::from_static(b"GET / HTTP/1.1"));
        assert!(d.next_frame().is_err());
    }
}
