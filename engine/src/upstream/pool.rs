//! The upstream pool of one worker: HTTP/2 client connections per endpoint.
//!
//! Key types: [`Pool`] (this worker's connection machinery and limits),
//! [`Cluster`] (endpoints and their TLS; shared by config snapshots, so a
//! reload that leaves a cluster alone keeps its connections), `Endpoint`
//! (one address, its connections and its reconnect back-off), [`UpConn`]
//! (one HTTP/2 connection and its stream count) and [`Upstream`] (a stream
//! opened for one call).
//!
//! Invariants:
//! - Connections are opened lazily, by the first call that needs one, and
//!   shared by every call on this core. At most one connect per endpoint is
//!   in progress; other calls wait for it instead of opening their own.
//! - A call takes the least-loaded usable connection with a free stream slot
//!   (below the upstream's SETTINGS_MAX_CONCURRENT_STREAMS); when every
//!   connection is full, another is opened, up to
//!   `max_connections_per_endpoint`; past that, h2 queues the stream.
//! - A connection that received GOAWAY (h2 then refuses new streams) takes no
//!   new calls; its in-flight streams finish; the next call opens a fresh one.
//! - With upstream TLS, the handshake is part of the connect (same timeout);
//!   ALPN offers `h2`, and a certificate that does not verify is a connect
//!   failure like a refused port.
//! - A failed connect puts the endpoint in exponential back-off; while in
//!   back-off and with no usable connection, calls fail at once with
//!   UNAVAILABLE rather than hang; the next endpoint is tried.
//! - Balancing is per core, without shared state: round robin, or least
//!   request (of two endpoints picked at random, the one with fewer calls in
//!   flight). Endpoints that failed their health checks, or were ejected
//!   after failing calls in a row, are skipped while any other is up; when
//!   none is, all are tried (a down cluster should not also be an idle one).
//!
//! Cost per call: one `RefCell` borrow per step, no allocation, no atomics
//! beyond h2's own.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::Request;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;

use crate::config::{Balance, HealthCheck, Outlier, Settings, UpstreamTls};
use crate::runtime::wake::{Latch, Notify};
use crate::telemetry::metrics::{CallStats, ClusterReport};
use crate::transport::http2::{self, HandshakeError};
use crate::transport::tls::{ClientTls, Connector};

/// Why no upstream stream could be opened. Every variant is UNAVAILABLE to
/// the client and is safe to retry: nothing reached an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("upstream {addr}: connect failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TCP connect took longer than `connect_timeout`.
    #[error("upstream {addr}: connect timed out after {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name...).
    #[error("upstream {addr}: TLS handshake failed: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP/2 handshake or stream open failed.
    #[error("upstream {addr}: HTTP/2 error: {source}")]
    Http2 {
        /// The endpoint.
        addr: SocketAddr,
        /// h2's error.
        source: h2::Error,
    },
    /// The endpoint failed recently and is waiting before a new connect.
    #[error("{last} (next connect attempt in {}ms)", retry_in.as_millis())]
    BackingOff {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed last, naming the endpoint.
        last: Rc<str>,
        /// Time left in the back-off.
        retry_in: Duration,
    },
}

/// One HTTP/2 connection to an upstream endpoint.
pub struct UpConn {
    send: RefCell<SendRequest<Bytes>>,
    active: Cell<usize>,
    usable: Cell<bool>,
    /// The last stream id of the upstream's GOAWAY, once one came.
    goaway_last: crate::transport::goaway::LastStreamId,
}

impl UpConn {
    /// Opens a stream outside any call (a health check).
    pub(crate) fn send_request(
        &self,
        request: Request<()>,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), h2::Error> {
        self.send.borrow_mut().send_request(request, end_of_stream)
    }

    fn has_room(&self) -> bool {
        self.active.get() < self.send.borrow().current_max_send_streams()
    }
}

/// A connection (and its endpoint) a retry should not use if another will
/// do.
pub struct Avoid {
    endpoint: Rc<Endpoint>,
    conn: Rc<UpConn>,
}

/// Holds one stream slot of a connection; frees it on drop.
pub struct StreamSlot {
    conn: Rc<UpConn>,
    endpoint: Rc<Endpoint>,
}

impl StreamSlot {
    fn new(conn: Rc<UpConn>, endpoint: Rc<Endpoint>) -> StreamSlot {
        conn.active.set(conn.active.get() + 1);
        endpoint.active.set(endpoint.active.get() + 1);
        StreamSlot { conn, endpoint }
    }

    /// Whether stream `id` is above the last stream id of a GOAWAY the
    /// upstream sent on this connection: it was never processed.
    pub fn above_goaway(&self, id: u32) -> bool {
        self.conn.goaway_last.get().is_some_and(|last| id > last)
    }

    /// Where this stream is, for a retry to go elsewhere.
    pub fn avoid(&self) -> Avoid {
        Avoid {
            endpoint: self.endpoint.clone(),
            conn: self.conn.clone(),
        }
    }

    /// The endpoint the stream is on.
    pub fn endpoint(&self) -> &Rc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.conn.active.set(self.conn.active.get() - 1);
        self.endpoint.active.set(self.endpoint.active.get() - 1);
    }
}

/// A stream opened upstream for one call.
pub struct Upstream {
    /// The upstream's response headers, when they come.
    pub response: ResponseFuture,
    /// The request direction of the stream.
    pub send: SendStream<Bytes>,
    /// Whether request DATA may follow (the headers did not end the stream).
    pub request_open: bool,
    /// Keeps the connection's stream count right.
    pub slot: StreamSlot,
}

/// One upstream address, its connections and its state.
pub struct Endpoint {
    addr: SocketAddr,
    conns: RefCell<Vec<Rc<UpConn>>>,
    connecting: Cell<bool>,
    changed: Notify,
    /// Connect failures in a row (reconnect back-off).
    failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
    last_error: RefCell<Rc<str>>,
    /// Streams open on this endpoint's connections.
    active: Cell<usize>,
    /// Active health: false after `unhealthy_threshold` failed checks.
    healthy: Cell<bool>,
    /// Checks passed (when unhealthy) or failed (when healthy) in a row.
    health_streak: Cell<u32>,
    /// Passive: call failures in a row, ejections so far, ejected until.
    call_failures: Cell<u32>,
    ejections: Cell<u32>,
    ejected_until: Cell<Option<Instant>>,
    /// Connections of this endpoint that received a GOAWAY.
    goaways: Rc<Cell<u64>>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            conns: RefCell::new(Vec::new()),
            connecting: Cell::new(false),
            changed: Notify::default(),
            failures: Cell::new(0),
            retry_at: Cell::new(None),
            last_error: RefCell::new(Rc::from("")),
            active: Cell::new(0),
            healthy: Cell::new(true),
            health_streak: Cell::new(0),
            call_failures: Cell::new(0),
            ejections: Cell::new(0),
            ejected_until: Cell::new(None),
            goaways: Rc::default(),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it should take calls now: healthy and not ejected.
    fn is_up(&self) -> bool {
        if !self.healthy.get() {
            return false;
        }
        match self.ejected_until.get() {
            None => true,
            Some(until) if Instant::now() >= until => {
                self.ejected_until.set(None);
                true
            }
            Some(_) => false,
        }
    }

    /// Records a health-check result; says when the state changed.
    pub fn health_result(&self, passed: bool, check: &HealthCheck) -> Option<bool> {
        let healthy = self.healthy.get();
        if passed == healthy {
            self.health_streak.set(0);
            return None;
        }
        let streak = self.health_streak.get() + 1;
        let threshold = if healthy {
            check.unhealthy_threshold
        } else {
            check.healthy_threshold
        };
        if streak < threshold {
            self.health_streak.set(streak);
            return None;
        }
        self.health_streak.set(0);
        self.healthy.set(passed);
        Some(passed)
    }

    /// Records how a call on this endpoint went, for passive ejection.
    fn call_result(&self, failed: bool, outlier: &Outlier) {
        if !failed {
            self.call_failures.set(0);
            self.ejections.set(0);
            return;
        }
        let n = self.call_failures.get() + 1;
        self.call_failures.set(n);
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures {
            return;
        }
        self.call_failures.set(0);
        let k = self.ejections.get();
        self.ejections.set(k.saturating_add(1));
        let length = outlier
            .base_ejection
            .saturating_mul(1u32 << k.min(16))
            .min(outlier.max_ejection);
        self.ejected_until.set(Some(Instant::now() + length));
        tracing::warn!(upstream = %self.addr, failures = n, ejected_for = ?length, "upstream endpoint ejected");
    }
}

/// What a worker builds one cluster from; `Send`.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// The cluster's name.
    pub name: String,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Upstream TLS, loaded.
    pub tls: Option<ClientTls>,
    /// Upstream TLS as configured: a reload that changes it starts the
    /// cluster afresh.
    pub tls_config: Option<UpstreamTls>,
    /// Balancing policy.
    pub balance: Balance,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection.
    pub outlier: Outlier,
}

impl ClusterPlan {
    /// A plain cluster: round robin, no health checks, default ejection.
    pub fn new(name: &str, endpoints: Vec<SocketAddr>, tls: Option<ClientTls>) -> ClusterPlan {
        ClusterPlan {
            name: name.to_owned(),
            endpoints,
            tls,
            tls_config: None,
            balance: Balance::default(),
            health_check: None,
            outlier: Outlier::default(),
        }
    }
}

/// The endpoints of one cluster on this worker, with their connections.
pub struct Cluster {
    name: Box<str>,
    endpoints: Vec<Rc<Endpoint>>,
    next: Cell<usize>,
    tls_config: Option<UpstreamTls>,
    /// Used by new connections; a reload swaps in freshly read files.
    tls: RefCell<Option<Rc<Connector>>>,
    balance: Balance,
    health_check: Option<HealthCheck>,
    outlier: Outlier,
    /// State of the random choices of least-request (xorshift).
    rng: Cell<u64>,
    /// Calls through this cluster on this core.
    pub(crate) stats: CallStats,
    connect_failures: Cell<u64>,
    resets: Cell<u64>,
}

impl Cluster {
    /// A cluster with no connections yet.
    pub fn new(plan: &ClusterPlan) -> Rc<Cluster> {
        Rc::new(Cluster {
            name: plan.name.as_str().into(),
            endpoints: plan
                .endpoints
                .iter()
                .map(|&addr| Rc::new(Endpoint::new(addr)))
                .collect(),
            next: Cell::new(0),
            tls_config: plan.tls_config.clone(),
            tls: RefCell::new(plan.tls.as_ref().map(|t| Rc::new(t.for_worker()))),
            balance: plan.balance,
            health_check: plan.health_check.clone(),
            outlier: plan.outlier.clone(),
            rng: Cell::new(seed()),
            stats: CallStats::default(),
            connect_failures: Cell::new(0),
            resets: Cell::new(0),
        })
    }

    /// This cluster, kept with its connections, if `plan` names it with the
    /// same endpoints and TLS settings; its TLS files are taken anew.
    pub fn reuse(self: &Rc<Cluster>, plan: &ClusterPlan) -> Option<Rc<Cluster>> {
        let same = *self.name == *plan.name
            && self.tls_config == plan.tls_config
            && self.balance == plan.balance
            && self.health_check == plan.health_check
            && self.outlier == plan.outlier
            && self.endpoints.len() == plan.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&plan.endpoints)
                .all(|(e, a)| e.addr == *a);
        if !same {
            return None;
        }
        *self.tls.borrow_mut() = plan.tls.as_ref().map(|t| Rc::new(t.for_worker()));
        Some(self.clone())
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's endpoints.
    pub fn endpoints(&self) -> &[Rc<Endpoint>] {
        &self.endpoints
    }

    /// Its active health checks, if on.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }

    /// Records how a call on `endpoint` ended: `reset` when the upstream
    /// reset it, `failed` when the endpoint is to blame (reset or lost
    /// connection), for passive ejection.
    pub fn call_result(&self, endpoint: &Endpoint, failed: bool, reset: bool) {
        if reset {
            crate::telemetry::metrics::add(&self.resets, 1);
        }
        endpoint.call_result(failed, &self.outlier);
    }

    /// Counters and connection figures for a scrape.
    pub fn report(&self) -> ClusterReport {
        let mut r = crate::telemetry::metrics::cluster_report(&self.stats);
        r.connect_failures = self.connect_failures.get();
        r.resets = self.resets.get();
        r.endpoints = self.endpoints.len() as u64;
        for e in &self.endpoints {
            r.connections += e.conns.borrow().len() as u64;
            r.streams += e.active.get() as u64;
            r.endpoints_up += u64::from(e.is_up());
            r.goaways += e.goaways.get();
        }
        r
    }

    /// The endpoint to try first for a call, by the balancing policy,
    /// among those that are up (or all, when none is).
    fn first_choice(&self, any_up: bool) -> usize {
        let n = self.endpoints.len();
        match self.balance {
            Balance::RoundRobin => {
                let start = self.next.get();
                self.next.set(start.wrapping_add(1));
                start % n
            }
            Balance::LeastRequest => {
                let candidates = |i: usize| !any_up || self.endpoints[i].is_up();
                let up = if any_up {
                    self.endpoints.iter().filter(|e| e.is_up()).count()
                } else {
                    n
                };
                // The k-th endpoint that is a candidate.
                let nth = |k: usize| (0..n).filter(|&i| candidates(i)).nth(k).unwrap_or(0);
                if up <= 1 {
                    return nth(0);
                }
                let a = self.random(up);
                let b = (a + 1 + self.random(up - 1)) % up;
                let (a, b) = (nth(a), nth(b));
                if self.endpoints[b].active.get() < self.endpoints[a].active.get() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// A random number below `n` (xorshift64*; per core, no locks).
    fn random(&self, n: usize) -> usize {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// A seed for a cluster's random choices.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// The upstream connection machinery of one worker.
pub struct Pool {
    settings: Rc<Settings>,
    h2: h2::client::Builder,
    /// The worker's stop signal: connection tasks end when it is set.
    stop: Rc<Latch>,
    /// Connection tasks still running.
    live: Rc<Cell<usize>>,
}

impl Pool {
    /// A pool with these limits; opens nothing.
    pub fn new(settings: Rc<Settings>, stop: Rc<Latch>) -> Pool {
        let h2 = http2::client(&settings);
        Pool {
            settings,
            h2,
            stop,
            live: Rc::new(Cell::new(0)),
        }
    }

    /// The worker's stop signal.
    pub(crate) fn stop(&self) -> &Latch {
        &self.stop
    }

    /// Upstream connections whose tasks are still running.
    pub fn live_connections(&self) -> usize {
        self.live.get()
    }

    /// Opens a stream for `request` on an endpoint of `cluster`, chosen by
    /// the cluster's policy; an endpoint that cannot be reached now (back-off,
    /// failed connect) passes the call to the next. `avoid` is a connection
    /// not to use if another will do (a retry after it refused the stream):
    /// another endpoint is preferred, then another connection.
    pub async fn open(
        &self,
        cluster: &Cluster,
        request: Request<()>,
        end_of_stream: bool,
        avoid: Option<&Avoid>,
    ) -> Result<Upstream, UpstreamError> {
        let n = cluster.endpoints.len();
        let any_up = cluster.endpoints.iter().any(|e| e.is_up());
        let mut first = cluster.first_choice(any_up);
        if let Some(avoid) = avoid {
            if n > 1 && Rc::ptr_eq(&cluster.endpoints[first], &avoid.endpoint) {
                first = (first + 1) % n;
            }
        }
        let mut last_error = None;
        for i in 0..n {
            let endpoint = &cluster.endpoints[(first + i) % n];
            if any_up && !endpoint.is_up() {
                continue;
            }
            let avoid_conn = avoid.map(|a| &a.conn).filter(|_| n == 1);
            match self.ready_connection(cluster, endpoint, avoid_conn).await {
                Ok(conn) => {
                    let opened = conn.send.borrow_mut().send_request(request, end_of_stream);
                    return match opened {
                        Ok((response, send)) => Ok(Upstream {
                            response,
                            send,
                            request_open: !end_of_stream,
                            slot: StreamSlot::new(conn, endpoint.clone()),
                        }),
                        Err(source) => {
                            retire(endpoint, &conn);
                            Err(UpstreamError::Http2 {
                                addr: endpoint.addr,
                                source,
                            })
                        }
                    };
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("a cluster has at least one endpoint"))
    }

    /// A connection of `endpoint` that h2 says can take a new stream now.
    pub(crate) async fn ready_connection(
        &self,
        cluster: &Cluster,
        endpoint: &Rc<Endpoint>,
        avoid: Option<&Rc<UpConn>>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        // A connection that refuses new streams (GOAWAY, or failed) is
        // retired and another tried; an upstream that refuses every new
        // connection at once must not make a call reconnect forever.
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            let conn = self.connection(cluster, endpoint, avoid).await?;
            let ready = poll_fn(|cx| conn.send.borrow_mut().poll_ready(cx)).await;
            match ready {
                Ok(()) => return Ok(conn),
                Err(source) => {
                    tracing::debug!(upstream = %endpoint.addr, error = %source, "upstream connection retired");
                    retire(endpoint, &conn);
                    attempt += 1;
                    if attempt == ATTEMPTS {
                        return Err(UpstreamError::Http2 {
                            addr: endpoint.addr,
                            source,
                        });
                    }
                }
            }
        }
    }

    async fn connection(
        &self,
        cluster: &Cluster,
        endpoint: &Rc<Endpoint>,
        avoid: Option<&Rc<UpConn>>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        loop {
            let best = endpoint
                .conns
                .borrow()
                .iter()
                .filter(|c| c.usable.get() && avoid.is_none_or(|a| !Rc::ptr_eq(a, c)))
                .min_by_key(|c| c.active.get())
                .cloned();
            if let Some(conn) = &best {
                if conn.has_room() {
                    return Ok(best.expect("checked"));
                }
            }
            let room_for_more =
                endpoint.conns.borrow().len() < self.settings.max_connections_per_endpoint;
            if endpoint.connecting.get() {
                // Another call is connecting: wait for it rather than open a
                // second connection for the same burst.
                endpoint.changed.notified().await;
                continue;
            }
            if room_for_more {
                if best.is_none() {
                    if let Some(at) = endpoint.retry_at.get() {
                        let now = Instant::now();
                        if now < at {
                            return Err(UpstreamError::BackingOff {
                                addr: endpoint.addr,
                                last: endpoint.last_error.borrow().clone(),
                                retry_in: at - now,
                            });
                        }
                    }
                }
                endpoint.connecting.set(true);
                // Boxed: connecting is rare, and inlining its futures made
                // every call's task ~3 KiB larger (copied at each spawn).
                let tls = cluster.tls.borrow().clone();
                let result = Box::pin(self.connect(endpoint, tls)).await;
                endpoint.connecting.set(false);
                endpoint.changed.notify_all();
                match result {
                    Ok(conn) => {
                        endpoint.failures.set(0);
                        endpoint.retry_at.set(None);
                        endpoint.conns.borrow_mut().push(conn.clone());
                        return Ok(conn);
                    }
                    Err(e) => {
                        crate::telemetry::metrics::add(&cluster.connect_failures, 1);
                        endpoint.call_result(true, &cluster.outlier);
                        self.back_off(endpoint, &e);
                        // With a live (full) connection, queue on it rather
                        // than fail the call.
                        return best.ok_or(e);
                    }
                }
            }
            if let Some(conn) = best {
                return Ok(conn);
            }
            if let Some(conn) = avoid.filter(|c| c.usable.get()) {
                // Nothing else to use: the avoided connection it is.
                return Ok(conn.clone());
            }
            // Every slot is taken by connections that have stopped taking
            // calls; wait for one to close.
            endpoint.changed.notified().await;
        }
    }

    fn back_off(&self, endpoint: &Endpoint, error: &UpstreamError) {
        let failures = endpoint.failures.get().saturating_add(1);
        endpoint.failures.set(failures);
        let min = self.settings.reconnect_backoff_min;
        let wait = min
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(self.settings.reconnect_backoff_max);
        endpoint.retry_at.set(Some(Instant::now() + wait));
        *endpoint.last_error.borrow_mut() = Rc::from(error.to_string());
        tracing::warn!(upstream = %endpoint.addr, error = %error, retry_in = ?wait, "upstream connect failed");
    }

    async fn connect(
        &self,
        endpoint: &Rc<Endpoint>,
        tls: Option<Rc<Connector>>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        let addr = endpoint.addr;
        let timeout = self.settings.connect_timeout;
        let deadline = monoio::time::Instant::now() + timeout;
        let tcp = match monoio::time::timeout_at(deadline, TcpStream::connect_addr(addr)).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let io = tcp
            .into_poll_io()
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let Some(tls) = tls else {
            return self.handshake(endpoint, io).await;
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), io);
        match monoio::time::timeout_at(deadline, handshake).await {
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => Err(UpstreamError::Tls { addr, source }),
            Ok(Ok(stream)) => {
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    tracing::debug!(upstream = %addr, "upstream TLS did not negotiate ALPN h2; speaking HTTP/2 anyway");
                }
                self.handshake(endpoint, stream).await
            }
        }
    }

    /// The HTTP/2 handshake over a connected stream, and the task that
    /// drives the connection.
    async fn handshake<T>(
        &self,
        endpoint: &Rc<Endpoint>,
        io: T,
    ) -> Result<Rc<UpConn>, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let addr = endpoint.addr;
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
            send: RefCell::new(send),
            active: Cell::new(0),
            usable: Cell::new(true),
            goaway_last,
        });
        let (weak_conn, weak_endpoint) = (Rc::downgrade(&conn), Rc::downgrade(endpoint));
        let (stop, live) = (self.stop.clone(), self.live.clone());
        live.set(live.get() + 1);
        monoio::spawn(async move {
            monoio::select! {
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
        }
        tracing::debug!(upstream = %addr, max_streams = conn.send.borrow().current_max_send_streams(), "upstream connection open");
        Ok(conn)
    }
}

/// Takes a connection out of rotation; its open streams run on.
fn retire(endpoint: &Endpoint, conn: &Rc<UpConn>) {
    if conn.usable.replace(false) {
        endpoint.conns.borrow_mut().retain(|c| !Rc::ptr_eq(c, conn));
        endpoint.changed.notify_all();
    }
}
