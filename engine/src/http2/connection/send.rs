//! The send half: streams opened, heads, DATA and control frames written
//! within the peer's limits.

use bytes::Bytes;

use super::{Connection, SendError};
use crate::hpack::encode_field;
use crate::http2::frame::{self, flag, kind, ErrorCode, MAX_ID};
use crate::http2::outbox::Outbox;
use crate::http2::streams::Stream;

impl Connection {
    /// Opens a stream (client role) with these head fields; the id is
    /// assigned now, so ids reach the wire in order if frames are written
    /// in the order they were made.
    pub fn open<'f>(
        &mut self,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8], bool)>,
        end_stream: bool,
        out: &mut Outbox,
    ) -> Result<u32, SendError> {
        let id = self.new_local_stream(end_stream)?;
        self.write_block(id, fields, end_stream, out);
        Ok(id)
    }

    /// [`open`](Self::open) with a head already HPACK-encoded (by
    /// [`encode_field`]).
    pub fn open_encoded(
        &mut self,
        block: &[u8],
        end_stream: bool,
        out: &mut Outbox,
    ) -> Result<u32, SendError> {
        let id = self.new_local_stream(end_stream)?;
        self.write_encoded(out, id, block, end_stream);
        Ok(id)
    }

    fn new_local_stream(&mut self, end_stream: bool) -> Result<u32, SendError> {
        let limit = self.remote.max_concurrent_streams.unwrap_or(u32::MAX);
        if self.peer_going_away.is_some()
            || self.streams.len() >= limit as usize
            || self.next_local > MAX_ID
        {
            return Err(SendError::Refused);
        }
        let id = self.next_local;
        self.next_local += 2;
        let mut stream = Stream::new(
            id,
            self.limits.stream_window,
            self.remote.initial_window_size,
        );
        stream.send_open = !end_stream;
        self.streams.insert(stream);
        Ok(id)
    }

    /// Sends a head (server: the response) or trailers on an open stream.
    pub fn send_headers<'f>(
        &mut self,
        id: u32,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8], bool)>,
        end_stream: bool,
        out: &mut Outbox,
    ) -> Result<(), SendError> {
        let block = self.encode(fields);
        let sent = self.send_encoded(id, &block, end_stream, out);
        self.encoded = block;
        sent
    }

    /// As [`send_headers`](Self::send_headers), with the fields already
    /// encoded (see [`HeaderList::encoded`](crate::http2::headers::HeaderList::encoded)).
    pub fn send_encoded(
        &mut self,
        id: u32,
        block: &[u8],
        end_stream: bool,
        out: &mut Outbox,
    ) -> Result<(), SendError> {
        let stream = self.streams.get_mut(id).ok_or(SendError::Closed)?;
        if !stream.send_open {
            return Err(SendError::Closed);
        }
        self.write_encoded(out, id, block, end_stream);
        if end_stream {
            self.close_send(id);
        }
        Ok(())
    }

    fn close_send(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(id) {
            stream.send_open = false;
            if !stream.recv_open {
                self.retire(id);
            }
        }
    }

    fn write_block<'f>(
        &mut self,
        id: u32,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8], bool)>,
        end_stream: bool,
        out: &mut Outbox,
    ) {
        let block = self.encode(fields);
        self.write_encoded(out, id, &block, end_stream);
        self.encoded = block;
    }

    /// Writes an encoded header block as HEADERS and as many CONTINUATIONs
    /// as the peer's frame size needs, after a table size update if one
    /// is owed (see `size_update_owed`).
    fn write_encoded(&mut self, out: &mut Outbox, id: u32, block: &[u8], end_stream: bool) {
        let max = self.remote.max_frame_size as usize;
        let update: &[u8] = if std::mem::take(&mut self.size_update_owed) {
            &[0x20]
        } else {
            &[]
        };
        write_encoded(out, max, id, update, block, end_stream);
    }

    /// `fields`, HPACK-encoded into the connection's scratch buffer, which
    /// the caller gives back (`self.encoded`) once it has sent them.
    fn encode<'f>(&mut self, fields: impl Iterator<Item = (&'f [u8], &'f [u8], bool)>) -> Vec<u8> {
        let mut block = std::mem::take(&mut self.encoded);
        block.clear();
        for (name, value, sensitive) in fields {
            encode_field(name, value, sensitive, &mut block);
        }
        block
    }

    /// How many DATA bytes `stream` may send now.
    pub fn send_capacity(&self, id: u32) -> usize {
        let Some(stream) = self.streams.get(id) else {
            return 0;
        };
        if !stream.send_open {
            return 0;
        }
        stream.send_window.min(self.send_window).max(0) as usize
    }

    /// Sends DATA within [`send_capacity`](Self::send_capacity), split to
    /// the peer's frame size.
    pub fn send_data(
        &mut self,
        id: u32,
        mut data: Bytes,
        end_stream: bool,
        out: &mut Outbox,
    ) -> Result<(), SendError> {
        let capacity = self.send_capacity(id);
        let open = self.streams.get(id).is_some_and(|s| s.send_open);
        if !open || data.len() > capacity {
            return Err(SendError::Closed);
        }
        let max = self.remote.max_frame_size as usize;
        let n = data.len() as i64;
        self.send_window -= n;
        if let Some(stream) = self.streams.get_mut(id) {
            stream.send_window -= n;
        }
        loop {
            let chunk = data.split_to(data.len().min(max));
            let last = data.is_empty();
            let flags = if last && end_stream {
                flag::END_STREAM
            } else {
                0
            };
            out.put(|b| frame::write_head(b, chunk.len(), kind::DATA, flags, id));
            out.put_payload(chunk);
            self.budget.data_sent = self.budget.data_sent.saturating_add(1);
            if last {
                break;
            }
        }
        if end_stream {
            self.close_send(id);
        }
        Ok(())
    }

    /// Resets a stream with `code`.
    pub fn reset(&mut self, id: u32, code: ErrorCode, out: &mut Outbox) {
        out.put(|b| frame::write_rst_stream(b, id, code));
        self.streams.remove(id);
    }

    /// Sends a PING.
    pub fn ping(&mut self, data: [u8; 8], out: &mut Outbox) {
        out.put(|b| frame::write_ping(b, false, data));
    }

    /// Starts a graceful shutdown: GOAWAY with the last stream the peer
    /// opened; streams it opens later are ignored. A second GOAWAY (a
    /// drain after an age limit's) names the same stream: the id never
    /// grows (RFC 9113 6.8), though ignored streams moved `last_remote`,
    /// and grpc-go and Netty drop a connection whose GOAWAY id grew.
    pub fn go_away(&mut self, code: ErrorCode, out: &mut Outbox) {
        let last = *self.going_away.get_or_insert(self.last_remote);
        out.put(|b| frame::write_goaway(b, last, code, b""));
    }
}

/// Writes `prefix` then an encoded header block as HEADERS and as many
/// CONTINUATIONs as frames of `max` bytes need.
fn write_encoded(
    out: &mut Outbox,
    max: usize,
    id: u32,
    prefix: &[u8],
    block: &[u8],
    end_stream: bool,
) {
    out.put(|b| {
        let total = prefix.len() + block.len();
        let first_len = total.min(max);
        let (first, rest) = block.split_at(first_len - prefix.len());
        let mut flags = if end_stream { flag::END_STREAM } else { 0 };
        if rest.is_empty() {
            flags |= flag::END_HEADERS;
        }
        frame::write_head(b, first_len, kind::HEADERS, flags, id);
        b.extend_from_slice(prefix);
        b.extend_from_slice(first);
        let mut chunks = rest.chunks(max).peekable();
        while let Some(chunk) = chunks.next() {
            let last = if chunks.peek().is_none() {
                flag::END_HEADERS
            } else {
                0
            };
            frame::write_head(b, chunk.len(), kind::CONTINUATION, last, id);
            b.extend_from_slice(chunk);
        }
    });
}
