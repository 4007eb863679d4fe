//! The end-to-end comparison: the same loads directly against the echo
//! upstream and through grpc-proxy, HAProxy and nginx, each proxy alone on
//! its own CPU with one worker; the upstream and the load on the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use grpc_loadtest::report::{Latency, Report};
use grpc_loadtest::run::{self, Rpc, RunOptions};
use grpc_proxy::CoreSelection;
use serde::Serialize;

use crate::procs::{self, Target};

/// What a scenario's headline figure counts.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub enum Unit {
    /// Calls per second; CPU per call.
    Calls,
    /// Messages per second; CPU per message.
    Messages,
    /// Response megabytes per second; CPU per message.
    Megabytes,
}

impl Unit {
    /// The rate's unit.
    pub fn rate(self) -> &'static str {
        match self {
            Unit::Calls => "calls/s",
            Unit::Messages => "msgs/s",
            Unit::Megabytes => "MB/s",
        }
    }

    /// What CPU time is divided by.
    fn per(self) -> &'static str {
        match self {
            Unit::Calls => "call",
            _ => "msg",
        }
    }
}

/// The distinct keys of `items`, in the order first seen.
pub fn first_seen<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&'a T) -> &'a str,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = Vec::new();
    for item in items {
        let k = key(item);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// One load shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    rpc: Rpc,
    payload: usize,
    response_size: Option<usize>,
    messages: usize,
    connections: usize,
    streams: usize,
    /// Open loop at half this target's unary peak.
    half_peak: bool,
    /// A new connection (and TLS handshake) per call.
    connection_per_call: bool,
    unit: Unit,
}

/// The scenarios of issue 4, in order (the first is the unary peak that the
/// fixed-rate scenario halves); with `tls`, also a connection (and a full
/// TLS handshake) per call, whose rate is handshakes per second.
pub fn scenarios(tls: bool) -> Vec<Scenario> {
    let s = |name, rpc, payload, connections, streams, unit| Scenario {
        name,
        rpc,
        payload,
        response_size: None,
        messages: 1,
        connections,
        streams,
        half_peak: false,
        connection_per_call: false,
        unit,
    };
    let mut all = vec![
        s("unary 10B, 8x16", Rpc::Unary, 10, 8, 16, Unit::Calls),
        s("unary 1KiB, 8x16", Rpc::Unary, 1024, 8, 16, Unit::Calls),
        s("fan-in 256 conns x 2", Rpc::Unary, 10, 256, 2, Unit::Calls),
        Scenario {
            messages: 100,
            ..s(
                "bidi ping-pong 64B, 1x16",
                Rpc::Bidi,
                64,
                1,
                16,
                Unit::Messages,
            )
        },
        Scenario {
            response_size: Some(1 << 20),
            messages: 16,
            ..s(
                "server-stream 1MiB, 1x4",
                Rpc::ServerStream,
                10,
                1,
                4,
                Unit::Megabytes,
            )
        },
        s("latency 1x1", Rpc::Unary, 10, 1, 1, Unit::Calls),
        Scenario {
            half_peak: true,
            ..s(
                "fixed rate, half peak, 8x16",
                Rpc::Unary,
                10,
                8,
                16,
                Unit::Calls,
            )
        },
    ];
    if tls {
        all.push(Scenario {
            connection_per_call: true,
            ..s(
                "new TLS conn per call, 32x1",
                Rpc::Unary,
                10,
                32,
                1,
                Unit::Calls,
            )
        });
    }
    all
}

/// One measured cell.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// direct, grpc-proxy, haproxy, nginx, grpc-proxy x2.
    pub target: String,
    /// The headline unit.
    pub unit: Unit,
    /// Calls/s, messages/s or MB/s.
    pub rate: f64,
    /// The headline latency (call, or per message for streams).
    pub latency: Option<Latency>,
    /// The proxy's CPU microseconds per call (or message); none for direct.
    pub cpu_us_per_unit: Option<f64>,
    /// The part of that CPU spent in the kernel (system calls, and the
    /// network stack's work in them), in percent.
    pub kernel_pct: Option<f64>,
    /// The proxy's peak RSS in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Failed calls.
    pub errors: u64,
    /// The full load report.
    pub report: Report,
    /// Which round of the run (from 1).
    pub round: usize,
    /// The share of the run's CPUs' time (proxy, upstream and load) that
    /// the hypervisor gave to others, in percent: a row with much of it
    /// measured a disturbed machine.
    pub steal_pct: Option<f64>,
    /// How busy the upstream's and the load's CPUs were, in percent of
    /// their time: near 100, the rate was set by the load side, not by the
    /// proxy.
    pub load_busy_pct: Option<f64>,
}

/// Draws each scenario of `rows` into `dir` as `<scenario>.svg`, one line
/// per target; returns the files written.
pub fn plots(dir: &Path, rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let scenarios = first_seen(rows, |r| &r.scenario);
    let mut written = Vec::new();
    for scenario in scenarios {
        let these: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        let series: Vec<_> = these
            .iter()
            .map(|r| {
                let mut s = r.report.series.clone();
                s.name = r.target.clone();
                s
            })
            .collect();
        let (what, per) = match these[0].unit {
            Unit::Calls => ("call latency", "calls"),
            Unit::Messages => ("round-trip latency", "messages"),
            Unit::Megabytes => ("time to first message", "messages"),
        };
        let slug: String = scenario
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let path = dir.join(format!("{slug}.svg"));
        grpc_loadtest::plot::draw(&path, scenario, what, per, &series)
            .map_err(anyhow::Error::msg)?;
        written.push(path);
    }
    Ok(written)
}

/// CPUs for each role.
pub struct Plan {
    /// The proxy's CPUs (one, or two for the scale run).
    pub proxy: Vec<usize>,
    /// The echo upstream's.
    pub upstream: Vec<usize>,
    /// The load generator's.
    pub load: Vec<usize>,
}

impl Plan {
    /// Proxy on the first CPU; upstream and load split the rest (sharing
    /// one when only one is left).
    pub fn new(cpus: &[usize]) -> anyhow::Result<Plan> {
        if cpus.len() < 2 {
            anyhow::bail!(
                "the bench needs at least 2 CPUs (proxy on one, upstream and load on the others)"
            );
        }
        let rest = &cpus[1..];
        let half = rest.len().div_ceil(2);
        let (upstream, load) = if rest.len() == 1 {
            (rest.to_vec(), rest.to_vec())
        } else {
            (rest[..half].to_vec(), rest[half..].to_vec())
        };
        Ok(Plan {
            proxy: vec![cpus[0]],
            upstream,
            load,
        })
    }
}

/// How long each load runs, and whether clients speak TLS.
pub struct Timing<'a> {
    /// Measured seconds per load.
    pub seconds: u64,
    /// Warm-up before each.
    pub warmup: Duration,
    /// TLS files for the proxies' listeners; `None`: cleartext.
    pub tls: Option<&'a procs::TlsFiles>,
    /// Idle connections to hold after the loads, to measure memory per
    /// connection; 0: none.
    pub idle: usize,
    /// With `idle`: also as many connections quiet after one call each,
    /// measured right after the calls and this long later.
    pub quiet_after_call: Option<Duration>,
}

/// Runs every scenario against one target; `peak` is filled from the first
/// scenario and used by the fixed-rate one.
pub fn run_target(
    target: Target,
    bin_dir: &Path,
    plan: &Plan,
    upstream: std::net::SocketAddr,
    timing: &Timing<'_>,
    only: &[Scenario],
) -> anyhow::Result<(Vec<Row>, Option<crate::idle::IdleRow>)> {
    let Timing {
        seconds,
        warmup,
        tls,
        ..
    } = *timing;
    let proxy_cpus: Vec<usize> = match target {
        Target::GrpcProxy(n) => {
            let mut c = plan.proxy.clone();
            c.extend(
                plan.load
                    .iter()
                    .chain(&plan.upstream)
                    .copied()
                    .filter(|x| !plan.proxy.contains(x))
                    .take(n - 1),
            );
            c
        }
        _ => plan.proxy.clone(),
    };
    let proxy = procs::proxy(target, bin_dir, &proxy_cpus, upstream, tls)?;
    let client_tls = tls
        .map(|t| {
            let settings = grpc_proxy::config::UpstreamTls {
                ca: Some(t.ca.clone()),
                server_name: "localhost".into(),
                cert: None,
                key: None,
            };
            grpc_proxy::ClientTls::load(&settings, "localhost")
        })
        .transpose()?;
    let addr = proxy.as_ref().map_or(upstream, |p| p.addr);
    let mut all_cpus: Vec<usize> = proxy_cpus
        .iter()
        .chain(&plan.upstream)
        .chain(&plan.load)
        .copied()
        .collect();
    all_cpus.sort_unstable();
    all_cpus.dedup();
    // The upstream's and the load's CPUs, where the proxy does not run.
    let load_cpus: Vec<usize> = all_cpus
        .iter()
        .copied()
        .filter(|c| !proxy_cpus.contains(c))
        .collect();
    let mut rows = Vec::new();
    let mut peak = None;
    for scenario in only {
        let rate = if scenario.half_peak {
            match peak {
                Some(p) => Some(p / 2.0),
                None => continue,
            }
        } else {
            None
        };
        let options = RunOptions {
            target: addr,
            rpc: scenario.rpc,
            payload: scenario.payload,
            response_size: scenario.response_size,
            messages: scenario.messages,
            connections: scenario.connections,
            streams: scenario.streams,
            cores: CoreSelection::Set(plan.load.clone()),
            duration: Duration::from_secs(seconds),
            warmup,
            rate,
            tls: client_tls.clone(),
            connection_per_call: scenario.connection_per_call,
            ..RunOptions::default()
        };
        let cpu0 = proxy.as_ref().map(|p| p.cpu_time()).transpose()?;
        let all0 = procs::cpus_time(&all_cpus).ok();
        let load0 = procs::cpus_time(&load_cpus).ok();
        let wall = std::time::Instant::now();
        let report = run::run(&options)?;
        let cpu1 = proxy.as_ref().map(|p| p.cpu_time()).transpose()?;
        let seconds_of = |cpus: &[usize]| wall.elapsed().as_secs_f64() * cpus.len() as f64;
        let steal_pct = match (all0, procs::cpus_time(&all_cpus).ok()) {
            (Some(a), Some(b)) => Some((b.steal - a.steal) * 100.0 / seconds_of(&all_cpus)),
            _ => None,
        };
        let load_busy_pct = match (load0, procs::cpus_time(&load_cpus).ok()) {
            (Some(a), Some(b)) if !load_cpus.is_empty() => {
                Some((b.busy - a.busy) * 100.0 / seconds_of(&load_cpus))
            }
            _ => None,
        };
        // CPU over warm-up and measurement, divided by the units of both
        // (the warm-up's units are estimated at the measured rate).
        let (rate, latency, units) = match scenario.unit {
            Unit::Calls => (
                report.calls_per_sec,
                report.call_latency.clone(),
                report.calls_per_sec,
            ),
            Unit::Messages => (
                report.messages_per_sec,
                report.message_latency.clone(),
                report.messages_per_sec,
            ),
            Unit::Megabytes => (
                report.mb_per_sec_received,
                report.first_message_latency.clone(),
                report.messages_per_sec,
            ),
        };
        let total_units = units * (report.seconds + warmup.as_secs_f64());
        let used = cpu0.zip(cpu1).map(|(a, b)| b - a);
        let cpu_us_per_unit = used
            .filter(|_| total_units > 0.0)
            .map(|u| u.total() * 1e6 / total_units);
        let kernel_pct = used
            .filter(|u| u.total() > 0.0)
            .map(|u| u.system * 100.0 / u.total());
        if scenario.name.starts_with("unary 10B") {
            peak = Some(report.calls_per_sec);
        }
        let peak_rss_mib = proxy
            .as_ref()
            .map(|p| p.peak_rss_kib())
            .transpose()?
            .map(|k| k as f64 / 1024.0);
        eprintln!(
            "  {:<28} {:<14} {:>12.0} {:<9} p99 {:>9.1}us  cpu {:>6}  errors {}",
            scenario.name,
            target.name(),
            rate,
            scenario.unit.rate(),
            latency.as_ref().map_or(f64::NAN, |l| l.p99_us),
            cpu_us_per_unit.map_or("-".into(), |c| format!("{c:.2}us")),
            report.calls_failed
        );
        rows.push(Row {
            scenario: scenario.name.into(),
            target: target.name(),
            unit: scenario.unit,
            rate,
            latency,
            cpu_us_per_unit,
            kernel_pct,
            peak_rss_mib,
            errors: report.calls_failed,
            report,
            round: 1,
            steal_pct,
            load_busy_pct,
        });
    }
    // Idle memory on a process of its own: after the loads, an allocator
    // keeps memory they freed (grpc-proxy up to 32 MiB a heap between its
    // trims, HAProxy its pools), and new connections would take that
    // without the process growing.
    let had_proxy = proxy.is_some();
    drop(proxy);
    let idle = match timing.idle {
        n if had_proxy && n > 0 && tls.is_none() => {
            let fresh = procs::proxy(target, bin_dir, &proxy_cpus, upstream, None)?
                .ok_or_else(|| anyhow::anyhow!("{} started no process", target.name()))?;
            let mut row = crate::idle::measure(&target.name(), &fresh, fresh.addr, n)?;
            eprintln!(
                "  {:<28} {:<14} {:>8.1} KiB per connection ({n} connections)",
                "idle connections",
                target.name(),
                row.kib_per_connection
            );
            drop(fresh);
            if let Some(settle) = timing.quiet_after_call {
                let fresh = procs::proxy(target, bin_dir, &proxy_cpus, upstream, None)?
                    .ok_or_else(|| anyhow::anyhow!("{} started no process", target.name()))?;
                let (after, settled) = crate::idle::measure_quiet(&fresh, fresh.addr, n, settle)?;
                eprintln!(
                    "  {:<28} {:<14} {:>8.1} KiB per connection, {:.1} after {} s",
                    "quiet after one call",
                    target.name(),
                    after,
                    settled,
                    settle.as_secs()
                );
                row.after_call_kib = Some(after);
                row.settled_kib = Some(settled);
                row.settle_secs = Some(settle.as_secs());
            }
            Some(row)
        }
        _ => None,
    };
    Ok((rows, idle))
}

/// The markdown tables: one per scenario, with ratios to HAProxy.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    for name in first_seen(rows, |r| &r.scenario) {
        let these: Vec<&Row> = rows.iter().filter(|r| r.scenario == name).collect();
        let (unit, per) = (these[0].unit.rate(), these[0].unit.per());
        let haproxy = these.iter().copied().find(|r| r.target == "haproxy");
        out.push_str(&format!(
            "\n**{name}**\n\n| target | {unit} | vs HAProxy | p50 us | p99 us | p99.9 us | CPU us/{per} | CPU vs HAProxy | kernel % | peak RSS MiB | errors | load CPUs busy % | steal % |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        ));
        for r in &these {
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let l = r.latency.as_ref();
            let f =
                |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
            out.push_str(&format!(
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.target,
                r.rate,
                ratio(Some(r.rate), haproxy.map(|h| h.rate)),
                f(l.map(|l| l.p50_us), 0),
                f(l.map(|l| l.p99_us), 0),
                f(l.map(|l| l.p999_us), 0),
                f(r.cpu_us_per_unit, 2),
                ratio(r.cpu_us_per_unit, haproxy.and_then(|h| h.cpu_us_per_unit)),
                f(r.kernel_pct, 0),
                f(r.peak_rss_mib, 1),
                r.errors,
                f(r.load_busy_pct, 0),
                f(r.steal_pct, 1)
            ));
        }
    }
    out
}

/// Across the rounds of a run: per scenario and target, the range of
/// each figure, and of its ratio to HAProxy's in the same round.
pub fn ranges(rows: &[Row]) -> String {
    let mut out = String::new();
    for name in first_seen(rows, |r| &r.scenario) {
        let these: Vec<&Row> = rows.iter().filter(|r| r.scenario == name).collect();
        let targets = first_seen(these.iter().copied(), |r| &r.target);
        let (unit, per) = (these[0].unit.rate(), these[0].unit.per());
        out.push_str(&format!(
            "\n**{name}** (ranges over rounds)\n\n| target | rounds | {unit} | vs HAProxy | p99 us | CPU us/{per} | CPU vs HAProxy | kernel % | errors | load CPUs busy % | steal % |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        ));
        for target in targets {
            let mine: Vec<&Row> = these
                .iter()
                .copied()
                .filter(|r| r.target == target)
                .collect();
            let haproxy = |round: usize| {
                these
                    .iter()
                    .find(|r| r.target == "haproxy" && r.round == round)
            };
            let ratio = |get: &dyn Fn(&Row) -> Option<f64>| {
                mine.iter()
                    .filter_map(|r| {
                        let (a, b) = (get(r)?, get(haproxy(r.round)?)?);
                        (b > 0.0).then(|| a / b)
                    })
                    .collect::<Vec<f64>>()
            };
            let rate: Vec<f64> = mine.iter().map(|r| r.rate).collect();
            let p99: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.latency.as_ref().map(|l| l.p99_us))
                .collect();
            let cpu: Vec<f64> = mine.iter().filter_map(|r| r.cpu_us_per_unit).collect();
            let steal: Vec<f64> = mine.iter().filter_map(|r| r.steal_pct).collect();
            let kernel: Vec<f64> = mine.iter().filter_map(|r| r.kernel_pct).collect();
            let busy: Vec<f64> = mine.iter().filter_map(|r| r.load_busy_pct).collect();
            out.push_str(&format!(
                "| {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                mine.len(),
                span(&rate, 0, ""),
                span(&ratio(&|r| Some(r.rate)), 2, "x"),
                span(&p99, 0, ""),
                span(&cpu, 2, ""),
                span(&ratio(&|r| r.cpu_us_per_unit), 2, "x"),
                span(&kernel, 0, ""),
                mine.iter().map(|r| r.errors).sum::<u64>(),
                span(&busy, 0, ""),
                span(&steal, 1, "")
            ));
        }
    }
    out
}

/// `low-high` (or the one value) with `digits` decimals; `-` for none.
pub fn span(values: &[f64], digits: usize, suffix: &str) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        "-".into()
    } else if format!("{low:.digits$}") == format!("{high:.digits$}") {
        format!("{low:.digits$}{suffix}")
    } else {
        format!("{low:.digits$}-{high:.digits$}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpc_loadtest::report::{Setup, Stats};

    fn row(scenario: &str, target: &str, micros: u64) -> Row {
        let mut stats = Stats::default();
        for i in 0..1000 {
            stats.call.record(micros * 1000 + i).expect("record");
            stats.calls_ok += 1;
        }
        let setup = Setup {
            target: target.into(),
            rpc: "unary".into(),
            rate: None,
            payload_bytes: 10,
            cores: 1,
            connections: 1,
            streams_per_connection: 1,
        };
        let mut report = Report::new(setup, &stats, Duration::from_secs(1));
        report.series.timeline = vec![(1.0, 1000.0, micros as f64)];
        Row {
            scenario: scenario.into(),
            target: target.into(),
            unit: Unit::Calls,
            rate: 1000.0,
            latency: report.call_latency.clone(),
            cpu_us_per_unit: None,
            kernel_pct: None,
            peak_rss_mib: None,
            errors: 0,
            report,
            round: 1,
            steal_pct: None,
            load_busy_pct: None,
        }
    }

    #[test]
    fn ranges_span_the_rounds_with_ratios_to_haproxy_in_the_same_round() {
        let at = |target: &str, round: usize, rate: f64, cpu: f64, busy: f64| Row {
            rate,
            cpu_us_per_unit: Some(cpu),
            kernel_pct: Some(50.0 + cpu),
            load_busy_pct: Some(busy),
            round,
            ..row("unary 10B, 8x16", target, 100)
        };
        let rows = [
            at("grpc-proxy", 1, 1000.0, 4.0, 99.6),
            at("haproxy", 1, 800.0, 8.0, 97.0),
            // A slower round for both.
            at("haproxy", 2, 500.0, 10.0, 88.0),
            at("grpc-proxy", 2, 600.0, 6.0, 91.2),
        ];
        let table = ranges(&rows);
        assert!(
            table.contains(
                "| grpc-proxy | 2 | 600-1000 | 1.20-1.25x | 101 | 4.00-6.00 | 0.50-0.60x | 54-56 | 0 | 91-100 | - |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| haproxy | 2 | 500-800 | 1.00x | 101 | 8.00-10.00 | 1.00x | 58-60 | 0 | 88-97 | - |"
            ),
            "{table}"
        );
    }

    #[test]
    fn each_scenario_is_a_picture_with_one_line_per_target() {
        let rows = [
            row("unary 10B, 8x16", "direct", 100),
            row("unary 10B, 8x16", "grpc-proxy", 200),
            row("unary 10B, 8x16", "haproxy", 300),
            row("bidi ping-pong 64B, 1x16", "grpc-proxy", 50),
        ];
        let dir = tempfile::tempdir().expect("dir");
        let written = plots(dir.path(), &rows).expect("plots");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["unary-10b-8x16.svg", "bidi-ping-pong-64b-1x16.svg"]);
        let text = std::fs::read_to_string(&written[0]).expect("read");
        let doc = roxmltree::Document::parse(&text).expect("the SVG parses");
        let legend: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .filter(|t| ["direct", "grpc-proxy", "haproxy"].contains(t))
            .collect();
        assert_eq!(legend, ["direct", "grpc-proxy", "haproxy"]);
    }
}
