//! One downstream HTTP/2 connection: handshake, accept streams, drain.
//!
//! Cleartext HTTP/2 with prior knowledge, or TLS (ALPN `h2`) when the
//! running config has a certificate: the TLS handshake runs on this core,
//! and a verified client certificate becomes the connection's
//! [`PeerIdentity`], which every call on it hands to the director. Anything
//! else (HTTP/1.1, garbage, a failed TLS handshake, a port probe that
//! connects and closes, a client too slow to finish TLS and the HTTP/2
//! preface within `handshake_timeout`, a TLS handshake given up to make
//! room at the core's limit of handshakes under way; see
//! [`Room`](crate::runtime::room::Room)) closes this connection
//! alone; it is logged at debug level with the reason.
//!
//! Each accepted stream runs as its own task on this core. A connection
//! retires with a graceful GOAWAY after `idle_timeout` without calls and at
//! `max_connection_age` (off by default). When the worker
//! drains, the connection sends GOAWAY (h2's graceful shutdown: a first
//! GOAWAY, a PING round trip, then the final one), lets its streams finish,
//! and closes.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Settings;
use crate::downstream::call::PerConnection;
use crate::downstream::server::Server;
use crate::telemetry::metrics::add;
use crate::transport::http2::{self, ServerConnection};
use crate::transport::tls::PeerIdentity;

enum Event<T> {
    Stop,
    Drain,
    Check,
    /// The client did not acknowledge a keepalive PING in time.
    Unanswered,
    WriteFailed(std::io::Error),
    Accept(Option<Result<T, h2::Error>>),
}

/// While draining, how often a connection checks whether its streams are
/// done. h2's graceful shutdown waits for the client to acknowledge a PING
/// before the final GOAWAY; a client that never reads would hold the drain
/// until its timeout, so a connection with no streams left is closed here.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Serves one accepted TCP connection until it closes.
pub async fn serve(server: &Rc<Server>, tcp: TcpStream, peer: SocketAddr) {
    crate::transport::socket::tune(&tcp, &server.settings);
    let io = match tcp.into_poll_io() {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "downstream socket unusable");
            return;
        }
    };
    let deadline = monoio::time::Instant::now() + server.settings.handshake_timeout;
    // The acceptor of the config running now; a reload affects only
    // connections accepted after it.
    let tls = server.snapshot().tls.clone();
    let Some(acceptor) = tls else {
        return run(server, io, peer, None, deadline).await;
    };
    let place = server.handshakes.enter();
    let handshake = monoio::time::timeout_at(deadline, acceptor.accept(io));
    let accepted = monoio::select! {
        accepted = handshake => accepted,
        _ = place.evicted() => {
            tracing::debug!(%peer, "downstream TLS handshake given up to make room for a newer one");
            return;
        }
        _ = server.stop.wait() => return,
    };
    drop(place);
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "downstream TLS handshake failed");
            add(&server.calls.counters.tls_handshake_failures, 1);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "downstream TLS handshake timed out");
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| Rc::new(PeerIdentity::from_der(leaf)));
    run(server, stream, peer, identity, deadline).await
}

/// Serves HTTP/2 on an established stream (TCP or TLS) until it closes.
async fn run<T>(
    server: &Rc<Server>,
    io: T,
    peer: SocketAddr,
    identity: Option<Rc<PeerIdentity>>,
    deadline: monoio::time::Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut conn, flusher) =
        match monoio::time::timeout_at(deadline, http2::accept(&server.h2, io)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "downstream handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "downstream handshake timed out");
                return;
            }
        };
    let mut stop = std::pin::pin!(server.stop.wait());
    let mut drain = std::pin::pin!(server.drain.wait());
    let mut schedule = Schedule::new(&server.settings);
    let mut keepalive = server.settings.ping_interval.and_then(|every| {
        Some(Keepalive::new(
            conn.ping_pong()?,
            every,
            server.settings.ping_timeout,
        ))
    });
    let shared = Rc::new(PerConnection::new(&server.settings));
    // Set once the connection is closed for its resets: the streams it
    // still opens are dropped unserved.
    let mut flooded = false;
    loop {
        let event = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if !schedule.draining && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if schedule.poll_tick(cx) {
                return Poll::Ready(Event::Check);
            }
            // Before the flush below, so that a PING sent now goes out.
            if keepalive.as_mut().is_some_and(|k| k.poll_unanswered(cx)) {
                return Poll::Ready(Event::Unanswered);
            }
            let accepted = Pin::new(&mut conn).poll_accept(cx);
            // Whatever h2 wrote during this poll goes out in one write.
            if let Poll::Ready(Err(e)) = flusher.poll_flush(cx) {
                return Poll::Ready(Event::WriteFailed(e));
            }
            accepted.map(Event::Accept)
        })
        .await;
        match event {
            // Dropping the connection closes the socket and fails its
            // streams, which ends their call tasks.
            Event::Stop => break,
            Event::Drain => schedule.drain(&mut conn),
            Event::Check => schedule.check(&mut conn, peer),
            Event::Unanswered => {
                // A client behind a dead link: its kernel may still
                // acknowledge (so TCP keepalive and TCP_USER_TIMEOUT see
                // nothing), but it answers no PING. Closing the
                // connection cancels its calls upstream.
                tracing::debug!(%peer, "downstream connection did not answer a keepalive PING; closing it");
                break;
            }
            Event::WriteFailed(e) => {
                tracing::debug!(%peer, error = %e, "downstream write failed");
                break;
            }
            Event::Accept(Some(Ok((request, respond)))) => {
                schedule.accepted += 1;
                if flooded || shared.resets.opened() {
                    if !flooded {
                        flooded = true;
                        tracing::warn!(%peer, "downstream connection resets most of the streams it opens: closing it (GOAWAY ENHANCE_YOUR_CALM)");
                        add(&server.calls.counters.reset_floods, 1);
                        conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    }
                    continue;
                }
                monoio::spawn(crate::downstream::call::handle(
                    server.calls.clone(),
                    server.snapshot(),
                    request,
                    respond,
                    peer,
                    identity.clone(),
                    shared.clone(),
                ));
            }
            Event::Accept(Some(Err(e))) => {
                tracing::debug!(%peer, error = %e, "downstream connection error");
                break;
            }
            Event::Accept(None) => break,
        }
    }
}

/// A connection's one timer and what it is for: the next lifetime check
/// (idle, age) or, while draining, the next look at whether the streams
/// are done.
struct Schedule {
    life: Lifetime,
    draining: bool,
    tick: Option<Pin<Box<monoio::time::Sleep>>>,
    /// Streams accepted since the last idle check: counting costs the call
    /// path an increment, where re-arming a timer per call would not be
    /// free.
    accepted: u64,
}

impl Schedule {
    fn new(settings: &Settings) -> Schedule {
        let life = Lifetime::new(settings);
        Schedule {
            tick: life.next_tick(),
            life,
            draining: false,
            accepted: 0,
        }
    }

    /// Whether the timer went off.
    fn poll_tick(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.tick
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Starts a graceful GOAWAY and looks at the streams now and then.
    fn drain<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut ServerConnection<T>) {
        self.draining = true;
        conn.graceful_shutdown();
        self.tick = Some(sleep(DRAIN_CHECK));
    }

    /// The timer went off: close a drained connection, retire one that is
    /// idle or old, or wait for the next check.
    fn check<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut ServerConnection<T>,
        peer: SocketAddr,
    ) {
        if self.draining {
            if conn.has_streams() {
                self.tick = Some(sleep(DRAIN_CHECK));
            } else {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                self.tick = None;
            }
            return;
        }
        let idle = self.accepted == 0 && !conn.has_streams();
        self.accepted = 0;
        if let Some(why) = self.life.expired(idle) {
            tracing::debug!(%peer, why, "downstream connection retiring (GOAWAY)");
            self.drain(conn);
        } else {
            self.tick = self.life.next_tick();
        }
    }
}

/// HTTP/2 PINGs to the client, `every` so often; a PING not acknowledged
/// `within` its time means the client is gone.
struct Keepalive {
    ping: h2::PingPong,
    every: Duration,
    within: Duration,
    timer: Pin<Box<monoio::time::Sleep>>,
    /// A PING is out, and `timer` is its deadline.
    waiting: bool,
}

impl Keepalive {
    fn new(ping: h2::PingPong, every: Duration, within: Duration) -> Keepalive {
        Keepalive {
            ping,
            every,
            within,
            timer: sleep(every),
            waiting: false,
        }
    }

    /// Sends a PING when one is due; `true` once one went unanswered.
    fn poll_unanswered(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer = sleep(self.every);
                        continue;
                    }
                    // The connection failed: accepting streams reports it.
                    Poll::Ready(Err(_)) => return false,
                    Poll::Pending => return self.timer.as_mut().poll(cx).is_ready(),
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.ping.send_ping(h2::Ping::opaque()).is_err() {
                return false;
            }
            self.waiting = true;
            self.timer = sleep(self.within);
        }
    }
}

fn sleep(d: Duration) -> Pin<Box<monoio::time::Sleep>> {
    Box::pin(monoio::time::sleep(d))
}

/// When a downstream connection should retire: after `idle_timeout`
/// without calls (checked every `idle_timeout`, so it closes after one to
/// two of them) or at `max_connection_age`, so that long-lived clients
/// reconnect and spread over the cores. Retiring is a graceful GOAWAY.
struct Lifetime {
    idle: Option<Duration>,
    retire_at: Option<Instant>,
}

impl Lifetime {
    fn new(settings: &Settings) -> Lifetime {
        Lifetime {
            idle: settings.idle_timeout,
            retire_at: settings.max_connection_age.map(|age| Instant::now() + age),
        }
    }

    fn next_tick(&self) -> Option<Pin<Box<monoio::time::Sleep>>> {
        let now = Instant::now();
        let age = self.retire_at.map(|at| at.saturating_duration_since(now));
        match (self.idle, age) {
            (Some(a), Some(b)) => Some(sleep(a.min(b))),
            (a, b) => a.or(b).map(sleep),
        }
    }

    /// Why the connection should retire now, if it should.
    fn expired(&self, idle_since_last_check: bool) -> Option<&'static str> {
        if self.retire_at.is_some_and(|at| Instant::now() >= at) {
            Some("max connection age")
        } else if self.idle.is_some() && idle_since_last_check {
            Some("idle timeout")
        } else {
            None
        }
    }
}
