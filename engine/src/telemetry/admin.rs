//! The admin endpoint: a small HTTP/1.1 server on its own thread, off by
//! default (`--admin 127.0.0.1:9901`, or `admin` in the config file).
//!
//! - `GET /metrics`: Prometheus text format; each scrape asks every worker
//!   for its counters through its mailbox and merges them here (see
//!   [`metrics`](crate::telemetry::metrics)), so workers never share a counter.
//! - `GET /ready`: 200 while serving, 503 once draining.
//! - `GET /live`: 200 while the process runs.
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
//! It serves one request at a time on its thread: it is for operators and
//! scrapers, not traffic, and must never take CPU from the workers' cores
//! beyond a scrape's mailbox round trip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};

use crate::telemetry::metrics::Merged;

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
}

/// What `POST /reload` runs: re-read the config and apply it, returning the
/// new version or why not.
pub type ReloadFn = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// The running admin server; stops when dropped.
pub struct AdminServer {
    server: Arc<Server>,
    addr: SocketAddr,
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
        let server = Server::http(addr).map_err(|e| {
            std::io::Error::other(format!("cannot serve the admin endpoint on {addr}: {e}"))
        })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("the admin endpoint is not on an IP address"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("grpc-proxy-admin".into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    let response = respond(&request, &*control, reload.as_ref());
                    if let Err(e) = request.respond(response) {
                        tracing::debug!(error = %e, "admin response failed");
                    }
                }
            })?;
        tracing::info!(admin = %bound, "admin endpoint serving");
        if !bound.ip().is_loopback() {
            // It has no authentication: anyone who reaches it can reload
            // the config and read the metrics.
            tracing::warn!(admin = %bound, "the admin endpoint listens beyond loopback; it has no authentication (POST /reload): keep it behind a firewall");
        }
        Ok(AdminServer {
            server,
            addr: bound,
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
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Reply = Response<std::io::Cursor<Vec<u8>>>;

fn text(status: u16, body: impl Into<String>, content_type: &str) -> Reply {
    let mut response = Response::from_string(body.into()).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", content_type) {
        response.add_header(h);
    }
    response
}

fn respond(
    request: &tiny_http::Request,
    control: &dyn Control,
    reload: Option<&ReloadFn>,
) -> Reply {
    let path = request.url().split('?').next().unwrap_or("");
    match (request.method(), path) {
        (Method::Get, "/metrics") => text(
            200,
            control.metrics().render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Method::Get, "/live") => text(200, "live\n", "text/plain"),
        (Method::Get, "/ready") if control.is_draining() => text(503, "draining\n", "text/plain"),
        (Method::Get, "/ready") => text(200, "ready\n", "text/plain"),
        (Method::Get, "/config") => {
            let info = control.config_info();
            let body = serde_json::json!({
                "version": info.version,
                "source": info.source,
                "sha256": info.digest,
                "applied_at": humantime::format_rfc3339_seconds(info.applied_at).to_string(),
            });
            text(200, format!("{body}\n"), "application/json")
        }
        (Method::Post, "/reload") => match reload {
            None => text(404, "no config file to reload\n", "text/plain"),
            Some(reload) => match reload() {
                Ok(version) => text(200, format!("reloaded: version {version}\n"), "text/plain"),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the running config stays");
                    text(400, format!("reload refused: {e}\n"), "text/plain")
                }
            },
        },
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
