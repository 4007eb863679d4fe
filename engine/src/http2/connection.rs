//! One HTTP/2 connection as a state machine with no I/O (RFC 9113): bytes
//! in, [`Event`]s and frames out. The same machine serves both legs: a
//! [`Role::Server`] toward clients, a [`Role::Client`] toward upstreams.
//!
//! [`Connection::recv`] takes the read buffer, parses every whole frame in
//! it, checks each against the connection's state, and hands the consumer
//! what matters to a call: a decoded head, DATA as a `Bytes` slice of the
//! read buffer (no copy; a DATA frame above 16 KiB in pieces, as its bytes
//! arrive), resets, window openings, GOAWAY. Answers the
//! protocol needs (SETTINGS and PING acknowledgements, RST_STREAM for
//! stream errors, GOAWAY for connection errors) go straight into the
//! [`Outbox`]. The send half ([`Connection::send_headers`],
//! [`Connection::send_data`], ...) writes frames for the consumer and
//! keeps the peer's limits (frame size, windows, concurrent streams).
//!
//! Flow control is the consumer's: received DATA keeps its credit until
//! [`Connection::release`] says the bytes have left (handed to the other
//! leg, or dropped), and credit goes back in a WINDOW_UPDATE once half a
//! window's worth has been released. So a peer can never have more in
//! flight on a stream than the stream window, and memory per stream is
//! bounded by what we announce.
//!
//! Limits a hostile peer pushes against are enforced where the frame is
//! parsed: frame size, the raw size of a header block and its number of
//! CONTINUATIONs, the decoded header list size, concurrent streams, and
//! per-tick budgets for resets, control frames and empty DATA frames
//! ([`Connection::tick`] starts a new tick; the I/O loop calls it about
//! once a second).
//!
//! A connection error ends the machine: [`recv`](Connection::recv) returns
//! it after writing GOAWAY, and the I/O loop flushes and closes.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{
    self, flag, kind, ErrorCode, Frame, FrameError, Head, Settings, HEAD_LEN, MAX_ID,
};
use super::headers::{HeaderList, Kind};
use super::kept::KeptBlock;
use super::outbox::Outbox;
use super::streams::{Stream, Streams};
use crate::hpack::{encode_field, Decoder};

/// Why a connection that reset too many streams got GOAWAY (the rapid
/// reset pattern, CVE-2023-44487).
pub const TOO_MANY_RESETS: &str = "too many stream resets";

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted it: the peer opens odd streams.
    Server,
    /// We opened it: we open odd streams.
    Client,
}

/// What a connection allows and announces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Announced SETTINGS_MAX_CONCURRENT_STREAMS (for a server), and
    /// enforced.
    pub max_concurrent_streams: u32,
    /// Announced SETTINGS_INITIAL_WINDOW_SIZE: the most a peer may send on
    /// one stream before we release it.
    pub stream_window: u32,
    /// The most a stream's window may grow to (see
    /// [`Connection::release_growing`]); at least `stream_window`.
    pub stream_window_max: u32,
    /// The connection's receive window, opened with a WINDOW_UPDATE at the
    /// start.
    pub connection_window: u32,
    /// Announced SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// Announced SETTINGS_MAX_HEADER_LIST_SIZE, enforced while decoding.
    pub max_header_list_size: u32,
    /// The largest header block, in encoded bytes across HEADERS and its
    /// CONTINUATIONs.
    pub max_header_block: usize,
    /// The most CONTINUATION frames one header block may take.
    pub max_continuations: u32,
    /// Streams the peer may reset per tick before GOAWAY
    /// (CVE-2023-44487).
    pub max_resets_per_tick: u32,
    /// SETTINGS, PING and PRIORITY frames per tick, and WINDOW_UPDATEs
    /// beyond two per DATA frame we sent in it.
    pub max_control_frames_per_tick: u32,
    /// Empty DATA frames without END_STREAM per tick.
    pub max_empty_data_per_tick: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            stream_window: 1 << 20,
            stream_window_max: 1 << 20,
            connection_window: 1 << 30,
            max_frame_size: 16_384,
            max_header_list_size: 16 << 10,
            max_header_block: 32 << 10,
            max_continuations: 64,
            max_resets_per_tick: 200,
            max_control_frames_per_tick: 1000,
            max_empty_data_per_tick: 100,
        }
    }
}

/// What the consumer hears of the peer.
#[derive(Debug)]
pub enum Event<'a> {
    /// A stream's head (a request for a server, a response for a client)
    /// or its trailers, checked and decoded.
    Headers {
        /// The stream.
        stream: u32,
        /// The fields; [`HeaderList::kind`] says head or trailers.
        list: &'a HeaderList,
        /// No DATA follows.
        end_stream: bool,
    },
    /// A head whose decoded size passed SETTINGS_MAX_HEADER_LIST_SIZE: the
    /// stream is open and waits for an answer (or a reset).
    HeadersTooLarge {
        /// The stream.
        stream: u32,
    },
    /// DATA, padding removed: a frame's payload, or, for a frame above
    /// 16 KiB, the part of it that has arrived (then the last part, or an
    /// empty one, carries `end_stream`).
    Data {
        /// The stream.
        stream: u32,
        /// The payload, a slice of the read buffer.
        data: Bytes,
        /// The peer's half of the stream is done.
        end_stream: bool,
    },
    /// The stream is gone: reset by the peer, or by us for a stream error.
    Reset {
        /// The stream.
        stream: u32,
        /// The code of the RST_STREAM.
        code: ErrorCode,
        /// We sent it (a stream error), rather than the peer.
        local: bool,
    },
    /// Our send window grew: on a stream, or on the connection (0).
    WindowOpened {
        /// The stream, or 0.
        stream: u32,
    },
    /// The peer's answer to our PING.
    PingAck {
        /// The data we sent.
        data: [u8; 8],
    },
    /// The peer is going away: streams above `last_stream` that we opened
    /// were not processed.
    GoAway {
        /// The highest stream of ours it may have processed.
        last_stream: u32,
        /// Why.
        code: ErrorCode,
    },
}

/// A connection error: GOAWAY has been written with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 connection error {code}: {why}")]
pub struct ConnectionError {
    /// The code sent in GOAWAY.
    pub code: ErrorCode,
    /// What happened.
    pub why: &'static str,
}

/// Why a send could not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The stream is not open for sending.
    #[error("stream is not open for sending")]
    Closed,
    /// The peer's stream limit is reached, or it is going away.
    #[error("no new stream allowed")]
    Refused,
}

/// A header block in progress across CONTINUATION frames.
#[derive(Debug)]
struct Pending {
    stream: u32,
    end_stream: bool,
    /// The HEADERS made the stream depend on itself (section 5.3.1).
    self_dependent: bool,
    continuations: u32,
}

/// DATA frames with a payload longer than this are handed on as their
/// bytes arrive, not once whole (see [`PartialData`]); shorter ones, and
/// every other frame, are read whole.
const CUT_THROUGH_ABOVE: u32 = 16_384;

/// A DATA frame whose payload is still arriving. Its checks were made,
/// and the whole frame charged to the windows, when its header arrived;
/// its bytes are handed on as they come, so a large frame is neither
/// waited for nor moved into a buffer of its size.
#[derive(Debug, Clone, Copy)]
struct PartialData {
    stream: u32,
    /// Payload still to come.
    data: u32,
    /// Padding still to come, after the payload; dropped.
    padding: u32,
    end_stream: bool,
    /// The frame failed its stream's checks: what comes is dropped (its
    /// credit went back when it began).
    dropped: bool,
}

/// Per-tick counters of frames that cost us without moving a call on.
#[derive(Debug, Default)]
struct Budget {
    resets: u32,
    control: u32,
    empty_data: u32,
    /// WINDOW_UPDATEs received, and DATA frames sent, which earn them.
    window_updates: u32,
    data_sent: u32,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    limits: Limits,
    /// What the peer announced.
    remote: Settings,
    /// The client preface (server) or the peer's first SETTINGS is still
    /// to come.
    preface: bool,
    settings_seen: bool,
    streams: Streams,
    /// The highest stream id the peer has opened.
    last_remote: u32,
    /// The next stream id we will open.
    next_local: u32,
    recv_window: i64,
    /// Connection credit released and not yet returned.
    credit: u32,
    send_window: i64,
    decoder: Decoder,
    block: Vec<u8>,
    pending: Option<Pending>,
    /// A large DATA frame part read (see [`PartialData`]).
    partial: Option<PartialData>,
    /// The last header block; as a client, the last head (see [`KeptBlock`]).
    heads: KeptBlock,
    /// As a client, the last trailers: an upstream ends every call with
    /// them. A server takes the rare request trailers in `heads`, so that
    /// its many connections keep one list each, as before.
    trailers: Option<Box<KeptBlock>>,
    encoded: Vec<u8>,
    budget: Budget,
    /// We sent GOAWAY: new streams above this id are ignored.
    going_away: Option<u32>,
    /// The peer sent GOAWAY: we open nothing more.
    peer_going_away: bool,
    /// The last few streams that closed normally, after the peer's
    /// END_STREAM: DATA or HEADERS on one of them is the peer's mistake,
    /// not a frame in flight past our reset (RFC 9113 5.1).
    ended: [u32; 4],
    failed: Option<ConnectionError>,
}

impl Connection {
    /// A new connection; writes our preface (client) and SETTINGS, and
    /// opens the connection window.
    pub fn new(role: Role, limits: Limits, out: &mut Outbox) -> Self {
        let local = Settings {
            header_table_size: 4096,
            enable_push: false,
            max_concurrent_streams: Some(limits.max_concurrent_streams),
            initial_window_size: limits.stream_window,
            max_frame_size: limits.max_frame_size,
            max_header_list_size: Some(limits.max_header_list_size),
        };
        out.put(|b| {
            if role == Role::Client {
                b.extend_from_slice(frame::PREFACE);
            }
            frame::write_settings(b, local.diff(&Settings::default()));
            let extra = limits.connection_window.saturating_sub(65_535);
            if extra > 0 {
                frame::write_window_update(b, 0, extra);
            }
        });
        Self {
            role,
            limits,
            remote: Settings::default(),
            preface: role == Role::Server,
            settings_seen: false,
            streams: Streams::new(),
            last_remote: 0,
            next_local: 1,
            recv_window: i64::from(limits.connection_window.max(65_535)),
            credit: 0,
            send_window: 65_535,
            decoder: Decoder::new(4096),
            block: Vec::new(),
            pending: None,
            partial: None,
            heads: KeptBlock::default(),
            trailers: None,
            encoded: Vec::new(),
            budget: Budget::default(),
            going_away: None,
            peer_going_away: false,
            ended: [0; 4],
            failed: None,
        }
    }

    /// What the peer announced.
    pub fn remote_settings(&self) -> &Settings {
        &self.remote
    }

    /// The peer's SETTINGS have arrived: until then a client must not
    /// trust its stream limit.
    pub fn ready(&self) -> bool {
        self.settings_seen
    }

    /// The peer sent GOAWAY: no new streams.
    pub fn going_away(&self) -> bool {
        self.peer_going_away
    }

    /// A large DATA frame is part read: the read buffer may be empty, but
    /// the rest of the frame is on its way.
    pub fn mid_frame(&self) -> bool {
        self.partial.is_some()
    }

    /// Frees the room a quiet connection's busiest moment left in its
    /// stream slab, its header block buffers and its HPACK scratch, where
    /// nothing is held; its state stays.
    pub fn release_idle(&mut self) {
        self.streams.release_if_empty();
        if self.pending.is_none() {
            self.block = Vec::new();
        }
        // A scratch buffer between a pass's encodings (see `send_encoded`).
        self.encoded = Vec::new();
        self.decoder.release_scratch();
    }

    /// The open streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Starts a new tick of the flood budgets.
    pub fn tick(&mut self) {
        self.budget = Budget::default();
    }

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
            out.put(|b| frame::write_goaway(b, self.last_remote, error.code, error.why.as_bytes()));
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
                Err(FrameError::Stream(stream, code, _)) => {
                    self.stream_error(stream, code, out, on);
                    Ok(())
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
                self.budget.resets += 1;
                if self.budget.resets > self.limits.max_resets_per_tick {
                    return Err(error(
                        ErrorCode::ENHANCE_YOUR_CALM,
                        "too many stream resets",
                    ));
                }
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
                if ack {
                    on(Event::PingAck { data });
                } else {
                    self.control()?;
                    out.put(|b| frame::write_ping(b, true, data));
                }
            }
            Frame::GoAway {
                last_stream, code, ..
            } => {
                self.peer_going_away = true;
                on(Event::GoAway { last_stream, code });
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
            (Some(s), _) if s.head_received => Kind::Trailers,
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
                    self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on);
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
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on);
            return Ok(());
        }
        if kind == Kind::Trailers && !end_stream {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on);
            return Ok(());
        }
        if decoded.over_limit {
            if kind == Kind::Trailers {
                self.fail_stream(id, ErrorCode::ENHANCE_YOUR_CALM, known, out, on);
                return Ok(());
            }
            self.close_recv(&mut stream, end_stream);
            on(Event::HeadersTooLarge { stream: id });
            return Ok(());
        }
        if self.list(kind).finish().is_err() {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on);
            return Ok(());
        }
        let informational = kind == Kind::Response
            && self
                .list(kind)
                .pseudo(super::headers::pseudo::STATUS)
                .is_some_and(|s| s[0] == b'1');
        if informational && end_stream {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on);
            return Ok(());
        }
        if kind != Kind::Trailers {
            stream.content_length = self.list(kind).content_length();
            stream.head_received = !informational;
        }
        if end_stream && stream.content_length.is_some_and(|c| c != stream.received) {
            self.fail_stream(id, ErrorCode::PROTOCOL_ERROR, known, out, on);
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
            self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on);
            return Ok(None);
        };
        if !stream.recv_open || !stream.head_received {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::STREAM_CLOSED, out, on);
            return Ok(None);
        }
        stream.recv_window -= i64::from(flow);
        if stream.recv_window < 0 {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, out, on);
            return Ok(None);
        }
        stream.received += u64::from(data);
        let too_long = stream.content_length.is_some_and(|c| stream.received > c);
        let too_short = end_stream && stream.content_length.is_some_and(|c| stream.received != c);
        if too_long || too_short {
            self.credit_connection(flow, out);
            self.stream_error(id, ErrorCode::PROTOCOL_ERROR, out, on);
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
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, out, on);
            return Ok(());
        }
        on(Event::WindowOpened { stream: id });
        Ok(())
    }

    /// A stream error on a head: the consumer is told only if it has heard
    /// of the stream before.
    fn fail_stream(
        &mut self,
        id: u32,
        code: ErrorCode,
        known: bool,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) {
        if known {
            self.stream_error(id, code, out, on);
        } else {
            out.put(|b| frame::write_rst_stream(b, id, code));
            self.streams.remove(id);
        }
    }

    /// Ends a stream with RST_STREAM and tells the consumer, if it knew
    /// the stream.
    fn stream_error(
        &mut self,
        id: u32,
        code: ErrorCode,
        out: &mut Outbox,
        on: &mut impl FnMut(Event<'_>),
    ) {
        out.put(|b| frame::write_rst_stream(b, id, code));
        if self.streams.remove(id).is_some() {
            on(Event::Reset {
                stream: id,
                code,
                local: true,
            });
        }
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
        write_encoded(
            out,
            self.remote.max_frame_size as usize,
            id,
            block,
            end_stream,
        );
        Ok(id)
    }

    fn new_local_stream(&mut self, end_stream: bool) -> Result<u32, SendError> {
        let limit = self.remote.max_concurrent_streams.unwrap_or(u32::MAX);
        if self.peer_going_away || self.streams.len() >= limit as usize || self.next_local > MAX_ID
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
    /// encoded (see [`HeaderList::encoded`](super::headers::HeaderList::encoded)).
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
        let max = self.remote.max_frame_size as usize;
        write_encoded(out, max, id, block, end_stream);
        if end_stream {
            self.close_send(id);
        }
        Ok(())
    }

    /// Removes a stream that closed both ways normally, remembering it
    /// among the last few so ended.
    fn retire(&mut self, id: u32) {
        self.streams.remove(id);
        self.ended.rotate_right(1);
        self.ended[0] = id;
    }

    /// Whether `id` is one of the last streams the peer ended with
    /// END_STREAM and that then closed.
    fn ended_by_peer(&self, id: u32) -> bool {
        id != 0 && self.ended.contains(&id)
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
        write_encoded(
            out,
            self.remote.max_frame_size as usize,
            id,
            &block,
            end_stream,
        );
        self.encoded = block;
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
    /// opened; streams it opens later are ignored.
    pub fn go_away(&mut self, code: ErrorCode, out: &mut Outbox) {
        self.going_away = Some(self.last_remote);
        out.put(|b| frame::write_goaway(b, self.last_remote, code, b""));
    }
}

/// Writes an encoded header block as HEADERS and as many CONTINUATIONs
/// as frames of `max` bytes need.
fn write_encoded(out: &mut Outbox, max: usize, id: u32, block: &[u8], end_stream: bool) {
    out.put(|b| {
        let mut chunks = block.chunks(max);
        let first = chunks.next().unwrap_or(&[]);
        let more = block.len() > max;
        let mut flags = if end_stream { flag::END_STREAM } else { 0 };
        if !more {
            flags |= flag::END_HEADERS;
        }
        frame::write_head(b, first.len(), kind::HEADERS, flags, id);
        b.extend_from_slice(first);
        let rest = block.len().saturating_sub(max);
        let mut written = 0;
        for chunk in chunks {
            written += chunk.len();
            let last = if written == rest {
                flag::END_HEADERS
            } else {
                0
            };
            frame::write_head(b, chunk.len(), kind::CONTINUATION, last, id);
            b.extend_from_slice(chunk);
        }
    });
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

fn error(code: ErrorCode, why: &'static str) -> ConnectionError {
    ConnectionError { code, why }
}

fn internal() -> ConnectionError {
    error(ErrorCode::INTERNAL_ERROR, "internal error")
}

fn from_frame(e: FrameError) -> ConnectionError {
    match e {
        FrameError::Connection(code, why) | FrameError::Stream(_, code, why) => error(code, why),
    }
}

#[cfg(test)]
mod tests {
    //! Hostile peers, frame by frame, against the server role.

    use super::*;
    use crate::hpack::encode_field;

    /// What came out: events (owned) and frames written.
    #[derive(Debug, Default)]
    struct Seen {
        events: Vec<String>,
        frames: Vec<(u8, u8, u32, Vec<u8>)>,
        result: Option<Result<(), ConnectionError>>,
    }

    impl Seen {
        fn rst(&self) -> Vec<(u32, ErrorCode)> {
            self.frames
                .iter()
                .filter(|f| f.0 == kind::RST_STREAM)
                .map(|f| {
                    (
                        f.2,
                        ErrorCode(u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]])),
                    )
                })
                .collect()
        }

        fn goaway(&self) -> Option<ErrorCode> {
            self.frames
                .iter()
                .find(|f| f.0 == kind::GOAWAY)
                .map(|f| ErrorCode(u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]])))
        }
    }

    struct Server {
        conn: Connection,
        out: Outbox,
    }

    fn frames_of(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while bytes.len() >= HEAD_LEN {
            let head = Head::parse(bytes[..HEAD_LEN].try_into().expect("nine"));
            let end = HEAD_LEN + head.length as usize;
            frames.push((
                head.kind,
                head.flags,
                head.stream,
                bytes[HEAD_LEN..end].to_vec(),
            ));
            bytes = &bytes[end..];
        }
        frames
    }

    impl Server {
        fn new(limits: Limits) -> Self {
            let mut out = Outbox::new();
            let conn = Connection::new(Role::Server, limits, &mut out);
            out.take_all();
            let mut server = Self { conn, out };
            let mut hello = frame::PREFACE.to_vec();
            frame::write_settings(&mut hello, []);
            let seen = server.feed(&hello);
            assert_eq!(seen.result, Some(Ok(())));
            server
        }

        fn feed(&mut self, bytes: &[u8]) -> Seen {
            let mut seen = Seen::default();
            let mut buf = BytesMut::from(bytes);
            let events = &mut seen.events;
            let result = self.conn.recv(&mut buf, &mut self.out, |e| {
                events.push(match e {
                    Event::Headers {
                        stream,
                        list,
                        end_stream,
                    } => {
                        format!(
                            "headers {stream} {:?} {} end={end_stream}",
                            list.kind(),
                            list.all().count()
                        )
                    }
                    other => format!("{other:?}"),
                })
            });
            seen.result = Some(result);
            seen.frames = frames_of(&self.out.take_all());
            seen
        }
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            encode_field(n.as_bytes(), v.as_bytes(), false, &mut b);
        }
        b
    }

    const REQUEST: [(&str, &str); 4] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/a.B/C"),
        (":authority", "x"),
    ];

    fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame::write_head(&mut f, block.len(), kind::HEADERS, flags, stream);
        f.extend_from_slice(block);
        f
    }

    fn request(stream: u32, end_stream: bool) -> Vec<u8> {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        headers(stream, flags, &block(&REQUEST))
    }

    fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame::write_head(&mut f, payload.len(), kind::DATA, flags, stream);
        f.extend_from_slice(payload);
        f
    }

    fn connection_error(seen: &Seen, code: ErrorCode) {
        assert!(
            matches!(seen.result, Some(Err(e)) if e.code == code),
            "{seen:?}"
        );
        assert_eq!(seen.goaway(), Some(code), "{seen:?}");
    }

    #[test]
    fn the_preface_and_first_settings_are_required() {
        let mut out = Outbox::new();
        let mut conn = Connection::new(Role::Server, Limits::default(), &mut out);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(conn.recv(&mut buf, &mut out, |_| {}).is_err());
        let mut s = Server::new(Limits::default());
        assert!(s.feed(&request(1, true)).result == Some(Ok(())));
        let mut out = Outbox::new();
        let mut conn = Connection::new(Role::Server, Limits::default(), &mut out);
        let mut bytes = frame::PREFACE.to_vec();
        bytes.extend(request(1, true));
        let mut buf = BytesMut::from(&bytes[..]);
        let result = conn.recv(&mut buf, &mut out, |_| {});
        assert!(matches!(result, Err(e) if e.code == ErrorCode::PROTOCOL_ERROR));
    }

    #[test]
    fn a_request_in_pieces_arrives_whole() {
        let mut s = Server::new(Limits::default());
        let mut bytes = request(1, false);
        bytes.extend(data(1, flag::END_STREAM, b"hello"));
        let mut seen = Vec::new();
        for byte in bytes.chunks(1) {
            // Feed one byte at a time through a buffer that keeps the rest.
            seen.push(byte[0]);
        }
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for b in seen {
            buf.extend_from_slice(&[b]);
            s.conn
                .recv(&mut buf, &mut s.out, |e| {
                    events.push(format!("{e:?}").chars().take(14).collect::<String>())
                })
                .expect("valid");
        }
        assert_eq!(events, ["Headers { stre", "Data { stream:"]);
    }

    /// What one read's bytes gave: DATA as (stream, payload, end), the
    /// rest by name.
    #[derive(Debug, Default)]
    struct Read {
        data: Vec<(u32, Bytes, bool)>,
        other: Vec<String>,
    }

    impl Server {
        /// Feeds `bytes` in reads of `chunk` bytes through one buffer, as
        /// a socket would; `between(n, conn, out)` runs before read `n`.
        fn reads(
            &mut self,
            bytes: &[u8],
            chunk: usize,
            mut between: impl FnMut(usize, &mut Connection, &mut Outbox),
        ) -> Vec<Read> {
            let mut buf = BytesMut::new();
            let mut reads = Vec::new();
            for (n, piece) in bytes.chunks(chunk).enumerate() {
                between(n, &mut self.conn, &mut self.out);
                buf.extend_from_slice(piece);
                let mut read = Read::default();
                self.conn
                    .recv(&mut buf, &mut self.out, |e| match e {
                        Event::Data {
                            stream,
                            data,
                            end_stream,
                        } => read.data.push((stream, data, end_stream)),
                        other => read
                            .other
                            .push(format!("{other:?}").chars().take(14).collect()),
                    })
                    .expect("valid");
                reads.push(read);
            }
            reads
        }
    }

    fn large() -> Limits {
        Limits {
            max_frame_size: 1 << 20,
            stream_window: 1 << 20,
            stream_window_max: 1 << 20,
            ..Limits::default()
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_large_data_frame_is_handed_on_as_it_arrives() {
        let mut s = Server::new(large());
        s.feed(&request(1, false));
        let body = payload(100_000);
        let reads = s.reads(&data(1, flag::END_STREAM, &body), 7_001, |_, _, _| {});
        // Every read that brought payload handed it on at once.
        assert!(reads.iter().all(|r| r.data.len() == 1), "{reads:?}");
        let all: Vec<(u32, Bytes, bool)> = reads.into_iter().flat_map(|r| r.data).collect();
        let joined: Vec<u8> = all.iter().flat_map(|d| d.1.to_vec()).collect();
        assert!(joined == body, "the payload arrived changed");
        assert!(all.iter().all(|d| d.0 == 1));
        let ends: Vec<bool> = all.iter().map(|d| d.2).collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1);
        assert_eq!(
            ends.last(),
            Some(&true),
            "END_STREAM comes with the last bytes"
        );
    }

    #[test]
    fn a_large_padded_frame_hands_on_its_payload_only() {
        let mut s = Server::new(large());
        s.feed(&request(1, false));
        let body = payload(50_000);
        let mut padded = vec![200u8];
        padded.extend_from_slice(&body);
        padded.extend(std::iter::repeat_n(0u8, 200));
        let mut bytes = data(1, flag::PADDED | flag::END_STREAM, &padded);
        // The frame's last read brings only padding; a PING follows it.
        frame::write_ping(&mut bytes, false, [3; 8]);
        let chunk = HEAD_LEN + 1 + body.len() - 30_000;
        let reads = s.reads(&bytes[..HEAD_LEN + 1 + body.len()], chunk, |_, _, _| {});
        let rest = s.reads(&bytes[HEAD_LEN + 1 + body.len()..], 1 << 20, |_, _, _| {});
        let all: Vec<(u32, Bytes, bool)> = reads.into_iter().flat_map(|r| r.data).collect();
        let joined: Vec<u8> = all.iter().flat_map(|d| d.1.to_vec()).collect();
        assert!(joined == body, "the payload arrived changed");
        assert!(all.iter().all(|d| !d.2), "no end before the padding");
        // The end comes with the padding, as an empty DATA event; the PING
        // after it is answered.
        assert_eq!(rest[0].data.len(), 1);
        assert!(rest[0].data[0].1.is_empty() && rest[0].data[0].2);
        let written = frames_of(&s.out.take_all());
        assert!(written
            .iter()
            .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
    }

    #[test]
    fn a_stream_reset_during_a_large_frame_drops_the_rest_and_its_credit_returns() {
        let limits = Limits {
            connection_window: 200_000,
            ..large()
        };
        let mut s = Server::new(limits);
        s.feed(&request(1, false));
        s.out.take_all();
        let body = payload(150_000);
        let mut bytes = data(1, 0, &body);
        frame::write_ping(&mut bytes, false, [5; 8]);
        let reads = s.reads(&bytes, 10_000, |n, conn, out| {
            if n == 2 {
                conn.reset(1, ErrorCode::CANCEL, out);
            }
        });
        let handed: usize = reads
            .iter()
            .flat_map(|r| r.data.iter())
            .map(|d| d.1.len())
            .sum();
        assert_eq!(handed, 20_000 - HEAD_LEN, "only what came before the reset");
        let written = frames_of(&s.out.take_all());
        // The dropped bytes' credit went back to the connection, and the
        // frames after the DATA were read in step.
        assert!(
            written
                .iter()
                .any(|f| f.0 == kind::WINDOW_UPDATE && f.2 == 0),
            "{written:?}"
        );
        assert!(written
            .iter()
            .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
    }

    #[test]
    fn a_large_frame_on_a_closed_stream_is_one_stream_error() {
        let mut s = Server::new(large());
        s.feed(&request(1, true));
        s.out.take_all();
        let mut bytes = data(1, 0, &payload(60_000));
        frame::write_ping(&mut bytes, false, [9; 8]);
        let reads = s.reads(&bytes, 8_000, |_, _, _| {});
        assert!(reads.iter().all(|r| r.data.is_empty()), "{reads:?}");
        let written = frames_of(&s.out.take_all());
        let resets: Vec<_> = written.iter().filter(|f| f.0 == kind::RST_STREAM).collect();
        assert_eq!(resets.len(), 1, "{written:?}");
        assert!(written
            .iter()
            .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
    }

    #[test]
    fn stream_state_violations_get_the_rfcs_errors() {
        // DATA on an idle stream: connection error.
        let mut s = Server::new(Limits::default());
        connection_error(&s.feed(&data(1, 0, b"x")), ErrorCode::PROTOCOL_ERROR);
        // DATA after END_STREAM: stream error STREAM_CLOSED.
        let mut s = Server::new(Limits::default());
        s.feed(&request(1, true));
        assert_eq!(
            s.feed(&data(1, 0, b"x")).rst(),
            [(1, ErrorCode::STREAM_CLOSED)]
        );
        // HEADERS that would open a stream below the last one opened:
        // connection error PROTOCOL_ERROR (5.1.1).
        let mut s = Server::new(Limits::default());
        s.feed(&request(3, true));
        connection_error(&s.feed(&request(1, true)), ErrorCode::PROTOCOL_ERROR);
        // An even (server) stream id from a client.
        let mut s = Server::new(Limits::default());
        connection_error(&s.feed(&request(2, true)), ErrorCode::PROTOCOL_ERROR);
        // A header block interrupted by another frame.
        let mut s = Server::new(Limits::default());
        let mut bytes = headers(1, 0, &block(&REQUEST));
        bytes.extend(data(1, 0, b"x"));
        connection_error(&s.feed(&bytes), ErrorCode::PROTOCOL_ERROR);
        // RST_STREAM and WINDOW_UPDATE on idle streams.
        let mut s = Server::new(Limits::default());
        let mut rst = Vec::new();
        frame::write_rst_stream(&mut rst, 5, ErrorCode::CANCEL);
        connection_error(&s.feed(&rst), ErrorCode::PROTOCOL_ERROR);
        // PUSH_PROMISE from a client.
        let mut s = Server::new(Limits::default());
        let mut push = Vec::new();
        frame::write_head(&mut push, 4, kind::PUSH_PROMISE, flag::END_HEADERS, 1);
        push.extend_from_slice(&[0, 0, 0, 2]);
        connection_error(&s.feed(&push), ErrorCode::PROTOCOL_ERROR);
    }

    #[test]
    fn malformed_heads_cost_their_stream_and_keep_the_table_in_step() {
        let mut s = Server::new(Limits::default());
        // Stream 1: an upper-case name, inserted into the dynamic table.
        let mut b = block(&REQUEST);
        b.push(0x40);
        b.extend_from_slice(b"\x05X-Bad\x01v");
        let seen = s.feed(&headers(1, flag::END_HEADERS | flag::END_STREAM, &b));
        assert_eq!(seen.rst(), [(1, ErrorCode::PROTOCOL_ERROR)]);
        assert!(seen.events.is_empty());
        // Stream 3 depends on itself; its block inserts too.
        let mut b = vec![0, 0, 0, 3, 15];
        b.extend(block(&REQUEST));
        b.push(0x40);
        b.extend_from_slice(b"\x02ok\x01v");
        let seen = s.feed(&headers(
            3,
            flag::END_HEADERS | flag::END_STREAM | flag::PRIORITY,
            &b,
        ));
        assert_eq!(seen.rst(), [(3, ErrorCode::PROTOCOL_ERROR)]);
        // Stream 5 refers to index 62 ("ok: v", the newest): it decodes.
        let mut b = block(&REQUEST);
        b.push(0xbe);
        let seen = s.feed(&headers(5, flag::END_HEADERS | flag::END_STREAM, &b));
        assert_eq!(seen.events, ["headers 5 Request 5 end=true"]);
        // An invalid block is a connection error.
        connection_error(
            &s.feed(&headers(7, flag::END_HEADERS, &[0x80])),
            ErrorCode::COMPRESSION_ERROR,
        );
    }

    #[test]
    fn flow_control_is_enforced_per_stream_and_connection() {
        let limits = Limits {
            stream_window: 10,
            connection_window: 65_535,
            ..Limits::default()
        };
        let mut s = Server::new(limits);
        s.feed(&request(1, false));
        s.feed(&request(3, false));
        let seen = s.feed(&data(1, 0, b"0123456789x"));
        assert_eq!(seen.rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
        // Stream 3 is untouched and may use its whole window.
        let seen = s.feed(&data(3, 0, b"0123456789"));
        assert!(seen.rst().is_empty());
        assert_eq!(seen.events.len(), 1);
        // Released credit returns once half the window waits.
        s.conn.release(3, 4, &mut s.out);
        assert!(frames_of(&s.out.take_all()).is_empty());
        s.conn.release(3, 6, &mut s.out);
        let frames = frames_of(&s.out.take_all());
        assert_eq!(
            frames,
            [(kind::WINDOW_UPDATE, 0, 3, 10u32.to_be_bytes().to_vec())]
        );
        // Padding counts against the window, and comes back at once.
        let seen = s.feed(&data(3, flag::PADDED, b"\x05abcd\0\0\0\0\0"));
        assert!(seen.rst().is_empty(), "{seen:?}");
        // The connection window: past it is a connection error.
        let mut s = Server::new(Limits {
            stream_window: 1 << 20,
            connection_window: 65_535,
            ..Limits::default()
        });
        s.feed(&request(1, false));
        let chunk = vec![0u8; 16_384];
        for _ in 0..3 {
            assert!(s.feed(&data(1, 0, &chunk)).result == Some(Ok(())));
        }
        connection_error(&s.feed(&data(1, 0, &chunk)), ErrorCode::FLOW_CONTROL_ERROR);
    }

    #[test]
    fn stream_windows_grow_within_the_allowance_in_the_same_window_update() {
        let mut s = Server::new(Limits {
            stream_window: 100,
            stream_window_max: 400,
            ..Limits::default()
        });
        s.feed(&request(1, false));
        let update = |n: u32| [(kind::WINDOW_UPDATE, 0, 1, n.to_be_bytes().to_vec())];
        // Below half the window: nothing goes back, nothing grows.
        s.feed(&data(1, 0, &[0; 100]));
        assert_eq!(s.conn.release_growing(1, 40, 1000, &mut s.out), 0);
        assert!(frames_of(&s.out.take_all()).is_empty());
        // Half the window: the credit goes back, and the window doubles.
        assert_eq!(s.conn.release_growing(1, 10, 1000, &mut s.out), 100);
        assert_eq!(frames_of(&s.out.take_all()), update(150));
        // The peer may now have 200 unreleased (50 are); the allowance
        // caps growth.
        s.feed(&data(1, 0, &[0; 150]));
        assert_eq!(s.conn.release_growing(1, 100, 30, &mut s.out), 30);
        assert_eq!(frames_of(&s.out.take_all()), update(130));
        // The window is 230, 100 of it unreleased: 131 more is too many.
        let seen = s.feed(&data(1, 0, &[0; 131]));
        assert_eq!(seen.rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
        // The maximum caps growth too; plain release never grows.
        let mut s = Server::new(Limits {
            stream_window: 300,
            stream_window_max: 400,
            ..Limits::default()
        });
        s.feed(&request(1, false));
        s.feed(&data(1, 0, &[0; 300]));
        assert_eq!(s.conn.release_growing(1, 150, 1000, &mut s.out), 100);
        assert_eq!(frames_of(&s.out.take_all()), update(250));
        s.feed(&data(1, 0, &[0; 100]));
        s.conn.release(1, 150, &mut s.out);
        assert!(
            frames_of(&s.out.take_all()).is_empty(),
            "half of 400 is 200"
        );
        s.conn.release(1, 50, &mut s.out);
        assert_eq!(frames_of(&s.out.take_all()), update(200));
    }

    #[test]
    fn send_windows_follow_settings_and_window_updates() {
        let mut s = Server::new(Limits::default());
        s.feed(&request(1, false));
        assert_eq!(s.conn.send_capacity(1), 65_535);
        let mut settings = Vec::new();
        frame::write_settings(&mut settings, [(frame::setting::INITIAL_WINDOW_SIZE, 100)]);
        s.feed(&settings);
        assert_eq!(s.conn.send_capacity(1), 100);
        s.conn
            .send_data(1, Bytes::from_static(&[1; 100]), false, &mut s.out)
            .expect("fits");
        assert_eq!(s.conn.send_capacity(1), 0);
        assert!(s
            .conn
            .send_data(1, Bytes::from_static(b"x"), false, &mut s.out)
            .is_err());
        // Shrinking the initial window makes the stream's go negative.
        let mut settings = Vec::new();
        frame::write_settings(&mut settings, [(frame::setting::INITIAL_WINDOW_SIZE, 50)]);
        s.feed(&settings);
        let mut wu = Vec::new();
        frame::write_window_update(&mut wu, 1, 60);
        s.feed(&wu);
        assert_eq!(s.conn.send_capacity(1), 10);
        // A window past 2^31 - 1: stream error, then connection error.
        let mut wu = Vec::new();
        frame::write_window_update(&mut wu, 1, MAX_ID);
        assert_eq!(s.feed(&wu).rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
        let mut wu = Vec::new();
        frame::write_window_update(&mut wu, 0, MAX_ID);
        connection_error(&s.feed(&wu), ErrorCode::FLOW_CONTROL_ERROR);
    }

    #[test]
    fn floods_end_with_enhance_your_calm() {
        let limits = Limits {
            max_resets_per_tick: 10,
            max_control_frames_per_tick: 10,
            max_empty_data_per_tick: 10,
            max_continuations: 4,
            ..Limits::default()
        };
        // Rapid reset: open and reset, over and over.
        let mut s = Server::new(limits);
        let mut bytes = Vec::new();
        for i in 0..11 {
            let id = 2 * i + 1;
            bytes.extend(request(id, false));
            frame::write_rst_stream(&mut bytes, id, ErrorCode::CANCEL);
        }
        connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
        // The same number spread over ticks is fine.
        let mut s = Server::new(limits);
        for i in 0..30 {
            let id = 2 * i + 1;
            let mut bytes = request(id, false);
            frame::write_rst_stream(&mut bytes, id, ErrorCode::CANCEL);
            assert_eq!(s.feed(&bytes).result, Some(Ok(())));
            s.conn.tick();
        }
        // PING flood (the SETTINGS of the handshake counted too).
        let mut s = Server::new(limits);
        let mut bytes = Vec::new();
        for _ in 0..10 {
            frame::write_ping(&mut bytes, false, [7; 8]);
        }
        connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
        // WINDOW_UPDATEs that answer our DATA are free; a flood is not.
        let mut s = Server::new(limits);
        s.feed(&request(1, false));
        for _ in 0..20 {
            s.conn
                .send_data(1, Bytes::from_static(b"x"), false, &mut s.out)
                .expect("room");
        }
        let mut bytes = Vec::new();
        for _ in 0..40 {
            frame::write_window_update(&mut bytes, 1, 1);
        }
        assert_eq!(
            s.feed(&bytes).result,
            Some(Ok(())),
            "two per DATA frame sent"
        );
        let mut bytes = Vec::new();
        for _ in 0..10 {
            frame::write_window_update(&mut bytes, 0, 1);
        }
        connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
        // Empty DATA frames.
        let mut s = Server::new(limits);
        let mut bytes = request(1, false);
        for _ in 0..11 {
            bytes.extend(data(1, 0, b""));
        }
        connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
        // CONTINUATION flood.
        let mut s = Server::new(limits);
        let mut bytes = headers(1, 0, &block(&REQUEST));
        for _ in 0..5 {
            frame::write_head(&mut bytes, 0, kind::CONTINUATION, 0, 1);
        }
        connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
    }

    #[test]
    fn limits_on_streams_and_header_sizes() {
        let mut s = Server::new(Limits {
            max_concurrent_streams: 2,
            max_header_list_size: 200,
            max_header_block: 300,
            ..Limits::default()
        });
        s.feed(&request(1, false));
        s.feed(&request(3, false));
        assert_eq!(
            s.feed(&request(5, false)).rst(),
            [(5, ErrorCode::REFUSED_STREAM)]
        );
        // A list over its limit opens the stream for an answer.
        let long = "v".repeat(150);
        let mut fields = REQUEST.to_vec();
        fields.push(("x-long", &long));
        let mut s = Server::new(Limits {
            max_header_list_size: 200,
            max_header_block: 300,
            ..Limits::default()
        });
        let seen = s.feed(&headers(
            1,
            flag::END_HEADERS | flag::END_STREAM,
            &block(&fields),
        ));
        assert_eq!(seen.events, ["HeadersTooLarge { stream: 1 }"]);
        assert!(s.conn.streams().get(1).is_some());
        // A raw block over its limit ends the connection.
        let longer = "v".repeat(300);
        let mut fields = REQUEST.to_vec();
        fields.push(("x-long", &longer));
        connection_error(
            &s.feed(&headers(3, flag::END_HEADERS, &block(&fields))),
            ErrorCode::ENHANCE_YOUR_CALM,
        );
    }

    #[test]
    fn pings_are_answered_and_frames_checked_by_the_codec() {
        let mut s = Server::new(Limits::default());
        let mut ping = Vec::new();
        frame::write_ping(&mut ping, false, *b"abcdefgh");
        let seen = s.feed(&ping);
        assert_eq!(
            seen.frames,
            [(kind::PING, flag::ACK, 0, b"abcdefgh".to_vec())]
        );
        // An oversized frame.
        let mut big = Vec::new();
        frame::write_head(&mut big, 16_385, kind::DATA, 0, 1);
        big.extend(vec![0; 16_385]);
        connection_error(&s.feed(&big), ErrorCode::FRAME_SIZE_ERROR);
    }

    #[test]
    fn trailers_must_end_the_stream_and_content_length_must_match() {
        let mut s = Server::new(Limits::default());
        s.feed(&request(1, false));
        let trailers = block(&[("grpc-status", "0")]);
        assert_eq!(
            s.feed(&headers(1, flag::END_HEADERS, &trailers)).rst(),
            [(1, ErrorCode::PROTOCOL_ERROR)]
        );
        let mut fields = REQUEST.to_vec();
        fields.push(("content-length", "3"));
        s.feed(&headers(3, flag::END_HEADERS, &block(&fields)));
        assert_eq!(
            s.feed(&data(3, flag::END_STREAM, b"ab")).rst(),
            [(3, ErrorCode::PROTOCOL_ERROR)]
        );
        s.feed(&headers(5, flag::END_HEADERS, &block(&fields)));
        let seen = s.feed(&data(5, flag::END_STREAM, b"abc"));
        assert!(seen.rst().is_empty());
        assert_eq!(seen.events.len(), 1);
    }

    mod hostile {
        //! Generated frame sequences, as a fuzzer would send them (a
        //! stable-toolchain stand-in for cargo-fuzz): any mix of frame
        //! types, flags, stream ids and payloads, valid heads among them,
        //! split at any byte, never panics the machine, never lets it hold
        //! more streams than it allows, and never makes it write without
        //! bound for what it reads.

        use super::*;
        use proptest::prelude::*;

        fn any_frame() -> impl Strategy<Value = Vec<u8>> {
            let stream = prop_oneof![Just(0u32), 1u32..8, Just(0x7fff_ffff)];
            let payload = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..48),
                Just(block(&REQUEST)),
                Just(block(&[("grpc-status", "0")])),
                any::<u32>().prop_map(|n| n.to_be_bytes().to_vec()),
            ];
            (0u8..12, any::<u8>(), stream, payload).prop_map(|(kind, flags, stream, payload)| {
                let mut f = Vec::new();
                frame::write_head(&mut f, payload.len(), kind, flags, stream);
                f.extend_from_slice(&payload);
                f
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_frames_split_anywhere_never_panic_or_overrun(
                frames in proptest::collection::vec(any_frame(), 1..40),
                cut in any::<usize>(),
                release in any::<bool>(),
            ) {
                let limits = Limits {
                    max_concurrent_streams: 3,
                    stream_window: 100,
                    stream_window_max: 400,
                    connection_window: 65_535,
                    max_header_list_size: 1024,
                    max_header_block: 2048,
                    max_continuations: 4,
                    max_resets_per_tick: 5,
                    max_control_frames_per_tick: 20,
                    max_empty_data_per_tick: 5,
                    ..Limits::default()
                };
                let mut s = Server::new(limits);
                let bytes: Vec<u8> = frames.concat();
                let cut = if bytes.is_empty() { 0 } else { cut % bytes.len() };
                let mut buf = BytesMut::new();
                let mut written = 0usize;
                for piece in [&bytes[..cut], &bytes[cut..]] {
                    buf.extend_from_slice(piece);
                    let mut data = Vec::new();
                    let result = s.conn.recv(&mut buf, &mut s.out, |e| {
                        if let Event::Data { stream, data: d, .. } = e {
                            data.push((stream, d.len() as u32));
                        }
                    });
                    if release {
                        for (stream, n) in data {
                            s.conn.release_growing(stream, n, 1000, &mut s.out);
                        }
                    }
                    prop_assert!(s.conn.streams().len() <= 3);
                    written += s.out.take_all().len();
                    if result.is_err() {
                        break;
                    }
                }
                // SETTINGS and PING ACKs, resets, WINDOW_UPDATEs and one
                // GOAWAY: bounded by what came in.
                prop_assert!(
                    written <= 64 + 2 * bytes.len() + 64 * frames.len(),
                    "{written} bytes written for {} read", bytes.len()
                );
            }
        }
    }
}
