//! The relay of one worker: its calls and its upstream connections, and
//! what every leg does to them (open a waiting call's stream, end a call,
//! fail the calls of a connection that is gone).
//!
//! All of it lives on one core: `Rc` and `RefCell`, no locks. A function
//! here borrows the sides it names one at a time; callers hold no borrow
//! of any side when they call it.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};

use monoio::time::Instant;
use rustc_hash::FxHashMap;

use crate::downstream::server::Server;
use crate::downstream::snapshot::RouteSlot;
use crate::grpc::status::{Code, Status};
use crate::http2::connection::{Connection, Limits, Role};
use crate::http2::frame::ErrorCode;
use crate::http2::outbox::Outbox;
use crate::relay::calls::{answer, open_stream, unsent, Call, Calls, Hold};
use crate::relay::keeper::Keepers;
use crate::relay::wire::Side;
use crate::runtime::timers::Timers;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::add;
use crate::telemetry::warnings::OncePerSecond;
use crate::transport::tls::PeerIdentity;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::retry_budget::Charge;

/// Streams an upstream is assumed to allow before its SETTINGS say.
const ASSUMED_STREAMS: usize = 100;

/// Stream ids an upstream connection keeps for the calls it has, linked
/// or waiting, once it takes no new ones: each then gets an id, and the
/// connection closes when the last ends (ids run out after about a
/// billion streams, hours for a busy connection).
const SPARE_STREAM_IDS: u32 = 1 << 20;

/// An endpoint's address, and what tells the TLS settings of the
/// clusters that reach it apart (0: cleartext).
type UpstreamKey = (SocketAddr, u64);

/// Buffers of ended retry holds a worker keeps for the next ones.
const SPARE_HOLDS: usize = 256;
/// The largest of them it keeps (256 of them: 1 MiB at most).
const SPARE_CAPACITY: usize = 4096;

/// The window an upstream stream starts with (HTTP/2's default).
const INITIAL_UPSTREAM_WINDOW: u32 = 65_535;

/// One worker's relay.
pub struct Relay {
    /// The downstream side of the worker: snapshots, settings, counters.
    pub server: Rc<Server>,
    /// Every call in flight.
    pub calls: RefCell<Calls>,
    /// Upstream connections by endpoint and the way they speak TLS (see
    /// [`Cluster::tls`](crate::upstream::cluster::Cluster::tls)).
    upstreams: RefCell<FxHashMap<UpstreamKey, Vec<Rc<Side>>>>,
    /// What client connections allow.
    pub downstream_limits: Limits,
    /// What upstream connections allow.
    pub upstream_limits: Limits,
    /// Client connections, to tell them when the worker drains.
    downstreams: RefCell<Vec<Weak<Side>>>,
    draining: Cell<bool>,
    /// Calls to look at when their deadline (or silence) is due: (serial,
    /// key).
    deadlines: Timers<(u64, usize)>,
    serial: Cell<u64>,
    /// How much more upstream stream windows may grow on this worker, in
    /// all (see [`release_down`](crate::relay::calls::release_down)).
    pub allowance: Cell<usize>,
    /// Buffers of ended retry holds, for the next.
    spare: RefCell<Vec<Vec<u8>>>,
    /// Client connections' timers.
    pub keepers: Keepers,
    /// Tasks of the relay still running (see [`spawn`](Self::spawn)).
    live: Rc<Cell<usize>>,
    /// Seconds the worker has counted (see [`run_clock`](Self::run_clock)).
    second: Cell<u64>,
    /// Client connections closed for resetting too many streams: one log
    /// line a second.
    pub reset_flood_warnings: OncePerSecond,
}

impl Relay {
    /// The relay of the worker whose downstream side is `server`.
    pub fn new(server: Rc<Server>) -> Rc<Relay> {
        let s = &server.settings;
        let downstream_limits = Limits {
            max_concurrent_streams: s.max_concurrent_streams,
            stream_window: s.stream_window,
            stream_window_max: s.stream_window,
            connection_window: s.connection_window,
            max_frame_size: s.max_frame_size,
            max_header_list_size: s.max_header_list_size,
            max_header_block: (s.max_header_list_size as usize).saturating_mul(2),
            ..Limits::default()
        };
        // Upstream connections are shared by many clients' calls: their
        // connection window is wide open and each stream's bounds memory.
        // A stream starts with 64 KiB and grows as it carries bytes, as far
        // as its client connection's allowance goes (see `release_down`).
        let upstream_limits = Limits {
            connection_window: (1 << 31) - 1,
            max_frame_size: s.upstream_max_frame_size,
            stream_window: s.stream_window.min(INITIAL_UPSTREAM_WINDOW),
            stream_window_max: s.stream_window,
            ..downstream_limits
        };
        let allowance = s.buffer_per_worker;
        Rc::new(Relay {
            server,
            calls: RefCell::new(Calls::default()),
            upstreams: RefCell::default(),
            downstream_limits,
            upstream_limits,
            downstreams: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            deadlines: Timers::default(),
            serial: Cell::new(0),
            allowance: Cell::new(allowance),
            spare: RefCell::new(Vec::new()),
            keepers: Keepers::default(),
            live: Rc::default(),
            second: Cell::new(0),
            reset_flood_warnings: OncePerSecond::default(),
        })
    }

    /// An upstream connection to `addr` for a new call: the least loaded
    /// one with room (below its stream limit, and its write budget: see
    /// [`Wire::full`](crate::relay::wire::Wire::full)), else a new one
    /// (`connect` starts it), else the least
    /// loaded full one, where the call waits its turn. A retry avoids the
    /// connection that refused it (`avoid`) unless it is the only one the
    /// limit allows.
    pub fn upstream_for(
        self: &Rc<Self>,
        endpoint: &Rc<Endpoint>,
        tls: u64,
        avoid: Option<&Rc<Side>>,
        connect: impl FnOnce(Rc<Relay>, Rc<Side>, Rc<Endpoint>),
    ) -> Rc<Side> {
        let addr = endpoint.addr();
        let mut upstreams = self.upstreams.borrow_mut();
        let list = upstreams.entry((addr, tls)).or_default();
        list.retain(|s| {
            if serves_new_calls(s) {
                return true;
            }
            // Near the end of its stream ids: it retires, serving what it
            // has, and the pool opens a fresh one.
            if !s.closed.is_set() && !s.wire.borrow().conn.going_away() {
                s.retiring.set(true);
                s.close_if_retired();
            }
            false
        });
        let load = |s: &Rc<Side>| {
            let w = s.wire.borrow();
            w.conn.streams().len() + w.waiting.len()
        };
        let avoided = |s: &Rc<Side>| avoid.is_some_and(|a| Rc::ptr_eq(a, s));
        let best = list
            .iter()
            .filter(|s| !avoided(s) && load(s) < capacity(s) && !s.wire.borrow().at_budget())
            .min_by_key(|s| load(s));
        if let Some(side) = best {
            return side.clone();
        }
        // At the connection limit, the least loaded one queues the call.
        if list.len() >= self.server.settings.max_connections_per_endpoint {
            if let Some(side) = list.iter().min_by_key(|s| (avoided(s), load(s))) {
                return side.clone();
            }
        }
        let mut out = Outbox::new();
        let conn = Connection::new(Role::Client, self.upstream_limits, &mut out);
        let side = Side::new(
            conn,
            out,
            self.server.settings.buffer_per_connection,
            0,
            None,
        );
        list.push(side.clone());
        connect(self.clone(), side.clone(), endpoint.clone());
        side
    }

    /// A number no other call of this worker has.
    pub fn serial(&self) -> u64 {
        let n = self.serial.get().wrapping_add(1);
        self.serial.set(n);
        n
    }

    /// Looks at call `key` at `at` (if it is still call `serial`): it
    /// ends with DEADLINE_EXCEEDED if its deadline has passed or it is
    /// still silent (see [`Calls::overdue`](crate::relay::calls::Calls::overdue)).
    pub fn expire_at(&self, at: Instant, serial: u64, key: usize) {
        // Entries of calls that ended stay until they come due; past twice
        // the calls in flight, they go, so the heap stays in proportion.
        let live = self.calls.borrow().len();
        if self.deadlines.len() > 2 * live + 1024 {
            let calls = self.calls.borrow();
            self.deadlines
                .retain(|&(serial, key)| calls.is_current(key, serial));
        }
        self.deadlines.push(at, (serial, key));
    }

    /// Spawns one of the relay's own tasks (its timers, an upstream
    /// connection's reader, writer and keepalive), counted until it ends:
    /// a worker that stops waits for them (see [`live`](Self::live)), so
    /// none is left parked on a waker that a value it owns holds, which
    /// would keep the worker's state alive after its thread ended.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let live = self.live.clone();
        live.set(live.get() + 1);
        monoio::spawn(async move {
            task.await;
            live.set(live.get() - 1);
        });
    }

    /// How many of the relay's tasks are still running.
    pub fn live(&self) -> Rc<Cell<usize>> {
        self.live.clone()
    }

    /// Counts seconds until the worker stops. A connection's read loop
    /// starts a new second of its flood budgets when the count moves,
    /// which costs it no clock read per pass.
    pub async fn run_clock(self: Rc<Self>) {
        let stop = self.server.stop.clone();
        loop {
            monoio::select! {
                _ = monoio::time::sleep(std::time::Duration::from_secs(1)) => {
                    self.second.set(self.second.get() + 1);
                }
                _ = stop.wait() => return,
            }
        }
    }

    /// The worker's count of seconds.
    pub fn second(&self) -> u64 {
        self.second.get()
    }

    /// Runs client connections' timers until the worker stops (see
    /// [`keeper`](crate::relay::keeper)); `quiet_looks` on the epoll
    /// driver only (see [`Keepers::run`](crate::relay::keeper::Keepers::run)).
    pub async fn run_keepers(self: Rc<Self>, quiet_looks: bool) {
        let stop = self.server.stop.clone();
        self.keepers
            .run(&self.server.settings, &stop, quiet_looks)
            .await;
    }

    /// Ends calls whose deadline has passed, until the worker stops: one
    /// task and one timer for all of the worker's deadlines.
    pub async fn run_deadlines(self: Rc<Self>) {
        let stop = self.server.stop.clone();
        self.deadlines
            .run(&stop, |(serial, key), now| {
                let overdue = self.calls.borrow().overdue(key, serial, now);
                if let Some(why) = overdue {
                    self.expire(key, why);
                }
                None
            })
            .await;
    }

    /// A call's deadline passed, or it stayed silent (`why`): the client
    /// gets DEADLINE_EXCEEDED (trailers-only, or trailers after what it
    /// has), the upstream a CANCEL.
    pub fn expire(&self, key: usize, why: &'static str) {
        let status = Status::new(Code::DeadlineExceeded, why);
        let down = {
            let mut calls = self.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                return;
            };
            call.code = status.code();
            answer(
                &mut call.down.wire.borrow_mut(),
                call.d,
                &status,
                call.responded,
            );
            call.down.clone()
        };
        down.flush();
        self.finish(key);
    }

    /// Notes a new client connection.
    pub fn serving(&self, side: &Rc<Side>) {
        {
            // Closed ones are dropped once they may be as many as the
            // open ones (and 64): a look at every accept would cost each
            // new connection a pass over all the open ones.
            let mut list = self.downstreams.borrow_mut();
            if list.len() >= 2 * self.server.connections() + 64 {
                list.retain(|s| s.strong_count() > 0);
            }
            list.push(Rc::downgrade(side));
        }
        // One whose TLS handshake was under way when the drain began: it
        // gets its GOAWAY now, as the others did then.
        if self.draining.get() {
            side.go_away();
        }
    }

    /// Whether the worker drains.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// The worker drains: every client connection gets GOAWAY, and those
    /// without calls close now; the rest close as their last call ends.
    pub fn drain(&self) {
        self.draining.set(true);
        for side in self.client_sides() {
            side.go_away();
        }
    }

    /// The client connections still open.
    fn client_sides(&self) -> Vec<Rc<Side>> {
        self.downstreams
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The worker stops: every connection's tasks end. Their readers and
    /// idle writers wait on their own connection's latch, which this sets,
    /// not on the worker's: so an idle connection takes no place in a list
    /// that every connection shares.
    pub fn stop_all(&self) {
        let downstreams = self.client_sides();
        let upstreams: Vec<Rc<Side>> = self
            .upstreams
            .borrow()
            .values()
            .flatten()
            .cloned()
            .collect();
        for side in downstreams.iter().chain(&upstreams) {
            side.closed.set();
        }
    }

    /// Whether the worker has a connection to `addr` (spoken to with TLS
    /// settings `tls`) that could take a call (open, or being opened).
    pub fn has_upstream(&self, addr: SocketAddr, tls: u64) -> bool {
        self.upstreams
            .borrow()
            .get(&(addr, tls))
            .is_some_and(|list| {
                list.iter()
                    .any(|s| !s.closed.is_set() && !s.wire.borrow().conn.going_away())
            })
    }

    /// Whether a call on `endpoint` (spoken to with TLS settings `tls`)
    /// could go now: it is not waiting out a reconnect back-off, or it
    /// has a connection to use meanwhile.
    pub fn reachable(&self, endpoint: &Endpoint, tls: u64) -> bool {
        !endpoint.waiting_to_reconnect() || self.has_upstream(endpoint.addr(), tls)
    }

    /// Upstream connections to addresses that no cluster has any more (DNS
    /// dropped them, or a reload did): they take no new calls, and each
    /// closes once its last call ends.
    pub fn retire_upstreams(&self, keep: &std::collections::HashSet<SocketAddr>) {
        let gone: Vec<Rc<Side>> = {
            let mut upstreams = self.upstreams.borrow_mut();
            let keys: Vec<UpstreamKey> = upstreams
                .keys()
                .filter(|(addr, _)| !keep.contains(addr))
                .copied()
                .collect();
            keys.iter()
                .filter_map(|k| upstreams.remove(k))
                .flatten()
                .collect()
        };
        for side in gone {
            side.retiring.set(true);
            side.close_if_retired();
        }
    }

    /// Forgets an upstream connection that is gone.
    pub fn forget(&self, side: &Rc<Side>) {
        for list in self.upstreams.borrow_mut().values_mut() {
            list.retain(|s| !Rc::ptr_eq(s, side));
        }
    }

    /// Opens streams on `up` for the calls waiting on it, as far as its
    /// stream limit allows.
    pub fn open_waiting(&self, up: &Rc<Side>) {
        loop {
            let room = {
                let limit = capacity(up);
                let mut w = up.wire.borrow_mut();
                !up.closed.is_set()
                    && w.conn.ready()
                    && !w.conn.going_away()
                    && w.conn.streams().len() < limit
                    && !w.full()
            };
            if !room {
                return;
            }
            let Some(key) = up.wire.borrow_mut().waiting.pop_front() else {
                return;
            };
            let mut calls = self.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                continue;
            };
            let Some(head) = call.head.take() else {
                continue;
            };
            let sent = {
                let mut w = up.wire.borrow_mut();
                match open_stream(call, key, up, &mut w, &head) {
                    Ok(sent) => sent,
                    Err(_) => {
                        call.head = Some(head);
                        w.waiting.push_front(key);
                        return;
                    }
                }
            };
            let down = call.down.clone();
            let d = call.d;
            drop(calls);
            up.flush();
            if sent > 0 {
                down.wire.borrow_mut().release(d, sent);
                down.flush();
            }
        }
    }

    /// Ends call `key`: its statistics, and both of its streams (a client
    /// still sending is told to stop with NO_ERROR, an upstream still
    /// receiving is cancelled). A waiting call leaves its queue.
    pub fn finish(&self, key: usize) {
        let Some(mut call) = self.calls.borrow_mut().remove(key) else {
            return;
        };
        self.settle(&call);
        if call.streaming {
            call.endpoint.stream(false);
        } else {
            call.cluster.pending(false);
        }
        self.give_back_growth(&mut call);
        if let Some(hold) = call.hold.take() {
            self.unhold(hold);
        }
        // Bytes still waiting are dropped: their credit goes back, but
        // for a retry's replay at the front, credited when first sent.
        let idle = {
            let mut w = call.down.wire.borrow_mut();
            let wire = &mut *w;
            wire.links.remove(&call.d);
            wire.release(call.d, unsent(&call.to_up).saturating_sub(call.replayed));
            // The response is whole: a client still sending is told to
            // stop (NO_ERROR, RFC 9113 8.1). It is not (the call was cut:
            // its client connection ends, the worker's drain timed out):
            // CANCEL, as gRPC reads NO_ERROR before the end as INTERNAL.
            if let Some(stream) = wire.conn.streams().get(call.d) {
                let code = if stream.send_open {
                    ErrorCode::CANCEL
                } else {
                    ErrorCode::NO_ERROR
                };
                wire.conn.reset(call.d, code, &mut wire.out);
            }
            wire.links.is_empty()
        };
        call.down.flush();
        if idle && (self.draining.get() || call.down.retiring.get()) {
            call.down.closed.set();
        } else if idle && self.keepers.quiet_looks() {
            call.down.calls_ended();
        }
        if let Some(waiting_on) = &call.waiting_on {
            waiting_on.wire.borrow_mut().waiting.retain(|k| *k != key);
        }
        if let Some((up, u)) = &call.up {
            {
                let mut w = up.wire.borrow_mut();
                let wire = &mut *w;
                wire.links.remove(u);
                wire.release(*u, unsent(&call.to_down));
                if wire.conn.streams().get(*u).is_some() {
                    wire.conn.reset(*u, ErrorCode::CANCEL, &mut wire.out);
                }
            }
            up.flush();
            self.stream_freed(up);
        }
    }

    /// A call left its stream on `up` (it ended, failed, or went to be
    /// retried elsewhere): a call waiting for a stream there takes the
    /// slot, and a retiring connection with no call left closes.
    pub fn stream_freed(&self, up: &Rc<Side>) {
        self.open_waiting(up);
        up.close_if_retired();
    }

    /// The growth of the call's upstream stream window (see
    /// [`release_down`](crate::relay::calls::release_down)) is free for
    /// other calls: its stream has ended.
    pub fn give_back_growth(&self, call: &mut Call) {
        let allowance = &call.down.allowance;
        allowance.set(allowance.get() + call.grown);
        self.allowance
            .set(self.allowance.get() + call.grown as usize);
        call.grown = 0;
    }

    /// A retry hold for a new call from client connection `side` whose
    /// head is `head` (HPACK-encoded), charged to that connection's and
    /// the worker's retry budgets; `None` when retries are off or a
    /// budget is full (the call goes on, and cannot be retried).
    pub fn hold(&self, side: &Side, head: &[u8]) -> Option<Hold> {
        if self.server.settings.retry_buffer == 0 {
            return None;
        }
        let core = self.server.calls.retry_budget.clone();
        let mut charge = Charge::new(side.retry.clone(), core);
        if !charge.add(head.len()) {
            return None;
        }
        let mut bytes = self.spare.borrow_mut().pop().unwrap_or_default();
        bytes.extend_from_slice(head);
        Some(Hold {
            bytes,
            head: head.len(),
            ended: false,
            charge,
        })
    }

    /// Ends a hold: its charge is given back, its buffer kept for another.
    pub fn unhold(&self, hold: Hold) {
        self.spare_buffer(hold.bytes);
    }

    /// Keeps a hold's buffer for the next hold, if it is small: what a
    /// unary call's head and message take. A large one (a big request,
    /// held in full) is let go, so that the spares never keep more than
    /// `SPARE_HOLDS` x `SPARE_CAPACITY` after a burst of them.
    pub fn spare_buffer(&self, mut bytes: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_HOLDS && bytes.capacity() <= SPARE_CAPACITY {
            bytes.clear();
            spare.push(bytes);
        }
    }

    /// The call's statistics and access log line.
    fn settle(&self, call: &Call) {
        let ctx = &self.server.calls;
        let counters = &ctx.counters;
        counters
            .streams_active
            .set(counters.streams_active.get().saturating_sub(1));
        let elapsed = call.started.elapsed();
        call.route.stats.finish(call.code, elapsed);
        call.cluster.stats.finish(call.code, elapsed);
        let endpoint = &call.endpoint;
        match call.upstream_failed {
            Some(reset) => call.cluster.call_result(endpoint, true, reset),
            // The route's timeout passing without an answer counts
            // against the upstream (the route's timeout is the call's
            // when it is the grpc-timeout told upstream, `timeout_header`).
            // A deadline the client chose does not (a client could pick
            // 1 ns, and eject every endpoint), nor does a client that went
            // away.
            None if call.code == Code::DeadlineExceeded
                && !call.responded
                && call.timeout_header.is_some() =>
            {
                call.cluster.call_result(endpoint, true, false)
            }
            None if call.code == Code::Cancelled || call.code == Code::DeadlineExceeded => {}
            None => call.cluster.call_result(endpoint, false, false),
        }
        add(&counters.bytes_in, call.bytes_in);
        add(&counters.bytes_out, call.bytes_out);
        if let (Some(log), Some(path)) = (&ctx.access_log, &call.path) {
            log.write(
                &Entry {
                    peer: call.peer,
                    method: path,
                    route: &call.route.name,
                    cluster: Some(call.cluster.name()),
                    upstream: Some(call.endpoint.addr()),
                    code: call.code,
                    duration: elapsed,
                    bytes_in: call.bytes_in,
                    bytes_out: call.bytes_out,
                    client: call.down.identity.as_deref(),
                    error: call.error.as_deref(),
                },
                counters,
            );
        }
    }

    /// The client's stream of call `key` is gone (reset, or its connection
    /// closed): cancel upstream.
    pub fn cancel(&self, key: usize) {
        if let Some(call) = self.calls.borrow_mut().get_mut(key) {
            call.code = Code::Cancelled;
        }
        self.finish(key);
    }

    /// The upstream stream of call `key` is gone with `status` (reset by
    /// the upstream if `reset`, else lost with its connection): the
    /// client gets it, trailers-only or as trailers after what it has; the
    /// access log gets `detail` if there is one, else the status message.
    pub fn fail(&self, key: usize, status: &Status, reset: bool, detail: Option<&str>) {
        let (down, up) = {
            let mut calls = self.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                return;
            };
            call.code = status.code();
            call.error = Some(detail.unwrap_or(status.message()).into());
            call.upstream_failed = Some(reset);
            // Its upstream stream is gone: nothing to cancel there, and
            // what it sent that still waits is dropped.
            let up = call.up.take().map(|(up, u)| {
                let mut w = up.wire.borrow_mut();
                w.links.remove(&u);
                let n = unsent(&call.to_down);
                call.to_down.clear();
                w.release(u, n);
                drop(w);
                up.flush();
                up
            });
            answer(
                &mut call.down.wire.borrow_mut(),
                call.d,
                status,
                call.responded,
            );
            (call.down.clone(), up)
        };
        down.flush();
        self.finish(key);
        if let Some(up) = up {
            self.stream_freed(&up);
        }
    }

    /// Fails call `key`, which its upstream never processed (it refused
    /// the stream, or the stream was above its GOAWAY's last stream id),
    /// when the proxy cannot send it again itself. A client that has had
    /// nothing of the response yet gets RST_STREAM(REFUSED_STREAM), which
    /// says the call did nothing and may safely go again (RFC 9113 8.7;
    /// gRPC clients retry such calls on their own, gRFC A6); one that
    /// has gets `status`. `reset`: the upstream reset the stream (as
    /// [`fail`](Self::fail) has it).
    pub fn refuse(&self, key: usize, status: &Status, reset: bool) {
        if let Some(call) = self.calls.borrow().get(key).filter(|c| !c.responded) {
            let mut w = call.down.wire.borrow_mut();
            let w = &mut *w;
            if w.conn.streams().get(call.d).is_some() {
                w.conn.reset(call.d, ErrorCode::REFUSED_STREAM, &mut w.out);
            }
        }
        self.fail(key, status, reset, None);
    }

    /// Call `key`'s upstream stream ends (the upstream reset it, with
    /// NO_ERROR as RFC 9113 8.1 has it or any other code, named it above
    /// a GOAWAY's id, or its connection ended) after the whole response,
    /// while the end of that response still waits in the call for the
    /// client's credit: the call lets go of the upstream stream, and the
    /// response goes on to the client. False if the response was not
    /// whole: the end cuts it short, and the caller fails the call.
    pub fn upstream_done(&self, key: usize) -> bool {
        let up = {
            let mut calls = self.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                return false;
            };
            if !(call.down_end || call.down_trailers.is_some()) {
                return false;
            }
            let Some((up, u)) = call.up.take() else {
                return false;
            };
            call.upstream_done = true;
            {
                // What waits for the client is credited to the upstream
                // connection now: with no upstream stream left, nothing
                // credits it as it goes (every byte once, see
                // `Connection::release`).
                let mut w = up.wire.borrow_mut();
                w.links.remove(&u);
                w.release(u, unsent(&call.to_down));
            }
            up.flush();
            // The rest of the request is wanted by nobody: it is dropped,
            // and the client has its credit back, for what waits and (see
            // `request_data`) what still comes.
            let dropped = unsent(&call.to_up).saturating_sub(call.replayed);
            call.to_up.clear();
            call.replayed = 0;
            call.up_trailers = None;
            call.up_end = false;
            call.down.wire.borrow_mut().release(call.d, dropped);
            call.down.flush();
            self.give_back_growth(call);
            up
        };
        self.stream_freed(&up);
        true
    }

    /// A call that ends without an upstream (the director refused it):
    /// its statistics and access log line.
    pub fn unrouted(
        &self,
        route: &RouteSlot,
        status: &Status,
        peer: SocketAddr,
        client: Option<&PeerIdentity>,
        path: &str,
    ) {
        let ctx = &self.server.calls;
        let counters = &ctx.counters;
        counters
            .streams_active
            .set(counters.streams_active.get().saturating_sub(1));
        route.stats.finish(status.code(), std::time::Duration::ZERO);
        if let Some(log) = &ctx.access_log {
            log.write(
                &Entry {
                    peer,
                    method: path,
                    route: &route.name,
                    cluster: None,
                    upstream: None,
                    code: status.code(),
                    duration: std::time::Duration::ZERO,
                    bytes_in: 0,
                    bytes_out: 0,
                    client,
                    error: None,
                },
                counters,
            );
        }
    }

    /// Counts a new call.
    pub fn started(&self) {
        let counters = &self.server.calls.counters;
        add(&counters.streams_active, 1);
        add(&counters.calls_started, 1);
    }
}

/// Whether upstream connection `up` takes new calls: not closed, not
/// told to go away, and with more than [`SPARE_STREAM_IDS`] left.
fn serves_new_calls(up: &Side) -> bool {
    let w = up.wire.borrow();
    !up.closed.is_set() && !w.conn.going_away() && w.conn.streams_left() > SPARE_STREAM_IDS
}

/// The streams `up` may carry: its SETTINGS_MAX_CONCURRENT_STREAMS, or
/// what is assumed until they arrive.
fn capacity(up: &Rc<Side>) -> usize {
    let w = up.wire.borrow();
    match w.conn.remote_settings().max_concurrent_streams {
        Some(n) if w.conn.ready() => n as usize,
        _ => ASSUMED_STREAMS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_side() -> Rc<Side> {
        let mut out = Outbox::new();
        let conn = Connection::new(Role::Client, Limits::default(), &mut out);
        Side::new(conn, out, usize::MAX, 0, None)
    }

    #[test]
    fn a_connection_near_the_end_of_its_stream_ids_takes_no_new_calls() {
        let fresh = upstream_side();
        assert!(serves_new_calls(&fresh));
        let spent = upstream_side();
        spent
            .wire
            .borrow_mut()
            .conn
            .spend_stream_ids_for_test(SPARE_STREAM_IDS);
        assert!(
            !serves_new_calls(&spent),
            "its last ids are for the calls it has"
        );
        let closed = upstream_side();
        closed.closed.set();
        assert!(!serves_new_calls(&closed));
    }
}
