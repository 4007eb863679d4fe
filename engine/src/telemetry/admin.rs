//! The admin endpoint: a small HTTP/1.1 server on its own thread, off by
//! default (`--admin 127.0.0.1:9901`, or `admin` in the config file).
//!
//! - `GET /metrics`: Prometheus text format; each scrape asks every worker
//!   for its counters through its mailbox and merges them here (see
//!   [`metrics`](crate::telemetry::metrics)), so workers never share a counter.
//! - `GET /ready`: 200 while serving, 503 once draining.
//! - `GET /live`: 200 while the process runs with all its workers; 503
//!   once a worker's thread has panicked.
//! - `GET /config`: JSON with the running config's version, source, SHA-256
//!   and when it was applied.
//! - `POST /reload`: re-reads the config (as SIGHUP does); 200 with the new
//!   version, or 400 with why it was refused (the old config serves on).
//!
//! It knows the running proxy only through the small [`Control`] trait
//! (merged metrics, draining, the config's description), which the
//! [`Controller`](crate::Controller) implements.
//!
//! It has no authentication: bind it to loopback (`127.0.0.1:9901`, as
//! the examples do); any other address is served, with a warning in the
//! log.
//!
//! It runs on its own thread: hyper's HTTP/1.1 on a current-thread tokio
//! runtime, so it never takes CPU from the workers' cores beyond a
//! scrape's mailbox round trip. Scrapes and reloads, which may wait (for a
//! stuck worker, a slow resolver, the workers' confirmations), run on
//! threads beside it, so that `/live` and `/ready` answer at once whatever
//! else is asked: three scrapes at most (another is answered 503) and one
//! reload (another meanwhile, 409). What a client
//! can hold is bounded: [`MAX_CONNECTIONS`] connections at once (at the
//! limit the one open longest is closed, so idle or stalled clients cannot
//! lock scrapers out), a request head must arrive within
//! [`HEADER_TIMEOUT`], and a kept-alive connection is closed at
//! [`MAX_CONNECTION_AGE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use crate::runtime::room::Room;
use crate::telemetry::metrics::Merged;

/// Connections served at once; at the limit, the one open longest is
/// closed to make room.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's head must arrive within this, or the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it opened, kept alive or not.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// What the running config is and where it came from.
#[derive(Clone, Debug)]
pub struct ConfigInfo {
    /// 1 at start, one more per reload.
    pub version: u64,
    /// A file path, or what built the config.
    pub source: String,
    /// SHA-256 of the config text, hex; empty when not from text.
    pub digest: String,
    /// When it was applied.
    pub applied_at: std::time::SystemTime,
}

/// What the admin endpoint asks of the running proxy; the
/// [`Controller`](crate::Controller) is one.
pub trait Control: Send + Sync + 'static {
    /// Every worker's counters, merged.
    fn metrics(&self) -> Merged;
    /// Whether the proxy is draining: `/ready` answers 503.
    fn is_draining(&self) -> bool;
    /// The running config's version and source.
    fn config_info(&self) -> ConfigInfo;
    /// Workers whose thread ended in a panic: `/live` and `/ready` answer
    /// 503, so that a supervisor restarts the process.
    fn workers_lost(&self) -> usize;
}

/// What `POST /reload` runs: re-read the config and apply it, returning the
/// new version or why not.
pub type ReloadFn = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// The running admin server; stops when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AdminServer {
    /// Binds `addr` and serves on a new thread.
    pub fn start(
        addr: SocketAddr,
        control: Arc<dyn Control>,
        reload: Option<ReloadFn>,
    ) -> std::io::Result<AdminServer> {
        let cannot = |e: std::io::Error| {
            std::io::Error::other(format!("cannot serve the admin endpoint on {addr}: {e}"))
        };
        let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
        listener.set_nonblocking(true).map_err(cannot)?;
        let bound = listener.local_addr().map_err(cannot)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(SCRAPES + 1)
            .build()
            .map_err(cannot)?;
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(cannot)?
        };
        let (stop, stopped) = oneshot::channel();
        let handler = Handler {
            control,
            reload,
            scrapes: Arc::new(Semaphore::new(SCRAPES)),
            reloading: Arc::new(Semaphore::new(1)),
        };
        let thread = std::thread::Builder::new()
            .name("grpc-proxy-admin".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve(listener, Rc::new(handler), stopped));
                // A reload stuck on a name lookup must not hold the exit.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        tracing::info!(admin = %bound, "admin endpoint serving");
        if !bound.ip().is_loopback() {
            // It has no authentication: anyone who reaches it can reload
            // the config and read the metrics.
            tracing::warn!(admin = %bound, "the admin endpoint listens beyond loopback; it has no authentication (POST /reload): keep it behind a firewall");
        }
        Ok(AdminServer {
            addr: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stopped`, each served on its own local
/// task within the limits above.
async fn serve(
    listener: tokio::net::TcpListener,
    handler: Rc<Handler>,
    mut stopped: oneshot::Receiver<()>,
) {
    let room = Room::new(MAX_CONNECTIONS);
    loop {
        let tcp = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let place = room.enter();
        let handler = handler.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move {
                    let reply = handler
                        .respond(request.method(), request.uri().path())
                        .await;
                    Ok::<_, Infallible>(reply)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = connection => {}
                _ = place.evicted() => tracing::debug!("admin connection closed to make room"),
                _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn text(status: u16, body: impl Into<String>, content_type: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Scrapes that run at once, beside the admin thread; more are answered
/// 503 rather than queued behind them.
const SCRAPES: usize = 3;

/// What the endpoints answer from.
struct Handler {
    control: Arc<dyn Control>,
    reload: Option<ReloadFn>,
    /// Room for scrapes under way ([`SCRAPES`]).
    scrapes: Arc<Semaphore>,
    /// Room for a reload under way: one; another meanwhile is answered
    /// 409 (a client that posts and leaves, again and again, must not
    /// queue reloads without end).
    reloading: Arc<Semaphore>,
}

/// Runs `work` on a thread of its own: a scrape waits up to a second for
/// a stuck worker, and a reload reads files, resolves names and waits for
/// the workers; meanwhile `/live` and `/ready` must answer at once.
async fn off_thread(work: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| text(500, "the request's work panicked\n", "text/plain"))
}

impl Handler {
    async fn respond(&self, method: &Method, path: &str) -> Reply {
        let control = &*self.control;
        match (method, path) {
            (&Method::GET, "/metrics") => {
                let Ok(room) = self.scrapes.clone().try_acquire_owned() else {
                    return text(503, "busy: other scrapes are under way\n", "text/plain");
                };
                let control = self.control.clone();
                off_thread(move || {
                    let _room = room;
                    text(
                        200,
                        control.metrics().render(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                })
                .await
            }
            (&Method::GET, "/live" | "/ready") if control.workers_lost() > 0 => text(
                503,
                format!(
                    "{} worker thread(s) panicked: restart the process\n",
                    control.workers_lost()
                ),
                "text/plain",
            ),
            (&Method::GET, "/live") => text(200, "live\n", "text/plain"),
            (&Method::GET, "/ready") if control.is_draining() => {
                text(503, "draining\n", "text/plain")
            }
            (&Method::GET, "/ready") => text(200, "ready\n", "text/plain"),
            (&Method::GET, "/config") => {
                let info = control.config_info();
                let body = serde_json::json!({
                    "version": info.version,
                    "source": info.source,
                    "sha256": info.digest,
                    "applied_at": humantime::format_rfc3339_seconds(info.applied_at).to_string(),
                });
                text(200, format!("{body}\n"), "application/json")
            }
            (&Method::POST, "/reload") => {
                let Some(reload) = self.reload.clone() else {
                    return text(404, "no config file to reload\n", "text/plain");
                };
                let Ok(room) = self.reloading.clone().try_acquire_owned() else {
                    return text(409, "a reload is under way\n", "text/plain");
                };
                off_thread(move || {
                    let _room = room;
                    match reload() {
                        Ok(version) => {
                            text(200, format!("reloaded: version {version}\n"), "text/plain")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused; the running config stays");
                            text(400, format!("reload refused: {e}\n"), "text/plain")
                        }
                    }
                })
                .await
            }
            (_, "/metrics" | "/live" | "/ready" | "/config" | "/reload") => {
                text(405, "method not allowed\n", "text/plain")
            }
            _ => text(
                404,
                "not found; try /metrics, /ready, /live, /config, POST /reload\n",
                "text/plain",
            ),
        }
    }
}
