//! The calls of one worker's relay: each joins a downstream stream to an
//! upstream stream, with what waits to cross in each direction.
//!
//! Bytes wait here only while the other leg has no flow-control credit;
//! the leg they came from gets its credit back only once they have been
//! handed on ([`push_up`], [`push_down`] return how many), so what waits
//! is bounded by the stream windows we announce.
//!
//! Every function that takes a [`Wire`] borrows exactly that one; the
//! caller makes sure no other borrow of it is alive.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::downstream::snapshot::RouteSlot;
use crate::grpc::status::{Code, Status};
use crate::http2::frame::ErrorCode;
use crate::http2::headers::{HeaderList, Which};
use crate::http2::outbox::COPY_BELOW;
use crate::relay::wire::{Side, Wire};
use crate::routing::edits::{Edits, HeaderEdits};
use crate::upstream::cluster::Cluster;
use crate::upstream::retry_budget::Charge;

/// One call.
pub struct Call {
    /// The client's connection and stream.
    pub down: Rc<Side>,
    /// The client's stream id.
    pub d: u32,
    /// The upstream connection and stream, once opened.
    pub up: Option<(Rc<Side>, u32)>,
    /// The upstream connection it waits on for a stream.
    pub waiting_on: Option<Rc<Side>>,
    /// The request head, HPACK-encoded, kept while the call waits for a
    /// stream.
    pub head: Option<Vec<u8>>,
    /// Where the head is in its client connection's `heads`, until the
    /// stream opens at the end of the pass.
    pub pending_head: Option<(usize, usize)>,
    /// Request DATA not yet sent upstream.
    pub to_up: VecDeque<Bytes>,
    /// Request trailers, sent after `to_up`. Boxed, as `down_trailers`:
    /// trailers wait here only behind DATA that waits, and two lists
    /// inline made every call 336 bytes larger, copied as it is added
    /// and again as it ends.
    pub up_trailers: Option<Box<HeaderList>>,
    /// The client has ended the request.
    pub up_end: bool,
    /// Response DATA not yet sent to the client.
    pub to_down: VecDeque<Bytes>,
    /// Response trailers, sent after `to_down`.
    pub down_trailers: Option<Box<HeaderList>>,
    /// The upstream has ended the response (with DATA, not trailers).
    pub down_end: bool,
    /// The response head has been sent to the client.
    pub responded: bool,
    /// For the metrics.
    pub route: RouteSlot,
    /// The cluster chosen.
    pub cluster: Rc<Cluster>,
    /// When the head arrived.
    pub started: Instant,
    /// The status, once known.
    pub code: Code,
    /// Tells this call from a later one in the same slot (deadlines).
    pub serial: u64,
    /// When the proxy ends the call, if it has a deadline.
    pub deadline: Option<monoio::time::Instant>,
    /// When the proxy ends the call if the client has sent nothing after
    /// its head by then (no DATA, no end) and the upstream no head
    /// (`[timeouts] silent_request`); `None` once it has, or when off.
    pub silent_by: Option<monoio::time::Instant>,
    /// A shorter `grpc-timeout` for the upstream than the client sent (the
    /// route's timeout), if any.
    pub timeout_header: Option<String>,
    /// For the access log: the client, the method path (kept only when
    /// the log is on), the endpoint, payload bytes each way, and what went
    /// wrong in detail.
    pub peer: std::net::SocketAddr,
    /// The method path, when the access log is on.
    pub path: Option<Box<str>>,
    /// The endpoint chosen.
    pub endpoint: Rc<crate::upstream::endpoint::Endpoint>,
    /// The upstream failed the call: `Some(true)` by resetting its
    /// stream, `Some(false)` by losing its connection (for ejection and
    /// the resets metric).
    pub upstream_failed: Option<bool>,
    /// Request DATA bytes from the client.
    pub bytes_in: u64,
    /// Response DATA bytes to the client.
    pub bytes_out: u64,
    /// What went wrong, for the access log (the client got a short status).
    pub error: Option<Box<str>>,
    /// How far its upstream stream's window has grown past the initial
    /// window: taken from its client connection's and the worker's
    /// allowances, given back when the call ends.
    pub grown: u32,
    /// Its upstream stream has opened: it counts as active on its
    /// endpoint, no longer as pending in its cluster.
    pub streaming: bool,
    /// What it holds for a retry, until the upstream answers.
    pub hold: Option<Hold>,
    /// Bytes at the front of `to_up` that are a retry's replay: the
    /// client had their credit back when they were first sent.
    pub replayed: u32,
    /// It was retried once (it is not retried again); the replay's charge
    /// stays until the call ends.
    pub retried: Option<Charge>,
    /// It waited for a stream on a connection that ended, and went to
    /// another (once: see `upstream::connect`).
    pub moved: bool,
    /// The upstream stream ended after the whole response (see
    /// `Relay::upstream_done`): request DATA is dropped, its credit
    /// returned.
    pub upstream_done: bool,
    /// The route's edits; those of the response head wait here for it.
    pub edits: Option<Arc<Edits>>,
}

/// What a call holds so that it can be sent again if the upstream refuses
/// it unprocessed (REFUSED_STREAM, or above a GOAWAY's last stream id): its
/// HPACK-encoded head and a copy of its request DATA so far, in one buffer
/// (taken from and given back to the worker's spares, so a hold costs no
/// allocation once the worker is warm), charged to its client
/// connection's and its worker's retry budgets. It ends when the response
/// begins, the request outgrows `retry_buffer`, a budget is full, the
/// client sends trailers, or the call ends.
pub struct Hold {
    /// The head, then the DATA.
    pub bytes: Vec<u8>,
    /// The head's length.
    pub head: usize,
    /// The client has ended the request.
    pub ended: bool,
    /// What the hold is charged.
    pub charge: Charge,
}

impl Hold {
    /// Holds `data` too, if the call's limit and the budgets allow;
    /// `false` if not (the hold must then end: it is no longer the whole
    /// request).
    pub fn keep(&mut self, data: &[u8], limit: usize) -> bool {
        if self.bytes.len() - self.head + data.len() > limit || !self.charge.add(data.len()) {
            return false;
        }
        self.bytes.extend_from_slice(data);
        true
    }
}

impl Call {
    /// Whether the call has a deadline and it has passed by `now`.
    pub fn past_deadline(&self, now: monoio::time::Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// [`past_deadline`](Self::past_deadline) now; reads the clock only
    /// for a call that has a deadline.
    pub fn past_deadline_now(&self) -> bool {
        self.deadline
            .is_some_and(|d| monoio::time::Instant::now() >= d)
    }
}

/// The fields of a head as `edits` change them: removed keys left out, a
/// new `:authority` in place of the old, added values at the end.
pub fn edited<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8], bool)> + 'a,
    edits: Option<&'a HeaderEdits>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8], bool)> + 'a {
    fields
        .filter(move |(name, _, _)| edits.is_none_or(|e| e.keeps(name)))
        .map(move |(name, value, sensitive)| {
            (
                name,
                edits.map_or(value, |e| e.value(name, value)),
                sensitive,
            )
        })
        .chain(edits.into_iter().flat_map(HeaderEdits::added))
}

/// The head a call sends upstream: the client's fields, with `:scheme`
/// set to `scheme` (the upstream's transport), `grpc-timeout` replaced by
/// `timeout` when there is one, and the route's edits made.
pub fn head_fields<'a>(
    list: &'a HeaderList,
    scheme: &'static [u8],
    timeout: Option<&'a str>,
    edits: Option<&'a HeaderEdits>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8], bool)> + 'a {
    let fields = list
        .picked(Which::WithScheme(scheme))
        .filter(move |(name, _, _)| timeout.is_none() || *name != b"grpc-timeout")
        .chain(timeout.map(|t| (&b"grpc-timeout"[..], t.as_bytes(), false)));
    edited(fields, edits)
}

/// The calls of one worker, by key: a key stays its call's until the call
/// is removed. (Generic only so that the slots can be tested alone.)
pub struct Calls<C = Call> {
    slots: Vec<Option<C>>,
    free: Vec<usize>,
    len: usize,
}

/// Slots a worker keeps when it has no call left; a burst of calls grows
/// more, and they go when its last call ends.
const SLOTS_KEPT: usize = 64;

impl<C> Default for Calls<C> {
    fn default() -> Self {
        Calls {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<C> Calls<C> {
    /// Calls in flight.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a call; returns its key.
    pub fn insert(&mut self, call: C) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(call);
                key
            }
            None => {
                self.slots.push(Some(call));
                self.slots.len() - 1
            }
        }
    }

    /// The call with this key.
    pub fn get(&self, key: usize) -> Option<&C> {
        self.slots.get(key)?.as_ref()
    }

    /// The call with this key, to change.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut C> {
        self.slots.get_mut(key)?.as_mut()
    }

    /// Forgets a call. When the last one goes, the slots a burst grew past
    /// [`SLOTS_KEPT`] go too (a slot is a few hundred bytes: 100,000 calls
    /// at once would otherwise keep tens of megabytes for good).
    pub fn remove(&mut self, key: usize) -> Option<C> {
        let call = self.slots.get_mut(key)?.take()?;
        self.free.push(key);
        self.len -= 1;
        if self.len == 0 && self.slots.len() > SLOTS_KEPT {
            self.slots.clear();
            self.slots.shrink_to(SLOTS_KEPT);
            self.free.clear();
            self.free.shrink_to(SLOTS_KEPT);
        }
        Some(call)
    }
}

impl Calls {
    /// Whether call `key` has a deadline that has passed by `now`.
    pub fn deadline_passed(&self, key: usize, now: monoio::time::Instant) -> bool {
        matches!(self.slots.get(key), Some(Some(c)) if c.past_deadline(now))
    }

    /// Why call `key`, if it is still call `serial`, is to end at `now`
    /// with DEADLINE_EXCEEDED: its deadline passed, or it stayed silent.
    pub fn overdue(
        &self,
        key: usize,
        serial: u64,
        now: monoio::time::Instant,
    ) -> Option<&'static str> {
        let Some(Some(call)) = self.slots.get(key) else {
            return None;
        };
        if call.serial != serial {
            None
        } else if call.past_deadline(now) {
            Some("deadline exceeded at the proxy")
        } else if !call.responded && call.silent_by.is_some_and(|at| now >= at) {
            Some("the request sent nothing in time")
        } else {
            None
        }
    }

    /// Whether `key` is still call `serial`.
    pub fn is_current(&self, key: usize, serial: u64) -> bool {
        matches!(self.slots.get(key), Some(Some(c)) if c.serial == serial)
    }
}

/// The bytes waiting in `queue`.
pub fn unsent(queue: &VecDeque<Bytes>) -> u32 {
    queue.iter().map(|b| b.len() as u32).sum()
}

/// Queues `data` behind what waits in `queue`. A piece under
/// [`COPY_BELOW`] is copied, into the last piece when that is such a copy
/// with room for it: DATA is a slice of the buffer it was read into (up
/// to 64 KiB), and a few bytes of a frame that came alone must not keep a
/// whole buffer alive while they wait, nor cost a queue entry each. The
/// copies are made with room for COPY_BELOW bytes and filled in place, so
/// that each byte is copied once.
pub fn enqueue(queue: &mut VecDeque<Bytes>, data: Bytes) {
    if data.len() >= COPY_BELOW {
        queue.push_back(data);
        return;
    }
    if data.is_empty() {
        return;
    }
    if let Some(last) = queue.back_mut() {
        // Shorter than COPY_BELOW: a copy made here, which nothing else
        // holds unless a write took part of it.
        if last.len() + data.len() <= COPY_BELOW {
            match std::mem::take(last).try_into_mut() {
                Ok(mut copy) if copy.capacity() - copy.len() >= data.len() => {
                    copy.extend_from_slice(&data);
                    *last = copy.freeze();
                    return;
                }
                Ok(copy) => *last = copy.freeze(),
                Err(shared) => *last = shared,
            }
        }
    }
    let mut copy = BytesMut::with_capacity(COPY_BELOW);
    copy.extend_from_slice(&data);
    queue.push_back(copy.freeze());
}

/// New request DATA for a call with an upstream stream: sent at once when
/// nothing waits before it and the upstream has the credit (the common
/// case, which then costs no queue), else queued behind the rest. Returns
/// the bytes sent, as [`push_up`].
pub fn forward_up(call: &mut Call, data: Bytes, up: &mut Wire) -> u32 {
    if let (false, true, Some((_, u))) = (data.is_empty(), call.to_up.is_empty(), &call.up) {
        let u = *u;
        if up.room(u) >= data.len() {
            let n = data.len() as u32;
            let end = call.up_end && call.up_trailers.is_none();
            let Wire { conn, out, .. } = up;
            if conn.send_data(u, data, end, out).is_ok() && end {
                call.up_end = false;
            }
            return n;
        }
    }
    enqueue(&mut call.to_up, data);
    push_up(call, up)
}

/// New response DATA: sent at once when nothing waits before it and the
/// client has the credit, else queued. Returns what [`push_down`] does.
pub fn forward_down(call: &mut Call, data: Bytes, down: &mut Wire) -> (u32, bool) {
    let direct = !data.is_empty() && call.to_down.is_empty() && down.room(call.d) >= data.len();
    if direct {
        let n = data.len() as u32;
        let end = call.down_end && call.down_trailers.is_none();
        let Wire { conn, out, .. } = down;
        let sent = conn.send_data(call.d, data, end, out);
        return (n, end || sent.is_err());
    }
    enqueue(&mut call.to_down, data);
    push_down(call, down)
}

/// Gives the upstream back the credit of `n` response bytes of the call
/// (upstream stream `u` on `up`) that were handed on or dropped. A stream
/// that carries bytes may grow its window, as far as the allowances of its
/// client connection and of the worker (`worker`) go: what a client
/// connection's calls can have waiting in the proxy is bounded by their
/// initial windows plus its allowance, however many streams it opens.
pub fn release_down(call: &mut Call, up: &mut Wire, u: u32, n: u32, worker: &Cell<usize>) {
    let mine = call.down.allowance.get();
    let allowance = mine.min(u32::try_from(worker.get()).unwrap_or(u32::MAX));
    let grown = up.conn.release_growing(u, n, allowance, &mut up.out);
    if grown > 0 {
        call.down.allowance.set(mine - grown);
        worker.set(worker.get() - grown as usize);
        call.grown += grown;
    }
}

/// Opens the call's upstream stream on `up` (whose state `wire` is) with
/// its HPACK-encoded `head`, links it, and sends what waits for it;
/// returns the DATA bytes sent, as [`push_up`]. Fails when the
/// connection takes no new stream now.
pub fn open_stream(
    call: &mut Call,
    key: usize,
    up: &Rc<Side>,
    wire: &mut Wire,
    head: &[u8],
) -> Result<u32, crate::http2::connection::SendError> {
    let end = call.up_end && call.to_up.is_empty() && call.up_trailers.is_none();
    let u = wire.conn.open_encoded(head, end, &mut wire.out)?;
    if end {
        call.up_end = false;
    }
    wire.links.insert(u, key);
    call.up = Some((up.clone(), u));
    call.waiting_on = None;
    call.streaming = true;
    call.cluster.pending(false);
    call.endpoint.stream(true);
    Ok(push_up(call, wire))
}

/// Sends what the call has for upstream, within its credit; returns the
/// DATA bytes sent, which the client may now have back.
pub fn push_up(call: &mut Call, up: &mut Wire) -> u32 {
    let Some((_, u)) = call.up else {
        return 0;
    };
    let mut sent = 0;
    while let Some(front) = call.to_up.front_mut() {
        let room = up.room(u);
        if room == 0 {
            return sent;
        }
        let chunk = front.split_to(front.len().min(room));
        if front.is_empty() {
            call.to_up.pop_front();
        }
        let end = call.to_up.is_empty() && call.up_end && call.up_trailers.is_none();
        // A replay's bytes were credited to the client the first time.
        let n = chunk.len() as u32;
        let replay = n.min(call.replayed);
        call.replayed -= replay;
        sent += n - replay;
        if up.conn.send_data(u, chunk, end, &mut up.out).is_err() {
            return sent;
        }
        if end {
            call.up_end = false;
            return sent;
        }
    }
    let Wire { conn, out, .. } = up;
    if call.up_end {
        call.up_end = false;
        match call.up_trailers.take() {
            Some(trailers) => {
                let _ = conn.send_headers(u, trailers.fields(), true, out);
            }
            None => {
                let _ = conn.send_data(u, Bytes::new(), true, out);
            }
        }
    }
    sent
}

/// Sends what the call has for the client, within its credit; returns the
/// DATA bytes sent (the upstream may have them back) and whether the
/// response is now complete.
pub fn push_down(call: &mut Call, down: &mut Wire) -> (u32, bool) {
    let d = call.d;
    let mut sent = 0;
    while let Some(front) = call.to_down.front_mut() {
        let room = down.room(d);
        if room == 0 {
            return (sent, false);
        }
        let chunk = front.split_to(front.len().min(room));
        if front.is_empty() {
            call.to_down.pop_front();
        }
        let end = call.to_down.is_empty() && call.down_end && call.down_trailers.is_none();
        sent += chunk.len() as u32;
        if down.conn.send_data(d, chunk, end, &mut down.out).is_err() {
            return (sent, true);
        }
        if end {
            return (sent, true);
        }
    }
    let Wire { conn, out, .. } = down;
    if let Some(trailers) = call.down_trailers.take() {
        if let Some(code) = trailers.get(b"grpc-status").and_then(parse_code) {
            call.code = code;
        }
        let _ = conn.send_headers(d, trailers.fields(), true, out);
        return (sent, true);
    }
    if call.down_end {
        let _ = conn.send_data(d, Bytes::new(), true, out);
        return (sent, true);
    }
    (sent, false)
}

/// A `grpc-status` value.
pub fn parse_code(value: &[u8]) -> Option<Code> {
    let n: u8 = std::str::from_utf8(value).ok()?.parse().ok()?;
    Code::from_u8(n)
}

/// Ends the client's stream `d` with `status`: a trailers-only response,
/// or, once the response has begun (`responded`), trailers after it. The
/// status fields are [`Status::to_header_map`]'s (this is an error path;
/// the map's allocation does not matter).
pub fn answer(down: &mut Wire, d: u32, status: &Status, responded: bool) {
    let head: [(&[u8], &[u8], bool); 2] = [
        (b":status", b"200", false),
        (b"content-type", b"application/grpc", false),
    ];
    let head = if responded { &head[..0] } else { &head[..] };
    let map = status.to_header_map();
    let fields = head.iter().copied().chain(
        map.iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes(), false)),
    );
    let Wire { conn, out, .. } = down;
    let _ = conn.send_headers(d, fields, true, out);
}

/// The status a client gets for an upstream RST_STREAM (the gRPC spec's
/// mapping of HTTP/2 codes, `PROTOCOL-HTTP2.md`, "Errors").
pub fn status_of_reset(code: ErrorCode) -> Status {
    let grpc = match code {
        ErrorCode::REFUSED_STREAM => Code::Unavailable,
        ErrorCode::CANCEL => Code::Cancelled,
        ErrorCode::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        ErrorCode::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    };
    Status::new(grpc, "upstream reset the stream")
}

/// The status a client gets when the proxy resets the call's upstream
/// stream because the upstream broke a rule of RFC 9113 on it (a
/// malformed response, a bad WINDOW_UPDATE, ...): the upstream did not
/// reset it, and the message says which error the proxy sent.
pub fn status_of_broken_stream(code: ErrorCode) -> Status {
    Status::new(
        Code::Internal,
        format!("upstream broke HTTP/2 on the call's stream ({code})"),
    )
}

#[cfg(test)]
mod tests {
    use super::{enqueue, Calls, COPY_BELOW, SLOTS_KEPT};
    use bytes::{Bytes, BytesMut};
    use std::collections::VecDeque;

    #[test]
    fn small_pieces_are_queued_as_copies_and_joined() {
        let mut queue = VecDeque::new();
        let mut buffers = Vec::new();
        for i in 0..5000u32 {
            // Each piece alone in a read buffer of 64 KiB.
            let mut read = BytesMut::with_capacity(64 << 10);
            read.extend_from_slice(&i.to_be_bytes());
            let read = read.freeze();
            enqueue(&mut queue, read.slice(3..4));
            buffers.push(read);
        }
        assert!(
            buffers.iter_mut().all(|b| b.is_unique()),
            "no piece holds its read buffer"
        );
        assert_eq!(queue.iter().map(Bytes::len).sum::<usize>(), 5000);
        assert_eq!(queue.len(), 2, "joined into pieces of {COPY_BELOW} bytes");
        let last = queue.back().map(|b| b.as_ref().as_ptr());
        enqueue(&mut queue, Bytes::from_static(b"y"));
        assert_eq!(queue.len(), 2, "filled in place: no new piece");
        assert_eq!(
            queue.back().map(|b| b.as_ref().as_ptr()),
            last,
            "nor a new copy"
        );
        let large = Bytes::from(vec![7u8; COPY_BELOW]);
        enqueue(&mut queue, large.clone());
        assert_eq!(
            queue.back().map(|b| b.as_ref().as_ptr()),
            Some(large.as_ref().as_ptr()),
            "large pieces are not copied"
        );
        enqueue(&mut queue, Bytes::from_static(b"x"));
        assert_eq!(queue.len(), 4, "nothing joins a large piece");
    }

    #[test]
    fn keys_are_reused_and_a_burst_gives_its_slots_back_when_it_ends() {
        let mut calls: Calls<u32> = Calls::default();
        let a = calls.insert(1);
        let b = calls.insert(2);
        assert_eq!(calls.remove(a), Some(1));
        assert_eq!(calls.remove(a), None, "a key is forgotten once");
        assert_eq!(calls.insert(3), a, "a freed key is taken again");
        assert_eq!(calls.get(b), Some(&2));
        calls.remove(a);
        calls.remove(b);
        assert!(calls.is_empty());

        let keys: Vec<usize> = (0..10_000).map(|i| calls.insert(i)).collect();
        assert_eq!(calls.len(), 10_000);
        for &key in &keys[1..] {
            calls.remove(key);
        }
        // One call is left: its key still holds it, so nothing moves.
        assert_eq!(calls.get(keys[0]), Some(&0));
        assert!(calls.slots.capacity() >= 10_000);
        calls.remove(keys[0]);
        assert!(calls.slots.capacity() <= SLOTS_KEPT);
        assert!(calls.free.capacity() <= SLOTS_KEPT);
        assert_eq!(calls.get(keys[9_999]), None, "an old key finds nothing");
        assert_eq!(calls.insert(7), 0);
        assert_eq!(calls.get(0), Some(&7));
    }
}
