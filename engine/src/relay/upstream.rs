//! One upstream connection of the relay: connect, then read and act on
//! what the upstream sends until the connection ends.
//!
//! Calls wait on a connection that is not ready yet (TCP connect, then the
//! upstream's SETTINGS, which carry its stream limit); once it is, their
//! streams open in the order they came. A connection that fails or ends
//! fails every call on it: UNAVAILABLE to a client that has no response
//! yet, a reset to one that has.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::BytesMut;
use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::config::Keepalive;
use crate::grpc::status::{Code, Status};
use crate::http2::connection::Event;
use crate::http2::frame::ErrorCode;
use crate::http2::headers::{Kind, Which};
use crate::relay::calls::{
    forward_down, push_up, release_down, status_of_broken_stream, status_of_reset, unsent, Hold,
};
use crate::relay::wire::{shrink, write_loop, Side, Sink, Source, READ_SMALL};
use crate::relay::worker::Relay;
use crate::runtime::wake::Latch;
use crate::telemetry::metrics::add;
use crate::transport::owned_tls;
use crate::transport::tls::Connector;
use crate::upstream::cluster::Cluster;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::error::UpstreamError;

/// Why a call ends that the upstream ended past its deadline.
const DEADLINE: &str = "deadline exceeded at the proxy";

/// What the reader does after a pass, with no side borrowed.
enum Later {
    Release(u32, u32),
    /// Response bytes of call `.0`'s stream `.1` handed on (`.2`).
    Credit(usize, u32, u32),
    Expire(usize),
    /// A stream reset: by the upstream, or by the proxy (`.2`) for a rule
    /// the upstream broke on it.
    Reset(u32, ErrorCode, bool),
    Opened(u32),
    Finish(usize),
    /// A response head past the header list size: the stream, still
    /// open, is reset and the call fails.
    HeadTooLarge(u32),
    GoAway(u32),
}

/// How a cluster's connections are made: TLS (and what tells its TLS
/// settings apart, see [`Cluster::tls`]) and keepalive PINGs.
#[derive(Clone)]
pub struct Dial {
    tls: Option<Rc<Connector>>,
    /// The key of its connections beside the address.
    pub tag: u64,
    keepalive: Option<Keepalive>,
}

impl Dial {
    /// The `:scheme` a request has on these connections: the upstream's
    /// transport, not the client's (grpc-dotnet's Kestrel refuses a
    /// scheme that does not match its own).
    pub fn scheme(&self) -> &'static [u8] {
        if self.tls.is_some() {
            b"https"
        } else {
            b"http"
        }
    }

    /// How `cluster` reaches its endpoints.
    pub fn of(cluster: &Cluster) -> Dial {
        let (tls, tag) = cluster.tls();
        Dial {
            tls,
            tag,
            keepalive: cluster.keepalive(),
        }
    }
}

/// An upstream connection to `endpoint` for a call of a cluster that
/// dials it so, avoiding `avoid` (see [`Relay::upstream_for`]).
pub fn upstream(
    relay: &Rc<Relay>,
    endpoint: &Rc<Endpoint>,
    dial: &Dial,
    avoid: Option<&Rc<Side>>,
) -> Rc<Side> {
    relay.upstream_for(endpoint, dial.tag, avoid, |relay, side, endpoint| {
        connect(relay, side, endpoint, dial.clone())
    })
}

/// Connects `side` to `endpoint` and serves it until it ends. A failed
/// connect starts the endpoint's back-off (calls meanwhile fail at once,
/// see the downstream side) and fails the calls that waited for it with
/// the kind of failure; a connection that ends fails the calls on it.
/// With keepalive, a connection that does not answer a PING in time is
/// taken for dead and closed.
pub fn connect(relay: Rc<Relay>, side: Rc<Side>, endpoint: Rc<Endpoint>, dial: Dial) {
    let r = relay.clone();
    r.spawn(async move {
        let (why, detail) = match run(&relay, &side, &endpoint, dial).await {
            Err(error) => {
                let settings = &relay.server.settings;
                endpoint.connect_failed(
                    &error,
                    settings.reconnect_backoff_min,
                    settings.reconnect_backoff_max,
                );
                // The endpoint may be gone from DNS: resolve names soon.
                relay
                    .server
                    .calls
                    .connect_failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%error, "upstream connection failed");
                (error.public(), Some(error.to_string()))
            }
            Ok(()) => ("upstream unavailable: the connection ended", None),
        };
        let established =
            detail.is_none() && side.wire.borrow().conn.ready() && !relay.server.stop.is_set();
        side.closed.set();
        side.wake.notify_all();
        relay.forget(&side);
        // Calls that waited for a stream here were never sent: they go to
        // another connection (a new one, if need be) rather than fail
        // with this one, once. Not when the connection failed before its
        // SETTINGS (the endpoint is not serving; a connect that fails
        // backs off), nor when the worker stops.
        if established {
            move_waiting(&relay, &side);
        }
        fail_all(&relay, &side, why, detail.as_deref());
    });
}

async fn run(
    relay: &Rc<Relay>,
    side: &Rc<Side>,
    endpoint: &Endpoint,
    dial: Dial,
) -> Result<(), UpstreamError> {
    let settings = &relay.server.settings;
    let stop = relay.server.stop.clone();
    let addr = endpoint.addr();
    let timeout = settings.connect_timeout;
    let deadline = monoio::time::Instant::now() + timeout;
    let connected = monoio::select! {
        c = monoio::time::timeout_at(deadline, TcpStream::connect(addr)) => c,
        _ = stop.wait() => return Ok(()),
    };
    let mut tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
    };
    crate::transport::socket::tune(&tcp, settings);
    let Some(tls) = dial.tls.clone() else {
        let fd = tcp.as_raw_fd();
        let (reader, writer) = tcp.into_split();
        return serve(
            relay,
            side,
            endpoint,
            &dial,
            deadline,
            reader,
            writer,
            Some(fd),
        )
        .await;
    };
    let config = tls.config.clone();
    let handshake = owned_tls::connect(&mut tcp, config, tls.server_name.clone());
    let secured = monoio::select! {
        s = monoio::time::timeout_at(deadline, Box::pin(handshake)) => s,
        _ = stop.wait() => return Ok(()),
    };
    let (conn, cipher) = match secured {
        Ok(Ok(secured)) => secured,
        Ok(Err(source)) => return Err(UpstreamError::Tls { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
    };
    if conn.alpn_protocol() != Some(b"h2") {
        tracing::debug!(upstream = %addr, "upstream TLS did not negotiate ALPN h2; speaking HTTP/2 anyway");
    }
    let (reader, writer) = owned_tls::split(tcp, conn, cipher);
    Box::pin(serve(
        relay, side, endpoint, &dial, deadline, reader, writer, None,
    ))
    .await
}

/// Serves an upstream connection over its halves (TCP, or TLS after the
/// handshake; `direct` is the socket of a cleartext one, see
/// [`Side::flush`]) until it ends. The upstream's SETTINGS must come by
/// the connect's `deadline`.
#[allow(clippy::too_many_arguments)]
async fn serve<R: Source, W: Sink + 'static>(
    relay: &Rc<Relay>,
    side: &Rc<Side>,
    endpoint: &Endpoint,
    dial: &Dial,
    deadline: monoio::time::Instant,
    mut reader: R,
    writer: W,
    direct: Option<RawFd>,
) -> Result<(), UpstreamError> {
    let stop = relay.server.stop.clone();
    let addr = endpoint.addr();
    endpoint.relayed(true);
    let _counted = Counted(endpoint);
    let r = relay.clone();
    let drained = move |side: &Rc<Side>| act(&r, side, Later::Opened(0));
    relay.spawn(write_loop(
        side.clone(),
        writer,
        direct,
        stop.clone(),
        drained,
    ));
    if let Some(keepalive) = dial.keepalive {
        relay.spawn(keep(side.clone(), keepalive, addr, stop.clone()));
    }
    side.flush();
    let mut buf = BytesMut::new();
    let mut want = READ_SMALL;
    let mut later = Vec::new();
    let mut second = relay.second();
    // Waits for the whole loop: their wakers stay registered, instead of
    // being registered and removed again on every read.
    let mut stopped = std::pin::pin!(stop.wait());
    let mut closed = std::pin::pin!(side.closed.wait());
    // Until the upstream's SETTINGS, the connect's deadline runs: calls
    // wait for them, and a process that hangs while its kernel accepts
    // connections would hold them for good.
    let mut handshake = std::pin::pin!(monoio::time::sleep_until(deadline));
    let mut settled = false;
    loop {
        // In this order, with no random pick (see the client's read loop).
        let (result, b) = monoio::select! {
            biased;
            _ = stopped.as_mut() => return Ok(()),
            _ = closed.as_mut() => return Ok(()),
            _ = handshake.as_mut(), if !settled => {
                let timeout = relay.server.settings.connect_timeout;
                return Err(UpstreamError::NoSettings { addr, timeout });
            }
            r = reader.read_more(buf, &mut want) => r,
        };
        buf = b;
        match result {
            Ok(0) => {
                tracing::debug!(upstream = %addr, "upstream closed the connection");
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(upstream = %addr, error = %e, "upstream read failed");
                return Ok(());
            }
            Ok(_) => {}
        }
        side.tick(relay.second(), &mut second);
        let (was_ready, was_going) = {
            let w = side.wire.borrow();
            (w.conn.ready(), w.conn.going_away())
        };
        if pass(relay, side, &mut buf, &mut later).is_err() {
            // What the pass read before the error stands: calls it ended
            // end as answered, and calls cut by a GOAWAY are retried,
            // before the connection fails the rest. Closed first, so that
            // no step puts a call on it again.
            side.closed.set();
            for step in later.drain(..) {
                act(relay, side, step);
            }
            side.flush();
            return Ok(());
        }
        let went_away = !was_going && side.wire.borrow().conn.going_away();
        if went_away {
            endpoint.went_away();
            // Calls waiting for a stream here were never sent: they go
            // to another connection rather than wait for this one to end.
            move_waiting(relay, side);
            // It takes no new calls: it closes once those it carries end,
            // whether or not the upstream closes it.
            side.retiring.set(true);
        }
        if !was_ready && side.wire.borrow().conn.ready() {
            settled = true;
            // A connection that went away as it began proves nothing of
            // the endpoint: its back-off stays.
            if !went_away {
                endpoint.reachable();
            }
            relay.open_waiting(side);
            spill(relay, side);
        }
        for step in later.drain(..) {
            act(relay, side, step);
        }
        // Retiring (see above): its last call may have ended in this pass.
        side.close_if_retired();
        side.flush();
        side.wire.borrow_mut().conn.shrink();
        shrink(side, &mut buf, &mut want);
        // An upstream that does not read what it is sent is read no
        // further (see Side::backed_up).
        while side.backed_up() {
            monoio::select! {
                biased;
                _ = stopped.as_mut() => return Ok(()),
                _ = closed.as_mut() => return Ok(()),
                _ = side.wake.notified() => {}
            }
        }
    }
}

/// Parses what was read; heads and trailers go to the client at once,
/// the rest is left for [`act`].
fn pass(
    relay: &Relay,
    side: &Rc<Side>,
    buf: &mut BytesMut,
    later: &mut Vec<Later>,
) -> Result<(), ()> {
    let mut w = side.wire.borrow_mut();
    let wire = &mut *w;
    let links = &wire.links;
    let mut opened_all = false;
    let result = wire.conn.recv(buf, &mut wire.out, |event| match event {
        Event::Headers {
            stream,
            list,
            end_stream,
        } => {
            let Some(&key) = links.get(&stream) else {
                return;
            };
            let mut calls = relay.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                return;
            };
            let status = list.pseudo(crate::http2::headers::pseudo::STATUS);
            if list.kind() == Kind::Response && status.is_some_and(|s| s[0] == b'1') {
                return; // informational: not forwarded
            }
            // The upstream has the call: no retry from here on.
            if let Some(hold) = call.hold.take() {
                relay.unhold(hold);
            }
            let head = list.kind() == Kind::Response;
            // An upstream told our deadline may end the call a moment before
            // our timer does; past the deadline, it is ours to report.
            let code = list
                .get(b"grpc-status")
                .and_then(crate::relay::calls::parse_code);
            let expired = call.past_deadline_now();
            if end_stream
                && expired
                && matches!(code, Some(Code::Cancelled | Code::DeadlineExceeded))
            {
                later.push(Later::Expire(key));
                return;
            }
            if !head && !call.to_down.is_empty() {
                // Trailers wait for the DATA before them.
                call.down_trailers = Some(Box::new(list.clone()));
                return;
            }
            if let Some(code) = code {
                call.code = code;
            }
            {
                let mut dw = call.down.wire.borrow_mut();
                let down = &mut *dw;
                // The upstream's content-length is not passed on: the
                // proxy ends a response that breaks it with a gRPC status,
                // which a client holding the length would take as a
                // protocol error instead.
                let edits = call.edits.as_deref().filter(|_| head).map(|e| &e.response);
                let sent = match edits {
                    // Encoded once while the upstream's block repeats.
                    None => {
                        let block = list.encoded(Which::WithoutContentLength);
                        down.conn
                            .send_encoded(call.d, &block, end_stream, &mut down.out)
                    }
                    Some(edits) => {
                        let fields = list.picked(Which::WithoutContentLength);
                        let fields = crate::relay::calls::edited(fields, Some(edits));
                        down.conn
                            .send_headers(call.d, fields, end_stream, &mut down.out)
                    }
                };
                if sent.is_err() {
                    later.push(Later::Finish(key));
                    return;
                }
            }
            call.responded = true;
            call.down.flush();
            if end_stream || !head {
                later.push(Later::Finish(key));
            }
        }
        Event::HeadersTooLarge { stream } => later.push(Later::HeadTooLarge(stream)),
        // Inline, so that DATA reaches the client before trailers read in
        // the same pass; only the credit waits for the end of the pass.
        Event::Data {
            stream,
            data,
            end_stream,
        } => {
            let n = data.len() as u32;
            let Some(&key) = links.get(&stream) else {
                later.push(Later::Release(stream, n));
                return;
            };
            let mut calls = relay.calls.borrow_mut();
            let Some(call) = calls.get_mut(key) else {
                later.push(Later::Release(stream, n));
                return;
            };
            call.down_end |= end_stream;
            call.bytes_out += u64::from(n);
            let down = call.down.clone();
            let (sent, done) = forward_down(call, data, &mut down.wire.borrow_mut());
            down.flush();
            if sent > 0 {
                later.push(Later::Credit(key, stream, sent));
            }
            if done {
                later.push(Later::Finish(key));
            }
        }
        Event::Reset {
            stream,
            code,
            local,
        } => later.push(Later::Reset(stream, code, local)),
        // Once per pass for the connection's window (a WINDOW_UPDATE on
        // stream 0, SETTINGS): each walks every call of the connection,
        // and a read may carry thousands of them.
        Event::WindowOpened { stream: 0 } if opened_all => {}
        Event::WindowOpened { stream } => {
            opened_all |= stream == 0;
            later.push(Later::Opened(stream));
        }
        Event::GoAway { last_stream, code } => {
            tracing::debug!(last_stream, %code, "upstream GOAWAY");
            later.push(Later::GoAway(last_stream));
        }
        Event::PingAck { data } => side.pong(data),
    });
    result.map_err(|e| {
        tracing::debug!(error = %e, "upstream connection error");
    })
}

/// Counts an open connection on its endpoint while it lives.
struct Counted<'a>(&'a Endpoint);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.relayed(false);
    }
}

/// Keepalive: a PING every interval; one not acknowledged within the
/// timeout means the upstream (or the path to it) is gone, though TCP
/// may not know yet: the connection closes, failing its calls, and the
/// next call connects afresh. An upstream still reading what waited
/// ahead of the PING (see [`Side::reading`]) gets another timeout.
async fn keep(side: Rc<Side>, keepalive: Keepalive, addr: std::net::SocketAddr, stop: Rc<Latch>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(keepalive.interval) => {}
            _ = side.closed.wait() => return,
            _ = stop.wait() => return,
        }
        let mut ping = side.ping();
        loop {
            monoio::select! {
                _ = monoio::time::sleep(keepalive.timeout) => {}
                _ = side.closed.wait() => return,
                _ = stop.wait() => return,
            }
            if side.answered(&ping) {
                break;
            }
            // Still reading what waited ahead of the PING: it waits on.
            if !side.reading(&mut ping) {
                tracing::warn!(upstream = %addr, "upstream connection did not answer a keepalive PING; closing it");
                side.closed.set();
                return;
            }
        }
    }
}

fn act(relay: &Rc<Relay>, side: &Rc<Side>, step: Later) {
    let key_of = |u: u32| side.wire.borrow().links.get(&u).copied();
    match step {
        Later::Release(u, n) => side.wire.borrow_mut().release(u, n),
        Later::Credit(key, u, n) => match relay.calls.borrow_mut().get_mut(key) {
            Some(call) => release_down(call, &mut side.wire.borrow_mut(), u, n, &relay.allowance),
            None => side.wire.borrow_mut().release(u, n),
        },
        Later::Reset(u, code, local) => {
            if let Some(key) = key_of(u) {
                if local {
                    relay.fail(key, &status_of_broken_stream(code), true, None);
                    return;
                }
                // After a whole response, any code: it ends nothing the
                // client has not been answered.
                if relay.upstream_done(key) {
                    return;
                }
                if code == ErrorCode::REFUSED_STREAM {
                    if !retry(relay, side, key) {
                        relay.refuse(key, &status_of_reset(code), true);
                    }
                    return;
                }
                let expired = relay
                    .calls
                    .borrow()
                    .deadline_passed(key, monoio::time::Instant::now());
                if expired && code == ErrorCode::CANCEL {
                    relay.expire(key, DEADLINE);
                } else {
                    relay.fail(key, &status_of_reset(code), true, None);
                }
            }
        }
        Later::Opened(0) => {
            let keys: Vec<usize> = side.wire.borrow().links.values().copied().collect();
            for key in keys {
                opened(relay, side, key);
            }
            // New SETTINGS may have raised the stream limit.
            relay.open_waiting(side);
        }
        Later::Opened(u) => {
            if let Some(key) = key_of(u) {
                opened(relay, side, key);
            }
        }
        Later::Finish(key) => relay.finish(key),
        Later::Expire(key) => relay.expire(key, DEADLINE),
        Later::HeadTooLarge(u) => {
            // The upstream may keep the stream open for good: it is ended
            // here (CANCEL: a client may discard a response it cannot
            // process, RFC 9113 10.5.1), or it would hold a slot of the
            // connection's stream limit.
            {
                let mut w = side.wire.borrow_mut();
                let w = &mut *w;
                if w.conn.streams().get(u).is_some() {
                    w.conn.reset(u, ErrorCode::CANCEL, &mut w.out);
                }
            }
            if let Some(key) = key_of(u) {
                let status =
                    Status::new(Code::Internal, "the upstream's response head is too large");
                relay.fail(key, &status, false, None);
            }
            side.flush();
        }
        Later::GoAway(last) => {
            // Streams above `last` were never processed.
            let cut: Vec<usize> = side
                .wire
                .borrow()
                .links
                .iter()
                .filter(|(&u, _)| u > last)
                .map(|(_, &key)| key)
                .collect();
            let status = Status::new(Code::Unavailable, "the upstream is going away");
            for key in cut {
                // One it answered whole (a GOAWAY that names too low an
                // id): the answer stands.
                if relay.upstream_done(key) {
                    continue;
                }
                if !retry(relay, side, key) {
                    relay.refuse(key, &status, false);
                }
            }
        }
    }
}

/// Sends call `key` again on a new upstream stream, elsewhere than on
/// `old`, which refused it unprocessed (REFUSED_STREAM, or above its
/// GOAWAY's last stream id), if it holds its whole request and has not
/// been retried before; `false` if it cannot be (the caller fails it).
/// What was sent goes again first (the client had its credit back for
/// it), then what still waited.
fn retry(relay: &Rc<Relay>, old: &Rc<Side>, key: usize) -> bool {
    let (endpoint, dial, head) = {
        let mut calls = relay.calls.borrow_mut();
        let Some(call) = calls.get_mut(key) else {
            return false;
        };
        if call.responded || call.retried.is_some() || call.hold.is_none() {
            return false;
        }
        let Some((_, u)) = call.up.take() else {
            return false;
        };
        let Some(Hold {
            bytes,
            head,
            ended,
            charge,
        }) = call.hold.take()
        else {
            return false;
        };
        {
            let mut w = old.wire.borrow_mut();
            let wire = &mut *w;
            wire.links.remove(&u);
            if wire.conn.streams().get(u).is_some() {
                wire.conn.reset(u, ErrorCode::CANCEL, &mut wire.out);
            }
        }
        old.flush();
        relay.give_back_growth(call);
        call.streaming = false;
        call.endpoint.stream(false);
        call.cluster.pending(true);
        let data = &bytes[head..];
        let sent = data.len().saturating_sub(unsent(&call.to_up) as usize);
        if sent > 0 {
            call.to_up
                .push_front(bytes::Bytes::copy_from_slice(&data[..sent]));
            call.replayed = sent as u32;
        }
        call.up_end |= ended;
        call.retried = Some(charge);
        let encoded = bytes[..head].to_vec();
        relay.spare_buffer(bytes);
        let dial = Dial::of(&call.cluster);
        let endpoint = call.cluster.pick(|e| relay.reachable(e, dial.tag)).clone();
        (endpoint, dial, encoded)
    };
    let up = upstream(relay, &endpoint, &dial, Some(old));
    if let Some(call) = relay.calls.borrow_mut().get_mut(key) {
        call.endpoint = endpoint;
        call.head = Some(head);
        call.waiting_on = Some(up.clone());
    }
    up.wire.borrow_mut().waiting.push_back(key);
    add(&relay.server.calls.counters.retries, 1);
    tracing::debug!("upstream refused a call unprocessed: retrying it on another stream");
    relay.open_waiting(&up);
    relay.stream_freed(old);
    true
}

/// Calls that waited for `side` to be ready and found its stream limit
/// (which its SETTINGS just told) too low for them all, or that waited
/// on it when it got GOAWAY, go elsewhere (see [`requeue`]) instead of
/// queueing behind it.
fn spill(relay: &Rc<Relay>, side: &Rc<Side>) {
    let left: Vec<usize> = side.wire.borrow_mut().waiting.drain(..).collect();
    for key in left {
        requeue(relay, key, side);
    }
}

/// The calls waiting for a stream on `gone`, an established connection
/// that ended or got GOAWAY, go to another connection, each once: an
/// upstream that ends or turns away every connection while calls wait
/// must not keep them moving from one to the next. Those moved before
/// are refused (they were never sent: see [`Relay::refuse`]).
fn move_waiting(relay: &Rc<Relay>, gone: &Rc<Side>) {
    let left: Vec<usize> = gone.wire.borrow_mut().waiting.drain(..).collect();
    let status = Status::new(
        Code::Unavailable,
        "upstream unavailable: it turned the call away",
    );
    for key in left {
        let first = relay
            .calls
            .borrow_mut()
            .get_mut(key)
            .is_some_and(|call| !std::mem::replace(&mut call.moved, true));
        if first {
            requeue(relay, key, gone);
        } else {
            relay.refuse(key, &status, false);
        }
    }
}

/// Call `key` found no room on `full`: it goes to another connection to
/// its endpoint, a new one if `max_connections_per_endpoint` allows, and
/// waits on `full` only if there is no other.
pub fn requeue(relay: &Rc<Relay>, key: usize, full: &Rc<Side>) {
    let Some((endpoint, dial)) = relay
        .calls
        .borrow()
        .get(key)
        .map(|c| (c.endpoint.clone(), Dial::of(&c.cluster)))
    else {
        return;
    };
    let up = upstream(relay, &endpoint, &dial, Some(full));
    if let Some(call) = relay.calls.borrow_mut().get_mut(key) {
        call.waiting_on = Some(up.clone());
    }
    up.wire.borrow_mut().waiting.push_back(key);
    relay.open_waiting(&up);
}

/// The upstream gave `key`'s stream credit: send what waits, and give the
/// client back what was sent.
fn opened(relay: &Relay, side: &Rc<Side>, key: usize) {
    let (sent, down, d) = {
        let mut calls = relay.calls.borrow_mut();
        let Some(call) = calls.get_mut(key) else {
            return;
        };
        let sent = push_up(call, &mut side.wire.borrow_mut());
        (sent, call.down.clone(), call.d)
    };
    if sent > 0 {
        down.wire.borrow_mut().release(d, sent);
        down.flush();
    }
}

/// The connection is gone: every call on it or waiting for it fails, with
/// `why` for the client and `detail` (naming the endpoint and the OS or
/// TLS error) for the access log.
fn fail_all(relay: &Relay, side: &Rc<Side>, why: &'static str, detail: Option<&str>) {
    let (linked, waiting): (Vec<usize>, Vec<usize>) = {
        let mut w = side.wire.borrow_mut();
        let linked = w.links.values().copied().collect();
        let waiting = w.waiting.drain(..).collect();
        (linked, waiting)
    };
    let status = Status::new(Code::Unavailable, why);
    for key in linked {
        // Answered whole, the end still waiting for the client's credit:
        // the answer stands (an upstream that stops gracefully closes
        // once its streams are done, whatever its clients still read).
        if !relay.upstream_done(key) {
            relay.fail(key, &status, false, detail);
        }
    }
    for key in waiting {
        relay.fail(key, &status, false, detail);
    }
}
