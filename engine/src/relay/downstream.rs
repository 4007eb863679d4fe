//! One client connection of the relay: read, route each new call, and move
//! what the client sends toward its upstream stream.
//!
//! A request head is checked (gRPC content type, else HTTP 415), shown to
//! the director, and joined to a stream on an upstream connection of the
//! chosen cluster's endpoint; a rejected call is answered trailers-only
//! with the director's status. Request DATA goes upstream as the upstream
//! grants credit, and only then is the client's credit returned.
//!
//! The connection ends when the client closes it, breaks the protocol (it
//! gets GOAWAY), does not finish its preface within `handshake_timeout`,
//! or the worker stops; its calls are cancelled upstream. When the worker
//! drains, it gets GOAWAY and closes once its calls are done.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::grpc::status::{Code, Status};
use crate::grpc::timeout;
use crate::hpack::encode_field;
use crate::http2::connection::{Connection, Event, Role, TOO_MANY_RESETS};
use crate::http2::frame::ErrorCode;
use crate::http2::headers::{pseudo, HeaderList, Kind, Which};
use crate::http2::outbox::Outbox;
use crate::relay::calls::{
    answer, enqueue, forward_up, head_fields, open_stream, push_down, push_up, release_down, Call,
};
use crate::relay::keeper::Keep;
use crate::relay::not_grpc;
use crate::relay::upstream::{requeue, upstream, Dial};
use crate::relay::wire::{
    lend, let_go, write_loop, Buffer, Links, Side, Sink, Source, Wire, READ_SMALL,
};
use crate::relay::worker::Relay;
use crate::routing::director::{Call as DirectorCall, Route};
use crate::telemetry::metrics::add;
use crate::transport::owned_tls::{self, TlsReader, TlsWriter};
use crate::transport::tls::PeerIdentity;

/// What the reader does after a pass, with no side borrowed.
enum Later {
    Release(u32, u32),
    Reset(u32),
    Opened(u32),
    Answer(u32, Status),
    /// A request that is not gRPC, and whether it asked for the head only.
    NotGrpc(u32, bool),
}

/// The most room a client connection keeps for the heads of the calls
/// of one read pass.
const HEADS_KEPT: usize = 16 << 10;

thread_local! {
    /// The lists a read pass fills (steps for after it, calls to open),
    /// one pair per worker thread and lent to each pass in turn: kept by
    /// every connection, they would cost an idle one their capacity.
    static SCRATCH: std::cell::RefCell<(Vec<Later>, Vec<usize>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Serves one accepted client connection until it ends: TLS first when
/// the running config has a certificate (a reload affects only
/// connections accepted after it).
///
/// Not an `async fn`: the setup runs here, and the task holds only the
/// future of the connection's kind, not the arguments beside it as well.
pub fn serve(relay: Rc<Relay>, tcp: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> {
    let settings = &relay.server.settings;
    crate::transport::socket::tune(&tcp, settings);
    let preface_by = monoio::time::Instant::now() + settings.handshake_timeout;
    let tls = relay.server.snapshot().tls.clone();
    let Some(config) = tls else {
        let fd = tcp.as_raw_fd();
        let (reader, writer) = tcp.into_split();
        return Serving::Clear {
            serving: serve_on(relay, reader, writer, Some(fd), None, peer, preface_by),
        };
    };
    // Boxed, as the TLS connection's whole task: the handshake's state
    // (rustls's connection among it) and TLS's reads and writes would
    // otherwise make every connection's task larger, cleartext or not.
    Serving::Tls {
        serving: Box::pin(async move {
            let Some((reader, writer, identity)) =
                secure(&relay, tcp, config, peer, preface_by).await
            else {
                return;
            };
            serve_on(relay, reader, writer, None, identity, peer, preface_by).await;
        }),
    }
}

pin_project_lite::pin_project! {
    /// A client connection's task: cleartext in place, TLS boxed.
    #[project = ServingProj]
    enum Serving<F> {
        // A cleartext connection: its future in the task itself.
        Clear { #[pin] serving: F },
        // A TLS connection: its handshake and all, boxed.
        Tls { serving: Pin<Box<dyn Future<Output = ()>>> },
    }
}

impl<F: Future<Output = ()>> Future for Serving<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            ServingProj::Clear { serving } => serving.poll(cx),
            ServingProj::Tls { serving } => serving.as_mut().poll(cx),
        }
    }
}

/// Serves a client connection over its halves (TCP, or TLS after the
/// handshake; `direct` is the socket of a cleartext one, see
/// [`Side::flush`]) until it ends.
async fn serve_on<R: Source, W: Sink + 'static>(
    relay: Rc<Relay>,
    mut reader: R,
    writer: W,
    direct: Option<RawFd>,
    identity: Option<Rc<PeerIdentity>>,
    peer: SocketAddr,
    preface_by: monoio::time::Instant,
) {
    let settings = &relay.server.settings;
    let mut out = Outbox::new();
    let conn = Connection::new(Role::Server, relay.downstream_limits, &mut out);
    let side = Side::new(
        conn,
        out,
        settings.buffer_per_connection,
        settings.retry_buffer_per_connection,
        identity,
    );
    relay.serving(&side);
    let stop = relay.server.stop.clone();
    let r = relay.clone();
    let drained = move |side: &Rc<Side>| act(&r, side, Later::Opened(0));
    let writing = monoio::spawn(write_loop(
        side.clone(),
        writer,
        direct,
        stop.clone(),
        drained,
    ));
    // The keeper closes the connection if its preface is late: a timer
    // in the read loop would make every connection's task larger.
    let now = monoio::time::Instant::now();
    relay
        .keepers
        .watch(&side, Keep::new(settings, peer, now, preface_by));
    side.flush();
    run(&relay, &side, &mut reader, peer).await;
    // Cancel what is left upstream, then let the writer flush and close.
    let keys: Vec<usize> = side.wire.borrow().links.values().copied().collect();
    for key in keys {
        relay.cancel(key);
    }
    side.closed.set();
    // The connection counts as open until its last frames are written: on
    // io_uring a write completes after it was submitted, and a worker that
    // drained must not end before the client has its trailers.
    writing.await;
    // And until the client has them: what it sent that was not read would
    // make the close a reset that throws away what the kernel still holds.
    // Only the socket stays for that: the connection's state (and TLS's)
    // goes first.
    if let Some(linger) = settings.linger {
        let mut tcp = reader.into_tcp();
        drop(side);
        let until = monoio::time::Instant::now() + linger;
        // Boxed: its timer and read would otherwise make every connection's
        // task larger (by about 1 KiB) for the moment at its end.
        Box::pin(crate::transport::linger::linger(&mut tcp, until, &stop)).await;
    }
}

/// The TLS handshake of a client connection, within the worker's limit of
/// handshakes under way (the one under way longest gives way to a new
/// one) and by `by`; `None` if it failed (logged, and counted).
async fn secure(
    relay: &Relay,
    mut tcp: TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    by: monoio::time::Instant,
) -> Option<(TlsReader, TlsWriter, Option<Rc<PeerIdentity>>)> {
    let server = &relay.server;
    let place = server.handshakes.enter();
    let handshake = monoio::time::timeout_at(by, owned_tls::accept(&mut tcp, config));
    let accepted = monoio::select! {
        accepted = handshake => accepted,
        _ = place.evicted() => {
            tracing::debug!(%peer, "downstream TLS handshake given up to make room for a newer one");
            return None;
        }
        _ = server.stop.wait() => return None,
    };
    drop(place);
    let (conn, cipher) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "downstream TLS handshake failed");
            add(&server.calls.counters.tls_handshake_failures, 1);
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "downstream TLS handshake timed out");
            return None;
        }
    };
    let identity = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| Rc::new(PeerIdentity::from_der(leaf)));
    let (r, w) = owned_tls::split(tcp, conn, cipher);
    Some((r, w, identity))
}

async fn run<R: Source>(relay: &Rc<Relay>, side: &Rc<Side>, reader: &mut R, peer: SocketAddr) {
    let mut buf = BytesMut::new();
    let mut want = READ_SMALL;
    let mut second = relay.second();
    // One wait for the whole loop: its waker stays registered, instead of
    // being registered and removed again on every read.
    let mut closed = std::pin::pin!(side.closed.wait());
    loop {
        if buf.capacity() == 0 {
            // New, or idle with its buffer let go (see `let_go`): it
            // borrows one once there is something to read.
            let ready = monoio::select! {
                biased;
                _ = closed.as_mut() => return,
                r = reader.ready() => r,
            };
            if ready.is_err() {
                return;
            }
            buf = lend();
            side.holds_buffer(Buffer::Empty);
        }
        // In this order, with no random pick of the first (a cost on
        // every read): a client that sends without pause is still closed.
        let read = monoio::select! {
            biased;
            // Drained or stopped (see Relay::drain and Relay::stop_all),
            // timed out by the keeper, or failed elsewhere.
            _ = closed.as_mut() => return,
            // Quiet for a while (the keeper asks): the read goes, and its
            // buffer with it.
            _ = side.let_go_asked() => None,
            r = reader.read_more(buf, &mut want) => Some(r),
        };
        let Some((result, b)) = read else {
            // `want` stays: the next read takes a buffer of the size the
            // last ones grew to, once, rather than growing one again.
            buf = BytesMut::new();
            side.holds_buffer(Buffer::None);
            side.wire.borrow_mut().release_idle();
            continue;
        };
        buf = b;
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        side.tick(relay.second(), &mut second);
        // The pass's scratch lists are the worker's, not the connection's:
        // an idle connection holds none.
        let (mut later, mut opens) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let failed = pass(relay, side, &mut buf, &mut later, &mut opens, peer).is_err();
        for step in later.drain(..) {
            act(relay, side, step);
        }
        // Streams open after the rest of the pass (a reset in it cancels
        // its call first); a connection that broke the protocol in this
        // pass opens nothing more: its calls are cancelled as it closes.
        for key in opens.drain(..) {
            if !failed {
                open_now(relay, side, key);
            }
        }
        SCRATCH.with(|s| *s.borrow_mut() = (later, opens));
        {
            // A pass of many calls with large heads (up to the header list
            // limit each) must not leave its room to the connection.
            let mut w = side.wire.borrow_mut();
            if w.heads.capacity() > HEADS_KEPT {
                w.heads = Vec::new();
            } else {
                w.heads.clear();
            }
            w.conn.shrink();
        }
        side.flush();
        let_go(side, &mut buf, &mut want);
        if failed || (relay.draining() && side.wire.borrow().links.is_empty()) {
            return;
        }
        // A client that does not read what it is answered is read no
        // further (see Side::backed_up).
        while side.backed_up() {
            monoio::select! {
                biased;
                _ = closed.as_mut() => return,
                _ = side.wake.notified() => {}
            }
        }
    }
}

fn pass(
    relay: &Rc<Relay>,
    side: &Rc<Side>,
    buf: &mut BytesMut,
    later: &mut Vec<Later>,
    opens: &mut Vec<usize>,
    peer: SocketAddr,
) -> Result<(), ()> {
    let mut w = side.wire.borrow_mut();
    let Wire {
        conn,
        out,
        links,
        heads,
        ..
    } = &mut *w;
    let mut opened_all = false;
    let result = conn.recv(buf, out, |event| match event {
        Event::Headers {
            stream,
            list,
            end_stream,
        } => match list.kind() {
            Kind::Request => request(
                relay, side, links, heads, opens, stream, list, end_stream, peer, later,
            ),
            _ => trailers(relay, links, stream, list),
        },
        Event::HeadersTooLarge { stream } => later.push(Later::Answer(
            stream,
            Status::new(Code::ResourceExhausted, "request headers too large"),
        )),
        Event::Data {
            stream,
            data,
            end_stream,
        } => request_data(relay, links, stream, data, end_stream, later),
        Event::Reset { stream, .. } => later.push(Later::Reset(stream)),
        // Once per pass for the connection's window (a WINDOW_UPDATE on
        // stream 0, SETTINGS): each walks every call of the connection,
        // and a read may carry thousands of them.
        Event::WindowOpened { stream: 0 } if opened_all => {}
        Event::WindowOpened { stream } => {
            opened_all |= stream == 0;
            later.push(Later::Opened(stream));
        }
        Event::PingAck { data } => side.pong(data),
        Event::GoAway { .. } => {}
    });
    result.map_err(|e| {
        if e.why == TOO_MANY_RESETS {
            if let Some(held) = relay.reset_flood_warnings.pass(relay.second()) {
                tracing::warn!(%peer, more_since_last = held, "downstream connection resets too many streams: closing it (GOAWAY ENHANCE_YOUR_CALM)");
            }
            add(&relay.server.calls.counters.reset_floods, 1);
        } else {
            tracing::debug!(%peer, error = %e, "downstream connection error");
        }
    })
}

/// A new call: route it and join it to an upstream stream.
#[allow(clippy::too_many_arguments)]
fn request(
    relay: &Rc<Relay>,
    side: &Rc<Side>,
    links: &mut Links,
    heads: &mut Vec<u8>,
    opens: &mut Vec<usize>,
    d: u32,
    list: &HeaderList,
    end: bool,
    peer: SocketAddr,
    later: &mut Vec<Later>,
) {
    let grpc = list
        .get(b"content-type")
        .is_some_and(|c| c.starts_with(b"application/grpc"));
    if !grpc {
        let head_only = list.pseudo(pseudo::METHOD) == Some(b"HEAD");
        later.push(Later::NotGrpc(d, head_only));
        return;
    }
    let path = text(list.pseudo(pseudo::PATH)).unwrap_or("");
    let authority = text(list.pseudo(pseudo::AUTHORITY));
    let snapshot = relay.server.snapshot();
    let (route, index) = snapshot.director.route_indexed(
        &DirectorCall::from_list(path, authority, list, peer)
            .with_identity(side.identity.as_deref()),
    );
    let slot = snapshot.route(index).clone();
    slot.stats.start();
    relay.started();
    let (cluster, route_timeout, edits) = match route {
        Route::Forward {
            cluster,
            timeout,
            edits,
        } => (
            snapshot.clusters.get(cluster.index()).cloned(),
            timeout,
            edits,
        ),
        Route::Reject(status) => {
            relay.unrouted(&slot, &status, peer, side.identity.as_deref(), path);
            later.push(Later::Answer(d, status));
            return;
        }
    };
    let Some(cluster) = cluster else {
        let status = Status::new(
            Code::Internal,
            "the director chose a cluster that does not exist",
        );
        relay.unrouted(&slot, &status, peer, side.identity.as_deref(), path);
        later.push(Later::Answer(d, status));
        return;
    };
    let dial = Dial::of(&cluster);
    let endpoint = cluster.pick(|e| relay.reachable(e, dial.tag)).clone();
    // An endpoint backing off after failed connects, with no connection
    // to use (all are, or the others are down), fails the call at once
    // and says when to retry.
    if !relay.has_upstream(endpoint.addr(), dial.tag) {
        if let Some(error) = endpoint.backing_off() {
            let mut status = Status::new(Code::Unavailable, error.public());
            if let Some(after) = error.pushback() {
                status = status.with_pushback(after);
            }
            relay.unrouted(&slot, &status, peer, side.identity.as_deref(), path);
            later.push(Later::Answer(d, status));
            return;
        }
    }
    // At the cluster's call limits the call fails at once, not queued.
    if let Err(error) = cluster.admit() {
        let status = Status::new(Code::Unavailable, error.public());
        relay.unrouted(&slot, &status, peer, side.identity.as_deref(), path);
        later.push(Later::Answer(d, status));
        return;
    }
    cluster.pending(true);
    cluster.stats.start();
    // The shorter of the client's grpc-timeout and the route's timeout is
    // enforced here, and told to the upstream.
    let client_timeout = list.get(b"grpc-timeout").and_then(timeout::parse);
    let timeout_header = route_timeout
        .filter(|route| client_timeout.is_none_or(|client| *route < client))
        .map(timeout::format);
    let budget = match (client_timeout, route_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let serial = relay.serial();
    let now = monoio::time::Instant::now();
    let deadline = budget.map(|b| now + b);
    let silent_by = match relay.server.settings.silent_request_timeout {
        Some(after) if !end => Some(now + after),
        _ => None,
    };
    let logged = relay
        .server
        .calls
        .access_log
        .is_some()
        .then(|| Box::<str>::from(path));
    let up = upstream(relay, &endpoint, &dial, None);
    // The head is encoded now (the list is the connection's, and the next
    // HEADERS overwrites it) and, on a ready connection, the stream opened
    // after the pass: a client that resets the stream in the same read
    // (rapid reset) costs the upstream nothing.
    let start = heads.len();
    let request_edits = edits.as_deref().map(|e| &e.request);
    let scheme = dial.scheme();
    if timeout_header.is_none() && request_edits.is_none() {
        // The client's head as it is (but for the scheme, see `Dial`):
        // encoded once while its block repeats.
        heads.extend_from_slice(&list.encoded(Which::WithScheme(scheme)));
    } else {
        let fields = head_fields(list, scheme, timeout_header.as_deref(), request_edits);
        for (name, value, sensitive) in fields {
            encode_field(name, value, sensitive, heads);
        }
    }
    let hold = relay.hold(side, &heads[start..]).map(|mut hold| {
        hold.ended = end;
        hold
    });
    let ready = {
        let mut w = up.wire.borrow_mut();
        w.conn.ready() && w.waiting.is_empty() && !w.full()
    };
    let (pending_head, head) = if ready {
        (Some((start, heads.len())), None)
    } else {
        let head = heads[start..].to_vec();
        heads.truncate(start);
        (None, Some(head))
    };
    let key = relay.calls.borrow_mut().insert(Call {
        down: side.clone(),
        d,
        up: None,
        waiting_on: Some(up.clone()),
        head,
        pending_head,
        to_up: Default::default(),
        up_trailers: None,
        up_end: end,
        to_down: Default::default(),
        down_trailers: None,
        down_end: false,
        responded: false,
        route: slot,
        cluster,
        started: now.into_std(),
        code: Code::Unknown,
        serial,
        deadline,
        silent_by,
        timeout_header,
        peer,
        path: logged,
        endpoint,
        upstream_failed: None,
        bytes_in: 0,
        bytes_out: 0,
        error: None,
        grown: 0,
        streaming: false,
        hold,
        replayed: 0,
        retried: None,
        moved: false,
        upstream_done: false,
        edits,
    });
    links.insert(d, key);
    side.active.set(true);
    if let Some(at) = deadline {
        relay.expire_at(at, serial, key);
    }
    if ready {
        // Its silence is looked at after the pass, which most often
        // carries its DATA too.
        opens.push(key);
    } else {
        if let Some(at) = silent_by {
            relay.expire_at(at, serial, key);
        }
        up.wire.borrow_mut().waiting.push_back(key);
    }
}

/// Opens the upstream stream of a call routed in this pass, unless the
/// client has reset it meanwhile; a connection that filled up in this
/// pass sends it elsewhere.
fn open_now(relay: &Rc<Relay>, side: &Rc<Side>, key: usize) {
    let mut calls = relay.calls.borrow_mut();
    let Some(call) = calls.get_mut(key) else {
        return; // reset in the same pass
    };
    let (Some((start, end)), Some(up)) = (call.pending_head.take(), call.waiting_on.clone()) else {
        return;
    };
    let opened = {
        let down = side.wire.borrow();
        let block = &down.heads[start..end];
        let mut w = up.wire.borrow_mut();
        // Heads routed in this pass may have filled it.
        let opened = if w.full() {
            None
        } else {
            open_stream(call, key, &up, &mut w, block).ok()
        };
        if opened.is_none() {
            call.head = Some(block.to_vec());
            // It waits: what it holds of the read buffer goes as copies.
            for piece in std::mem::take(&mut call.to_up) {
                enqueue(&mut call.to_up, piece);
            }
        }
        opened
    };
    let d = call.d;
    let silent = call.silent_by.map(|at| (at, call.serial));
    drop(calls);
    match opened {
        Some(sent) => {
            up.flush();
            if sent > 0 {
                side.wire.borrow_mut().release(d, sent);
            }
        }
        None => requeue(relay, key, &up),
    }
    if let Some((at, serial)) = silent {
        relay.expire_at(at, serial, key);
    }
}

/// Request DATA: sent upstream as far as its credit goes, in order with
/// the frames around it; the client's credit returns for what was sent.
fn request_data(
    relay: &Relay,
    links: &Links,
    d: u32,
    data: Bytes,
    end: bool,
    later: &mut Vec<Later>,
) {
    let n = data.len() as u32;
    let Some(&key) = links.get(&d) else {
        later.push(Later::Release(d, n));
        return;
    };
    let mut calls = relay.calls.borrow_mut();
    let Some(call) = calls.get_mut(key) else {
        later.push(Later::Release(d, n));
        return;
    };
    call.silent_by = None;
    call.bytes_in += u64::from(n);
    if call.upstream_done {
        // The upstream has answered and wants no more.
        later.push(Later::Release(d, n));
        return;
    }
    call.up_end |= end;
    if let Some(hold) = &mut call.hold {
        if hold.keep(&data, relay.server.settings.retry_buffer) {
            hold.ended |= end;
        } else if let Some(hold) = call.hold.take() {
            relay.unhold(hold);
        }
    }
    let Some((up, _)) = call.up.clone() else {
        // Waits for its stream, holding the client's credit: as it is
        // when the stream opens after this pass (see `open_now`), as a
        // copy when small if it waits longer (see `enqueue`).
        if call.pending_head.is_some() {
            if !data.is_empty() {
                call.to_up.push_back(data);
            }
        } else {
            enqueue(&mut call.to_up, data);
        }
        return;
    };
    let sent = forward_up(call, data, &mut up.wire.borrow_mut());
    up.flush();
    if sent > 0 {
        later.push(Later::Release(d, sent));
    }
}

fn text(b: Option<&[u8]>) -> Option<&str> {
    b.and_then(|b| std::str::from_utf8(b).ok())
}

/// Request trailers: sent upstream now, or after the DATA that waits.
fn trailers(relay: &Relay, links: &Links, d: u32, list: &HeaderList) {
    let Some(&key) = links.get(&d) else {
        return;
    };
    let mut calls = relay.calls.borrow_mut();
    let Some(call) = calls.get_mut(key) else {
        return;
    };
    call.up_trailers = Some(Box::new(list.clone()));
    call.up_end = true;
    call.silent_by = None;
    // A replay could not carry trailers: no retry from here on.
    if let Some(hold) = call.hold.take() {
        relay.unhold(hold);
    }
    if let Some((up, _)) = call.up.clone() {
        push_up(call, &mut up.wire.borrow_mut());
        up.flush();
    }
}

fn act(relay: &Relay, side: &Rc<Side>, step: Later) {
    let key_of = |d: u32| side.wire.borrow().links.get(&d).copied();
    match step {
        Later::Release(d, n) => side.wire.borrow_mut().release(d, n),
        Later::Reset(d) => match key_of(d) {
            Some(key) => relay.cancel(key),
            None => not_grpc::forget(&mut side.wire.borrow_mut(), d),
        },
        Later::Opened(0) => {
            let keys: Vec<usize> = side.wire.borrow().links.values().copied().collect();
            for key in keys {
                opened(relay, side, key);
            }
            not_grpc::push(&mut side.wire.borrow_mut(), 0);
        }
        Later::Opened(d) => match key_of(d) {
            Some(key) => opened(relay, side, key),
            None => not_grpc::push(&mut side.wire.borrow_mut(), d),
        },
        Later::Answer(d, status) => {
            let mut w = side.wire.borrow_mut();
            let w = &mut *w;
            answer(w, d, &status, false);
            // The answer is whole, the request may not be: a client still
            // sending is told to stop (RST_STREAM NO_ERROR, RFC 9113 8.1),
            // so that a call never made holds no stream.
            if w.conn.streams().get(d).is_some() {
                w.conn.reset(d, ErrorCode::NO_ERROR, &mut w.out);
            }
        }
        Later::NotGrpc(d, head_only) => {
            not_grpc::answer(&mut side.wire.borrow_mut(), d, head_only);
        }
    }
}

/// The client gave `key`'s stream credit: send what waits for it, and give
/// the upstream back what was sent.
fn opened(relay: &Relay, side: &Rc<Side>, key: usize) {
    let done = {
        let mut calls = relay.calls.borrow_mut();
        let Some(call) = calls.get_mut(key) else {
            return;
        };
        let (sent, done) = push_down(call, &mut side.wire.borrow_mut());
        if let (true, Some((up, u))) = (sent > 0, call.up.clone()) {
            release_down(call, &mut up.wire.borrow_mut(), u, sent, &relay.allowance);
            up.flush();
        }
        done
    };
    if done {
        relay.finish(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::context::CallContext;
    use crate::downstream::server::Server;
    use crate::downstream::snapshot::{RouteSlot, Snapshot};
    use crate::grpc::status::{Code, Status};
    use crate::routing::director::Call as DirectorCall;

    /// The most a cleartext client connection's task may take, in bytes:
    /// every idle connection holds one (with its state, about 3.4 KiB in
    /// all; see the README's "Memory per idle client connection"). A
    /// future laid out in it for a rare moment (a timer, a read) makes
    /// every connection pay for it: box it instead.
    const TASK_MOST: usize = 960;

    #[test]
    fn a_client_connections_task_stays_small() {
        let settings = Rc::new(crate::config::Settings::default());
        let other = RouteSlot {
            name: Rc::from("other"),
            stats: Rc::default(),
        };
        let snapshot = Rc::new(Snapshot {
            director: Rc::new(|_: &DirectorCall<'_>| {
                Route::Reject(Status::new(Code::Unimplemented, "none"))
            }),
            clusters: Vec::new(),
            tls: None,
            routes: Vec::new(),
            other,
        });
        let context = Rc::new(CallContext::new(
            Rc::default(),
            None,
            &settings,
            std::sync::Arc::default(),
        ));
        let server = Rc::new(Server::new(snapshot, settings, Rc::default(), context));
        let relay = Relay::new(server);
        let size = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(async move {
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let task = serve(relay, tcp, addr);
                std::mem::size_of_val(&task)
            });
        assert!(
            size <= TASK_MOST,
            "a client connection's task takes {size} bytes"
        );
    }
}
