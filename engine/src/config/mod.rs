//! The configuration file: schema, parsing and validation.
//!
//! A TOML file names the listener, the worker cores, HTTP/2 and pool limits,
//! the upstream clusters and the routes of the declarative director. It is
//! parsed and validated once, off the workers; what comes out ([`Config`])
//! is plain data that is `Send + Clone`, from which every worker builds its
//! own route table and pools. Every mistake is one [`ConfigError`] line that
//! names the field and the problem; unknown keys are mistakes too.
//!
//! Here are the validated types; `file.rs` has the file's schema and its
//! validation, `units.rs` sizes, durations and addresses, and [`digest`]
//! SHA-256 fingerprints. See `grpc-proxy.example.toml` at the top of the
//! repository for a documented example.

pub mod digest;
pub mod edits;
mod file;
pub mod flags;
pub mod jwt;
mod units;

pub use units::{is_name, parse_duration, parse_size, resolve};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::grpc::status::Status;
use crate::runtime::cores::CoreSelection;
use crate::runtime::driver::Driver;
use edits::HeaderEditsConfig;
use jwt::JwtConfig;

/// A configuration problem, as one line naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config {origin}: {message}")]
    Syntax {
        /// The file name, or `<string>`.
        origin: String,
        /// The parser's message, with the line number.
        message: String,
    },
    /// A value is out of range or refers to something that does not exist.
    #[error("config {origin}: {message}")]
    Invalid {
        /// The file name, or `<string>`.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// HTTP/2, pool and timing limits; every one has a safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Flow-control window of each stream, both legs.
    pub stream_window: u32,
    /// Flow-control window of each downstream connection; larger than the
    /// stream window so one slow stream cannot stall its neighbours.
    /// Upstream connections, shared by many clients' calls, always open
    /// the largest window (2^31 - 1) and are bounded by stream windows.
    pub connection_window: u32,
    /// Largest HTTP/2 frame payload we accept from clients: what a client
    /// connection may make us buffer before its frame can be read.
    pub max_frame_size: u32,
    /// Largest HTTP/2 frame payload we accept from upstreams. Larger than
    /// the clients' by default: an upstream then sends a large message in
    /// a few frames instead of one per 16 KiB (fewer writes on its side,
    /// and fewer wake-ups of the proxy), and the proxy cuts them to each
    /// client's frame size. Upstreams are the configured backends, and
    /// few connections per core, so the buffer this allows is bounded.
    pub upstream_max_frame_size: u32,
    /// Concurrent streams one downstream connection may open.
    pub max_concurrent_streams: u32,
    /// Largest request header list we accept (a larger one is answered with
    /// RESOURCE_EXHAUSTED).
    pub max_header_list_size: u32,
    /// Downstream connections one worker serves at once; more are closed at
    /// accept.
    pub max_connections_per_worker: usize,
    /// TLS handshakes under way at once per worker; at the limit, the
    /// oldest is given up to make room.
    pub max_tls_handshakes_per_worker: usize,
    /// Upstream HTTP/2 connections one worker opens to one endpoint.
    pub max_connections_per_endpoint: usize,
    /// Time for a downstream client to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A downstream connection without calls for this long (one to two
    /// times it) gets a graceful GOAWAY; `None` keeps idle connections.
    pub idle_timeout: Option<Duration>,
    /// A downstream connection without calls lets its read buffer go
    /// within one to two times this (checked every this long), and reads
    /// into the worker's spare when bytes come; `None`: a connection that
    /// had calls keeps its buffer while it waits (one that never had a
    /// call holds none either way). On the epoll driver only: on io_uring
    /// a read given up could lose what the kernel already read into it.
    pub idle_buffer: Option<Duration>,
    /// A client connection the proxy closes keeps reading (and throwing
    /// away) what the client still sends for up to this long, until the
    /// client has acknowledged every byte written to it or ends its side:
    /// closing a socket with unread bytes resets the connection and throws
    /// away what the kernel has not sent yet. `None`: close at once.
    pub linger: Option<Duration>,
    /// A downstream connection this old gets a graceful GOAWAY, so that
    /// long-lived clients reconnect and spread over the cores; `None`: no
    /// limit.
    pub max_connection_age: Option<Duration>,
    /// Time for an upstream TCP connect.
    pub connect_timeout: Duration,
    /// First wait before reconnecting to an endpoint that failed.
    pub reconnect_backoff_min: Duration,
    /// Longest wait before reconnecting to an endpoint that failed.
    pub reconnect_backoff_max: Duration,
    /// How often endpoint names are resolved again (`[upstream]
    /// dns_refresh`); `None`: only when the config is loaded.
    pub dns_refresh: Option<Duration>,
    /// On shutdown, how long in-flight calls may run before they are cut.
    pub drain_timeout: Duration,
    /// A call whose request sends nothing at all (no DATA, no end) and
    /// whose upstream sends no headers for this long ends with
    /// DEADLINE_EXCEEDED; calls that see any traffic are never idle-timed;
    /// `None`: off.
    pub silent_request_timeout: Option<Duration>,
    /// TCP keepalive on both legs: probes after this long without traffic
    /// (then every 10 s; 3 unanswered end the connection); `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT on both legs: a connection whose sent data stay
    /// unacknowledged this long ends; `None`: the kernel's default.
    pub tcp_user_timeout: Option<Duration>,
    /// An HTTP/2 PING to each client connection this often; `None`: off.
    pub ping_interval: Option<Duration>,
    /// A client that does not acknowledge a PING within this is gone: its
    /// connection closes and its calls are cancelled upstream.
    pub ping_timeout: Duration,
    /// Request bytes held per call until the upstream answers, so that a
    /// call it refuses unprocessed can be sent again; 0 turns retries off.
    pub retry_buffer: usize,
    /// What the held requests of one client connection may pin, in all
    /// (see [`retry_budget`](crate::upstream::retry_budget) for how it is counted).
    pub retry_buffer_per_connection: usize,
    /// What the held requests of one core may pin, in all.
    pub retry_buffer_per_worker: usize,
    /// On the own frame path, per connection: the bytes that may wait to
    /// be written to its socket, and, for a client connection, how far
    /// its calls' upstream stream windows may grow past their first
    /// 64 KiB, in all.
    pub buffer_per_connection: usize,
    /// On the own frame path, per core: how far all calls' upstream
    /// stream windows may grow past their first 64 KiB, in all.
    pub buffer_per_worker: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            max_frame_size: 16 << 10,
            upstream_max_frame_size: 1 << 20,
            max_concurrent_streams: 1024,
            max_header_list_size: 64 << 10,
            max_connections_per_worker: 100_000,
            max_tls_handshakes_per_worker: 1024,
            max_connections_per_endpoint: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            idle_buffer: Some(Duration::from_secs(10)),
            linger: Some(Duration::from_secs(5)),
            max_connection_age: None,
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(2),
            dns_refresh: Some(Duration::from_secs(30)),
            drain_timeout: Duration::from_secs(30),
            silent_request_timeout: Some(Duration::from_secs(300)),
            tcp_keepalive: Some(Duration::from_secs(60)),
            tcp_user_timeout: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(300)),
            ping_timeout: Duration::from_secs(20),
            retry_buffer: 64 << 10,
            retry_buffer_per_connection: 4 << 20,
            retry_buffer_per_worker: 64 << 20,
            buffer_per_connection: 4 << 20,
            buffer_per_worker: 256 << 20,
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where to listen, if the file says.
    pub listen: Option<SocketAddr>,
    /// Which cores run workers.
    pub cores: CoreSelection,
    /// Which monoio driver the workers use.
    pub driver: Driver,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Upstream clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
    /// Routes, tried in order.
    pub routes: Vec<RouteConfig>,
    /// Downstream TLS; `None` serves cleartext HTTP/2.
    pub tls: Option<ListenerTls>,
    /// The admin listener (metrics, health, config, reload); `None`: off.
    pub admin: Option<SocketAddr>,
    /// Where the access log goes; `None`: off.
    pub access_log: Option<AccessLogTarget>,
    /// A hosts-style file consulted before the system resolver for
    /// endpoint names (`[upstream] hosts_file`), read again at every
    /// resolution.
    pub hosts_file: Option<PathBuf>,
    /// Where this config came from (a file path, or what built it).
    pub source: String,
    /// SHA-256 of the config text, lower-case hex; empty when not from text.
    pub digest: String,
}

/// TLS on the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// Whether downstream clients present certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    Off,
    /// Asked for and verified when presented; clients without one are
    /// served too, with no identity.
    Optional,
    /// Required: a client without a valid certificate fails the handshake.
    Required,
}

/// TLS to the endpoints of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM bundle of the CAs the upstream's certificate must chain to;
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked in the upstream's certificate; by
    /// default the host of the cluster's first endpoint, as written.
    pub server_name: String,
    /// Client certificate chain for upstream mTLS.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// This file, appended to.
    File(PathBuf),
}

/// Conditions on the downstream client's verified certificate. Each list
/// given is an allow-list that must match; a route with `present = false`
/// matches only calls without a verified certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientMatch {
    /// A verified certificate is there (`true`) or not (`false`).
    pub present: Option<bool>,
    /// Subject common names.
    pub common_name: Vec<String>,
    /// DNS subject alternative names (any of the certificate's).
    pub dns: Vec<String>,
    /// URI subject alternative names, e.g. SPIFFE ids.
    pub uri: Vec<String>,
    /// SHA-256 fingerprints, lower-case hex without colons.
    pub sha256: Vec<String>,
}

/// Every address of `names`' answers, in order, without repeats.
pub fn endpoints_of(names: &[(String, Vec<SocketAddr>)]) -> Vec<SocketAddr> {
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for addr in names.iter().flat_map(|(_, addrs)| addrs) {
        if !endpoints.contains(addr) {
            endpoints.push(*addr);
        }
    }
    endpoints
}

/// A named group of upstream endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Unique name, used by routes.
    pub name: String,
    /// Endpoint addresses: every address of every endpoint as written,
    /// without repeats.
    pub endpoints: Vec<SocketAddr>,
    /// Each endpoint as written and what it resolved to when the config
    /// was loaded; names among them are resolved again in the background
    /// (`[upstream] dns_refresh`).
    pub names: Vec<(String, Vec<SocketAddr>)>,
    /// TLS to the endpoints; `None`: cleartext HTTP/2.
    pub tls: Option<UpstreamTls>,
    /// How calls are spread over the endpoints.
    pub balance: Balance,
    /// Active health checks; `None`: off.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of failing endpoints.
    pub outlier: Outlier,
    /// Limits on its calls, per core.
    pub limits: CallLimits,
    /// HTTP/2 PINGs on its connections; `None`: off.
    pub keepalive: Option<Keepalive>,
}

/// HTTP/2 keepalive: a PING on each upstream connection every `interval`;
/// a connection that does not answer within `timeout` is closed (its
/// calls fail with UNAVAILABLE) and the next call connects afresh. Opt-in:
/// grpc-go servers answer PINGs more frequent than they permit (5 min by
/// default without streams) with GOAWAY "too_many_pings".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// Time to wait for the PING's acknowledgement.
    pub timeout: Duration,
}

/// Per-core limits on one cluster's calls, as Envoy's circuit breakers:
/// past them a call gets UNAVAILABLE at once instead of queueing without
/// end behind an upstream that cannot keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls with an upstream stream open (or waiting at the upstream's
    /// stream limit); `None`: no limit.
    pub max_active: Option<usize>,
    /// Calls waiting for an upstream stream (a connect in progress, a full
    /// endpoint).
    pub max_pending: usize,
}

impl Default for CallLimits {
    fn default() -> CallLimits {
        CallLimits {
            max_active: None,
            max_pending: 1024,
        }
    }
}

/// How a cluster spreads calls over its endpoints, per core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Of two endpoints picked at random, the one with fewer calls in
    /// flight (power of two choices).
    LeastRequest,
}

/// Active health checks with `grpc.health.v1.Health/Check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Passed checks in a row that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Failed checks in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
    /// The service name asked about; empty: the server as a whole.
    pub service: String,
}

/// Passive ejection: an endpoint whose calls fail (connect errors, resets,
/// lost connections) this many times in a row takes no calls for a while,
/// longer each time it is ejected again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl Default for Outlier {
    fn default() -> Outlier {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// One route: conditions that must all hold, and an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// The route's name in metrics and the access log; `routes[i]` when
    /// not given.
    pub name: Option<String>,
    /// Exact full method path, `/package.Service/Method`.
    pub method: Option<String>,
    /// Exact service name, `package.Service`.
    pub service: Option<String>,
    /// Prefix of the path.
    pub path_prefix: Option<String>,
    /// Exact `:authority`.
    pub authority: Option<String>,
    /// Metadata conditions.
    pub headers: Vec<HeaderMatch>,
    /// Conditions on the client's certificate.
    pub client: Option<ClientMatch>,
    /// What to do with a call that matches.
    pub action: RouteAction,
    /// A deadline the proxy enforces on calls of this route, on top of any
    /// `grpc-timeout` the client sends (the shorter wins).
    pub timeout: Option<Duration>,
    /// The bearer token the call must carry.
    pub jwt: Option<JwtConfig>,
    /// What changes in the request head sent upstream.
    pub request_headers: Option<HeaderEditsConfig>,
    /// What changes in the response head sent to the client.
    pub response_headers: Option<HeaderEditsConfig>,
}

/// What a route does with a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward it to the named cluster.
    Cluster(String),
    /// Answer with this status.
    Reject(Status),
}

/// One metadata condition of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower-case metadata key.
    pub name: HeaderName,
    /// What the value must be.
    pub rule: HeaderRule,
}

/// How a metadata value is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderRule {
    /// The key is present (`true`) or absent (`false`).
    Present(bool),
    /// Some value equals one of these (an allow-list).
    OneOf(Vec<HeaderValue>),
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file = file::parse(text).map_err(|message| ConfigError::Syntax {
            origin: origin.to_owned(),
            message,
        })?;
        let mut config = file.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        config.source = origin.to_owned();
        config.digest = digest::sha256_hex(text.as_bytes());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::status::Code;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_config_validates() {
        let cfg = parse(
            r#"
            listen = "127.0.0.1:50051"
            cores = 2
            [http2]
            stream_window = "2MiB"
            max_concurrent_streams = 500
            [upstream]
            retry_buffer_per_worker = "8GiB"
            [timeouts]
            drain = "5s"
            idle = "0s"
            max_connection_age = "30m"
            [[clusters]]
            name = "users"
            endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
            [[routes]]
            service = "pkg.Users"
            headers = [{ name = "authorization", values = ["Bearer a", "Bearer b"] }]
            cluster = "users"
            timeout = "3s"
            [[routes]]
            reject = { code = "permission_denied", message = "no" }
            "#,
        )
        .expect("valid");
        assert_eq!(cfg.settings.stream_window, 2 << 20);
        assert_eq!(cfg.settings.max_concurrent_streams, 500);
        // Sizes past 4 GiB are kept whole where the field takes them.
        assert_eq!(cfg.settings.retry_buffer_per_worker, 8 << 30);
        assert_eq!(cfg.settings.drain_timeout, Duration::from_secs(5));
        assert_eq!(cfg.settings.idle_timeout, None);
        assert_eq!(
            cfg.settings.max_connection_age,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(cfg.clusters[0].endpoints.len(), 2);
        assert_eq!(cfg.routes[0].timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            cfg.routes[1].action,
            RouteAction::Reject(Status::new(Code::PermissionDenied, "no"))
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../grpc-proxy.example.toml");
        let cfg = parse(text).expect("the documented example parses");
        assert_eq!(cfg.clusters.len(), 2);
        assert_eq!(cfg.routes.len(), 4);
        assert_eq!(cfg.settings.buffer_per_connection, 4 << 20);
        assert_eq!(cfg.settings.linger, Some(Duration::from_secs(5)));
        let off = parse("[timeouts]\nlinger = \"0s\"").expect("valid");
        assert_eq!(off.settings.linger, None, "0 closes at once");
    }

    #[test]
    fn endpoint_names_come_from_the_hosts_file_first() {
        let dir = std::env::temp_dir().join(format!("grpc-proxy-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            "# comment\n10.0.0.7 svc.test.invalid other\n10.0.0.8 svc.test.invalid # two\n",
        )
        .expect("write");
        let cfg = parse(&format!(
            "[upstream]\nhosts_file = {hosts:?}\ndns_refresh = \"5s\"\n\
             [[clusters]]\nname = \"a\"\nendpoints = [\"svc.test.invalid:80\", \"10.0.0.7:80\"]\n"
        ))
        .expect("valid");
        let c = &cfg.clusters[0];
        let a: SocketAddr = "10.0.0.7:80".parse().expect("addr");
        let b: SocketAddr = "10.0.0.8:80".parse().expect("addr");
        assert_eq!(c.endpoints, [a, b], "every address once");
        assert_eq!(c.names[0], ("svc.test.invalid:80".to_string(), vec![a, b]));
        assert_eq!(cfg.settings.dns_refresh, Some(Duration::from_secs(5)));
        assert_eq!(cfg.hosts_file.as_deref(), Some(hosts.as_path()));
        let off = parse("[upstream]\ndns_refresh = \"0s\"").expect("valid");
        assert_eq!(off.settings.dns_refresh, None);
        let missing = parse(&format!("[upstream]\nhosts_file = {:?}", dir.join("nope")))
            .expect_err("missing");
        assert!(missing.contains("upstream.hosts_file"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_own_frame_path_may_still_be_named() {
        assert!(parse("[http2]\nframe_path = \"own\"").is_ok());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("bogus = 1", "unknown field"),
            ("[[routes]]\ncluster = \"nope\"", "no cluster named \"nope\""),
            ("[[routes]]\nreject = { code = \"WAT\" }", "unknown gRPC status code"),
            ("[[routes]]\nmethod = \"Svc.Method\"\nreject = { code = 5 }", "invalid type"),
            ("[[routes]]\nmethod = \"Svc.Method\"\nreject = { code = \"5\" }", "full method path"),
            ("[[clusters]]\nname = \"a\"\nendpoints = []", "no endpoints"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"nohost\"]", "cannot resolve"),
            ("[http2]\nstream_window = \"1KiB\"", "out of range"),
            ("[limits]\nbuffer_per_connection = \"1KiB\"", "limits.buffer_per_connection"),
            ("[timeouts]\ndrain = \"soon\"", "invalid duration"),
            ("listen = \"here\"", "listen"),
            ("admin = \"nowhere\"", "admin"),
            ("access_log = \"\"", "access_log"),
            ("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"maybe\"", "client_auth"),
            ("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"", "client_ca"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nbalance = \"random\"", "balance"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nhealth_check = { healthy_threshold = 0 }", "healthy_threshold"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\noutlier = { base_ejection = \"2m\", max_ejection = \"1m\" }", "base_ejection"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\ntls = { cert = \"c\" }", "cert and key go together"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\nclient = { present = false, uri = [\"x\"] }", "present = false"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\nclient = { sha256 = [\"abc\"] }", "SHA-256"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"\"\ncluster = \"a\"", "name: is empty"),
            ("cores = 0", "cores"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nkeepalive = { interval = \"100ms\" }", "keepalive.interval"),
            ("[timeouts]\ntcp_keepalive = \"often\"", "timeouts.tcp_keepalive"),
            ("[http2]\nframe_path = \"h2\"", "the h2 frame path was removed"),
            ("[http2]\nframe_path = \"fast\"", "http2.frame_path"),
            ("[http2]\nmax_send_buffer_size = \"1MiB\"", "http2.max_send_buffer_size was a setting of the h2 frame path"),
            ("[http2]\nmax_pending_accept_reset_streams = 100", "max_pending_accept_reset_streams"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nmax_active_calls = 0", "max_active_calls"),
            ("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nmax_pending_calls = -1", "line 4"),
            (
                "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\nheaders = [{ name = \"X-A\" }]",
                "must be lower case",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{err:?} spans lines");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_text_is_a_config_or_one_line_of_error(text in "\\PC{0,200}") {
                if let Err(e) = Config::parse(&text, "prop.toml") {
                    prop_assert!(!e.to_string().contains('\n'), "{e}");
                }
            }

            #[test]
            fn any_value_of_a_key_is_accepted_or_named(
                key in prop::sample::select(vec![
                    "http2.stream_window", "http2.max_frame_size", "timeouts.idle",
                    "timeouts.tcp_keepalive", "upstream.retry_buffer", "upstream.max_frame_size", "limits.max_connections_per_worker",
                    "limits.buffer_per_connection", "upstream.retry_buffer_per_worker",
                ]),
                value in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "\"[0-9a-zA-Z. ]{0,12}\""],
            ) {
                let (table, field) = key.split_once('.').expect("a dotted key");
                let text = format!("[{table}]\n{field} = {value}\n");
                if let Err(e) = Config::parse(&text, "prop.toml") {
                    let e = e.to_string();
                    prop_assert!(!e.contains('\n'), "{e}");
                    prop_assert!(e.contains(field) || e.contains("line 2"), "{text:?}: {e}");
                }
            }
        }
    }
}
