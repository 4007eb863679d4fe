//! The upstream pool of one worker: a stream for each call, on a shared
//! HTTP/2 connection to an endpoint of the call's cluster.
//!
//! Key types: [`Pool`] (this worker's connection machinery and limits),
//! [`Upstream`] (a stream opened for one call) and [`StreamSlot`] (its
//! place in its connection's count). Clusters, endpoints and connecting
//! are in the files beside this one.
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
//! - A failed connect puts the endpoint in exponential back-off; while in
//!   back-off and with no usable connection, calls fail at once with
//!   UNAVAILABLE rather than hang; the next endpoint is tried.
//!
//! Cost per call: one `RefCell` borrow per step, no allocation, no atomics
//! beyond h2's own.

use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::Request;

use crate::config::Settings;
use crate::runtime::wake::Latch;
use crate::telemetry::metrics::add;
use crate::upstream::cluster::Cluster;
use crate::upstream::connect::Dialer;
use crate::upstream::endpoint::{retire, Endpoint, UpConn};
use crate::upstream::error::UpstreamError;

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

/// The upstream connection machinery of one worker.
pub struct Pool {
    settings: Rc<Settings>,
    dialer: Dialer,
}

impl Pool {
    /// A pool with these limits; opens nothing.
    pub fn new(settings: Rc<Settings>, stop: Rc<Latch>) -> Pool {
        Pool {
            dialer: Dialer::new(settings.clone(), stop),
            settings,
        }
    }

    /// Upstream connections whose tasks are still running.
    pub fn live_connections(&self) -> usize {
        self.dialer.live.get()
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
        let _pending = Pending::enter(cluster)?;
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
                Ok((conn, mut send)) => {
                    let opened = send.send_request(request, end_of_stream);
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
                                addr: endpoint.addr(),
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

    /// A connection of `endpoint` that h2 says can take a new stream now,
    /// and this stream's own handle to it.
    pub(crate) async fn ready_connection(
        &self,
        cluster: &Cluster,
        endpoint: &Rc<Endpoint>,
        avoid: Option<&Rc<UpConn>>,
    ) -> Result<(Rc<UpConn>, SendRequest<Bytes>), UpstreamError> {
        // A connection that refuses new streams (GOAWAY, or failed) is
        // retired and another tried; an upstream that refuses every new
        // connection at once must not make a call reconnect forever.
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            let conn = self.connection(cluster, endpoint, avoid).await?;
            let mut send = conn.send.clone();
            match poll_fn(|cx| send.poll_ready(cx)).await {
                Ok(()) => return Ok((conn, send)),
                Err(source) => {
                    tracing::debug!(upstream = %endpoint.addr(), error = %source, "upstream connection retired");
                    retire(endpoint, &conn);
                    attempt += 1;
                    if attempt == ATTEMPTS {
                        return Err(UpstreamError::Http2 {
                            addr: endpoint.addr(),
                            source,
                        });
                    }
                }
            }
        }
    }

    /// A connection of `endpoint` with room for a stream: the least loaded
    /// one, or a new one while there is room for more (one connect at a
    /// time per endpoint; other calls wait for it), or, when the endpoint
    /// has all the connections it may have, the least loaded full one (h2
    /// queues the stream there).
    async fn connection(
        &self,
        cluster: &Cluster,
        endpoint: &Rc<Endpoint>,
        avoid: Option<&Rc<UpConn>>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        loop {
            let best = endpoint.least_loaded(avoid);
            if let Some(conn) = best.as_ref().filter(|c| c.has_room()) {
                return Ok(conn.clone());
            }
            if endpoint.connecting.get() {
                // Another call is connecting: wait for it rather than open a
                // second connection for the same burst.
                endpoint.changed.notified().await;
                continue;
            }
            if endpoint.conns.borrow().len() < self.settings.max_connections_per_endpoint {
                if best.is_none() {
                    if let Some(backing_off) = endpoint.backing_off() {
                        return Err(backing_off);
                    }
                }
                // With a live (full) connection, queue on it rather than
                // fail the call.
                return match self.connect(cluster, endpoint).await {
                    Ok(conn) => Ok(conn),
                    Err(e) => best.ok_or(e),
                };
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

    /// Opens a new connection to `endpoint`; a failure starts its back-off
    /// and counts towards its ejection.
    async fn connect(
        &self,
        cluster: &Cluster,
        endpoint: &Rc<Endpoint>,
    ) -> Result<Rc<UpConn>, UpstreamError> {
        let connecting = Connecting::start(endpoint);
        // Boxed: connecting is rare, and inlining its futures made every
        // call's task ~3 KiB larger (copied at each spawn).
        let tls = cluster.tls.borrow().clone();
        let result = Box::pin(self.dialer.connect(endpoint, tls, cluster.keepalive)).await;
        drop(connecting);
        match result {
            Ok(conn) => {
                endpoint.connected(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                add(&cluster.connect_failures, 1);
                endpoint.call_result(true, &cluster.outlier);
                let s = &self.settings;
                endpoint.connect_failed(&e, s.reconnect_backoff_min, s.reconnect_backoff_max);
                Err(e)
            }
        }
    }
}

/// Marks an endpoint as connecting while it lives. Dropping it ends the
/// mark and wakes the calls waiting for the connect, also when the call
/// that was connecting gives up halfway (its deadline, a health probe's
/// timeout, a client reset): one of them then connects instead. Without
/// it, an abandoned connect left the endpoint "connecting" for good.
struct Connecting<'a>(&'a Endpoint);

impl<'a> Connecting<'a> {
    fn start(endpoint: &'a Endpoint) -> Connecting<'a> {
        endpoint.connecting.set(true);
        Connecting(endpoint)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.set(false);
        self.0.changed.notify_all();
    }
}

/// Counts a call as waiting for an upstream stream of its cluster while it
/// lives; refuses it at once if the cluster is at one of its limits.
struct Pending<'a>(&'a Cluster);

impl<'a> Pending<'a> {
    fn enter(cluster: &'a Cluster) -> Result<Pending<'a>, UpstreamError> {
        cluster.admit()?;
        cluster.pending(true);
        Ok(Pending(cluster))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending(false);
    }
}
