//! Counters: kept per core without atomics, merged when scraped.
//!
//! Each worker counts in `Cell`s ([`CallStats`] per route and per cluster,
//! [`CoreCounters`] for the core). A scrape sends every worker a request
//! through its mailbox; each answers with a [`CoreReport`] (plain data), and
//! the control thread merges them and renders the Prometheus text format
//! with the `prometheus-client` crate. The per-call cost is a few
//! non-atomic increments.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::grpc::status::Code;

/// gRPC status codes 0 to 16.
pub const CODES: usize = 17;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram, one core's.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket, the last one for everything above the largest bound.
    counts: [Cell<u64>; LATENCY_BUCKETS.len() + 1],
    sum_ns: Cell<u64>,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        add(&self.counts[i], 1);
        add(&self.sum_ns, elapsed.as_nanos() as u64);
    }

    fn report(&self) -> HistogramReport {
        HistogramReport {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_ns: self.sum_ns.get(),
        }
    }
}

/// Adds `n` to a per-core counter.
pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// Calls of one route or one cluster on one core.
#[derive(Default)]
pub struct CallStats {
    started: Cell<u64>,
    finished: [Cell<u64>; CODES],
    latency: Histogram,
}

impl CallStats {
    /// A call started.
    pub fn start(&self) {
        add(&self.started, 1);
    }

    /// A call ended with `code` after `elapsed`.
    pub fn finish(&self, code: Code, elapsed: Duration) {
        add(&self.finished[usize::from(code.as_u8())], 1);
        self.latency.observe(elapsed);
    }

    fn report(&self) -> CallReport {
        CallReport {
            started: self.started.get(),
            finished: self.finished.iter().map(Cell::get).collect(),
            latency: self.latency.report(),
        }
    }
}

/// What one core counts beyond routes and clusters.
#[derive(Default)]
pub struct CoreCounters {
    /// Downstream connections accepted.
    pub connections_accepted: Cell<u64>,
    /// Downstream TLS handshakes that failed.
    pub tls_handshake_failures: Cell<u64>,
    /// Downstream streams open now.
    pub streams_active: Cell<u64>,
    /// Calls started on this core.
    pub calls_started: Cell<u64>,
    /// Request payload bytes forwarded upstream.
    pub bytes_in: Cell<u64>,
    /// Response payload bytes forwarded downstream.
    pub bytes_out: Cell<u64>,
    /// Calls retried on another connection after the upstream refused them.
    pub retries: Cell<u64>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Cell<u64>,
    /// Downstream connections closed for resetting most of their streams.
    pub reset_floods: Cell<u64>,
}

/// What one core's bearer-token checks did (the `jwt` routes' and Rust
/// directors' [`JwtRule`](crate::routing::jwt::JwtRule)s). Kept by the
/// thread, as the checks run inside directors, which see no core state.
#[derive(Default)]
pub struct TokenCounters {
    /// Verdicts taken from a worker's cache of checked tokens.
    pub cache_hits: Cell<u64>,
    /// Tokens checked (decoded, signature verified): what costs.
    pub checks: Cell<u64>,
    /// Refusals by reason, in the order first seen.
    refusals: std::cell::RefCell<Vec<(&'static str, u64)>>,
}

impl TokenCounters {
    /// Counts a refusal for `reason` (a label: a few fixed words).
    pub fn refused(&self, reason: &'static str) {
        let mut refusals = self.refusals.borrow_mut();
        match refusals.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => refusals.push((reason, 1)),
        }
    }

    fn report(&self) -> TokenReport {
        TokenReport {
            cache_hits: self.cache_hits.get(),
            checks: self.checks.get(),
            refusals: self.refusals.borrow().clone(),
        }
    }
}

thread_local! {
    /// This thread's (a worker's) token counters.
    pub static TOKENS: TokenCounters = TokenCounters::default();
}

/// A core's token counters, as of a scrape.
#[derive(Clone, Debug, Default)]
pub struct TokenReport {
    /// Verdicts from the cache.
    pub cache_hits: u64,
    /// Tokens checked.
    pub checks: u64,
    /// Refusals by reason.
    pub refusals: Vec<(&'static str, u64)>,
}

/// Route statistics of one core, by route name, kept across reloads so
/// that a route that stays keeps counting; a route no config snapshot
/// uses any more is let go ([`RouteRegistry::forget_unused`]), so that
/// reloads that rename routes do not grow memory and `/metrics` for good.
#[derive(Default)]
pub struct RouteRegistry {
    routes: RefCell<BTreeMap<Rc<str>, Rc<CallStats>>>,
}

impl RouteRegistry {
    /// The statistics of the route named `name`.
    pub fn get(&self, name: &str) -> Rc<CallStats> {
        if let Some(s) = self.routes.borrow().get(name) {
            return s.clone();
        }
        let stats = Rc::new(CallStats::default());
        self.routes
            .borrow_mut()
            .insert(Rc::from(name), stats.clone());
        stats
    }

    /// Drops the statistics of routes nothing uses any more: no snapshot
    /// (the running one, or an older one a call still runs under) holds
    /// them.
    pub fn forget_unused(&self) {
        self.routes
            .borrow_mut()
            .retain(|_, stats| Rc::strong_count(stats) > 1);
    }

    fn report(&self) -> Vec<(String, CallReport)> {
        self.routes
            .borrow()
            .iter()
            .map(|(name, s)| (name.to_string(), s.report()))
            .collect()
    }
}

// ---- reports: plain data, sent from the workers to the control thread ----

/// A histogram's counts (per bucket, not cumulative) and sum.
#[derive(Clone, Debug, Default)]
pub struct HistogramReport {
    counts: Vec<u64>,
    sum_ns: u64,
}

/// One route's or cluster's calls.
#[derive(Clone, Debug, Default)]
pub struct CallReport {
    /// Calls started.
    pub started: u64,
    /// Calls finished, by gRPC status code.
    pub finished: Vec<u64>,
    latency: HistogramReport,
}

impl CallReport {
    fn merge(&mut self, other: &CallReport) {
        self.started += other.started;
        merge_vec(&mut self.finished, &other.finished);
        merge_vec(&mut self.latency.counts, &other.latency.counts);
        self.latency.sum_ns += other.latency.sum_ns;
    }
}

fn merge_vec(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// One cluster on one core.
#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    /// Its calls.
    pub calls: CallReport,
    /// Upstream connections open.
    pub connections: u64,
    /// Upstream streams open.
    pub streams: u64,
    /// Calls waiting for an upstream stream.
    pub pending: u64,
    /// Connect (TCP, TLS, HTTP/2) failures.
    pub connect_failures: u64,
    /// Streams the upstream reset.
    pub resets: u64,
    /// GOAWAYs received.
    pub goaways: u64,
    /// Calls refused at the cluster's call limits.
    pub overloaded: u64,
    /// Endpoints currently taking calls (healthy, not ejected).
    pub endpoints_up: u64,
    /// Endpoints in all.
    pub endpoints: u64,
}

impl ClusterReport {
    fn merge(&mut self, o: &ClusterReport) {
        self.calls.merge(&o.calls);
        self.connections += o.connections;
        self.streams += o.streams;
        self.pending += o.pending;
        self.connect_failures += o.connect_failures;
        self.resets += o.resets;
        self.goaways += o.goaways;
        self.overloaded += o.overloaded;
        // Health is per core too; a scrape shows the worst core.
        self.endpoints_up = if self.endpoints == 0 {
            o.endpoints_up
        } else {
            self.endpoints_up.min(o.endpoints_up)
        };
        self.endpoints = self.endpoints.max(o.endpoints);
    }
}

/// Everything one worker counted, as of a scrape.
#[derive(Clone, Debug, Default)]
pub struct CoreReport {
    /// The worker's index.
    pub core: usize,
    /// Routes by name.
    pub routes: Vec<(String, CallReport)>,
    /// Clusters by name.
    pub clusters: Vec<(String, ClusterReport)>,
    /// Downstream connections open.
    pub connections_active: u64,
    /// Downstream connections accepted.
    pub connections_accepted: u64,
    /// Failed downstream TLS handshakes.
    pub tls_handshake_failures: u64,
    /// Downstream streams open.
    pub streams_active: u64,
    /// Calls started.
    pub calls_started: u64,
    /// Request bytes forwarded.
    pub bytes_in: u64,
    /// Response bytes forwarded.
    pub bytes_out: u64,
    /// Transparent retries.
    pub retries: u64,
    /// Dropped access-log lines.
    pub access_log_dropped: u64,
    /// Connections closed for resetting most of their streams.
    pub reset_floods: u64,
    /// TLS handshakes under way now (filled by the worker).
    pub tls_handshakes: u64,
    /// TLS handshakes given up to make room (filled by the worker).
    pub tls_handshakes_evicted: u64,
    /// Bytes held for retries now (filled by the worker).
    pub retry_held_bytes: u64,
    /// Calls not held for a retry for want of budget (filled by the worker).
    pub retry_holds_refused: u64,
    /// Bearer-token checks.
    pub tokens: TokenReport,
}

impl CoreReport {
    /// The core's own counters, its routes and its thread's token checks
    /// (so: on the worker's thread); clusters are added by the worker.
    pub fn new(core: usize, c: &CoreCounters, routes: &RouteRegistry) -> CoreReport {
        CoreReport {
            core,
            routes: routes.report(),
            clusters: Vec::new(),
            connections_active: 0,
            connections_accepted: c.connections_accepted.get(),
            tls_handshake_failures: c.tls_handshake_failures.get(),
            streams_active: c.streams_active.get(),
            calls_started: c.calls_started.get(),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            retries: c.retries.get(),
            access_log_dropped: c.access_log_dropped.get(),
            reset_floods: c.reset_floods.get(),
            tls_handshakes: 0,
            tls_handshakes_evicted: 0,
            retry_held_bytes: 0,
            retry_holds_refused: 0,
            tokens: TOKENS.with(TokenCounters::report),
        }
    }
}

/// A cluster's report from its counters; connection figures are filled by
/// the cluster.
pub fn cluster_report(calls: &CallStats) -> ClusterReport {
    ClusterReport {
        calls: calls.report(),
        ..ClusterReport::default()
    }
}

/// Every core's report, merged and ready to render.
#[derive(Debug, Default)]
pub struct Merged {
    cores: Vec<CoreReport>,
    routes: BTreeMap<String, CallReport>,
    clusters: BTreeMap<String, ClusterReport>,
    /// Endpoint name resolution, from the control side.
    pub dns: DnsReport,
}

/// What resolving endpoint names again has done (the control side's).
#[derive(Clone, Copy, Debug, Default)]
pub struct DnsReport {
    /// Resolutions that failed (the last answer was kept).
    pub failures: u64,
    /// Names whose last resolution failed.
    pub failing: u64,
    /// Times the resolved endpoints changed and the workers took them.
    pub updates: u64,
}

impl Merged {
    /// Merges the workers' reports.
    pub fn new(mut cores: Vec<CoreReport>) -> Merged {
        cores.sort_by_key(|c| c.core);
        let mut routes: BTreeMap<String, CallReport> = BTreeMap::new();
        let mut clusters: BTreeMap<String, ClusterReport> = BTreeMap::new();
        for core in &cores {
            for (name, r) in &core.routes {
                routes.entry(name.clone()).or_default().merge(r);
            }
            for (name, c) in &core.clusters {
                clusters.entry(name.clone()).or_default().merge(c);
            }
        }
        Merged {
            cores,
            routes,
            clusters,
            dns: DnsReport::default(),
        }
    }

    /// Calls finished with `code` on the route named `route`.
    pub fn route_finished(&self, route: &str, code: Code) -> u64 {
        self.routes
            .get(route)
            .and_then(|r| r.finished.get(usize::from(code.as_u8())))
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of everything.
    pub fn render(self) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("grpc_proxy");
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type Labels = Vec<(&'static str, String)>;

/// A route's or cluster's name as a label value in the text exposition
/// format, which needs `\`, `"` and line feeds escaped (the encoder writes
/// values as they are): else one name breaks every scrape.
fn label_value(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value as i64).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn by_code<'a>(
    key: &'static str,
    items: impl IntoIterator<Item = (&'a String, &'a CallReport)>,
) -> Vec<(Labels, u64)> {
    let mut out = Vec::new();
    for (name, r) in items {
        for (code, n) in r.finished.iter().enumerate() {
            if *n > 0 {
                let code = Code::from_u8(code as u8).map_or("UNKNOWN", Code::name);
                out.push((
                    vec![(key, label_value(name)), ("grpc_code", code.into())],
                    *n,
                ));
            }
        }
    }
    out
}

impl prometheus_client::collector::Collector for Merged {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_routes(&mut e)?;
        self.encode_clusters(&mut e)?;
        self.encode_cores(&mut e)?;
        self.encode_tokens(&mut e)?;
        self.encode_dns(&mut e)
    }
}

impl Merged {
    /// Bearer-token checks: cache hits and checks by core, refusals by
    /// reason (all cores together).
    fn encode_tokens(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = |c: &CoreReport| vec![("core", c.core.to_string())];
        counter(
            e,
            "jwt_cache_hits",
            "Bearer tokens whose verdict a worker had kept from an earlier check, by core.",
            self.cores.iter().map(|c| (core(c), c.tokens.cache_hits)),
        )?;
        counter(
            e,
            "jwt_checks",
            "Bearer tokens checked (signature verified), by core.",
            self.cores.iter().map(|c| (core(c), c.tokens.checks)),
        )?;
        let mut refusals: BTreeMap<&'static str, u64> = BTreeMap::new();
        for c in &self.cores {
            for (reason, n) in &c.tokens.refusals {
                *refusals.entry(reason).or_default() += n;
            }
        }
        counter(
            e,
            "jwt_refusals",
            "Bearer tokens a check refused (a later route may still take the call), by reason.",
            refusals
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason.to_owned())], n)),
        )
    }

    /// Endpoint name resolution (no labels: the control side's own).
    fn encode_dns(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let one = |e: &mut DescriptorEncoder, name: &str, help: &str, kind, value: u64| {
            let metric = e.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric),
                _ => ConstGauge::new(value as i64).encode(metric),
            }
        };
        one(
            e,
            "dns_resolve_failures",
            "Endpoint name resolutions that failed; the last answer was kept.",
            MetricType::Counter,
            self.dns.failures,
        )?;
        one(
            e,
            "dns_names_failing",
            "Endpoint names whose last resolution failed.",
            MetricType::Gauge,
            self.dns.failing,
        )?;
        one(
            e,
            "dns_endpoint_updates",
            "Times the resolved endpoints changed and the workers took them.",
            MetricType::Counter,
            self.dns.updates,
        )
    }

    /// Calls and their latency, by route.
    fn encode_routes(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let route = |n: &String| vec![("route", label_value(n))];
        counter(
            e,
            "route_calls_started",
            "Calls started, by route.",
            self.routes.iter().map(|(n, r)| (route(n), r.started)),
        )?;
        counter(
            e,
            "route_calls_finished",
            "Calls finished, by route and gRPC status.",
            by_code("route", &self.routes),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "route_call_duration_seconds",
                "Call duration from request headers to the end of the response, by route.",
                None,
                MetricType::Histogram,
            )?;
            for (name, r) in &self.routes {
                let mut cumulative = 0;
                let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
                for (i, bound) in LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .enumerate()
                {
                    cumulative += r.latency.counts.get(i).copied().unwrap_or(0);
                    buckets.push((bound, cumulative));
                }
                let labels = route(name);
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        r.latency.sum_ns as f64 / 1e9,
                        cumulative,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }

    /// Calls, connections, streams and failures, by upstream cluster.
    fn encode_clusters(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cluster = |n: &String| vec![("cluster", label_value(n))];
        counter(
            e,
            "cluster_calls_started",
            "Calls started, by upstream cluster.",
            self.clusters
                .iter()
                .map(|(n, c)| (cluster(n), c.calls.started)),
        )?;
        counter(
            e,
            "cluster_calls_finished",
            "Calls finished, by upstream cluster and gRPC status.",
            by_code("cluster", self.clusters.iter().map(|(n, c)| (n, &c.calls))),
        )?;
        gauge(
            e,
            "upstream_connections",
            "Upstream HTTP/2 connections open, by cluster.",
            self.clusters
                .iter()
                .map(|(n, c)| (cluster(n), c.connections)),
        )?;
        gauge(
            e,
            "upstream_streams_active",
            "Upstream streams open, by cluster.",
            self.clusters.iter().map(|(n, c)| (cluster(n), c.streams)),
        )?;
        gauge(
            e,
            "upstream_pending_calls",
            "Calls waiting for an upstream stream (a connection being made, at its stream limit or its write budget), by cluster.",
            self.clusters.iter().map(|(n, c)| (cluster(n), c.pending)),
        )?;
        counter(
            e,
            "upstream_connect_failures",
            "Failed upstream connects (TCP, TLS or HTTP/2), by cluster.",
            self.clusters
                .iter()
                .map(|(n, c)| (cluster(n), c.connect_failures)),
        )?;
        counter(
            e,
            "upstream_resets",
            "Streams the upstream reset, by cluster.",
            self.clusters.iter().map(|(n, c)| (cluster(n), c.resets)),
        )?;
        counter(
            e,
            "upstream_goaways",
            "GOAWAY frames received from upstreams, by cluster.",
            self.clusters.iter().map(|(n, c)| (cluster(n), c.goaways)),
        )?;
        counter(
            e,
            "upstream_overloaded",
            "Calls refused at once at a cluster's max_active_calls or max_pending_calls, by cluster.",
            self.clusters.iter().map(|(n, c)| (cluster(n), c.overloaded)),
        )?;
        gauge(
            e,
            "upstream_endpoints_up",
            "Endpoints taking calls (healthy and not ejected; the lowest over the cores), by cluster.",
            self.clusters
                .iter()
                .map(|(n, c)| (cluster(n), c.endpoints_up)),
        )?;
        Ok(())
    }

    /// Connections, streams, bytes and retries, by core.
    fn encode_cores(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = |c: &CoreReport| vec![("core", c.core.to_string())];
        gauge(
            e,
            "downstream_connections",
            "Downstream connections open, by core.",
            self.cores.iter().map(|c| (core(c), c.connections_active)),
        )?;
        counter(
            e,
            "downstream_connections_accepted",
            "Downstream connections accepted, by core.",
            self.cores.iter().map(|c| (core(c), c.connections_accepted)),
        )?;
        counter(
            e,
            "downstream_tls_handshake_failures",
            "Downstream TLS handshakes that failed, by core.",
            self.cores
                .iter()
                .map(|c| (core(c), c.tls_handshake_failures)),
        )?;
        gauge(
            e,
            "downstream_tls_handshakes",
            "Downstream TLS handshakes under way, by core.",
            self.cores.iter().map(|c| (core(c), c.tls_handshakes)),
        )?;
        counter(
            e,
            "downstream_tls_handshakes_evicted",
            "Downstream TLS handshakes given up to make room at max_tls_handshakes_per_worker (the longest under way goes), by core.",
            self.cores.iter().map(|c| (core(c), c.tls_handshakes_evicted)),
        )?;
        gauge(
            e,
            "downstream_streams_active",
            "Downstream streams (calls) open, by core.",
            self.cores.iter().map(|c| (core(c), c.streams_active)),
        )?;
        counter(
            e,
            "core_calls_started",
            "Calls started, by core (shows imbalance between cores).",
            self.cores.iter().map(|c| (core(c), c.calls_started)),
        )?;
        counter(
            e,
            "received_bytes",
            "Request message bytes received from clients and forwarded, by core.",
            self.cores.iter().map(|c| (core(c), c.bytes_in)),
        )?;
        counter(
            e,
            "sent_bytes",
            "Response message bytes received from upstreams and forwarded, by core.",
            self.cores.iter().map(|c| (core(c), c.bytes_out)),
        )?;
        counter(
            e,
            "retries",
            "Calls retried transparently after an upstream refused them, by core.",
            self.cores.iter().map(|c| (core(c), c.retries)),
        )?;
        counter(
            e,
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind, by core.",
            self.cores.iter().map(|c| (core(c), c.access_log_dropped)),
        )?;
        counter(
            e,
            "downstream_reset_floods",
            "Downstream connections closed (GOAWAY ENHANCE_YOUR_CALM) for resetting most of the streams they opened, by core.",
            self.cores.iter().map(|c| (core(c), c.reset_floods)),
        )?;
        gauge(
            e,
            "retry_held_bytes",
            "Bytes held for transparent retries now (request heads and DATA, counted as the memory they keep), by core.",
            self.cores.iter().map(|c| (core(c), c.retry_held_bytes)),
        )?;
        counter(
            e,
            "retry_holds_refused",
            "Calls sent without being held for a retry because their connection's or core's retry budget was full, by core.",
            self.cores.iter().map(|c| (core(c), c.retry_holds_refused)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_label_values() {
        assert_eq!(label_value("plain-name.v1"), "plain-name.v1");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn routes_no_snapshot_uses_are_forgotten_and_the_others_keep_counting() {
        let registry = RouteRegistry::default();
        let kept = registry.get("kept");
        kept.start();
        drop(registry.get("renamed away"));
        registry.forget_unused();
        let names: Vec<String> = registry.report().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["kept"]);
        assert_eq!(
            registry.get("kept").report().started,
            1,
            "the same counters"
        );
    }
}
