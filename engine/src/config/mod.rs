//! The configuration file: schema, parsing and validation.
//!
//! A TOML file names the listener, the worker cores, HTTP/2 and pool limits,
//! the upstream clusters and the routes of the declarative director. It is
//! parsed and validated once, off the workers; what comes out ([`Config`])
//! is plain data that is `Send + Clone`, from which every worker builds its
//! own route table and pools. Every mistake is one [`ConfigError`] line that
//! names the field and the problem; unknown keys are mistakes too.
//!
//! See `grpc-proxy.example.toml` at the top of the repository for a
//! documented example.

pub mod digest;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::grpc::status::{Code, Status};
use crate::runtime::cores::CoreSelection;
use crate::runtime::driver::Driver;

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
    /// Flow-control window of each connection, both legs; larger than the
    /// stream window so one slow stream cannot stall its neighbours.
    pub connection_window: u32,
    /// Largest HTTP/2 frame payload we accept.
    pub max_frame_size: u32,
    /// Concurrent streams one downstream connection may open.
    pub max_concurrent_streams: u32,
    /// Largest request header list we accept (h2 answers 431 / resets above).
    pub max_header_list_size: u32,
    /// Downstream streams reset by the client before we accepted them that
    /// we tolerate per connection (rapid reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Bytes buffered per stream for sending before writes wait.
    pub max_send_buffer_size: usize,
    /// Downstream connections one worker serves at once; more are closed at
    /// accept.
    pub max_connections_per_worker: usize,
    /// Upstream HTTP/2 connections one worker opens to one endpoint.
    pub max_connections_per_endpoint: usize,
    /// Time for a downstream client to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A downstream connection without calls for this long (one to two
    /// times it) gets a graceful GOAWAY; `None` keeps idle connections.
    pub idle_timeout: Option<Duration>,
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
    /// On shutdown, how long in-flight calls may run before they are cut.
    pub drain_timeout: Duration,
    /// Request bytes held per call until the upstream answers, so that a
    /// call it refuses unprocessed can be sent again; 0 turns retries off.
    pub retry_buffer: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            max_frame_size: 16 << 10,
            max_concurrent_streams: 1024,
            max_header_list_size: 64 << 10,
            max_pending_accept_reset_streams: 100,
            max_send_buffer_size: 1 << 20,
            max_connections_per_worker: 100_000,
            max_connections_per_endpoint: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_connection_age: None,
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            retry_buffer: 64 << 10,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// A named group of upstream endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Unique name, used by routes.
    pub name: String,
    /// Endpoint addresses (names are resolved when the config is loaded).
    pub endpoints: Vec<SocketAddr>,
    /// TLS to the endpoints; `None`: cleartext HTTP/2.
    pub tls: Option<UpstreamTls>,
    /// How calls are spread over the endpoints.
    pub balance: Balance,
    /// Active health checks; `None`: off.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of failing endpoints.
    pub outlier: Outlier,
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

// ---- the file's schema ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    cores: Option<usize>,
    cpu_set: Option<Vec<usize>>,
    driver: Option<String>,
    #[serde(default)]
    http2: Http2File,
    #[serde(default)]
    upstream: UpstreamFile,
    #[serde(default)]
    timeouts: TimeoutsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    clusters: Vec<ClusterFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    tls: Option<ListenerTlsFile>,
    admin: Option<String>,
    access_log: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTlsFile {
    cert: PathBuf,
    key: PathBuf,
    client_auth: Option<String>,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsFile {
    ca: Option<String>,
    server_name: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientMatchFile {
    present: Option<bool>,
    #[serde(default)]
    common_name: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    uri: Vec<String>,
    #[serde(default)]
    sha256: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Http2File {
    stream_window: Option<SizeValue>,
    connection_window: Option<SizeValue>,
    max_frame_size: Option<SizeValue>,
    max_concurrent_streams: Option<u32>,
    max_header_list_size: Option<SizeValue>,
    max_send_buffer_size: Option<SizeValue>,
    max_pending_accept_reset_streams: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    max_connections_per_endpoint: Option<usize>,
    retry_buffer: Option<SizeValue>,
    reconnect_backoff_min: Option<String>,
    reconnect_backoff_max: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    handshake: Option<String>,
    idle: Option<String>,
    max_connection_age: Option<String>,
    connect: Option<String>,
    drain: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_connections_per_worker: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    name: String,
    endpoints: Vec<String>,
    tls: Option<UpstreamTlsFile>,
    balance: Option<String>,
    health_check: Option<HealthCheckFile>,
    outlier: Option<OutlierFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFile {
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
    service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierFile {
    consecutive_failures: Option<u32>,
    base_ejection: Option<String>,
    max_ejection: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: Option<String>,
    method: Option<String>,
    service: Option<String>,
    path_prefix: Option<String>,
    authority: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderFile>,
    client: Option<ClientMatchFile>,
    cluster: Option<String>,
    reject: Option<RejectFile>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFile {
    name: String,
    value: Option<String>,
    values: Option<Vec<String>>,
    present: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectFile {
    code: String,
    #[serde(default)]
    message: String,
}

/// A size: a number of bytes, or a string such as `64KiB` or `1MiB`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Parses a size such as `4096`, `64KiB`, `16MiB`, `1GiB` (also `KB`, `MB`,
/// `GB` as powers of ten, and `B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (expected e.g. 4096, 64KiB, 1MiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a duration such as `250ms`, `5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}; expected e.g. 250ms, 5s, 2m)"))
}

/// Resolves `host:port` to one or more socket addresses.
pub fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = SocketAddr::from_str(endpoint) {
        return Ok(vec![addr]);
    }
    let addrs: Vec<SocketAddr> = endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve endpoint {endpoint:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("endpoint {endpoint:?} resolves to no address"));
    }
    Ok(addrs)
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
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: describe_toml_error(text, &e),
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

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

impl File {
    fn validate(self) -> Result<Config, String> {
        let mut s = Settings::default();
        let size32 = |field: &str, v: &SizeValue, min: u64, max: u64| -> Result<u32, String> {
            let n = match v {
                SizeValue::Bytes(n) => *n,
                SizeValue::Text(t) => parse_size(t).map_err(|e| format!("{field}: {e}"))?,
            };
            if n < min || n > max {
                return Err(format!("{field}: {n} is out of range ({min} to {max})"));
            }
            Ok(n as u32)
        };
        const WINDOW_MAX: u64 = (1 << 31) - 1;
        if let Some(v) = &self.http2.stream_window {
            s.stream_window = size32("http2.stream_window", v, 65_535, WINDOW_MAX)?;
        }
        if let Some(v) = &self.http2.connection_window {
            s.connection_window = size32("http2.connection_window", v, 65_535, WINDOW_MAX)?;
        }
        if let Some(v) = &self.http2.max_frame_size {
            s.max_frame_size = size32("http2.max_frame_size", v, 16_384, 16_777_215)?;
        }
        if let Some(n) = self.http2.max_concurrent_streams {
            if n == 0 {
                return Err("http2.max_concurrent_streams: must be at least 1".into());
            }
            s.max_concurrent_streams = n;
        }
        if let Some(v) = &self.http2.max_header_list_size {
            s.max_header_list_size =
                size32("http2.max_header_list_size", v, 1024, u32::MAX as u64)?;
        }
        if let Some(v) = &self.http2.max_send_buffer_size {
            s.max_send_buffer_size =
                size32("http2.max_send_buffer_size", v, 16_384, u32::MAX as u64)? as usize;
        }
        if let Some(n) = self.http2.max_pending_accept_reset_streams {
            s.max_pending_accept_reset_streams = n;
        }
        if let Some(n) = self.upstream.max_connections_per_endpoint {
            if n == 0 {
                return Err("upstream.max_connections_per_endpoint: must be at least 1".into());
            }
            s.max_connections_per_endpoint = n;
        }
        if let Some(v) = &self.upstream.retry_buffer {
            s.retry_buffer = size32("upstream.retry_buffer", v, 0, 64 << 20)? as usize;
        }
        if let Some(n) = self.limits.max_connections_per_worker {
            if n == 0 {
                return Err("limits.max_connections_per_worker: must be at least 1".into());
            }
            s.max_connections_per_worker = n;
        }
        let dur = |field: &str, v: &Option<String>, into: &mut Duration| -> Result<(), String> {
            if let Some(t) = v {
                *into = parse_duration(t).map_err(|e| format!("{field}: {e}"))?;
            }
            Ok(())
        };
        dur(
            "upstream.reconnect_backoff_min",
            &self.upstream.reconnect_backoff_min,
            &mut s.reconnect_backoff_min,
        )?;
        dur(
            "upstream.reconnect_backoff_max",
            &self.upstream.reconnect_backoff_max,
            &mut s.reconnect_backoff_max,
        )?;
        dur(
            "timeouts.handshake",
            &self.timeouts.handshake,
            &mut s.handshake_timeout,
        )?;
        dur(
            "timeouts.connect",
            &self.timeouts.connect,
            &mut s.connect_timeout,
        )?;
        dur("timeouts.drain", &self.timeouts.drain, &mut s.drain_timeout)?;
        // "0s" turns these two off.
        let optional =
            |field: &str, v: &Option<String>, into: &mut Option<Duration>| -> Result<(), String> {
                if let Some(t) = v {
                    let d = parse_duration(t).map_err(|e| format!("{field}: {e}"))?;
                    *into = (!d.is_zero()).then_some(d);
                }
                Ok(())
            };
        optional("timeouts.idle", &self.timeouts.idle, &mut s.idle_timeout)?;
        optional(
            "timeouts.max_connection_age",
            &self.timeouts.max_connection_age,
            &mut s.max_connection_age,
        )?;
        if s.reconnect_backoff_min > s.reconnect_backoff_max {
            return Err(
                "upstream.reconnect_backoff_min is larger than reconnect_backoff_max".into(),
            );
        }

        let listen = self
            .listen
            .as_deref()
            .map(|l| {
                SocketAddr::from_str(l)
                    .map_err(|_| format!("listen: {l:?} is not an address such as 0.0.0.0:50051"))
            })
            .transpose()?;
        let cores = CoreSelection::from_parts(self.cores, self.cpu_set)?;
        let driver = match self.driver.as_deref() {
            None => Driver::default(),
            Some(d) => d.parse().map_err(|e| format!("driver: {e}"))?,
        };

        let mut clusters = Vec::with_capacity(self.clusters.len());
        for (i, c) in self.clusters.into_iter().enumerate() {
            if c.name.is_empty() {
                return Err(format!("clusters[{i}]: name is empty"));
            }
            if clusters.iter().any(|k: &ClusterConfig| k.name == c.name) {
                return Err(format!(
                    "clusters[{i}]: duplicate cluster name {:?}",
                    c.name
                ));
            }
            if c.endpoints.is_empty() {
                return Err(format!("cluster {:?}: no endpoints", c.name));
            }
            let mut endpoints = Vec::new();
            for e in &c.endpoints {
                endpoints.extend(resolve(e).map_err(|m| format!("cluster {:?}: {m}", c.name))?);
            }
            let tls = c
                .tls
                .map(|t| t.validate(&c.name, &c.endpoints[0]))
                .transpose()?;
            let at = format!("cluster {:?}", c.name);
            let balance = match c.balance.as_deref() {
                None | Some("round_robin") => Balance::RoundRobin,
                Some("least_request") => Balance::LeastRequest,
                Some(other) => {
                    return Err(format!(
                        "{at}.balance: {other:?} is not round_robin or least_request"
                    ))
                }
            };
            let health_check = c.health_check.map(|h| h.validate(&at)).transpose()?;
            let outlier = match c.outlier {
                Some(o) => o.validate(&at)?,
                None => Outlier::default(),
            };
            clusters.push(ClusterConfig {
                name: c.name,
                endpoints,
                tls,
                balance,
                health_check,
                outlier,
            });
        }

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            routes.push(r.validate(i, &clusters)?);
        }
        let tls = self.tls.map(ListenerTlsFile::validate).transpose()?;
        let admin = self
            .admin
            .as_deref()
            .map(|a| {
                SocketAddr::from_str(a)
                    .map_err(|_| format!("admin: {a:?} is not an address such as 127.0.0.1:9901"))
            })
            .transpose()?;
        let access_log = match self.access_log.as_deref() {
            None => None,
            Some("") => return Err("access_log: empty; use \"-\" for stdout or a file path".into()),
            Some("-") => Some(AccessLogTarget::Stdout),
            Some(path) => Some(AccessLogTarget::File(PathBuf::from(path))),
        };
        Ok(Config {
            listen,
            cores,
            driver,
            settings: s,
            clusters,
            routes,
            tls,
            admin,
            access_log,
            source: String::new(),
            digest: String::new(),
        })
    }
}

impl HealthCheckFile {
    fn validate(self, at: &str) -> Result<HealthCheck, String> {
        let dur =
            |field: &str, v: &Option<String>, default: Duration| -> Result<Duration, String> {
                let d = match v {
                    Some(t) => {
                        parse_duration(t).map_err(|e| format!("{at}.health_check.{field}: {e}"))?
                    }
                    None => default,
                };
                if d.is_zero() {
                    return Err(format!("{at}.health_check.{field}: must be more than 0"));
                }
                Ok(d)
            };
        let interval = dur("interval", &self.interval, Duration::from_secs(5))?;
        let timeout = dur("timeout", &self.timeout, Duration::from_secs(1))?;
        let threshold = |field: &str, v: Option<u32>, default: u32| -> Result<u32, String> {
            match v.unwrap_or(default) {
                0 => Err(format!("{at}.health_check.{field}: must be at least 1")),
                n => Ok(n),
            }
        };
        Ok(HealthCheck {
            interval,
            timeout,
            healthy_threshold: threshold("healthy_threshold", self.healthy_threshold, 1)?,
            unhealthy_threshold: threshold("unhealthy_threshold", self.unhealthy_threshold, 2)?,
            service: self.service.unwrap_or_default(),
        })
    }
}

impl OutlierFile {
    fn validate(self, at: &str) -> Result<Outlier, String> {
        let mut o = Outlier::default();
        if let Some(n) = self.consecutive_failures {
            o.consecutive_failures = n;
        }
        if let Some(t) = &self.base_ejection {
            o.base_ejection =
                parse_duration(t).map_err(|e| format!("{at}.outlier.base_ejection: {e}"))?;
        }
        if let Some(t) = &self.max_ejection {
            o.max_ejection =
                parse_duration(t).map_err(|e| format!("{at}.outlier.max_ejection: {e}"))?;
        }
        if o.base_ejection > o.max_ejection {
            return Err(format!(
                "{at}.outlier: base_ejection is longer than max_ejection"
            ));
        }
        Ok(o)
    }
}

impl ListenerTlsFile {
    fn validate(self) -> Result<ListenerTls, String> {
        let client_auth = match self.client_auth.as_deref() {
            None if self.client_ca.is_some() => ClientAuth::Required,
            None | Some("off") => ClientAuth::Off,
            Some("optional") => ClientAuth::Optional,
            Some("required") => ClientAuth::Required,
            Some(other) => {
                return Err(format!(
                    "tls.client_auth: {other:?} is not one of off, optional, required"
                ))
            }
        };
        if client_auth != ClientAuth::Off && self.client_ca.is_none() {
            return Err(
                "tls.client_auth: needs tls.client_ca, the CA bundle to verify clients".into(),
            );
        }
        Ok(ListenerTls {
            cert: self.cert,
            key: self.key,
            client_auth,
            client_ca: self.client_ca,
        })
    }
}

impl UpstreamTlsFile {
    fn validate(self, cluster: &str, first_endpoint: &str) -> Result<UpstreamTls, String> {
        let at = format!("cluster {cluster:?}: tls");
        let ca = match self.ca.as_deref() {
            None | Some("system") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        let server_name = match self.server_name {
            Some(name) => name,
            None => host_of(first_endpoint).to_owned(),
        };
        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(format!(
                "{at}.server_name: {server_name:?} is neither a DNS name nor an IP address"
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(format!(
                "{at}: cert and key go together; give both or neither"
            ));
        }
        Ok(UpstreamTls {
            ca,
            server_name,
            cert: self.cert,
            key: self.key,
        })
    }
}

/// The host part of `host:port` (an IPv6 address without its brackets).
fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl ClientMatchFile {
    fn validate(self, at: &str) -> Result<ClientMatch, String> {
        let mut sha256 = Vec::with_capacity(self.sha256.len());
        for f in &self.sha256 {
            sha256.push(digest::normalise_fingerprint(f).ok_or_else(|| {
                format!("{at}.client.sha256: {f:?} is not a SHA-256 fingerprint (64 hex digits)")
            })?);
        }
        let lists = !(self.common_name.is_empty()
            && self.dns.is_empty()
            && self.uri.is_empty()
            && sha256.is_empty());
        if self.present == Some(false) && lists {
            return Err(format!(
                "{at}.client: present = false cannot go with identity lists"
            ));
        }
        if self.present.is_none() && !lists {
            return Err(format!(
                "{at}.client: give present, or one of common_name, dns, uri, sha256"
            ));
        }
        Ok(ClientMatch {
            present: self.present,
            common_name: self.common_name,
            dns: self.dns,
            uri: self.uri,
            sha256,
        })
    }
}

impl RouteFile {
    fn validate(self, i: usize, clusters: &[ClusterConfig]) -> Result<RouteConfig, String> {
        let at = format!("routes[{i}]");
        if let Some(m) = &self.method {
            let ok = m
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(svc, method)| {
                    !svc.is_empty() && !method.is_empty() && !method.contains('/')
                });
            if !ok {
                return Err(format!(
                    "{at}.method: {m:?} is not a full method path such as /package.Service/Method"
                ));
            }
        }
        if let Some(s) = &self.service {
            if s.is_empty() || s.contains('/') {
                return Err(format!(
                    "{at}.service: {s:?} is not a service name such as package.Service"
                ));
            }
        }
        let action = match (self.cluster, self.reject) {
            (Some(c), None) => {
                if !clusters.iter().any(|k| k.name == c) {
                    return Err(format!("{at}.cluster: no cluster named {c:?}"));
                }
                RouteAction::Cluster(c)
            }
            (None, Some(r)) => {
                let code: Code = r
                    .code
                    .parse()
                    .map_err(|e| format!("{at}.reject.code: {e}"))?;
                if code == Code::Ok {
                    return Err(format!("{at}.reject.code: OK is not a rejection"));
                }
                RouteAction::Reject(Status::new(code, r.message))
            }
            (Some(_), Some(_)) => {
                return Err(format!("{at}: has both cluster and reject; choose one"))
            }
            (None, None) => return Err(format!("{at}: needs a cluster or a reject")),
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (j, h) in self.headers.into_iter().enumerate() {
            let hat = format!("{at}.headers[{j}]");
            if h.name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("{hat}.name: {:?} must be lower case", h.name));
            }
            let name = HeaderName::from_str(&h.name)
                .map_err(|_| format!("{hat}.name: {:?} is not a valid metadata key", h.name))?;
            let value = |v: &str| {
                HeaderValue::from_str(v)
                    .map_err(|_| format!("{hat}: {v:?} is not a valid metadata value"))
            };
            let rule = match (h.value, h.values, h.present) {
                (Some(v), None, None) => HeaderRule::OneOf(vec![value(&v)?]),
                (None, Some(vs), None) => {
                    if vs.is_empty() {
                        return Err(format!("{hat}.values: the list is empty"));
                    }
                    HeaderRule::OneOf(vs.iter().map(|v| value(v)).collect::<Result<_, _>>()?)
                }
                (None, None, Some(p)) => HeaderRule::Present(p),
                (None, None, None) => HeaderRule::Present(true),
                _ => return Err(format!("{hat}: use only one of value, values, present")),
            };
            headers.push(HeaderMatch { name, rule });
        }
        let client = self.client.map(|c| c.validate(&at)).transpose()?;
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| parse_duration(t).map_err(|e| format!("{at}.timeout: {e}")))
            .transpose()?;
        if let Some(name) = &self.name {
            if name.is_empty() {
                return Err(format!("{at}.name: is empty"));
            }
        }
        Ok(RouteConfig {
            name: self.name,
            method: self.method,
            service: self.service,
            path_prefix: self.path_prefix,
            authority: self.authority,
            headers,
            client,
            action,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("KiB").is_err());
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
}
