//! Why no upstream stream could be opened.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Why no upstream stream could be opened. Every variant is UNAVAILABLE to
/// the client and is safe to retry: nothing reached an upstream. The
/// error's text (with the endpoint and the OS's or TLS's words) is for the
/// log and the access log; the client gets [`UpstreamError::public`].
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
    /// Connected, but the upstream's HTTP/2 SETTINGS did not come within
    /// `connect_timeout` of the start (a hung process whose kernel still
    /// accepts connections, or a peer that does not speak HTTP/2).
    #[error("upstream {addr}: no HTTP/2 SETTINGS within {timeout:?} of connecting")]
    NoSettings {
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
    /// The cluster has as many calls active or waiting as its limits
    /// allow on this core.
    #[error("cluster {cluster}: {what} limit of {limit} calls reached on this core")]
    Overloaded {
        /// The cluster's name.
        cluster: Box<str>,
        /// `active` or `pending`.
        what: &'static str,
        /// The limit.
        limit: usize,
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

impl UpstreamError {
    /// When a retry could succeed, if the proxy knows: an endpoint backing
    /// off will not be tried before its back-off ends. Overload has no
    /// such time (calls in flight end when they end), so clients keep
    /// their own back-off for it.
    pub fn pushback(&self) -> Option<Duration> {
        match self {
            UpstreamError::BackingOff { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// What the client is told: the kind of failure, without addresses or
    /// the words of the OS, TLS or HTTP/2 libraries.
    pub fn public(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "upstream unavailable: connect failed",
            UpstreamError::ConnectTimeout { .. } | UpstreamError::NoSettings { .. } => {
                "upstream unavailable: connect timed out"
            }
            UpstreamError::Tls { .. } => "upstream unavailable: TLS handshake failed",
            UpstreamError::BackingOff { .. } => {
                "upstream unavailable: waiting to reconnect after failed connects"
            }
            UpstreamError::Overloaded { .. } => "upstream overloaded: too many calls in flight",
        }
    }
}
