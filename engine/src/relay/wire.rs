//! One connection of the relay, either leg: the protocol machine, what it
//! has to write, and which call each of its streams belongs to.
//!
//! A [`Side`] is shared (`Rc`) by the connection's reader task, its writer
//! task, and the calls linked to it: a call on another connection writes
//! frames into this side's outbox and has them written. Borrows of a side
//! never live across an await, and a side's reader never borrows it while
//! another side's callback runs, so the `RefCell` never fails on one core.
//!
//! What waits is written oldest first, in one vectored write: small frames
//! are gathered into one segment, and a large payload is its own segment,
//! never copied. While a cleartext connection's writer waits with nothing
//! to write, the worker's [`Flusher`] writes for it, one task for all such
//! connections; the writer takes over what a socket does not take at once,
//! and every TLS connection's writes.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::BytesMut;
use bytes::{Buf, Bytes};
use monoio::io::AsyncWriteRent;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

use crate::http2::connection::Connection;
use crate::http2::outbox::Outbox;
use crate::http2::streams::IdHasher;
use crate::runtime::wake::{Latch, Notify};
use crate::transport::owned_tls::{TlsReader, TlsWriter};
use crate::transport::socket;
use crate::transport::tls::PeerIdentity;
use crate::upstream::retry_budget::Budget;

/// Stream id to the key of the call it carries.
pub type Links = HashMap<u32, usize, BuildHasherDefault<IdHasher>>;

/// The state of one connection that a borrow hands out.
pub struct Wire {
    /// The protocol machine.
    pub conn: Connection,
    /// Frames waiting for the writer.
    pub out: Outbox,
    /// The call of each linked stream.
    pub links: Links,
    /// Calls waiting for a stream on this (upstream) connection.
    pub waiting: VecDeque<usize>,
    /// Heads of the calls this (client) connection opened in the current
    /// pass, HPACK-encoded for their upstream streams.
    pub heads: Vec<u8>,
    /// Bytes the writer has taken from `out` and not yet written.
    pub in_flight: usize,
    /// The most that may wait to be written (`out` and `in_flight`)
    /// before DATA stops being handed to this connection.
    pub write_budget: usize,
    /// DATA was held back for the write budget: once the writer is down
    /// to half of it, the calls are pushed again.
    pub held: bool,
    /// Streams of this (client) connection answered as not gRPC whose
    /// body waits for credit, and how much of it went (see
    /// [`not_grpc`](crate::relay::not_grpc)).
    pub not_grpc: Vec<(u32, usize)>,
}

impl Wire {
    /// How many DATA bytes may go on `stream` now: its flow-control
    /// credit, or nothing while the connection has its write budget
    /// waiting to be written (a peer that does not read its socket, or
    /// reads slowly, holds at most that much of the proxy's memory in
    /// this connection's writes; the rest waits in its calls, bounded by
    /// their windows, and holds back their senders' credit).
    #[inline]
    pub fn room(&mut self, stream: u32) -> usize {
        let waiting = self.out.len() + self.in_flight;
        if waiting >= self.write_budget {
            self.held = true;
            return 0;
        }
        // Never past the budget: DATA alone must not reach the mark at
        // which the reader stops (see `Side::backed_up`). Held back by
        // it, the rest goes when the writer has drained.
        let left = self.write_budget - waiting;
        let capacity = self.conn.send_capacity(stream);
        if capacity > left {
            self.held = true;
        }
        capacity.min(left)
    }

    /// Whether what waits to be written is at the write budget: no new
    /// stream opens on this (upstream) connection then, as no DATA goes
    /// (see [`room`](Self::room)): a call's head may be as large as the
    /// header list limit, and calls would pile them on a peer that reads
    /// nothing, without end. They wait for the writer to drain half of
    /// it, and a cluster's pending limit refuses more.
    #[inline]
    pub fn full(&mut self) -> bool {
        let full = self.at_budget();
        if full {
            self.held = true;
        }
        full
    }

    /// Whether what waits to be written is at the write budget.
    #[inline]
    pub fn at_budget(&self) -> bool {
        self.out.len() + self.in_flight >= self.write_budget
    }

    /// Frees the room a quiet connection's busiest moment left in its
    /// protocol state, write list, call links and scratch lists, where
    /// nothing is held (see [`Side::ask_let_go`]).
    pub fn release_idle(&mut self) {
        self.conn.release_idle();
        self.out.release_if_empty();
        if self.links.is_empty() {
            self.links = Links::default();
        }
        if self.waiting.is_empty() {
            self.waiting = VecDeque::new();
        }
        if self.heads.is_empty() {
            self.heads = Vec::new();
        }
        if self.not_grpc.is_empty() {
            self.not_grpc = Vec::new();
        }
    }

    /// Gives the peer back the credit of `n` bytes of `stream`'s DATA.
    pub fn release(&mut self, stream: u32, n: u32) {
        self.conn.release(stream, n, &mut self.out);
    }
}

/// One connection, shared by its tasks and its calls.
pub struct Side {
    /// Its state.
    pub wire: RefCell<Wire>,
    /// Wakes the writer, and a reader stopped while what waits to be
    /// written is at the write budget (see [`backed_up`](Self::backed_up)).
    pub wake: Notify,
    /// Set when the connection is done: the writer flushes and closes.
    pub closed: Latch,
    /// Acknowledgements of our keepalive PINGs received (the keeper
    /// compares; see [`ping_data`](Self::ping_data)).
    pub pongs: Cell<u64>,
    /// A call started since the keeper last looked (idle timeout).
    pub active: Cell<bool>,
    /// Retiring (GOAWAY sent for age or idleness): close once its last
    /// call ends.
    pub retiring: Cell<bool>,
    /// For a client connection: how much more its calls' upstream stream
    /// windows may grow, in all (see [`release_down`](crate::relay::calls::release_down)).
    pub allowance: Cell<u32>,
    /// For a client connection: what its calls' retry holds may take, in
    /// all (`[upstream] retry_buffer_per_connection`).
    pub retry: Rc<Budget>,
    /// For a client connection over TLS: who the client is, from the
    /// certificate it presented.
    pub identity: Option<Rc<PeerIdentity>>,
    /// The socket, while the writer waits with nothing to write on a
    /// cleartext connection: what waits is then written by the worker's
    /// [`flusher`], not by waking the writer (see [`flush`](Self::flush)).
    direct: Cell<Option<RawFd>>,
    /// The TCP socket, while the writer (which holds it open) runs: for
    /// what the kernel knows of the bytes sent (see [`reading`](Self::reading)).
    socket: Cell<Option<RawFd>>,
    /// In the flusher's queue.
    queued: Cell<bool>,
    /// Whether a client connection's reader holds a read buffer, and
    /// whether it was asked to let it go (see [`ask_let_go`](Self::ask_let_go)).
    buffer: Cell<Buffer>,
}

/// A keepalive PING sent (see [`Side::ping`]): what tells, at its
/// deadline, whether the peer lives though it has not answered yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct PingOut {
    /// Answers received before it.
    pongs: u64,
    /// When bytes waited to be written ahead of it: how many the peer's
    /// TCP had acknowledged at the last look, and how many it will have
    /// acknowledged once it has the PING.
    behind: Option<(u64, u64)>,
}

impl PingOut {
    /// The length of a PING frame.
    const LEN: u64 = 17;

    /// A PING sent when `pongs` answers had come, behind `ahead` bytes
    /// still to be written and what the kernel had (`sent`).
    pub fn new(pongs: u64, ahead: u64, sent: Option<socket::Sent>) -> PingOut {
        let behind = sent.filter(|sent| ahead + sent.queued > 0).map(|sent| {
            // TLS adds its records' overhead to what waits to be
            // written (29 bytes in 16 KiB): counted generously.
            let margin = ahead / 256 + 64;
            let at = sent.acked + sent.queued + ahead + margin + Self::LEN;
            (sent.acked, at)
        });
        PingOut { pongs, behind }
    }

    /// Whether the PING may wait one timeout more, the kernel saying
    /// `now`: the peer's TCP acknowledged more bytes since the PING went
    /// (or since the last look), and at the last look it did not have
    /// the PING yet. So a slow reader's PING waits behind up to
    /// `buffer_per_connection` and the kernel's buffers; once the peer
    /// has it, the answer must come within the timeout, as for a PING
    /// that nothing waited ahead of: a peer's kernel (or a middlebox)
    /// acknowledges bytes its process never reads.
    pub fn waits_on(&mut self, now: socket::Sent) -> bool {
        let Some((before, at)) = self.behind else {
            return false;
        };
        self.behind = Some((now.acked, at));
        now.acked > before && before < at
    }
}

/// A client connection's read buffer, for the keeper (see
/// [`Side::ask_let_go`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// It holds none: it waits for bytes with none ([`Source::ready`]).
    None,
    /// It holds an empty one, which it may give up with its read.
    Empty,
    /// It holds an empty one grown past a few small reads, which it gives
    /// up as soon as its last call ends (see [`Side::calls_ended`]).
    Large,
    /// It holds one with what it needs: part of a frame, or room for the
    /// rest of a large one.
    Needed,
    /// It holds an empty one and was asked to let it go.
    Asked,
}

impl Side {
    /// Starts a new tick of the connection's flood budgets if the
    /// worker's count of seconds (`now`, see
    /// [`Relay::second`](crate::relay::worker::Relay::second)) moved on
    /// from `seen`.
    pub fn tick(&self, now: u64, seen: &mut u64) {
        if now != *seen {
            *seen = now;
            self.wire.borrow_mut().conn.tick();
        }
    }

    /// A side for a new connection, whose first frames `out` holds; at
    /// most `budget` bytes wait to be written to it (DATA waits in its
    /// calls beyond that), and its calls' windows may grow by `budget`;
    /// its calls' retry holds may take `retry` bytes; a client's TLS
    /// `identity`, if it has one.
    pub fn new(
        conn: Connection,
        out: Outbox,
        budget: usize,
        retry: usize,
        identity: Option<Rc<PeerIdentity>>,
    ) -> Rc<Side> {
        Rc::new(Side {
            wire: RefCell::new(Wire {
                conn,
                out,
                links: Links::default(),
                waiting: VecDeque::new(),
                heads: Vec::new(),
                in_flight: 0,
                write_budget: budget,
                held: false,
                not_grpc: Vec::new(),
            }),
            wake: Notify::default(),
            closed: Latch::default(),
            pongs: Cell::new(0),
            active: Cell::new(false),
            retiring: Cell::new(false),
            allowance: Cell::new(u32::try_from(budget).unwrap_or(u32::MAX)),
            retry: Budget::new(retry),
            identity,
            direct: Cell::new(None),
            socket: Cell::new(None),
            queued: Cell::new(false),
            buffer: Cell::new(Buffer::None),
        })
    }

    /// Asks the reader of a client connection without calls to let its
    /// read buffer go, if it holds one: a connection that went quiet
    /// after its calls waits in a read that holds the buffer (grown to
    /// what its busiest reads took, up to 64 KiB), where one that never
    /// had a call holds none (see [`let_go`]). The keeper asks.
    pub fn ask_let_go(&self) {
        let empty = matches!(self.buffer.get(), Buffer::Empty | Buffer::Large);
        if empty && self.wire.borrow().links.is_empty() {
            self.buffer.set(Buffer::Asked);
            // The reader waits on `closed` beside its read.
            self.closed.nudge();
        }
    }

    /// The last call of a client connection ended: a large read buffer
    /// goes now, not at the keeper's next look (a client that calls now
    /// and then with large messages would otherwise hold one for each
    /// quiet spell, where a small one waits for the look). Epoll only, as
    /// the keeper's looks (see [`Keepers::run`](crate::relay::keeper::Keepers::run)).
    pub fn calls_ended(&self) {
        if self.buffer.get() == Buffer::Large {
            self.ask_let_go();
        }
    }

    /// Completes when the reader was asked to let its buffer go; it
    /// registers no waker of its own, and is polled beside a wait on
    /// `closed`, which [`ask_let_go`](Self::ask_let_go) nudges.
    pub fn let_go_asked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| match self.buffer.get() {
            Buffer::Asked => Poll::Ready(()),
            _ => Poll::Pending,
        })
    }

    /// Records what the reader's buffer holds.
    pub fn holds_buffer(&self, buffer: Buffer) {
        self.buffer.set(buffer);
    }

    /// Sends GOAWAY (no new streams): a connection without calls closes
    /// now, one with calls once the last ends (the caller says why, with
    /// `retiring` or the worker's drain).
    pub fn go_away(self: &Rc<Self>) {
        let idle = {
            let mut w = self.wire.borrow_mut();
            let wire = &mut *w;
            wire.conn
                .go_away(crate::http2::frame::ErrorCode::NO_ERROR, &mut wire.out);
            wire.links.is_empty()
        };
        self.flush();
        if idle {
            self.closed.set();
        }
    }

    /// Closes a retiring connection that has no call left, linked or
    /// waiting for a stream.
    pub fn close_if_retired(&self) {
        if !self.retiring.get() {
            return;
        }
        let idle = {
            let w = self.wire.borrow();
            w.links.is_empty() && w.waiting.is_empty()
        };
        if idle {
            self.closed.set();
            self.wake.notify_all();
        }
    }

    /// Has what waits written: by the worker's flusher when the writer
    /// waits idle on a cleartext connection, else by waking the writer.
    ///
    /// The flusher runs once the tasks woken before it have run, and
    /// writes every connection that has something waiting: a read pass
    /// that answers calls of many client connections costs one task
    /// switch, not one per connection.
    pub fn flush(self: &Rc<Self>) {
        // Queued already: the flusher writes what waits when it comes.
        if self.queued.get() || self.wire.borrow().out.is_empty() {
            return;
        }
        if self.direct.get().is_some() && Flusher::enqueue(self) {
            return;
        }
        self.wake.notify_all();
    }

    /// The payload of this connection's keepalive PING: a keyed hash (the
    /// key is the worker's, random) of the connection and of the answers
    /// so far, so that only an acknowledgement of a PING the peer read
    /// counts (see [`pong`](Self::pong)): a peer that reads nothing, or
    /// read one PING, cannot tell what the next carries. No address
    /// shows in it.
    pub fn ping_data(&self) -> [u8; 8] {
        use std::hash::BuildHasher;
        thread_local! {
            static PING_KEY: std::hash::RandomState = std::hash::RandomState::new();
        }
        let at = std::ptr::from_ref(self) as usize;
        PING_KEY
            .with(|key| key.hash_one((at, self.pongs.get())))
            .to_be_bytes()
    }

    /// A PING acknowledgement with `data`: an answer to our keepalive if
    /// it carries its payload.
    pub fn pong(&self, data: [u8; 8]) {
        if data == self.ping_data() {
            self.pongs.set(self.pongs.get() + 1);
        }
    }

    /// Sends a keepalive PING.
    pub fn ping(self: &Rc<Self>) -> PingOut {
        let ahead = {
            let mut w = self.wire.borrow_mut();
            let wire = &mut *w;
            let ahead = wire.out.len() + wire.in_flight;
            wire.conn.ping(self.ping_data(), &mut wire.out);
            ahead
        };
        let sent = self.socket.get().and_then(socket::sent);
        self.flush();
        PingOut::new(self.pongs.get(), ahead as u64, sent)
    }

    /// Whether the peer answered `ping`.
    pub fn answered(&self, ping: &PingOut) -> bool {
        self.pongs.get() > ping.pongs
    }

    /// At the deadline of `ping`, unanswered: whether it may wait one
    /// timeout more, as the peer is still reading what was written ahead
    /// of it (see [`PingOut::waits_on`]).
    pub fn reading(&self, ping: &mut PingOut) -> bool {
        self.socket
            .get()
            .and_then(socket::sent)
            .is_some_and(|now| ping.waits_on(now))
    }

    /// Whether what waits to be written to this connection is half as
    /// much again as its write budget, a mark DATA alone never reaches
    /// (see [`Wire::room`]): the rest are answers the peer does not read
    /// (heads, RST_STREAMs, PING and SETTINGS acknowledgements). Its
    /// reader then reads no more until the writer is down to half the
    /// budget (see [`resume`]), so such a peer holds a bounded share of
    /// the proxy's memory, and a peer that merely reads slowly is still
    /// read.
    pub fn backed_up(&self) -> bool {
        let mut w = self.wire.borrow_mut();
        let full = w.out.len() + w.in_flight >= w.write_budget + w.write_budget / 2;
        if full {
            w.held = true;
        }
        full
    }

    /// Writes what waits, as far as the socket takes it without waiting;
    /// the writer gets the rest.
    fn write_now(&self, iovecs: &mut Vec<libc::iovec>) {
        let Some(fd) = self.direct.get() else {
            // The writer woke meanwhile: it writes what waits.
            self.wake.notify_all();
            return;
        };
        let left = {
            let mut w = self.wire.borrow_mut();
            iovecs.clear();
            iovecs.extend(w.out.slices().take(SEGMENTS_PER_WRITE).map(iovec));
            if !iovecs.is_empty() {
                if let Some(n) = send(fd, iovecs) {
                    w.out.advance(n);
                }
            }
            // A failed write is the writer's to find; held-back DATA is
            // the writer's to resume.
            !w.out.is_empty() || w.held
        };
        if left {
            self.direct.set(None);
            self.wake.notify_all();
        }
    }
}

/// One `sendmsg` of `iovecs` that does not wait: how much it took, if
/// anything.
#[allow(unsafe_code)]
fn send(fd: RawFd, iovecs: &mut [libc::iovec]) -> Option<usize> {
    // SAFETY: the message points at `iovecs`, and each iovec at bytes of
    // the outbox borrowed for the whole call; `fd` is the connection's
    // socket, open while its writer waits (see `write_loop`).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The worker's flusher: writes the connections whose writers wait idle,
/// one after another in one task (see [`Side::flush`]).
#[derive(Default)]
pub struct Flusher {
    queue: RefCell<Vec<Rc<Side>>>,
    /// The flusher task's waker, once it has waited.
    waker: RefCell<Option<Waker>>,
}

thread_local! {
    /// The flusher of the worker on this thread, while it runs.
    static FLUSHER: RefCell<Option<Rc<Flusher>>> = const { RefCell::new(None) };
}

impl Flusher {
    /// Queues `side` for the flusher; false if this thread has none.
    fn enqueue(side: &Rc<Side>) -> bool {
        FLUSHER.with(|f| {
            let f = f.borrow();
            let Some(f) = f.as_ref() else {
                return false;
            };
            if !side.queued.replace(true) {
                let mut queue = f.queue.borrow_mut();
                if queue.is_empty() {
                    if let Some(waker) = f.waker.borrow().as_ref() {
                        waker.wake_by_ref();
                    }
                }
                queue.push(side.clone());
            }
            true
        })
    }

    /// Runs the worker's flusher until `stop`.
    pub async fn run(stop: Rc<Latch>) {
        /// Takes the flusher off its thread when its task ends or is
        /// dropped: what is queued after that goes to the writers.
        struct Registered;
        impl Drop for Registered {
            fn drop(&mut self) {
                let _ = FLUSHER.try_with(|f| f.borrow_mut().take());
            }
        }
        let flusher = Rc::new(Flusher::default());
        FLUSHER.with(|f| *f.borrow_mut() = Some(flusher.clone()));
        let registered = Registered;
        let mut sides = Vec::new();
        let mut iovecs = Vec::new();
        // One wait for the whole loop (see the read loops).
        let mut stopped = std::pin::pin!(stop.wait());
        loop {
            // Until something is queued, or the worker stops.
            let queued = std::future::poll_fn(|cx| {
                if !flusher.queue.borrow().is_empty() {
                    return Poll::Ready(true);
                }
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                let mut waker = flusher.waker.borrow_mut();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            })
            .await;
            if !queued {
                break;
            }
            std::mem::swap(&mut sides, &mut *flusher.queue.borrow_mut());
            for side in sides.drain(..) {
                side.queued.set(false);
                side.write_now(&mut iovecs);
            }
        }
        drop(registered);
        // What was queued since goes to the writers.
        for side in flusher.queue.borrow_mut().drain(..) {
            side.queued.set(false);
            side.wake.notify_all();
        }
    }
}

/// Segments handed to one `writev`: at most this many (IOV_MAX is 1024).
const SEGMENTS_PER_WRITE: usize = 512;

/// Buffers for one vectored write, and the iovecs that point into them.
#[derive(Default)]
pub struct Segments {
    bufs: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

thread_local! {
    /// Batches of writers that went idle, for the next writer that has
    /// something to write: an idle connection holds no batch, and a busy
    /// worker allocates none per write.
    static SPARE_BATCHES: std::cell::RefCell<Vec<Segments>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Spare batches a worker keeps, and the most segments a kept one has room
/// for (a batch that grew past it was for a rare burst).
const SPARE_BATCH_COUNT: usize = 1024;
const SPARE_BATCH_ROOM: usize = 64;

impl Segments {
    /// An empty batch, with room from an idle writer's if one is spare.
    fn spare() -> Segments {
        SPARE_BATCHES
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_default()
    }

    /// Gives an empty batch's room to the next writer.
    fn give_back(self) {
        if self.bufs.capacity() == 0 || self.bufs.capacity() > SPARE_BATCH_ROOM {
            return;
        }
        SPARE_BATCHES.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_BATCH_COUNT {
                spare.push(self);
            }
        });
    }

    /// Drops the first `n` bytes, which were written.
    fn consume(&mut self, mut n: usize) {
        let mut done = 0;
        for buf in &mut self.bufs {
            if n < buf.len() {
                buf.advance(n);
                break;
            }
            n -= buf.len();
            done += 1;
        }
        self.bufs.drain(..done);
    }

    fn index(&mut self) {
        self.iovecs.clear();
        let bufs = self.bufs.iter().take(SEGMENTS_PER_WRITE);
        self.iovecs.extend(bufs.map(|b| iovec(b)));
    }
}

/// An iovec over `bytes`, for a write (the kernel only reads through it).
fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

// SAFETY: every iovec points into a `Bytes` held in `bufs`, whose bytes
// live on the heap (or in static memory) and do not move when `Segments`
// moves; `bufs` is not changed while the runtime owns the value (between
// `index` and the end of the write), so the pointers and lengths stay
// valid for the whole write.
#[allow(unsafe_code)]
unsafe impl monoio::buf::IoVecBuf for Segments {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

/// Writes what `side` has waiting until it closes (then writes what is
/// left and returns) or a write fails: everything that waits goes in one
/// `writev`, so a pass that made frames for many streams costs one
/// syscall. When DATA was held back for the write budget and what waits
/// is down to half of it, `drained` pushes the connection's calls again.
pub async fn write_loop<W: Sink>(
    side: Rc<Side>,
    mut io: W,
    direct: Option<RawFd>,
    stop: Rc<Latch>,
    drained: impl Fn(&Rc<Side>),
) {
    /// The flusher writes for this writer only while it waits, alive:
    /// never to a socket it has closed, or whose number was reused.
    /// Nor is the socket looked at once the writer, which holds it
    /// open, is gone.
    struct Direct<'a>(&'a Side);
    impl Drop for Direct<'_> {
        fn drop(&mut self) {
            self.0.direct.set(None);
            self.0.socket.set(None);
        }
    }
    side.socket.set(Some(io.socket()));
    let _direct = Direct(&side);
    let mut batch = Segments::default();
    // One wait for the whole loop (see the read loops). Not the worker's
    // `stop`, per write below: every connection would then hold a slot of
    // that one latch for its whole life.
    let mut closed = std::pin::pin!(side.closed.wait());
    loop {
        if batch.bufs.is_empty() {
            let mut w = side.wire.borrow_mut();
            if w.out.is_empty() {
                // Idle: the batch's room goes to the worker meanwhile.
                std::mem::take(&mut batch).give_back();
            } else {
                if batch.bufs.capacity() == 0 {
                    batch = Segments::spare();
                }
                w.out.take_segments(&mut batch.bufs);
                w.in_flight = batch.bufs.iter().map(Bytes::len).sum();
            }
        }
        if batch.bufs.is_empty() {
            if side.closed.is_set() || stop.is_set() {
                break;
            }
            // The worker's stop sets `closed` too (Relay::stop_all).
            // Meanwhile the flusher may write for it: it waits with
            // nothing taken, so what the flusher writes is in order.
            side.direct.set(direct);
            let owed = monoio::select! {
                _ = side.wake.notified() => false,
                _ = closed.as_mut() => false,
                _ = io.owed() => true,
            };
            side.direct.set(None);
            if resume(&side) {
                drained(&side);
            }
            if owed && io.flush_owed().await.is_err() {
                side.closed.set();
                return;
            }
            continue;
        }
        // A peer that reads nothing holds a write until TCP_USER_TIMEOUT
        // fails it, or the worker stops.
        let (result, b) = monoio::select! {
            written = io.write(batch) => written,
            _ = stop.wait() => return,
        };
        batch = b;
        match result {
            Ok(n) if n > 0 => {
                batch.consume(n);
                {
                    let mut w = side.wire.borrow_mut();
                    w.in_flight -= n.min(w.in_flight);
                }
                if resume(&side) {
                    drained(&side);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => {
                side.closed.set();
                return;
            }
        }
    }
    io.shutdown().await;
}

/// Whether what was held back for the write budget (DATA, or a reader,
/// see [`Side::backed_up`]) may go again: what waits is down to half of
/// it. A stopped reader is woken.
fn resume(side: &Side) -> bool {
    let low = {
        let mut w = side.wire.borrow_mut();
        let low = w.held && 2 * (w.out.len() + w.in_flight) < w.write_budget;
        if low {
            w.held = false;
        }
        low
    };
    if low {
        side.wake.notify_all();
    }
    low
}

/// A connection's reading half: TCP, or TLS over it. Generic rather than
/// an enum, so that a cleartext connection's tasks carry no TLS state.
pub trait Source {
    /// Reads more bytes onto the end of `buf`, as [`read_more`].
    fn read_more(
        &mut self,
        buf: BytesMut,
        want: &mut usize,
    ) -> impl std::future::Future<Output = (std::io::Result<usize>, BytesMut)>;

    /// Waits until bytes may be read, holding no buffer meanwhile: the
    /// wait of an idle client connection (see [`let_go`]).
    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>>;

    /// The TCP connection under it (under TLS too, whose state goes),
    /// for reads that throw the bytes away (see
    /// [`linger`](crate::transport::linger)).
    fn into_tcp(self) -> TcpOwnedReadHalf;
}

impl Source for TcpOwnedReadHalf {
    async fn read_more(
        &mut self,
        buf: BytesMut,
        want: &mut usize,
    ) -> (std::io::Result<usize>, BytesMut) {
        read_more(self, buf, want).await
    }

    async fn ready(&mut self) -> std::io::Result<()> {
        crate::transport::socket::readable(self).await
    }

    fn into_tcp(self) -> TcpOwnedReadHalf {
        self
    }
}

impl Source for TlsReader {
    async fn read_more(
        &mut self,
        buf: BytesMut,
        want: &mut usize,
    ) -> (std::io::Result<usize>, BytesMut) {
        let mut buf = buf;
        let read = self.read_into(&mut buf, *want).await;
        if read.as_ref().is_ok_and(|&n| n == *want) {
            *want = (*want * 2).min(READ_LARGE);
        }
        (read, buf)
    }

    async fn ready(&mut self) -> std::io::Result<()> {
        self.ready().await
    }

    fn into_tcp(self) -> TcpOwnedReadHalf {
        TlsReader::into_tcp(self)
    }
}

/// A connection's writing half: TCP, or TLS over it.
pub trait Sink {
    /// Writes some of `batch`: returns how much.
    fn write(
        &mut self,
        batch: Segments,
    ) -> impl std::future::Future<Output = (std::io::Result<usize>, Segments)>;

    /// Completes when the connection owes records of its own (TLS), to be
    /// written with [`flush_owed`](Self::flush_owed); never, for TCP.
    fn owed(&self) -> impl std::future::Future<Output = ()>;

    /// Writes what the connection owes.
    fn flush_owed(&mut self) -> impl std::future::Future<Output = std::io::Result<()>>;

    /// Ends the writing side.
    fn shutdown(&mut self) -> impl std::future::Future<Output = ()>;

    /// The TCP socket it writes to.
    fn socket(&self) -> RawFd;
}

impl Sink for TcpOwnedWriteHalf {
    fn socket(&self) -> RawFd {
        crate::transport::socket::write_fd(self)
    }

    // Not monoio's write_vectored_all: in 0.2.4 it does not advance within
    // a partly written iovec, and would write those bytes twice.
    async fn write(&mut self, mut batch: Segments) -> (std::io::Result<usize>, Segments) {
        batch.index();
        self.writev(batch).await
    }

    async fn owed(&self) {
        std::future::pending().await
    }

    async fn flush_owed(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = AsyncWriteRent::shutdown(self).await;
    }
}

impl Sink for TlsWriter {
    fn socket(&self) -> RawFd {
        TlsWriter::socket(self)
    }

    async fn write(&mut self, batch: Segments) -> (std::io::Result<usize>, Segments) {
        let written = TlsWriter::write(self, &batch.bufs).await;
        (written, batch)
    }

    async fn owed(&self) {
        TlsWriter::owed(self).await
    }

    async fn flush_owed(&mut self) -> std::io::Result<()> {
        TlsWriter::flush_owed(self).await
    }

    async fn shutdown(&mut self) {
        TlsWriter::shutdown(self).await
    }
}

/// The first read size of a connection, and what an idle one goes back
/// to: a connection that sent nothing for a while holds no more.
pub const READ_SMALL: usize = 512;
/// The largest read size.
const READ_LARGE: usize = 64 << 10;
/// A read buffer past this grew beyond a few small reads: a connection
/// without calls lets it go rather than keep it.
const READ_GROWN: usize = 4 * READ_SMALL;

/// Reads more bytes onto the end of `buf`, into at least `*want` bytes of
/// room; a read that fills the room doubles `*want` (up to 64 KiB), so a
/// busy connection reads in large chunks and an idle one costs a small
/// buffer. `Ok(0)` is the end of the stream.
pub async fn read_more<R: monoio::io::AsyncReadRent>(
    io: &mut R,
    mut buf: bytes::BytesMut,
    want: &mut usize,
) -> (std::io::Result<usize>, bytes::BytesMut) {
    use monoio::buf::IoBufMut;
    if buf.capacity() - buf.len() < *want {
        buf.reserve(*want);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (result, slice) = io.read(buf.slice_mut(len..cap)).await;
    if result.as_ref().is_ok_and(|&n| n == cap - len) {
        *want = (*want * 2).min(READ_LARGE);
    }
    (result, slice.into_inner())
}

/// Lets the read buffer of a connection without calls go, if it is empty
/// and no large DATA frame is part read (see
/// [`Connection::mid_frame`](crate::http2::connection::Connection::mid_frame):
/// between pieces its buffer is empty but keeps room for the rest). A
/// client connection that a pass leaves so waits for its next bytes
/// holding no buffer ([`Source::ready`]), and its buffer is the worker's
/// spare for the next connection that has something to read ([`lend`]):
/// thousands of idle clients hold none, and waking one allocates nothing.
/// Otherwise it records for the keeper whether the buffer holds what the
/// connection needs, which a read given up would lose (see
/// [`Side::ask_let_go`]). Upstream connections, few and busy, only
/// [`shrink`].
pub fn let_go(side: &Side, buf: &mut bytes::BytesMut, want: &mut usize) {
    let (needed, calls) = {
        let w = side.wire.borrow();
        (!buf.is_empty() || w.conn.mid_frame(), !w.links.is_empty())
    };
    if needed || calls {
        side.holds_buffer(if needed {
            Buffer::Needed
        } else if buf.capacity().max(*want) > READ_GROWN {
            // Its next read reserves `want` if there is less room.
            Buffer::Large
        } else {
            Buffer::Empty
        });
        return;
    }
    let buf = std::mem::take(buf);
    *want = READ_SMALL;
    side.holds_buffer(Buffer::None);
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.capacity() == 0 {
            *spare = buf;
        }
    });
}

/// A read buffer for a client connection that holds none: the worker's
/// spare, or a new one.
pub fn lend() -> bytes::BytesMut {
    SPARE.with(|spare| std::mem::take(&mut *spare.borrow_mut()))
}

/// Lets the read buffer of a connection without calls go, if it is empty
/// and grew past a few small reads; an idle one keeps a small buffer.
pub fn shrink(side: &Side, buf: &mut bytes::BytesMut, want: &mut usize) {
    if buf.capacity() > READ_GROWN && idle(side, buf) {
        *buf = bytes::BytesMut::new();
        *want = READ_SMALL;
    }
}

/// Whether a connection's read buffer holds nothing it needs: it is
/// empty, the connection has no calls, and no DATA frame is part read.
fn idle(side: &Side, buf: &bytes::BytesMut) -> bool {
    let w = side.wire.borrow();
    buf.is_empty() && w.links.is_empty() && !w.conn.mid_frame()
}

thread_local! {
    /// The read buffer a client connection let go (see [`let_go`]).
    static SPARE: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::connection::{Limits, Role};
    use crate::runtime::driver::{block_on, Driver};
    use monoio::io::{AsyncReadRent, Splitable};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn a_ping_waits_on_while_the_peer_acknowledges_what_was_ahead_of_it() {
        let sent = |acked, queued| socket::Sent { acked, queued };
        // 1 MB waited ahead of the PING, 4 MB in the kernel.
        let mut ping = PingOut::new(0, 1 << 20, Some(sent(1000, 4 << 20)));
        assert!(ping.waits_on(sent(2000, 0)), "acknowledging what was ahead");
        assert!(!ping.waits_on(sent(2000, 0)), "acknowledging nothing more");
        let mut ping = PingOut::new(0, 1 << 20, Some(sent(1000, 4 << 20)));
        let past = 1000 + (5 << 20) + 10_000;
        assert!(
            ping.waits_on(sent(past, 0)),
            "got the PING since the last look"
        );
        assert!(
            !ping.waits_on(sent(past + 100_000, 0)),
            "bytes after the PING acknowledged: it had it a timeout ago"
        );
        // Nothing ahead: only the answer counts.
        let mut ping = PingOut::new(0, 0, Some(sent(1000, 0)));
        assert!(!ping.waits_on(sent(5000, 0)));
        let mut ping = PingOut::new(0, 1 << 20, None);
        assert!(!ping.waits_on(sent(5000, 0)), "the kernel said nothing");
    }

    /// An upstream side with a write budget of `budget` and one stream
    /// open on it.
    fn side_with_a_stream(budget: usize) -> (Rc<Side>, u32) {
        let mut out = Outbox::new();
        let conn = Connection::new(Role::Client, Limits::default(), &mut out);
        let side = Side::new(conn, Outbox::new(), budget, 0, None);
        let id = {
            let mut w = side.wire.borrow_mut();
            let wire = &mut *w;
            let fields = [(b":method".as_slice(), b"POST".as_slice(), false)];
            wire.conn
                .open(fields.into_iter(), false, &mut wire.out)
                .expect("open")
        };
        (side, id)
    }

    /// DATA alone, handed on as far as `room` allows, never stops the
    /// connection's reader: a peer that reads slower than the other leg
    /// sends keeps its budget of DATA waiting, which is no reason to stop
    /// reading its WINDOW_UPDATEs, PINGs and new calls. Only answers the
    /// peer does not read, on top of that, stop it.
    #[test]
    fn data_alone_never_stops_the_reader() {
        let (side, id) = side_with_a_stream(16 << 10);
        let mut w = side.wire.borrow_mut();
        let wire = &mut *w;
        let chunk = Bytes::from(vec![0u8; 1000]);
        loop {
            let room = wire.room(id);
            if room == 0 {
                break;
            }
            let piece = chunk.slice(..room.min(chunk.len()));
            wire.conn
                .send_data(id, piece, false, &mut wire.out)
                .expect("sent");
        }
        assert!(
            wire.out.len() >= 15 << 10,
            "the budget filled: {}",
            wire.out.len()
        );
        drop(w);
        assert!(!side.backed_up(), "DATA stopped the reader");
        // Answers on top of it, past half the budget again, do.
        side.wire
            .borrow_mut()
            .out
            .put(|b| b.extend_from_slice(&[0; 9 << 10]));
        assert!(side.backed_up());
    }

    /// Room cut short by the budget holds the rest back, as no room does:
    /// whoever asked is pushed again once the writer drains (a body sent
    /// in one go, such as a 415's, would otherwise wait for good).
    #[test]
    fn room_cut_short_by_the_budget_is_held() {
        let (side, id) = side_with_a_stream(16 << 10);
        let mut w = side.wire.borrow_mut();
        let wire = &mut *w;
        let waiting = wire.out.len();
        wire.out
            .put(|b| b.extend_from_slice(&vec![0; (16 << 10) - waiting - 10]));
        assert!(!wire.held);
        assert_eq!(wire.room(id), 10);
        assert!(wire.held, "the rest is held for the writer's drain");
    }

    /// What was put in a side's outbox reaches its peer byte for byte and
    /// in order, whether the flusher wrote it (the writer waiting), the
    /// socket took only part of a write (the writer then takes the rest),
    /// or the writer was busy when more came.
    fn reaches_the_peer_in_order(driver: Driver) {
        block_on(driver, || async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let mut peer = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let (tcp, _) = listener.accept().await.expect("accept");
            let stop = Rc::new(Latch::default());
            let flusher = monoio::spawn(Flusher::run(stop.clone()));
            let mut out = Outbox::new();
            let conn = Connection::new(Role::Server, Limits::default(), &mut out);
            // Its SETTINGS go first.
            let mut expected = out.slices().flatten().copied().collect::<Vec<u8>>();
            let side = Side::new(conn, out, usize::MAX, 0, None);
            let fd = tcp.as_raw_fd();
            let (_reader, writer) = tcp.into_split();
            let writing = monoio::spawn(write_loop(
                side.clone(),
                writer,
                Some(fd),
                stop.clone(),
                |_| {},
            ));
            let mut got = Vec::new();
            // Pieces from 1 byte to 1 MiB, 24 MiB in all: more than the
            // sockets hold, so writes go part way while the peer waits.
            for i in 0..48u32 {
                let len = if i % 2 == 0 { 1 + i as usize } else { 1 << 20 };
                let piece: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
                expected.extend_from_slice(&piece);
                side.wire
                    .borrow_mut()
                    .out
                    .put(|b| b.extend_from_slice(&piece));
                side.flush();
                monoio::time::sleep(Duration::ZERO).await;
                if i % 8 == 7 {
                    // Read a little, so the writer may go idle again.
                    let (r, buf) = peer.read(vec![0u8; 256 << 10]).await;
                    let n = r.expect("read");
                    got.extend_from_slice(&buf[..n]);
                }
            }
            while got.len() < expected.len() {
                let (r, buf) = peer.read(vec![0u8; 1 << 20]).await;
                let n = r.expect("read");
                assert!(
                    n > 0,
                    "closed after {} of {} bytes",
                    got.len(),
                    expected.len()
                );
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "bytes changed or out of order");
            side.closed.set();
            writing.await;
            stop.set();
            flusher.await;
        })
        .expect("runtime");
    }

    #[test]
    fn reaches_the_peer_in_order_on_epoll() {
        reaches_the_peer_in_order(Driver::Legacy);
    }

    #[test]
    fn reaches_the_peer_in_order_on_io_uring() {
        if monoio::utils::detect_uring() {
            reaches_the_peer_in_order(Driver::IoUring);
        }
    }
}
