//! The soak's summary: calls by fault kind and path, which failures the
//! fault explains, probe latency per fault kind, the proxy's RSS and fds
//! against the baseline, and what each fault did; as markdown (for the
//! README) and JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::Outcome;
use super::load::{self, LoadResults};
use super::{Fault, Reloads, Restart, Sample};

/// Everything the summary is made from.
pub struct Inputs<'a> {
    pub phases: &'a [(Fault, Duration)],
    pub rate: f64,
    pub probe_rate: f64,
    pub sample_every: Duration,
    pub start: Instant,
    pub results: &'a LoadResults,
    pub samples: Vec<Sample>,
    pub peak_hwm_kib: u64,
    pub metrics: &'a str,
    pub restarts: Vec<Restart>,
    pub reloads: Reloads,
    pub log: &'a str,
}

/// Calls of one path during one kind of phase.
#[derive(Debug, Serialize)]
pub struct CallRow {
    pub fault: &'static str,
    pub path: &'static str,
    pub calls: u64,
    pub ok: u64,
    /// Cancelled or left by the client on purpose (the fault itself).
    pub by_the_client: u64,
    /// Failures the fault explains.
    pub expected: u64,
    /// Failures it does not.
    pub unexpected: u64,
    /// Every outcome but OK, by label.
    pub outcomes: BTreeMap<String, u64>,
}

/// Probe latency during one kind of phase.
#[derive(Debug, Serialize)]
pub struct ProbeRow {
    pub fault: &'static str,
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The proxy's RSS and fds at one point.
#[derive(Debug, Serialize)]
pub struct Point {
    pub rss_mib: f64,
    pub fds: usize,
}

/// Memory and descriptors over the run.
#[derive(Debug, Serialize)]
pub struct Resources {
    pub idle_before: Point,
    /// End of the first quiet phase, under load.
    pub baseline: Point,
    /// Highest sampled RSS, and highest fd count.
    pub peak: Point,
    /// End of the last quiet phase, under load.
    pub end: Point,
    pub idle_after: Point,
    /// VmHWM at the end: the peak between samples too.
    pub peak_hwm_mib: f64,
    pub rss_returned: bool,
    pub fds_returned: bool,
    /// At the end of each whole cycle of faults (the quiet phase after the
    /// last fault of the cycle), and at the end: growth from one cycle to
    /// the next is a leak, a plateau is memory kept for reuse.
    pub cycle_ends: Vec<Point>,
    /// The proxy's gauges and some counters after the load left.
    pub after_load: BTreeMap<String, f64>,
    pub samples: Vec<Sample>,
}

/// One restart as the clients saw it, in seconds since the load started.
#[derive(Debug, Serialize)]
pub struct RestartRow {
    pub down_at_s: f64,
    pub up_at_s: f64,
    /// First and last failed call on the flaky path in that phase.
    pub failing_s: Option<(f64, f64)>,
    pub failed_calls: u64,
}

/// The whole summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub seconds: f64,
    pub phases: Vec<(Fault, f64)>,
    pub rate: f64,
    pub probe_rate: f64,
    pub sample_every_s: f64,
    pub calls: Vec<CallRow>,
    pub probe: Vec<ProbeRow>,
    pub resources: Resources,
    pub restarts: Vec<RestartRow>,
    pub reloads: Reloads,
    /// Proxy log lines (level warn and above) and a few distinct ones.
    pub proxy_log_lines: usize,
    pub proxy_log_examples: Vec<(usize, String)>,
    /// Failures no fault explains; the run fails if there is one.
    pub unexpected: u64,
}

/// The failures a fault explains: the flaky upstream's calls fail with
/// UNAVAILABLE while it restarts. Nothing else may fail.
pub fn expected(fault: Fault, path: &str, label: &str) -> bool {
    fault == Fault::UpstreamRestart && path == load::FLAKY && label == "UNAVAILABLE"
}

const PATHS: [&str; 6] = [
    load::STEADY,
    load::FLAKY,
    load::LONG,
    load::PROBE,
    load::SLOW,
    load::RESETTERS,
];

fn fault_order() -> impl Iterator<Item = Fault> {
    std::iter::once(Fault::Quiet).chain(Fault::CYCLE)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Summary {
    /// Aggregates a run.
    pub fn new(i: Inputs<'_>) -> Summary {
        let fault_of = |phase: usize| i.phases[phase].0;
        let ok = Outcome::Status(grpc_proxy::Code::Ok).label();
        let own = [Outcome::Cancelled.label(), Outcome::Left.label()];
        let mut calls = Vec::new();
        for fault in fault_order() {
            for path in PATHS {
                let mut row = CallRow {
                    fault: fault.name(),
                    path,
                    calls: 0,
                    ok: 0,
                    by_the_client: 0,
                    expected: 0,
                    unexpected: 0,
                    outcomes: BTreeMap::new(),
                };
                for ((phase, p, label), &n) in &i.results.tally {
                    if *p != path || fault_of(*phase) != fault {
                        continue;
                    }
                    row.calls += n;
                    if *label == ok {
                        row.ok += n;
                        continue;
                    }
                    *row.outcomes.entry(label.clone()).or_default() += n;
                    if own.contains(label) {
                        row.by_the_client += n;
                    } else if expected(fault, path, label) {
                        row.expected += n;
                    } else {
                        row.unexpected += n;
                    }
                }
                if row.calls > 0 {
                    calls.push(row);
                }
            }
        }
        let unexpected =
            calls.iter().map(|r| r.unexpected).sum::<u64>() + i.reloads.failed.len() as u64;

        let probe = fault_order()
            .filter_map(|fault| {
                let mut us: Vec<u64> = i
                    .results
                    .probe_us
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| fault_of(*p) == fault)
                    .flat_map(|(_, v)| v.iter().copied())
                    .collect();
                if us.is_empty() {
                    return None;
                }
                us.sort_unstable();
                let q = |q: f64| {
                    let k = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
                    us[k - 1] as f64 / 1000.0
                };
                Some(ProbeRow {
                    fault: fault.name(),
                    calls: us.len(),
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                    max_ms: q(1.0),
                })
            })
            .collect();

        let restarts = i
            .restarts
            .iter()
            .map(|r| RestartRow {
                down_at_s: r.down_at_s,
                up_at_s: r.up_at_s,
                failing_s: i.results.flaky_failing[r.phase].map(|(a, b)| {
                    (
                        a.saturating_duration_since(i.start).as_secs_f64(),
                        b.saturating_duration_since(i.start).as_secs_f64(),
                    )
                }),
                failed_calls: i
                    .results
                    .tally
                    .iter()
                    .filter(|((p, path, label), _)| {
                        *p == r.phase && *path == load::FLAKY && *label != ok
                    })
                    .map(|(_, n)| n)
                    .sum(),
            })
            .collect();

        Summary {
            seconds: i.phases.iter().map(|p| p.1.as_secs_f64()).sum(),
            phases: i.phases.iter().map(|p| (p.0, p.1.as_secs_f64())).collect(),
            rate: i.rate,
            probe_rate: i.probe_rate,
            sample_every_s: i.sample_every.as_secs_f64(),
            calls,
            probe,
            resources: resources(i.samples, i.phases.len(), i.peak_hwm_kib, i.metrics),
            restarts,
            proxy_log_lines: i.log.lines().count(),
            proxy_log_examples: log_examples(i.log),
            reloads: i.reloads,
            unexpected,
        }
    }

    /// The markdown for the README.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let phase = self.phases.first().map_or(0.0, |p| p.1);
        let cycle: Vec<&str> = self.phases.iter().map(|p| p.0.name()).collect();
        out.push_str(&format!(
            "**Soak: {:.0} s, {} phases of {:.1} s** ({})\n\n",
            self.seconds,
            self.phases.len(),
            phase,
            cycle.join(", ")
        ));
        out.push_str(&format!(
            "Load: {:.0} calls/s mixed (unary, server-stream, client-stream, bidi; `steady` and `flaky` paths), \
             2 long-lived bidi streams, probe: {:.0} unary calls/s on its own connection.\n\n",
            self.rate, self.probe_rate
        ));
        out.push_str(
            "| phase | path | calls | OK | by the client | expected errors | unexpected | outcomes other than OK |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        );
        for r in &self.calls {
            let outcomes: Vec<String> =
                r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.fault,
                r.path,
                r.calls,
                r.ok,
                r.by_the_client,
                r.expected,
                r.unexpected,
                outcomes.join(", ")
            ));
        }
        out.push_str("\n**Probe latency by phase** (unary, own connection, steady upstream)\n\n");
        out.push_str(
            "| phase | calls | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |\n",
        );
        for p in &self.probe {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
                p.fault, p.calls, p.p50_ms, p.p99_ms, p.max_ms
            ));
        }
        let r = &self.resources;
        out.push_str(&format!(
            "\n**Proxy resources** (VmRSS and `/proc/<pid>/fd`, every {:.0} s and at each phase end)\n\n",
            self.sample_every_s
        ));
        out.push_str("| point | RSS MiB | open fds |\n| --- | ---: | ---: |\n");
        for (name, p) in [
            ("idle, before the load", &r.idle_before),
            ("baseline: end of the first quiet phase", &r.baseline),
            ("peak (sampled)", &r.peak),
            ("end of the last quiet phase", &r.end),
            ("idle, 2 s after the load left", &r.idle_after),
        ] {
            out.push_str(&format!("| {name} | {:.1} | {} |\n", p.rss_mib, p.fds));
        }
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        out.push_str(&format!(
            "\nBack to the baseline at the end: RSS {} (within 10% or 1 MiB), fds {}. Peak RSS between samples (VmHWM): {:.1} MiB.\n",
            yes(r.rss_returned),
            yes(r.fds_returned),
            r.peak_hwm_mib
        ));
        if !r.cycle_ends.is_empty() {
            let ends: Vec<String> = r
                .cycle_ends
                .iter()
                .chain([&r.end])
                .map(|p| format!("{:.1}/{}", p.rss_mib, p.fds))
                .collect();
            out.push_str(&format!(
                "RSS MiB/fds after each cycle of the four faults, and at the end: {}.\n",
                ends.join(", ")
            ));
        }
        let gauges: Vec<String> = r
            .after_load
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!(
            "After the load left, `/metrics`: {}.\n",
            gauges.join(", ")
        ));
        let timeline: Vec<String> = r
            .samples
            .iter()
            .filter(|s| s.what != "phase end")
            .map(|s| format!("{:.0}s {:.1}/{}", s.at_s, mib(s.rss_kib), s.fds))
            .collect();
        out.push_str(&format!(
            "Samples (time, RSS MiB/fds): {}.\n",
            timeline.join(", ")
        ));

        out.push_str("\n**Faults**\n\n");
        for rs in &self.restarts {
            let failing = rs.failing_s.map_or("no flaky call failed".into(), |(a, b)| {
                format!(
                    "flaky calls failed from {:+.2} s to {:+.2} s after the kill (last failure {:+.2} s after it was back)",
                    a - rs.down_at_s,
                    b - rs.down_at_s,
                    b - rs.up_at_s
                )
            });
            out.push_str(&format!(
                "- upstream restart at {:.1} s: down {:.2} s; {} failed calls; {failing}\n",
                rs.down_at_s,
                rs.up_at_s - rs.down_at_s,
                rs.failed_calls
            ));
        }
        let rl = &self.reloads;
        out.push_str(&format!(
            "- config reloads: {} by SIGHUP, {} by POST /reload, {} failed; config version {} -> {}\n",
            rl.sighup,
            rl.post,
            rl.failed.len(),
            rl.version_before,
            rl.version_after
        ));
        for f in &rl.failed {
            out.push_str(&format!("  - {f}\n"));
        }
        let by_client = |fault: &str, path: &str| -> u64 {
            self.calls
                .iter()
                .filter(|r| r.fault == fault && r.path == path)
                .map(|r| r.by_the_client)
                .sum()
        };
        out.push_str(&format!(
            "- slow readers: {} unread server streams held, then reset or abandoned\n",
            by_client(Fault::SlowReaders.name(), load::SLOW)
        ));
        out.push_str(&format!(
            "- client resets: {} calls cancelled midway or left open on a dropped connection\n",
            by_client(Fault::ClientResets.name(), load::RESETTERS)
        ));
        out.push_str(&format!(
            "- proxy log (warn and above): {} lines\n",
            self.proxy_log_lines
        ));
        for (n, line) in &self.proxy_log_examples {
            out.push_str(&format!("  - {n}x `{line}`\n"));
        }
        out.push_str(&format!("\nUnexpected errors: {}\n", self.unexpected));
        out
    }
}

fn resources(samples: Vec<Sample>, phases: usize, hwm_kib: u64, metrics: &str) -> Resources {
    let point = |s: Option<&Sample>| Point {
        rss_mib: s.map_or(0.0, |s| mib(s.rss_kib)),
        fds: s.map_or(0, |s| s.fds),
    };
    let phase_end = |p: usize| {
        samples
            .iter()
            .find(|s| s.what == "phase end" && s.phase == Some(p))
    };
    let baseline = point(phase_end(0));
    let end = point(phase_end(phases - 1));
    let peak = Point {
        rss_mib: samples.iter().map(|s| mib(s.rss_kib)).fold(0.0, f64::max),
        fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
    };
    let cycle = 2 * Fault::CYCLE.len();
    let cycle_ends = (1..)
        .map(|k| k * cycle)
        .take_while(|&p| p < phases - 1)
        .map(|p| point(phase_end(p)))
        .collect();
    let rss_returned = end.rss_mib <= (baseline.rss_mib * 1.1).max(baseline.rss_mib + 1.0);
    let fds_returned = end.fds <= baseline.fds;
    Resources {
        idle_before: point(samples.iter().find(|s| s.what == "idle before load")),
        idle_after: point(samples.iter().find(|s| s.what == "idle after load")),
        baseline,
        peak,
        end,
        peak_hwm_mib: mib(hwm_kib),
        rss_returned,
        fds_returned,
        cycle_ends,
        after_load: gauges(metrics),
        samples,
    }
}

/// Sums of the proxy's metrics that say whether anything was left behind.
fn gauges(metrics: &str) -> BTreeMap<String, f64> {
    const NAMES: [&str; 7] = [
        "grpc_proxy_downstream_connections",
        "grpc_proxy_downstream_streams_active",
        "grpc_proxy_upstream_connections",
        "grpc_proxy_upstream_streams_active",
        "grpc_proxy_downstream_reset_floods_total",
        "grpc_proxy_upstream_resets_total",
        "grpc_proxy_retries_total",
    ];
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(short) = NAMES.iter().find(|n| **n == name) {
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.entry(short.trim_start_matches("grpc_proxy_").to_owned())
                .or_default() += value;
        }
    }
    out
}

/// Up to 8 distinct log lines (digits ignored when comparing), with counts.
fn log_examples(log: &str) -> Vec<(usize, String)> {
    let mut seen: Vec<(String, usize, String)> = Vec::new();
    for line in log.lines() {
        let plain = strip_ansi(line);
        // Drop the timestamp.
        let text = plain
            .split_once(' ')
            .map_or(plain.as_str(), |(_, r)| r)
            .trim();
        let key: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
        if let Some(e) = seen.iter_mut().find(|(k, _, _)| *k == key) {
            e.1 += 1;
        } else if seen.len() < 8 {
            seen.push((key, 1, text.chars().take(200).collect()));
        }
    }
    seen.into_iter().map(|(_, n, t)| (n, t)).collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_on_the_flaky_path_during_a_restart_is_expected() {
        assert!(expected(Fault::UpstreamRestart, load::FLAKY, "UNAVAILABLE"));
        assert!(!expected(
            Fault::UpstreamRestart,
            load::STEADY,
            "UNAVAILABLE"
        ));
        assert!(!expected(Fault::UpstreamRestart, load::FLAKY, "INTERNAL"));
        assert!(!expected(Fault::Quiet, load::FLAKY, "UNAVAILABLE"));
        assert!(!expected(Fault::Reload, load::PROBE, "UNAVAILABLE"));
    }

    #[test]
    fn gauges_sum_over_cores_and_labels() {
        let text = "# TYPE grpc_proxy_downstream_connections gauge\n\
                    grpc_proxy_downstream_connections{core=\"0\"} 2\n\
                    grpc_proxy_downstream_connections{core=\"1\"} 1\n\
                    grpc_proxy_upstream_streams_active{cluster=\"steady\"} 0\n\
                    grpc_proxy_downstream_connections_accepted_total{core=\"0\"} 9\n";
        let g = gauges(text);
        assert_eq!(g["downstream_connections"], 3.0);
        assert_eq!(g["upstream_streams_active"], 0.0);
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn log_lines_group_when_only_numbers_differ() {
        let log = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m WARN peer=127.0.0.1:5001 closed\n\
                   2026-01-01T00:00:01Z WARN peer=127.0.0.1:5002 closed\n";
        let e = log_examples(log);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, 2);
        assert!(e[0].1.starts_with("WARN peer="));
    }
}
