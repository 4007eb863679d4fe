//! Opening one HTTP/2 connection to an upstream endpoint: TCP, TLS when
//! the cluster has it, the HTTP/2 handshake, and the task that drives the
//! connection until it ends or the worker stops.
//!
//! The whole connect, TLS included, has `connect_timeout`; ALPN offers
//! `h2`, and a certificate that does not verify is a connect failure like
//! a refused port. A new connection is offered to calls only once the
//! upstream's SETTINGS are known (see `Dialer::connect`).

use std::cell::Cell;
use std::rc::Rc;

use monoio::io::IntoPollIo;
use monoio::net::TcpStream;

use crate::config::{Keepalive, Settings};
use crate::runtime::wake::Latch;
use crate::transport::http2::{self, HandshakeError};
use crate::transport::tls::Connector;
use crate::upstream::endpoint::{retire, Endpoint, UpConn};
use crate::upstream::error::UpstreamError;

/// What one worker opens upstream connections with.
pub struct Dialer {
    settings: Rc<Settings>,
    h2: h2::client::Builder,
    /// The worker's stop signal: connection tasks end when it is set.
    pub(super) stop: Rc<Latch>,
    /// Connection tasks still running.
    pub(super) live: Rc<Cell<usize>>,
}

impl Dialer {
    /// A dialer with these limits.
    pub fn new(settings: Rc<Settings>, stop: Rc<Latch>) -> Dialer {
        Dialer {
            h2: http2::client(&settings),
            settings,
            stop,
            live: Rc::new(Cell::new(0)),
        }
    }

    pub(super) async fn connect(
        &self,
        endpoint: &Rc<Endpoint>,
        tls: Option<Rc<Connector>>,
        keepalive: Option<Keepalive>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        let addr = endpoint.addr();
        let timeout = self.settings.connect_timeout;
        let deadline = monoio::time::Instant::now() + timeout;
        let tcp = match monoio::time::timeout_at(deadline, TcpStream::connect_addr(addr)).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(tcp)) => tcp,
        };
        crate::transport::socket::tune(&tcp, &self.settings);
        let io = tcp
            .into_poll_io()
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let Some(tls) = tls else {
            return self.handshake(endpoint, io, keepalive).await;
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), io);
        match monoio::time::timeout_at(deadline, handshake).await {
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => Err(UpstreamError::Tls { addr, source }),
            Ok(Ok(stream)) => {
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    tracing::debug!(upstream = %addr, "upstream TLS did not negotiate ALPN h2; speaking HTTP/2 anyway");
                }
                self.handshake(endpoint, stream, keepalive).await
            }
        }
    }

    /// The HTTP/2 handshake over a connected stream, and the task that
    /// drives the connection.
    async fn handshake<T>(
        &self,
        endpoint: &Rc<Endpoint>,
        io: T,
        keepalive: Option<Keepalive>,
    ) -> Result<Rc<UpConn>, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let addr = endpoint.addr();
        let timeout = self.settings.connect_timeout;
        let goaway_last = crate::transport::goaway::LastStreamId::default();
        let io =
            crate::transport::goaway::Watch::new(io, goaway_last.clone(), endpoint.goaways.clone());
        let http2::Client {
            send,
            ping,
            connection,
        } = http2::connect(&self.h2, io).await.map_err(|e| match e {
            HandshakeError::Write(source) => UpstreamError::Connect { addr, source },
            HandshakeError::Http2(source) => UpstreamError::Http2 { addr, source },
        })?;
        let conn = Rc::new(UpConn {
            send,
            active: Cell::new(0),
            usable: Cell::new(true),
            goaway_last,
        });
        let (weak_conn, weak_endpoint) = (Rc::downgrade(&conn), Rc::downgrade(endpoint));
        let (stop, live) = (self.stop.clone(), self.live.clone());
        // Set when keepalive PINGs go unanswered: the connection is closed.
        let dead = Rc::new(Latch::default());
        let unanswered = dead.clone();
        live.set(live.get() + 1);
        monoio::spawn(async move {
            monoio::select! {
                _ = unanswered.wait() => {}
                ended = connection => {
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(upstream = %addr, error = %e, "upstream connection ended"),
                        Err(e) => tracing::debug!(upstream = %addr, error = %e, "upstream write failed"),
                    }
                }
                _ = stop.wait() => {}
            }
            if let (Some(conn), Some(endpoint)) = (weak_conn.upgrade(), weak_endpoint.upgrade()) {
                retire(&endpoint, &conn);
            }
            live.set(live.get() - 1);
        });
        // Until the upstream's SETTINGS arrive, h2 assumes it allows 100
        // streams; a burst of calls right after connecting would pile onto
        // this connection and queue there. A PING round trip proves the
        // SETTINGS (sent before the PONG) have been applied.
        if let Some(mut ping) = ping {
            match monoio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(UpstreamError::Http2 { addr, source }),
                Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
            }
            if let Some(keepalive) = keepalive {
                let watch = Watch {
                    conn: Rc::downgrade(&conn),
                    stop: self.stop.clone(),
                    dead,
                };
                monoio::spawn(watch.run(ping, keepalive, addr));
            }
        }
        tracing::debug!(upstream = %addr, max_streams = conn.send.current_max_send_streams(), "upstream connection open");
        Ok(conn)
    }
}

/// The keepalive of one upstream connection: a PING every interval; one
/// not answered in time marks the connection dead, and its task closes it.
struct Watch {
    conn: std::rc::Weak<UpConn>,
    stop: Rc<Latch>,
    dead: Rc<Latch>,
}

impl Watch {
    async fn run(self, mut ping: h2::PingPong, keepalive: Keepalive, addr: std::net::SocketAddr) {
        loop {
            monoio::select! {
                _ = monoio::time::sleep(keepalive.interval) => {}
                _ = self.stop.wait() => return,
                _ = self.dead.wait() => return,
            }
            if self.conn.upgrade().is_none_or(|c| !c.usable.get()) {
                return;
            }
            let pong = monoio::select! {
                pong = monoio::time::timeout(keepalive.timeout, ping.ping(h2::Ping::opaque())) => pong,
                _ = self.stop.wait() => return,
            };
            if !matches!(pong, Ok(Ok(_))) {
                tracing::warn!(upstream = %addr, "upstream connection did not answer a keepalive PING; closing it");
                self.dead.set();
                return;
            }
        }
    }
}
