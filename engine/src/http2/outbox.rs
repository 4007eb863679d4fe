//! What one connection has to write, in order: small frames gathered into
//! one buffer, large DATA payloads as `Bytes` slices of the buffer they
//! were read into, so payload bytes are not copied on their way through.
//!
//! A payload under [`COPY_BELOW`] is copied in behind its frame header
//! instead: for small messages one more memcpy is cheaper than one more
//! segment in the write and one more buffer kept alive (a read buffer that
//! a payload still holds is replaced, not reused, on the next read).

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Payloads shorter than this are copied into the gathering buffer. At
/// 1 KiB calls (1,029 bytes with gRPC's prefix), copying rather than
/// holding took 9% off the proxy's instructions per call one at a time,
/// and 8x16 of them ran 5-7% faster at the same CPU per call.
pub const COPY_BELOW: usize = 4096;

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Sealed segments, oldest first.
    queue: VecDeque<Bytes>,
    /// Small frames still being gathered; after everything in `queue`.
    tail: BytesMut,
    /// Bytes in `queue` and `tail`.
    len: usize,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends with `write`, which writes whole frames.
    pub fn put(&mut self, write: impl FnOnce(&mut BytesMut)) {
        let before = self.tail.len();
        write(&mut self.tail);
        self.len += self.tail.len() - before;
    }

    /// Appends a payload whose frame header was just put: copied if small,
    /// else queued as it is.
    pub fn put_payload(&mut self, payload: Bytes) {
        self.len += payload.len();
        if payload.len() < COPY_BELOW {
            self.tail.put_slice(&payload);
            return;
        }
        self.seal();
        self.queue.push_back(payload);
    }

    /// Frees the queue's and the gathering buffer's room if nothing
    /// waits: they keep that of the connection's busiest moment otherwise.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            *self = Self::default();
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.queue.push_back(self.tail.split().freeze());
        }
    }

    /// The waiting bytes, oldest first, for a write that may take only
    /// part of them; then [`advance`](Self::advance) by what it took. The
    /// gathered small frames are the last slice, not sealed: a writer
    /// that writes them whole leaves their buffer to be written into
    /// again, with no queue and no new buffer.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let tail = (!self.tail.is_empty()).then_some(&self.tail[..]);
        self.queue.iter().map(|b| &b[..]).chain(tail)
    }

    /// Drops the first `n` waiting bytes, which were written.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                self.tail.advance(n.min(self.tail.len()));
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }

    /// Moves every waiting segment into `into`, oldest first. The
    /// gathered small frames go straight in, not through the queue: a
    /// connection that never queued a large payload keeps no queue.
    pub fn take_segments(&mut self, into: &mut Vec<Bytes>) {
        into.extend(self.queue.drain(..));
        if !self.tail.is_empty() {
            into.push(self.tail.split().freeze());
        }
        self.len = 0;
    }

    /// Everything waiting, as one buffer (for tests and simple writers).
    pub fn take_all(&mut self) -> BytesMut {
        self.seal();
        let mut out = BytesMut::with_capacity(self.len);
        for segment in self.queue.drain(..) {
            out.put_slice(&segment);
        }
        self.len = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_are_queued_small_ones_copied() {
        let mut out = Outbox::new();
        out.put(|b| b.put_slice(b"head1"));
        out.put_payload(Bytes::from_static(b"tiny"));
        out.put(|b| b.put_slice(b"head2"));
        let big = Bytes::from(vec![7u8; COPY_BELOW]);
        out.put_payload(big.clone());
        out.put(|b| b.put_slice(b"after"));
        assert_eq!(out.len(), 14 + COPY_BELOW + 5);
        let slices: Vec<&[u8]> = out.slices().collect();
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[0], b"head1tinyhead2");
        assert_eq!(slices[1].as_ptr(), big.as_ptr(), "not copied");
        assert_eq!(slices[2], b"after");
        out.advance(10);
        out.advance(4 + COPY_BELOW);
        let rest = out.take_all();
        assert_eq!(&rest[..], b"after");
        assert!(out.is_empty());
    }

    #[test]
    fn a_partial_write_leaves_the_rest_in_order() {
        let mut out = Outbox::new();
        out.put(|b| b.put_slice(b"abcdef"));
        out.advance(2);
        assert_eq!(out.slices().collect::<Vec<_>>(), [&b"cdef"[..]]);
        out.put(|b| b.put_slice(b"gh"));
        let big = Bytes::from(vec![7u8; COPY_BELOW]);
        out.put_payload(big);
        out.put(|b| b.put_slice(b"ij"));
        assert_eq!(out.len(), 6 + COPY_BELOW + 2);
        out.advance(7);
        assert_eq!(out.len(), COPY_BELOW - 1 + 2);
        let mut segments = Vec::new();
        out.take_segments(&mut segments);
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].len(), COPY_BELOW - 1);
        assert_eq!(&segments[1][..], b"ij");
        // Small frames written from their gathering buffer need no queue.
        let mut small = Outbox::new();
        small.put(|b| b.put_slice(b"kl"));
        small.advance(1);
        small.put(|b| b.put_slice(b"mn"));
        assert_eq!(small.slices().collect::<Vec<_>>(), [&b"lmn"[..]]);
        small.advance(3);
        assert!(small.is_empty() && small.slices().next().is_none());
        assert_eq!(small.queue.capacity(), 0);
    }
}
