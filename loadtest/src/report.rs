//! Results: per-worker statistics, merging, the text table and JSON.
//!
//! Every worker records into its own HDR histograms (nanoseconds, 3
//! significant digits) and counters; the main thread merges what workers
//! send over crossbeam-channel, once a second for the progress line and once
//! at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds (3 significant digits), up to 10
/// minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// What one worker measured (or all of them, merged).
#[derive(Clone)]
pub struct Stats {
    /// Whole-call latency.
    pub call: Histogram<u64>,
    /// Per-message latency: bidi round trips; gaps between server-stream
    /// messages.
    pub message: Histogram<u64>,
    /// Time to the first response message of a server stream.
    pub first_message: Histogram<u64>,
    /// Open loop: how late each call was released after its intended time
    /// (pacing granularity and load-generator lag, not server latency).
    pub schedule_lag: Histogram<u64>,
    /// Calls that ended with grpc-status 0.
    pub calls_ok: u64,
    /// Calls that failed, by gRPC status name (or another short label).
    pub errors: BTreeMap<String, u64>,
    /// Request messages sent.
    pub messages_sent: u64,
    /// Response messages received.
    pub messages_received: u64,
    /// Request bytes sent (framed).
    pub bytes_sent: u64,
    /// Response bytes received (framed).
    pub bytes_received: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            call: histogram(),
            message: histogram(),
            first_message: histogram(),
            schedule_lag: histogram(),
            calls_ok: 0,
            errors: BTreeMap::new(),
            messages_sent: 0,
            messages_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

impl Stats {
    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.call.add(&other.call);
        let _ = self.message.add(&other.message);
        let _ = self.first_message.add(&other.first_message);
        let _ = self.schedule_lag.add(&other.schedule_lag);
        self.calls_ok += other.calls_ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
    }

    /// Calls that failed.
    pub fn calls_failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Forgets everything (for interval statistics).
    pub fn reset(&mut self) {
        *self = Stats::default();
    }
}

/// Latency percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Summarises a histogram; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Some(Latency {
            count: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
        })
    }
}

/// The full result of a run, as printed and as `--json` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The address measured.
    pub target: String,
    /// unary, server-stream, client-stream or bidi.
    pub rpc: String,
    /// closed or open (fixed rate).
    pub mode: String,
    /// For open loop, the target rate in calls/s.
    pub rate: Option<f64>,
    /// Request payload bytes.
    pub payload_bytes: usize,
    /// Worker cores of the load generator.
    pub cores: usize,
    /// Connections in total.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams_per_connection: usize,
    /// Length of the measured window (after warm-up), in seconds.
    pub seconds: f64,
    /// Calls that succeeded.
    pub calls_ok: u64,
    /// Calls that failed.
    pub calls_failed: u64,
    /// Failures by gRPC status.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub calls_per_sec: f64,
    /// Messages (sent + received) per second.
    pub messages_per_sec: f64,
    /// Request megabytes per second (10^6 bytes).
    pub mb_per_sec_sent: f64,
    /// Response megabytes per second.
    pub mb_per_sec_received: f64,
    /// Whole-call latency.
    pub call_latency: Option<Latency>,
    /// Per-message latency (bidi round trip, server-stream gaps).
    pub message_latency: Option<Latency>,
    /// Time to first message (server streaming).
    pub first_message_latency: Option<Latency>,
    /// Open loop: release time after the intended start (part of every
    /// call latency; pacing, not the server).
    pub schedule_lag: Option<Latency>,
    /// What a picture of the run draws: the headline latency (calls; bidi
    /// round trips; server streams' first messages) and its timeline.
    #[serde(skip)]
    pub series: crate::plot::Series,
}

/// The histogram a run's picture draws, by RPC kind name.
pub fn headline<'a>(rpc: &str, stats: &'a Stats) -> &'a hdrhistogram::Histogram<u64> {
    match rpc {
        "bidi" => &stats.message,
        "server-stream" => &stats.first_message,
        _ => &stats.call,
    }
}

/// What a report is about, apart from the figures.
pub struct Setup {
    /// Target address.
    pub target: String,
    /// RPC kind name.
    pub rpc: String,
    /// Open-loop rate.
    pub rate: Option<f64>,
    /// Request payload bytes.
    pub payload_bytes: usize,
    /// Load-generator cores.
    pub cores: usize,
    /// Connections in total.
    pub connections: usize,
    /// Streams per connection.
    pub streams_per_connection: usize,
}

impl Report {
    /// Builds the report from merged statistics over a measured window.
    pub fn new(setup: Setup, stats: &Stats, window: Duration) -> Report {
        let secs = window.as_secs_f64().max(1e-9);
        let series = crate::plot::Series {
            name: String::new(),
            latency: headline(&setup.rpc, stats).clone(),
            timeline: Vec::new(),
        };
        Report {
            target: setup.target,
            rpc: setup.rpc,
            mode: if setup.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            rate: setup.rate,
            payload_bytes: setup.payload_bytes,
            cores: setup.cores,
            connections: setup.connections,
            streams_per_connection: setup.streams_per_connection,
            seconds: secs,
            calls_ok: stats.calls_ok,
            calls_failed: stats.calls_failed(),
            errors: stats.errors.clone(),
            calls_per_sec: stats.calls_ok as f64 / secs,
            messages_per_sec: (stats.messages_sent + stats.messages_received) as f64 / secs,
            mb_per_sec_sent: stats.bytes_sent as f64 / secs / 1e6,
            mb_per_sec_received: stats.bytes_received as f64 / secs / 1e6,
            call_latency: Latency::of(&stats.call),
            message_latency: Latency::of(&stats.message),
            first_message_latency: Latency::of(&stats.first_message),
            schedule_lag: Latency::of(&stats.schedule_lag),
            series,
        }
    }

    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} calls/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            out,
            "target {}  rpc {}  payload {}B  {} cores x {} connections x {} streams  {}  {:.1}s measured",
            self.target,
            self.rpc,
            self.payload_bytes,
            self.cores,
            self.connections,
            self.streams_per_connection,
            mode,
            self.seconds
        );
        let _ = writeln!(
            out,
            "calls    {} ok, {} failed   {:.0} calls/s   {:.0} msgs/s   {:.2} MB/s sent   {:.2} MB/s received",
            self.calls_ok,
            self.calls_failed,
            self.calls_per_sec,
            self.messages_per_sec,
            self.mb_per_sec_sent,
            self.mb_per_sec_received
        );
        let _ = writeln!(
            out,
            "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (us)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
        );
        for (name, l) in [
            ("call", &self.call_latency),
            ("message", &self.message_latency),
            ("first message", &self.first_message_latency),
            ("schedule lag", &self.schedule_lag),
        ] {
            if let Some(l) = l {
                let _ = writeln!(
                    out,
                    "{:<14}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
                    name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
                );
            }
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "errors   {}", list.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_up() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.call.saturating_record(10_000);
        b.call.saturating_record(30_000);
        a.calls_ok = 1;
        b.calls_ok = 1;
        b.errors.insert("UNAVAILABLE".into(), 2);
        a.merge(&b);
        assert_eq!(a.call.len(), 2);
        assert_eq!(a.calls_ok, 2);
        assert_eq!(a.calls_failed(), 2);
        let l = Latency::of(&a.call).expect("samples");
        assert!(l.p50_us >= 9.9 && l.p50_us <= 10.1, "{l:?}");
        assert!(l.max_us >= 29.9 && l.max_us <= 30.1, "{l:?}");
    }
}
