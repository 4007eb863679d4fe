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
//!
//! The receive half is in `recv` (frames in, events out, credit
//! released), the send half in `send`; the state both share, and the
//! stream bookkeeping both use, are here.

use bytes::Bytes;

use super::frame::{self, ErrorCode, FrameError, Settings};
use super::headers::HeaderList;
use super::kept::KeptBlock;
use super::outbox::Outbox;
use super::streams::Streams;
use crate::hpack::Decoder;

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
    /// The peer's SETTINGS named a header table size: our next header
    /// block starts with a dynamic table size update (to 0: our encoder
    /// uses no dynamic table). RFC 7541 6.3 wants one after a smaller
    /// size, and nghttp2 refuses a block without it.
    size_update_owed: bool,
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
    /// The peer sent GOAWAY (we open nothing more), naming at least this
    /// last stream id: the lowest its GOAWAYs named.
    peer_going_away: Option<u32>,
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
            size_update_owed: false,
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
            peer_going_away: None,
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
        self.peer_going_away.is_some()
    }

    /// How many more streams we may open: stream ids end at 2^31 - 1, and
    /// a busy client connection runs through them in hours.
    pub fn streams_left(&self) -> u32 {
        if self.next_local > frame::MAX_ID {
            return 0;
        }
        (frame::MAX_ID - self.next_local) / 2 + 1
    }

    /// Uses up stream ids as if `left_at_most` were all that is left.
    #[cfg(test)]
    pub fn spend_stream_ids_for_test(&mut self, left_at_most: u32) {
        self.next_local = self.next_local.max(frame::MAX_ID - 2 * (left_at_most - 1));
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

    /// Lets go of what a large header block left: its bytes (once no
    /// CONTINUATION is awaited), the decoder's scratch, its decoded list
    /// and their encodings.
    /// A block of a few bytes may decode to as much as the header list
    /// limit (fields the HPACK table holds, named again and again), and a
    /// connection keeps the room common heads take, not its largest
    /// one's. Cheap when there is nothing to let go: call it after each
    /// read pass.
    #[inline]
    pub fn shrink(&mut self) {
        const KEPT: usize = 16 << 10;
        let large = self.block.capacity() > KEPT
            || self.encoded.capacity() > KEPT
            || self.heads.room() > KEPT
            || self.trailers.as_ref().is_some_and(|t| t.room() > KEPT);
        if large {
            if self.pending.is_none() && self.block.capacity() > KEPT {
                self.block = Vec::new();
            }
            if self.encoded.capacity() > KEPT {
                self.encoded = Vec::new();
            }
            self.heads.shrink(KEPT);
            if let Some(trailers) = &mut self.trailers {
                trailers.shrink(KEPT);
            }
        }
        self.decoder.shrink_scratch(KEPT);
    }

    /// The open streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Starts a new tick of the flood budgets.
    pub fn tick(&mut self) {
        self.budget = Budget::default();
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

mod recv;
mod send;

#[cfg(test)]
mod tests;
