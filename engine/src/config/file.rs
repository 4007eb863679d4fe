//! The config file's schema and its validation into a [`Config`].
//!
//! The `*File` structs mirror the TOML (unknown keys are errors); each has
//! a `validate` that checks its values and names the field of any mistake
//! (`cluster "users".health_check.timeout: ...`), so that every error is one
//! line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::digest;
use super::edits::HeaderEditsFile;
use super::jwt::JwtFile;
use super::units::{duration, host_of, parse_field, resolve, set, size, SizeValue};
use super::{
    AccessLogTarget, Balance, CallLimits, ClientAuth, ClientMatch, ClusterConfig, Config,
    HeaderMatch, HeaderRule, HealthCheck, Keepalive, ListenerTls, Outlier, RouteAction,
    RouteConfig, Settings, UpstreamTls,
};
use crate::grpc::status::{Code, Status};
use crate::runtime::cores::CoreSelection;
use crate::runtime::driver::Driver;

/// Parses config text into the file's schema; the error is one line.
pub(super) fn parse(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|e| describe_toml_error(text, &e))
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
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
    frame_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    max_frame_size: Option<SizeValue>,
    max_connections_per_endpoint: Option<usize>,
    retry_buffer: Option<SizeValue>,
    retry_buffer_per_connection: Option<SizeValue>,
    retry_buffer_per_worker: Option<SizeValue>,
    reconnect_backoff_min: Option<String>,
    reconnect_backoff_max: Option<String>,
    dns_refresh: Option<String>,
    hosts_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    handshake: Option<String>,
    idle: Option<String>,
    idle_buffer: Option<String>,
    linger: Option<String>,
    max_connection_age: Option<String>,
    connect: Option<String>,
    drain: Option<String>,
    tcp_keepalive: Option<String>,
    tcp_user_timeout: Option<String>,
    ping_interval: Option<String>,
    ping_timeout: Option<String>,
    silent_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_connections_per_worker: Option<usize>,
    max_tls_handshakes_per_worker: Option<usize>,
    buffer_per_connection: Option<SizeValue>,
    buffer_per_worker: Option<SizeValue>,
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
    max_active_calls: Option<usize>,
    max_pending_calls: Option<usize>,
    keepalive: Option<KeepaliveFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveFile {
    interval: String,
    timeout: Option<String>,
}

impl KeepaliveFile {
    fn validate(self, at: &str) -> Result<Keepalive, String> {
        let at = format!("{at}.keepalive");
        let interval = parse_field(&format!("{at}.interval"), &self.interval)?;
        if interval < Duration::from_secs(1) {
            return Err(format!(
                "{at}.interval: at least 1s (servers limit how often they may be pinged)"
            ));
        }
        let timeout = positive(&format!("{at}.timeout"), self.timeout.as_deref())?
            .unwrap_or(Duration::from_secs(10));
        Ok(Keepalive { interval, timeout })
    }
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
    jwt: Option<JwtFile>,
    request_headers: Option<HeaderEditsFile>,
    response_headers: Option<HeaderEditsFile>,
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

impl File {
    /// Checks every value; the first mistake, naming its field.
    pub(super) fn validate(self) -> Result<Config, String> {
        let mut settings = Settings::default();
        self.http2.apply(&mut settings)?;
        self.upstream.apply(&mut settings)?;
        self.timeouts.apply(&mut settings)?;
        self.limits.apply(&mut settings)?;
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
        let hosts_file = match self.upstream.hosts_file.as_deref() {
            None => None,
            Some("") => return Err("upstream.hosts_file: empty".into()),
            Some(path) => {
                let path = PathBuf::from(path);
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("upstream.hosts_file: {}: {e}", path.display()))?;
                Some(path)
            }
        };
        let mut clusters = Vec::with_capacity(self.clusters.len());
        for (i, c) in self.clusters.into_iter().enumerate() {
            let cluster = c.validate(i, &clusters, hosts_file.as_deref())?;
            clusters.push(cluster);
        }
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(i, &clusters))
            .collect::<Result<_, _>>()?;
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
            settings,
            clusters,
            routes,
            tls,
            admin,
            access_log,
            hosts_file,
            source: String::new(),
            digest: String::new(),
        })
    }
}

/// The largest flow-control window HTTP/2 allows.
const WINDOW_MAX: u64 = (1 << 31) - 1;

impl Http2File {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        if let Some(v) = &self.stream_window {
            s.stream_window = size("http2.stream_window", v, 65_535, WINDOW_MAX)?;
        }
        if let Some(v) = &self.connection_window {
            s.connection_window = size("http2.connection_window", v, 65_535, WINDOW_MAX)?;
        }
        if let Some(v) = &self.max_frame_size {
            s.max_frame_size = size("http2.max_frame_size", v, 16_384, 16_777_215)?;
        }
        if let Some(n) = self.max_concurrent_streams {
            if n == 0 {
                return Err("http2.max_concurrent_streams: must be at least 1".into());
            }
            s.max_concurrent_streams = n;
        }
        if let Some(v) = &self.max_header_list_size {
            s.max_header_list_size = size("http2.max_header_list_size", v, 1024, u32::MAX as u64)?;
        }
        // Settings of the h2 frame path, which left the engine: a file that
        // still sets them is told so rather than silently ignored.
        let removed = "was a setting of the h2 frame path, which was removed (the engine's own HTTP/2 layer is the only one): delete the key";
        if self.max_send_buffer_size.is_some() {
            return Err(format!("http2.max_send_buffer_size {removed}"));
        }
        if self.max_pending_accept_reset_streams.is_some() {
            return Err(format!("http2.max_pending_accept_reset_streams {removed}"));
        }
        match self.frame_path.as_deref() {
            None | Some("own") => {}
            Some("h2") => {
                return Err("http2.frame_path: \"h2\": the h2 frame path was removed; the engine's own HTTP/2 layer is the only one (delete the key)".into())
            }
            Some(other) => return Err(format!("http2.frame_path: \"{other}\" is not \"own\", the only frame path")),
        }
        Ok(())
    }
}

impl UpstreamFile {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        if let Some(v) = &self.max_frame_size {
            s.upstream_max_frame_size = size("upstream.max_frame_size", v, 16_384, 16_777_215)?;
        }
        if let Some(n) = self.max_connections_per_endpoint {
            if n == 0 {
                return Err("upstream.max_connections_per_endpoint: must be at least 1".into());
            }
            s.max_connections_per_endpoint = n;
        }
        if let Some(v) = &self.retry_buffer {
            s.retry_buffer = size("upstream.retry_buffer", v, 0, 64 << 20)?;
        }
        if let Some(v) = &self.retry_buffer_per_connection {
            s.retry_buffer_per_connection =
                size("upstream.retry_buffer_per_connection", v, 0, 1 << 40)?;
        }
        if let Some(v) = &self.retry_buffer_per_worker {
            s.retry_buffer_per_worker = size("upstream.retry_buffer_per_worker", v, 0, 1 << 40)?;
        }
        set(
            &mut s.reconnect_backoff_min,
            duration(
                "upstream.reconnect_backoff_min",
                self.reconnect_backoff_min.as_deref(),
            )?,
        );
        set(
            &mut s.reconnect_backoff_max,
            duration(
                "upstream.reconnect_backoff_max",
                self.reconnect_backoff_max.as_deref(),
            )?,
        );
        if s.reconnect_backoff_min > s.reconnect_backoff_max {
            return Err(
                "upstream.reconnect_backoff_min is larger than reconnect_backoff_max".into(),
            );
        }
        if let Some(every) = duration("upstream.dns_refresh", self.dns_refresh.as_deref())? {
            s.dns_refresh = (!every.is_zero()).then_some(every);
        }
        Ok(())
    }
}

/// A duration field that has no "off" at 0: 0 would fail everything it
/// times (every handshake, connect or call).
fn positive(field: &str, text: Option<&str>) -> Result<Option<Duration>, String> {
    let d = duration(field, text)?;
    if d.is_some_and(|d| d.is_zero()) {
        return Err(format!("{field}: must be more than 0"));
    }
    Ok(d)
}

impl TimeoutsFile {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        set(
            &mut s.handshake_timeout,
            positive("timeouts.handshake", self.handshake.as_deref())?,
        );
        set(
            &mut s.connect_timeout,
            positive("timeouts.connect", self.connect.as_deref())?,
        );
        set(
            &mut s.drain_timeout,
            duration("timeouts.drain", self.drain.as_deref())?,
        );
        // "0s" turns these off.
        let off_at_zero = |d: Duration| (!d.is_zero()).then_some(d);
        if let Some(d) = duration("timeouts.silent_request", self.silent_request.as_deref())? {
            s.silent_request_timeout = off_at_zero(d);
        }
        if let Some(d) = duration("timeouts.tcp_keepalive", self.tcp_keepalive.as_deref())? {
            // What Linux takes (TCP_KEEPIDLE, whole seconds); else the
            // socket option fails and the kernel's default (2 h) stays.
            if !d.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(32_767)).contains(&d)
            {
                return Err("timeouts.tcp_keepalive: must be 0 (off) or from 1s to 32767s".into());
            }
            s.tcp_keepalive = off_at_zero(d);
        }
        if let Some(d) = duration(
            "timeouts.tcp_user_timeout",
            self.tcp_user_timeout.as_deref(),
        )? {
            // TCP_USER_TIMEOUT is milliseconds in 32 bits.
            if d.as_millis() > u128::from(u32::MAX) {
                return Err("timeouts.tcp_user_timeout: must be at most 49 days".into());
            }
            s.tcp_user_timeout = off_at_zero(d);
        }
        if let Some(d) = duration("timeouts.ping_interval", self.ping_interval.as_deref())? {
            s.ping_interval = off_at_zero(d);
        }
        if let Some(d) = positive("timeouts.ping_timeout", self.ping_timeout.as_deref())? {
            s.ping_timeout = d;
        }
        if let Some(d) = duration("timeouts.idle", self.idle.as_deref())? {
            s.idle_timeout = off_at_zero(d);
        }
        if let Some(d) = duration("timeouts.idle_buffer", self.idle_buffer.as_deref())? {
            s.idle_buffer = off_at_zero(d);
        }
        if let Some(d) = duration("timeouts.linger", self.linger.as_deref())? {
            s.linger = off_at_zero(d);
        }
        if let Some(d) = duration(
            "timeouts.max_connection_age",
            self.max_connection_age.as_deref(),
        )? {
            s.max_connection_age = off_at_zero(d);
        }
        Ok(())
    }
}

impl LimitsFile {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        if let Some(n) = self.max_connections_per_worker {
            if n == 0 {
                return Err("limits.max_connections_per_worker: must be at least 1".into());
            }
            s.max_connections_per_worker = n;
        }
        if let Some(n) = self.max_tls_handshakes_per_worker {
            if n == 0 {
                return Err("limits.max_tls_handshakes_per_worker: must be at least 1".into());
            }
            s.max_tls_handshakes_per_worker = n;
        }
        // A connection needs room for at least one full frame.
        if let Some(v) = &self.buffer_per_connection {
            s.buffer_per_connection =
                size("limits.buffer_per_connection", v, 65_536, u32::MAX as u64)?;
        }
        if let Some(v) = &self.buffer_per_worker {
            s.buffer_per_worker = size("limits.buffer_per_worker", v, 0, 1 << 40)?;
        }
        Ok(())
    }
}

impl ClusterFile {
    /// Checks the `i`-th cluster against those before it.
    fn validate(
        self,
        i: usize,
        before: &[ClusterConfig],
        hosts: Option<&std::path::Path>,
    ) -> Result<ClusterConfig, String> {
        if self.name.is_empty() {
            return Err(format!("clusters[{i}]: name is empty"));
        }
        if before.iter().any(|k| k.name == self.name) {
            return Err(format!(
                "clusters[{i}]: duplicate cluster name {:?}",
                self.name
            ));
        }
        let at = format!("cluster {:?}", self.name);
        if self.endpoints.is_empty() {
            return Err(format!("{at}: no endpoints"));
        }
        let mut names = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            let addrs = resolve(e, hosts).map_err(|m| format!("{at}: {m}"))?;
            names.push((e.clone(), addrs));
        }
        let endpoints = super::endpoints_of(&names);
        let tls = self
            .tls
            .map(|t| t.validate(&self.name, &self.endpoints[0]))
            .transpose()?;
        let balance = match self.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_request") => Balance::LeastRequest,
            Some(other) => {
                return Err(format!(
                    "{at}.balance: {other:?} is not round_robin or least_request"
                ))
            }
        };
        let health_check = self.health_check.map(|h| h.validate(&at)).transpose()?;
        let outlier = match self.outlier {
            Some(o) => o.validate(&at)?,
            None => Outlier::default(),
        };
        let mut limits = CallLimits {
            max_active: self.max_active_calls,
            ..CallLimits::default()
        };
        if self.max_active_calls == Some(0) {
            return Err(format!("{at}.max_active_calls: must be at least 1"));
        }
        if let Some(n) = self.max_pending_calls {
            if n == 0 {
                return Err(format!(
                    "{at}.max_pending_calls: must be at least 1 (every call is pending until its upstream stream opens)"
                ));
            }
            limits.max_pending = n;
        }
        let keepalive = self.keepalive.map(|k| k.validate(&at)).transpose()?;
        Ok(ClusterConfig {
            name: self.name,
            endpoints,
            names,
            tls,
            balance,
            health_check,
            outlier,
            limits,
            keepalive,
        })
    }
}

impl HealthCheckFile {
    fn validate(self, at: &str) -> Result<HealthCheck, String> {
        let at = format!("{at}.health_check");
        let positive = |field: &str, v: Option<&str>, default: Duration| {
            positive(&format!("{at}.{field}"), v).map(|d| d.unwrap_or(default))
        };
        let threshold = |field: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
            0 => Err(format!("{at}.{field}: must be at least 1")),
            n => Ok(n),
        };
        Ok(HealthCheck {
            interval: positive("interval", self.interval.as_deref(), Duration::from_secs(5))?,
            timeout: positive("timeout", self.timeout.as_deref(), Duration::from_secs(1))?,
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
        set(
            &mut o.base_ejection,
            duration(
                &format!("{at}.outlier.base_ejection"),
                self.base_ejection.as_deref(),
            )?,
        );
        set(
            &mut o.max_ejection,
            duration(
                &format!("{at}.outlier.max_ejection"),
                self.max_ejection.as_deref(),
            )?,
        );
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
        let headers = self
            .headers
            .into_iter()
            .enumerate()
            .map(|(j, h)| h.validate(&format!("{at}.headers[{j}]")))
            .collect::<Result<_, _>>()?;
        let client = self.client.map(|c| c.validate(&at)).transpose()?;
        let timeout = positive(&format!("{at}.timeout"), self.timeout.as_deref())?;
        if let Some(name) = &self.name {
            if name.is_empty() {
                return Err(format!("{at}.name: is empty"));
            }
        }
        let jwt = self
            .jwt
            .map(|j| j.validate(&format!("{at}.jwt")))
            .transpose()?;
        let request_headers = self
            .request_headers
            .map(|e| e.validate(&format!("{at}.request_headers"), true))
            .transpose()?;
        let response_headers = self
            .response_headers
            .map(|e| e.validate(&format!("{at}.response_headers"), false))
            .transpose()?;
        let edits = [&request_headers, &response_headers];
        if jwt.is_none()
            && edits
                .iter()
                .any(|e| e.as_ref().is_some_and(|e| e.uses_jwt()))
        {
            return Err(format!(
                "{at}: a header value uses ${{jwt.*}} but the route has no jwt condition"
            ));
        }
        if matches!(action, RouteAction::Reject(_)) && edits.iter().any(|e| e.is_some()) {
            return Err(format!(
                "{at}: a route that rejects forwards nothing; its header edits would do nothing"
            ));
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
            jwt,
            request_headers,
            response_headers,
        })
    }
}

impl HeaderFile {
    fn validate(self, hat: &str) -> Result<HeaderMatch, String> {
        if self.name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("{hat}.name: {:?} must be lower case", self.name));
        }
        let name = HeaderName::from_str(&self.name)
            .map_err(|_| format!("{hat}.name: {:?} is not a valid metadata key", self.name))?;
        let value = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| format!("{hat}: {v:?} is not a valid metadata value"))
        };
        let rule = match (self.value, self.values, self.present) {
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
        Ok(HeaderMatch { name, rule })
    }
}
