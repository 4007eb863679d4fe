//! The `test.Echo` service and the tonic server that runs it.
//!
//! Methods (request metadata steers them):
//! - `Unary`: echoes the message; copies every `x-echo-*` key (text or
//!   `-bin`) into the response headers; sets `x-upstream: <server name>`.
//!   With `x-fail-code: N` it fails instead, with `x-fail-message`, details
//!   `b"details"` and metadata `x-error-meta: yes`.
//! - `ServerStream`: `x-count` (default 3) copies of the message; with
//!   `x-fail-after: N` it ends with an ABORTED status carrying metadata
//!   after N messages (so trailers follow data).
//! - `ClientStream`: answers the total bytes and the message count, two
//!   big-endian u64s.
//! - `Bidi`: echoes each message as it arrives.
//! - `Hang`: never answers; when the call is dropped (cancelled) it counts
//!   it in [`Events`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::server::{Grpc, NamedService};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::codec::BytesCodec;

/// What an upstream observed; shared with the test.
#[derive(Default)]
pub struct Events {
    calls: AtomicUsize,
    hanging: AtomicUsize,
    cancelled: AtomicUsize,
    changed: Notify,
    last_head: std::sync::Mutex<Vec<(String, String)>>,
}

impl Events {
    /// Calls received.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// `Hang` handlers running (request decoded, handler started): only
    /// these can observe a cancellation.
    pub fn hanging(&self) -> usize {
        self.hanging.load(Ordering::SeqCst)
    }

    /// `Hang` calls that were cancelled.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until `n` `Hang` handlers are running.
    pub async fn wait_hanging(&self, n: usize) {
        self.wait_for(|e| e.hanging() >= n).await
    }

    /// Waits until `n` `Hang` calls have been cancelled.
    pub async fn wait_cancelled(&self, n: usize) {
        self.wait_for(|e| e.cancelled() >= n).await
    }

    /// Waits until `n` calls have arrived (dispatched to a handler, which
    /// may still be reading the request).
    pub async fn wait_calls(&self, n: usize) {
        self.wait_for(|e| e.calls() >= n).await
    }

    async fn wait_for(&self, done: impl Fn(&Events) -> bool) {
        loop {
            // Register before checking, so a change in between is not lost.
            let changed = self.changed.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// The head of the last call that arrived: `:authority` (from the
    /// URI), then every header, in order, values as text (or `?`).
    pub fn last_head(&self) -> Vec<(String, String)> {
        self.last_head.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The values of `name` in the last call's head.
    pub fn last_values(&self, name: &str) -> Vec<String> {
        self.last_head()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    fn call(&self, head: Vec<(String, String)>) {
        if let Ok(mut last) = self.last_head.lock() {
            *last = head;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Counts a cancellation when a `Hang` call is dropped.
struct CancelGuard(Arc<Events>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// The service.
#[derive(Clone)]
pub struct Echo {
    name: Arc<str>,
    events: Arc<Events>,
    /// How long `Unary` waits before answering.
    delay: Duration,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

fn text(md: &MetadataMap, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn failure(md: &MetadataMap) -> Option<Status> {
    let code: i32 = text(md, "x-fail-code")?.parse().ok()?;
    let message = text(md, "x-fail-message").unwrap_or_default();
    let mut meta = MetadataMap::new();
    meta.insert("x-error-meta", MetadataValue::from_static("yes"));
    Some(Status::with_details_and_metadata(
        Code::from_i32(code),
        message,
        Bytes::from_static(b"details"),
        meta,
    ))
}

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl Echo {
    async fn unary(self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(status) = failure(request.metadata()) {
            return Err(status);
        }
        let mut response = Response::new(request.get_ref().clone());
        for kv in request.metadata().iter() {
            match kv {
                KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-echo-") => {
                    response.metadata_mut().insert(k.clone(), v.clone());
                }
                KeyAndValueRef::Binary(k, v) if k.as_str().starts_with("x-echo-") => {
                    response.metadata_mut().insert_bin(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        if let Ok(v) = MetadataValue::try_from(&*self.name) {
            response.metadata_mut().insert("x-upstream", v);
        }
        Ok(response)
    }

    async fn server_stream(self, request: Request<Bytes>) -> Result<Response<Messages>, Status> {
        if let Some(status) = failure(request.metadata()) {
            return Err(status);
        }
        let count: usize = text(request.metadata(), "x-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(3);
        let fail_after: Option<usize> =
            text(request.metadata(), "x-fail-after").and_then(|c| c.parse().ok());
        let message = request.into_inner();
        let items = (0..count).map(move |i| match fail_after {
            Some(n) if i >= n => {
                let mut meta = MetadataMap::new();
                meta.insert("x-error-meta", MetadataValue::from_static("trailer"));
                Err(Status::with_metadata(
                    Code::Aborted,
                    "failed mid-stream",
                    meta,
                ))
            }
            _ => Ok(message.clone()),
        });
        let take = fail_after.map_or(count, |n| (n + 1).min(count));
        let stream: Messages = Box::pin(tokio_stream::iter(items.take(take)));
        Ok(Response::new(stream))
    }

    async fn client_stream(
        self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<Bytes>, Status> {
        let mut stream = request.into_inner();
        let (mut bytes, mut count) = (0u64, 0u64);
        while let Some(message) = stream.message().await? {
            bytes += message.len() as u64;
            count += 1;
        }
        let mut out = BytesMut::with_capacity(16);
        out.put_u64(bytes);
        out.put_u64(count);
        Ok(Response::new(out.freeze()))
    }

    async fn bidi(self, request: Request<Streaming<Bytes>>) -> Result<Response<Messages>, Status> {
        let stream: Messages = Box::pin(request.into_inner());
        Ok(Response::new(stream))
    }

    async fn hang(self, _request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        let _guard = CancelGuard(self.events.clone());
        self.events.hanging.fetch_add(1, Ordering::SeqCst);
        self.events.changed.notify_waiters();
        std::future::pending::<()>().await;
        unreachable!("pending never completes")
    }
}

macro_rules! method {
    ($svc:ident, $req:ty, $resp:ty, $method:ident) => {
        struct $svc(Echo);
        impl Service<Request<$req>> for $svc {
            type Response = Response<$resp>;
            type Error = Status;
            type Future = BoxFuture<Response<$resp>, Status>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: Request<$req>) -> Self::Future {
                Box::pin(self.0.clone().$method(request))
            }
        }
    };
}

method!(UnarySvc, Bytes, Bytes, unary);
method!(ServerStreamSvc, Bytes, Messages, server_stream);
method!(ClientStreamSvc, Streaming<Bytes>, Bytes, client_stream);
method!(BidiSvc, Streaming<Bytes>, Messages, bidi);
method!(HangSvc, Bytes, Bytes, hang);

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let echo = self.clone();
        let authority = request.uri().authority().map(|a| a.to_string());
        let scheme = request.uri().scheme_str().map(str::to_owned);
        let head = scheme
            .map(|s| (":scheme".to_owned(), s))
            .into_iter()
            .chain(authority.map(|a| (":authority".to_owned(), a)))
            .chain(
                request
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned())),
            )
            .collect();
        echo.events.call(head);
        Box::pin(async move {
            let mut grpc = Grpc::new(BytesCodec)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let response = match request.uri().path() {
                "/test.Echo/Unary" => grpc.unary(UnarySvc(echo), request).await,
                "/test.Echo/ServerStream" => {
                    grpc.server_streaming(ServerStreamSvc(echo), request).await
                }
                "/test.Echo/ClientStream" => {
                    grpc.client_streaming(ClientStreamSvc(echo), request).await
                }
                "/test.Echo/Bidi" => grpc.streaming(BidiSvc(echo), request).await,
                "/test.Echo/Hang" => grpc.unary(HangSvc(echo), request).await,
                other => {
                    Status::unimplemented(format!("test.Echo has no method {other}")).into_http()
                }
            };
            Ok(response)
        })
    }
}

/// A tonic server of `test.Echo` on its own thread and runtime. Dropping it
/// stops it at once, cutting its connections.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    events: Arc<Events>,
    /// Certificate, key and client CA PEM when it serves TLS.
    tls: Option<(String, String, Option<String>)>,
    delay: Duration,
    /// Sets what `grpc.health.v1.Health/Check` answers.
    health: tonic_health::server::HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts a server named `name` on a free loopback port.
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            None,
            Duration::ZERO,
            None,
        )
    }

    /// Starts a server named `name` on `addr` (another loopback address,
    /// say, or a given port).
    pub fn start_at(name: &str, addr: SocketAddr) -> Upstream {
        Upstream::start_on(name, addr, Arc::default(), None, Duration::ZERO, None)
    }

    /// Starts a server that also serves gRPC reflection
    /// (`grpc.reflection.v1`) of the schema in `descriptor_set` (a
    /// serialized `FileDescriptorSet`).
    pub fn start_with_reflection(name: &str, descriptor_set: Vec<u8>) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            None,
            Duration::ZERO,
            Some(descriptor_set),
        )
    }

    /// Starts a server whose `Unary` answers after `delay`.
    pub fn start_slow(name: &str, delay: Duration) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            None,
            delay,
            None,
        )
    }

    /// Makes `grpc.health.v1.Health/Check` (for the server as a whole)
    /// answer SERVING or NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        use tonic_health::ServingStatus;
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
    }

    /// Starts a server that serves TLS (ALPN h2) with this certificate.
    pub fn start_tls(name: &str, cert: &crate::Issued) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            Some((cert.cert_pem.clone(), cert.key_pem.clone(), None)),
            Duration::ZERO,
            None,
        )
    }

    /// Starts a server that serves TLS with this certificate, and gRPC
    /// reflection of `descriptor_set`.
    pub fn start_tls_with_reflection(
        name: &str,
        cert: &crate::Issued,
        descriptor_set: Vec<u8>,
    ) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            Some((cert.cert_pem.clone(), cert.key_pem.clone(), None)),
            Duration::ZERO,
            Some(descriptor_set),
        )
    }

    /// Starts a server that serves TLS and requires client certificates
    /// from `client_ca_pem`.
    pub fn start_mtls(name: &str, cert: &crate::Issued, client_ca_pem: &str) -> Upstream {
        Upstream::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::default(),
            Some((
                cert.cert_pem.clone(),
                cert.key_pem.clone(),
                Some(client_ca_pem.to_owned()),
            )),
            Duration::ZERO,
            None,
        )
    }

    fn start_on(
        name: &str,
        addr: SocketAddr,
        events: Arc<Events>,
        tls: Option<(String, String, Option<String>)>,
        delay: Duration,
        reflection: Option<Vec<u8>>,
    ) -> Upstream {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let echo = Echo {
            name: name.into(),
            events: events.clone(),
            delay,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = reflection.map(|set| {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(Box::leak(set.into_boxed_slice()))
                .build_v1()
                .expect("a valid descriptor set")
        });
        let tls_config = tls.as_ref().map(|(cert, key, client_ca)| {
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            match client_ca {
                Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
                None => config,
            }
        });
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(listener.local_addr());
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let mut builder = tonic::transport::Server::builder();
                    if let Some(tls) = tls_config {
                        builder = builder.tls_config(tls).expect("upstream TLS config");
                    }
                    let server = builder
                        .initial_stream_window_size(1 << 20)
                        .initial_connection_window_size(16 << 20)
                        .add_service(echo)
                        .add_service(health_service)
                        .add_optional_service(reflection)
                        .serve_with_incoming(incoming);
                    tokio::select! {
                        _ = server => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime aborts every connection task, so
                // the sockets close now rather than after a drain.
                rt.shutdown_timeout(Duration::ZERO);
            })
            .expect("spawn upstream thread");
        let addr = ready_rx
            .recv()
            .expect("upstream thread reports")
            .expect("upstream binds");
        Upstream {
            name: name.to_owned(),
            addr,
            events,
            tls,
            delay,
            health,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it has seen.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// Stops it (connections are cut).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops it and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let again = Upstream::start_on(
            &self.name,
            self.addr,
            self.events.clone(),
            self.tls.clone(),
            self.delay,
            None,
        );
        *self = again;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Drains a stream of messages into a vector.
pub async fn collect(mut stream: Streaming<Bytes>) -> Result<Vec<Bytes>, Status> {
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        out.push(m?);
    }
    Ok(out)
}
