//! The receive half: frames in, checked against the connection's state,
//! events out; and the credit the consumer releases.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    error, from_frame, internal, Connection, ConnectionError, Event, PartialData, Pending, Role,
    CUT_THROUGH_ABOVE, TOO_MANY_RESETS,
};
use crate::http2::frame::{self, flag, kind, ErrorCode, Frame, FrameError, Head, HEAD_LEN, MAX_ID};
use crate::http2::headers::{HeaderList, Kind};
use crate::http2::outbox::Outbox;
use crate::http2::streams::Stream;

impl Connection {
    /// Parses every whole frame in `buf`, leaving a partial one there; the
    /// payload of a DATA frame above 16 KiB is handed on as it arrives.
    pub fn recv(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Outbox,
        mut on: impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let result = self.recv_frames(buf, out, &mut on);
        if let Err(error) = result {
            // Never above a graceful GOAWAY's id (RFC 9113 6.8): streams
            // ignored since moved `last_remote` on.
            let last = self.going_away.unwrap_or(self.last_remote);
            out.put(|b| frame::write_goaway(b, last, error.code, error.why.as_bytes()));
            self.failed = Some(error);
        }
        result
    }

    fn recv_frames(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        if self.preface {
            let n = buf.len().min(frame::PREFACE.len());
            if buf[..n] != frame::PREFACE[..n] {
                return Err(error(
                    ErrorCode::PROTOCOL_ERROR,
                    "invalid connection preface",
                ));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            buf.advance(n);
            self.preface = false;
        }
        loop {
            if self.partial.is_some() {
                self.recv_partial(buf, out, on);
                if let Some(p) = self.partial {
                    // The rest of the frame, and the next header, can come
                    // in one read.
                    buf.reserve((p.data + p.padding) as usize + HEAD_LEN);
                    break;
                }
            }
            if buf.len() < HEAD_LEN {
                break;
            }
            let head = Head::parse(buf[..HEAD_LEN].try_into().map_err(|_| internal())?);
            head.check_size(self.limits.max_frame_size)
                .map_err(from_frame)?;
            let total = HEAD_LEN + head.length as usize;
            if buf.len() < total {
                let padded = head.flags & flag::PADDED != 0;
                let cut_through = head.kind == kind::DATA
                    && head.length > CUT_THROUGH_ABOVE
                    && self.settings_seen
                    && self.pending.is_none()
                    && buf.len() > HEAD_LEN + usize::from(padded);
                if cut_through {
                    self.start_data(head, buf, out, on)?;
                    continue;
                }
                buf.reserve(total - buf.len());
                break;
            }
            if !self.settings_seen && head.kind != kind::SETTINGS {
                return Err(error(
                    ErrorCode::PROTOCOL_ERROR,
                    "first frame is not SETTINGS",
                ));
            }
            if let Some(pending) = &self.pending {
                if head.kind != kind::CONTINUATION || head.stream != pending.stream {
                    return Err(error(ErrorCode::PROTOCOL_ERROR, "header block interrupted"));
                }
            }
            if head.kind == kind::DATA {
                let bytes = buf.split_to(total).freeze();
                self.recv_data(head, bytes, out, on)?;
                continue;
            }
            let parsed = frame::parse(head, &buf[HEAD_LEN..total]);
            let result = match parsed {
                Ok(frame) => self.recv_frame(frame, out, on),
                // A zero increment on an idle stream: only HEADERS and
                // PRIORITY may come there (RFC 9113 5.1), and no
                // RST_STREAM may go there (6.4).
                Err(FrameError::Stream(stream, ..))
                    if head.kind == kind::WINDOW_UPDATE && self.is_idle(stream) =>
                {
                    Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "WINDOW_UPDATE on an idle stream",
                    ))
                }
                Err(FrameError::Stream(stream, code, _)) => {
                    self.stream_error(stream, code, out, on)
                }
                Err(e) => Err(from_frame(e)),
            };
            buf.advance(total);
            result?;
        }
        Ok(())
    }

    fn recv_frame(
        &mut self,
        frame: Frame<'_>,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        match frame {
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
                priority,
            } => {
                self.block.clear();
                self.take_fragment(fragment)?;
                self.pending = Some(Pending {
                    stream,
                    end_stream,
                    self_dependent: priority.is_some_and(|p| p.dependency == stream),
                    continuations: 0,
                });
                if end_headers {
                    self.end_block(out, on)?;
                }
            }
            Frame::Continuation {
                end_headers,
                fragment,
                ..
            } => {
                let Some(pending) = &mut self.pending else {
                    return Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "CONTINUATION without HEADERS",
                    ));
                };
                pending.continuations += 1;
                if pending.continuations > self.limits.max_continuations {
                    return Err(error(
                        ErrorCode::ENHANCE_YOUR_CALM,
                        "too many CONTINUATION frames",
                    ));
                }
                self.take_fragment(fragment)?;
                if end_headers {
                    self.end_block(out, on)?;
                }
            }
            Frame::Priority { .. } => self.control()?,
            Frame::RstStream { stream, code } => {
                self.count_reset()?;
                if self.is_idle(stream) {
                    return Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "RST_STREAM on an idle stream",
                    ));
                }
                if self.streams.remove(stream).is_some() {
                    on(Event::Reset {
                        stream,
                        code,
                        local: false,
                    });
                } else if self.role == Role::Client {
                    // A server's reset of a stream already ended ends
                    // nothing of ours: past the budget, a flood.
                    self.control()?;
                }
            }
            Frame::Settings { ack, params } => {
                self.control()?;
                if ack {
                    return Ok(());
                }
                self.apply_settings(params)?;
                self.settings_seen = true;
                out.put(frame::write_settings_ack);
                on(Event::WindowOpened { stream: 0 });
            }
            Frame::PushPromise { .. } => {
                return Err(error(
                    ErrorCode::PROTOCOL_ERROR,
                    "PUSH_PROMISE with push disabled",
                ));
            }
            Frame::Ping { ack, data } => {
                self.control()?;
                if ack {
                    on(Event::PingAck { data });
                } else {
                    out.put(|b| frame::write_ping(b, true, data));
                }
            }
            Frame::GoAway {
                last_stream, code, ..
            } => {
                self.control()?;
                // Only one that names a lower id says anything new (the
                // id never grows, RFC 9113 6.8): each one heard walks the
                // connection's calls.
                if self.peer_going_away.is_none_or(|last| last_stream < last) {
                    self.peer_going_away = Some(last_stream);
                    on(Event::GoAway { last_stream, code });
                }
            }
            Frame::WindowUpdate { stream, increment } => {
                // A peer that reads what we send answers with credit: its
                // WINDOW_UPDATEs are free up to two per DATA frame we sent
                // (as Envoy counts them), and past that are control frames.
                self.budget.window_updates += 1;
                let earned = self.budget.data_sent.saturating_mul(2);
                if self.budget.window_updates > earned {
                    self.control()?;
                }
                self.window_update(stream, increment, out, on)?;
            }
            Frame::Data { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    fn control(&mut self) -> Result<(), ConnectionError> {
        self.budget.control += 1;
        if self.budget.control > self.limits.max_control_frames_per_tick {
            return Err(error(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many control frames",
            ));
        }
        Ok(())
    }

    /// A stream reset by the peer, or by us for the peer's stream error
    /// on a stream it had opened: either way a stream begun and ended
    /// for nothing, and past the tick's budget the pattern of rapid reset
    /// (CVE-2023-44487) or of the resets a peer provokes ("MadeYouReset",
    /// CVE-2025-8671). Only a client can do that: a server's streams are
    /// ours, each a call of ours ending (grpc-go resets a bidi call it
    /// finished first with NO_ERROR), at whatever rate calls end.
    fn count_reset(&mut self) -> Result<(), ConnectionError> {
        if self.role == Role::Client {
            return Ok(());
        }
        self.budget.resets += 1;
        if self.budget.resets > self.limits.max_resets_per_tick {
            return Err(error(ErrorCode::ENHANCE_YOUR_CALM, TOO_MANY_RESETS));
        }
        Ok(())
    }

    fn take_fragment(&mut self, fragment: &[u8]) -> Result<(), ConnectionError> {
        if self.block.len() + fragment.len() > self.limits.max_header_block {
            return Err(error(
                ErrorCode::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        self.block.extend_from_slice(fragment);
        Ok(())
    }

    /// Whether `stream` is idle: an id the peer (or we) could still open.
    fn is_idle(&self, stream: u32) -> bool {
        if self.ours(stream) {
            stream >= self.next_local
        } else {
            stream > self.last_remote
        }
    }

    fn ours(&self, stream: u32) -> bool {
        (stream % 2 == 1) == (self.role == Role::Client)
    }

    /// A whole header block has arrived: decode it (always, to keep the
    /// table in step) and act on it.
    fn end_block(
        &mut self,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        let Some(Pending {
            stream: id,
            end_stream,
            self_dependent,
            ..
        }) = self.pending.take()
        else {
            return Err(internal());
        };
        let open = self.streams.get(id).copied();
        let kind = match (open, self.role) {
            (Some(s), _) if s.head_received || s.head_refused => Kind::Trailers,
            (_, Role::Server) => Kind::Request,
            (_, Role::Client) => Kind::Response,
        };
        let kept = match (kind, self.role) {
            (Kind::Trailers, Role::Client) => self.trailers.get_or_insert_with(Box::default),
            _ => &mut self.heads,
        };
        let decoded = kept
            .decode(
                kind,
                &self.block,
                &mut self.decoder,
                self.limits.max_header_list_size as usize,
            )
            .map_err(|_| error(ErrorCode::COMPRESSION_ERROR, "invalid header block"))?;
        // The consumer hears of a stream first from its head: a new stream
        // that fails here is reset without an event.
        let known = open.is_some();
        let mut stream = match open {
            Some(stream) => {
                if !stream.recv_open {
                    self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on)?;
                    return Ok(());
                }
                if stream.head_refused {
                    // Trailers after a head refused for its size: dropped
                    // with the body (see `admit_data`).
                    let mut stream = stream;
                    self.close_recv(&mut stream, end_stream);
                    return Ok(());
                }
                stream
            }
            None if self.ours(id) => {
                // A head on a stream of ours that is gone, or was never
                // opened.
                if self.is_idle(id) {
                    return Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "HEADERS on an idle stream of ours",
                    ));
                }
                if self.ended_by_peer(id) {
                    return Err(error(ErrorCode::STREAM_CLOSED, "HEADERS after END_STREAM"));
                }
                // Reset: by us (it may have been in flight), or by the peer
                // before (its mistake); either way a stream error.
                out.put(|b| frame::write_rst_stream(b, id, ErrorCode::STREAM_CLOSED));
                return Ok(());
            }
            None => {
                if self.role == Role::Client {
                    return Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "HEADERS on a stream the server opened",
                    ));
                }
                // The last stream opened is closed now (RFC 9113 5.1); an id
                // below it cannot open a stream either (5.1.1), whether it
                // was used or skipped.
                if id == self.last_remote {
                    return Err(error(
                        ErrorCode::STREAM_CLOSED,
                        "HEADERS on a closed stream",
                    ));
                }
                if id < self.last_remote {
                    return Err(error(
                        ErrorCode::PROTOCOL_ERROR,
                        "HEADERS on a stream id below the last one opened",
                    ));
                }
                self.last_remote = id;
                if self.going_away.is_some_and(|last| id > last) {
                    return Ok(());
                }
                if self.streams.len() >= self.limits.max_concurrent_streams as usize {
                    out.put(|b| frame::write_rst_stream(b, id, ErrorCode::REFUSED_STREAM));
                    return Ok(());
                }
                let stream = Stream::new(
                    id,
                    self.limits.stream_window,
                    self.remote.initial_window_size,
                );
                self.streams.insert(stream);
                stream
            }
        };
        if self_dependent {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on)?;
            return Ok(());
        }
        if kind == Kind::Trailers && !end_stream {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on)?;
            return Ok(());
        }
        if decoded.over_limit {
            if kind == Kind::Trailers {
                self.fail_stream(id, ErrorCode::ENHANCE_YOUR_CALM, known, out, on)?;
                return Ok(());
            }
            stream.head_refused = true;
            self.close_recv(&mut stream, end_stream);
            on(Event::HeadersTooLarge { stream: id });
            return Ok(());
        }
        if self.list(kind).finish().is_err() {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on)?;
            return Ok(());
        }
        let informational = kind == Kind::Response
            && self
                .list(kind)
                .pseudo(crate::http2::headers::pseudo::STATUS)
                .is_some_and(|s| s[0] == b'1');
        if informational && end_stream {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on)?;
            return Ok(());
        }
        if informational {
            // Any number may come before the response, each a whole
            // decode for nothing the call carries on: a control frame.
            self.control()?;
        }
        if kind != Kind::Trailers {
            stream.content_length = self.list(kind).content_length();
            stream.head_received = !informational;
        }
        if end_stream && stream.content_length.is_some_and(|c| c != stream.received) {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on)?;
            return Ok(());
        }
        self.close_recv(&mut stream, end_stream);
        on(Event::Headers {
            stream: id,
            list: self.list(kind),
            end_stream,
        });
        Ok(())
    }

    /// The list the last block of `kind` decoded to (`trailers` is only
    /// ever there for a client; see [`end_block`](Self::end_block)).
    fn list(&self, kind: Kind) -> &HeaderList {
        match (kind, &self.trailers) {
            (Kind::Trailers, Some(kept)) => &kept.list,
            _ => &self.heads.list,
        }
    }

    /// Stores `stream` back, closing its receiving half if `end`; forgets
    /// it once both halves are closed.
    fn close_recv(&mut self, stream: &mut Stream, end: bool) {
        if end {
            stream.recv_open = false;
        }
        if !stream.recv_open && !stream.send_open {
            self.retire(stream.id);
        } else if let Some(slot) = self.streams.get_mut(stream.id) {
            *slot = *stream;
        }
    }

    fn recv_data(
        &mut self,
        head: Head,
        bytes: Bytes,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        let payload = &bytes[HEAD_LEN..];
        let (data, end_stream, flow) = match frame::parse(head, payload) {
            Ok(Frame::Data {
                data,
                end_stream,
                flow,
                ..
            }) => (data, end_stream, flow),
            Ok(_) => return Err(internal()),
            Err(e) => return Err(from_frame(e)),
        };
        let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
        let data = bytes.slice(start..start + data.len());
        let id = head.stream;
        let Some(mut stream) = self.admit_data(id, flow, data.len() as u32, end_stream, out, on)?
        else {
            return Ok(());
        };
        self.close_recv(&mut stream, end_stream);
        on(Event::Data {
            stream: id,
            data,
            end_stream,
        });
        Ok(())
    }

    /// Begins a DATA frame of which only the start has arrived (see
    /// [`PartialData`]); `buf` starts with its header, and holds its pad
    /// length if it is padded.
    fn start_data(
        &mut self,
        head: Head,
        buf: &mut BytesMut,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(error(ErrorCode::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let padded = head.flags & flag::PADDED != 0;
        let (lead, padding) = if padded {
            (1, u32::from(buf[HEAD_LEN]))
        } else {
            (0, 0)
        };
        let Some(data) = head.length.checked_sub(lead + padding) else {
            return Err(error(
                ErrorCode::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        };
        buf.advance(HEAD_LEN + lead as usize);
        let end_stream = head.flags & flag::END_STREAM != 0;
        let admitted = self.admit_data(head.stream, head.length, data, end_stream, out, on)?;
        if let Some(mut stream) = admitted {
            self.close_recv(&mut stream, false);
        }
        self.partial = Some(PartialData {
            stream: head.stream,
            data,
            padding,
            end_stream,
            dropped: admitted.is_none(),
        });
        Ok(())
    }

    /// Hands on what `buf` holds of the DATA frame under way, and ends it
    /// if it is all there.
    fn recv_partial(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) {
        let Some(mut p) = self.partial.take() else {
            return;
        };
        let take = buf.len().min(p.data as usize);
        let piece = buf.split_to(take).freeze();
        p.data -= take as u32;
        let pad = buf.len().min(p.padding as usize);
        buf.advance(pad);
        p.padding -= pad as u32;
        let done = p.data == 0 && p.padding == 0;
        if !done {
            self.partial = Some(p);
        }
        if p.dropped {
            return;
        }
        let Some(mut stream) = self.streams.get(p.stream).copied().filter(|s| s.recv_open) else {
            // Reset since the frame began (for the other leg's sake, say):
            // nobody will release these bytes, so their credit goes back.
            if take > 0 {
                self.credit_connection(take as u32, out);
            }
            return;
        };
        let end_stream = done && p.end_stream;
        if end_stream {
            self.close_recv(&mut stream, true);
        }
        if take > 0 || end_stream {
            on(Event::Data {
                stream: p.stream,
                data: piece,
                end_stream,
            });
        }
    }

    /// The checks of a DATA frame on `id` of `flow` bytes, `data` of them
    /// payload, made when its header is read: windows, the empty-DATA
    /// budget, the stream's state and content-length. Returns the stream,
    /// charged and not yet stored back, if the payload is to be handed
    /// on; `None` if the frame was a stream error (answered here, its
    /// credit returned).
    fn admit_data(
        &mut self,
        id: u32,
        flow: u32,
        data: u32,
        end_stream: bool,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<Option<Stream>, ConnectionError> {
        self.recv_window -= i64::from(flow);
        if self.recv_window < 0 {
            return Err(error(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        if data == 0 && !end_stream {
            self.budget.empty_data += 1;
            if self.budget.empty_data > self.limits.max_empty_data_per_tick {
                return Err(error(
                    ErrorCode::ENHANCE_YOUR_CALM,
                    "too many empty DATA frames",
                ));
            }
        }
        let padding = flow - data;
        let Some(mut stream) = self.streams.get(id).copied() else {
            if self.is_idle(id) {
                return Err(error(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            if self.ended_by_peer(id) {
                return Err(error(ErrorCode::STREAM_CLOSED, "DATA after END_STREAM"));
            }
            // A closed stream, perhaps reset by us with this DATA in
            // flight: the credit is ours to give back at once.
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on)?;
            return Ok(None);
        };
        if stream.head_refused && stream.recv_open {
            // The body of a head refused for its size: the peer sends it
            // as it should, and its call is answered for the head. It is
            // dropped, its credit back, until the peer's side ends.
            self.credit_connection(flow, out);
            if end_stream {
                self.close_recv(&mut stream, true);
            }
            return Ok(None);
        }
        if !stream.recv_open || !stream.head_received {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on)?;
            return Ok(None);
        }
        stream.recv_window -= i64::from(flow);
        if stream.recv_window < 0 {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, out, on)?;
            return Ok(None);
        }
        stream.received += u64::from(data);
        let too_long = stream.content_length.is_some_and(|c| stream.received > c);
        let too_short = end_stream && stream.content_length.is_some_and(|c| stream.received != c);
        if too_long || too_short {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::PROTOCOL_ERROR, out, on)?;
            return Ok(None);
        }
        // Padding is never handed on: its credit returns now.
        if padding > 0 {
            self.credit_connection(padding, out);
            credit_stream(&mut stream, padding, 0, out);
        }
        Ok(Some(stream))
    }

    fn apply_settings(&mut self, params: &[u8]) -> Result<(), ConnectionError> {
        let before = self.remote.initial_window_size;
        self.remote.apply(params).map_err(from_frame)?;
        self.size_update_owed |=
            frame::params(params).any(|(id, _)| id == frame::setting::HEADER_TABLE_SIZE);
        let delta = i64::from(self.remote.initial_window_size) - i64::from(before);
        if delta != 0 {
            for stream in self.streams.iter_mut() {
                stream.send_window += delta;
                if stream.send_window > i64::from(MAX_ID) {
                    return Err(error(
                        ErrorCode::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE overflows a window",
                    ));
                }
            }
        }
        Ok(())
    }

    fn window_update(
        &mut self,
        id: u32,
        increment: u32,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        if id == 0 {
            self.send_window += i64::from(increment);
            if self.send_window > i64::from(MAX_ID) {
                return Err(error(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "connection window above 2^31 - 1",
                ));
            }
            on(Event::WindowOpened { stream: 0 });
            return Ok(());
        }
        if self.is_idle(id) {
            return Err(error(
                ErrorCode::PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(stream) = self.streams.get_mut(id) else {
            return Ok(());
        };
        stream.send_window += i64::from(increment);
        if stream.send_window > i64::from(MAX_ID) {
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, out, on)?;
            return Ok(());
        }
        on(Event::WindowOpened { stream: id });
        Ok(())
    }

    /// A stream error on a head: the consumer is told only if it has heard
    /// of the stream before. Counted as the peer's reset.
    fn fail_stream(
        &mut self,
        id: u32,
        code: ErrorCode,
        known: bool,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        if known {
            return self.stream_error(id, code, out, on);
        }
        out.put(|b| frame::write_rst_stream(b, id, code));
        if self.streams.remove(id).is_some() {
            self.count_reset()?;
        }
        Ok(())
    }

    /// Ends a stream with RST_STREAM and tells the consumer, if it knew
    /// the stream; a stream that was still open counts as the peer's
    /// reset. An answer to a frame on a stream already closed ends
    /// nothing and is not counted.
    fn stream_error(
        &mut self,
        id: u32,
        code: ErrorCode,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ConnectionError> {
        out.put(|b| frame::write_rst_stream(b, id, code));
        if self.streams.remove(id).is_some() {
            on(Event::Reset {
                stream: id,
                code,
                local: true,
            });
            self.count_reset()?;
        }
        Ok(())
    }

    /// The consumer is done with `n` bytes of `stream`'s DATA (passed on,
    /// or dropped): the peer gets that credit back, in a WINDOW_UPDATE once
    /// half a window's worth waits, for the stream and for the connection
    /// alike. Every byte an [`Event::Data`] hands out must be released
    /// exactly once, also after its stream has ended.
    pub fn release(&mut self, id: u32, n: u32, out: &mut Outbox) {
        self.release_growing(id, n, 0, out);
    }

    /// [`release`](Self::release), and a stream that has moved half its
    /// window since its last WINDOW_UPDATE may have its window doubled
    /// (up to `stream_window_max`), taking the growth from `allowance`,
    /// in the same WINDOW_UPDATE. Returns the growth, which the caller
    /// gives back to where `allowance` came from when the stream ends.
    /// So streams start small and only those that carry bytes grow, as
    /// far as the caller's budget goes.
    pub fn release_growing(&mut self, id: u32, n: u32, allowance: u32, out: &mut Outbox) -> u32 {
        if n == 0 {
            return 0;
        }
        self.credit_connection(n, out);
        let Some(stream) = self.streams.get_mut(id) else {
            return 0;
        };
        let room = self
            .limits
            .stream_window_max
            .min(allowance.saturating_add(stream.window));
        credit_stream(stream, n, room, out)
    }

    fn credit_connection(&mut self, n: u32, out: &mut Outbox) {
        self.credit += n;
        if self.credit >= self.limits.connection_window / 2 {
            let n = self.credit;
            self.credit = 0;
            self.recv_window += i64::from(n);
            out.put(|b| frame::write_window_update(b, 0, n));
        }
    }
}

/// Adds released credit to a stream, and returns it in a WINDOW_UPDATE
/// once half its window waits (not once the peer is done sending). The
/// same WINDOW_UPDATE may double the window, up to `grow_to`; returns
/// by how much it grew.
fn credit_stream(stream: &mut Stream, n: u32, grow_to: u32, out: &mut Outbox) -> u32 {
    stream.credit += n;
    if !stream.recv_open || stream.credit < stream.window / 2 {
        return 0;
    }
    let grow = stream.window.min(grow_to.saturating_sub(stream.window));
    stream.window += grow;
    let n = stream.credit + grow;
    stream.credit = 0;
    stream.recv_window += i64::from(n);
    out.put(|b| frame::write_window_update(b, stream.id, n));
    grow
}
