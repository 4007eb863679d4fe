//! `bench soak`: grpc-proxy under a steady mixed load for minutes while
//! faults come and go, checking that nothing on the steady path notices and
//! that memory and descriptors come back.
//!
//! Processes (from `procs`, pinned as in e2e: the proxy alone on the first
//! CPU, upstreams and load on the others): two `grpc-loadtest serve` echo
//! upstreams, `steady` and `flaky`, and grpc-proxy with a config file and
//! its admin endpoint. The load runs in this process (`load`, `client`).
//!
//! The run is a schedule of phases: quiet, then each fault in turn, each
//! followed by a quiet phase, ending quiet. Faults: the flaky upstream is
//! killed and restarted on the same port; slow readers hold server streams
//! they never read, then leave; clients cancel calls midway and vanish;
//! the config is reloaded (SIGHUP and `POST /reload` in turn) every second.
//! The only errors a fault explains are UNAVAILABLE on the flaky path while
//! its upstream restarts; any other failure anywhere is unexpected, and one
//! is enough for a non-zero exit. RSS and open fds are sampled from `/proc`.

mod client;
mod faults;
mod load;
mod report;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use grpc_proxy::config::parse_duration;
use serde::Serialize;

use crate::e2e::Plan;
use crate::procs::{self, Running};

/// What one phase does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Nothing but the load.
    Quiet,
    /// The flaky upstream is killed, stays down a while, and comes back on
    /// the same port.
    UpstreamRestart,
    /// Clients open server streams and read nothing, then leave.
    SlowReaders,
    /// Clients cancel calls midway and drop connections with calls open.
    ClientResets,
    /// The config is reloaded every second, with a changed valid file.
    Reload,
}

impl Fault {
    /// The faults in the order they come.
    const CYCLE: [Fault; 4] = [
        Fault::UpstreamRestart,
        Fault::SlowReaders,
        Fault::ClientResets,
        Fault::Reload,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Quiet => "quiet",
            Fault::UpstreamRestart => "upstream restart",
            Fault::SlowReaders => "slow readers",
            Fault::ClientResets => "client resets",
            Fault::Reload => "config reload",
        }
    }
}

/// `bench soak` flags.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Minutes to run.
    #[arg(long, default_value_t = 10, conflicts_with = "duration")]
    pub minutes: u64,
    /// Run time as a duration instead, e.g. 90s (for a short try).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Length of each phase (default: a ninth of the run, 5 s to 30 s).
    #[arg(long, value_parser = parse_duration)]
    pub phase: Option<Duration>,
    /// Mixed-load calls per second, over both paths and the four kinds.
    #[arg(long, default_value_t = 1000.0, value_parser = positive)]
    pub rate: f64,
    /// Probe (unary) calls per second.
    #[arg(long, default_value_t = 50.0, value_parser = positive)]
    pub probe_rate: f64,
    /// How often to sample the proxy's RSS and open fds (also sampled at
    /// the end of every phase).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench-soak.json")]
    pub json: PathBuf,
    /// Do not build grpc-proxy and grpc-loadtest first.
    #[arg(long)]
    pub no_build: bool,
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// The phases of a run of `total` with phases of `phase`: quiet, then
/// (fault, quiet) as many times as fit; the last quiet phase takes what is
/// left over.
pub fn schedule(total: Duration, phase: Duration) -> anyhow::Result<Vec<(Fault, Duration)>> {
    if phase < Duration::from_secs(2) {
        anyhow::bail!("a phase must be at least 2s (got {phase:?})");
    }
    let whole = (total.as_secs_f64() / phase.as_secs_f64()).floor() as usize;
    let faults = whole.saturating_sub(1) / 2;
    if faults == 0 {
        anyhow::bail!(
            "{total:?} has room for no fault with {phase:?} phases: run at least 3 phases (quiet, fault, quiet)"
        );
    }
    let mut phases = vec![(Fault::Quiet, phase)];
    for i in 0..faults {
        phases.push((Fault::CYCLE[i % Fault::CYCLE.len()], phase));
        phases.push((Fault::Quiet, phase));
    }
    let used = phase * (2 * faults) as u32;
    if let Some(last) = phases.last_mut() {
        last.1 = total.saturating_sub(used).max(phase);
    }
    Ok(phases)
}

/// One reading of the proxy's memory and descriptors.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the load started (negative: before).
    pub at_s: f64,
    /// The phase index, if the load was running.
    pub phase: Option<usize>,
    /// Why it was taken: `idle before load`, `periodic`, `phase end`,
    /// `idle after load`.
    pub what: &'static str,
    /// VmRSS.
    pub rss_kib: u64,
    /// Entries in `/proc/<pid>/fd`.
    pub fds: usize,
}

struct Sampler<'a> {
    proxy: &'a Running,
    start: Instant,
    every: Duration,
    next: Instant,
    samples: Vec<Sample>,
}

impl Sampler<'_> {
    fn take(&mut self, phase: Option<usize>, what: &'static str) -> anyhow::Result<()> {
        let now = Instant::now();
        let at_s = if now >= self.start {
            now.duration_since(self.start).as_secs_f64()
        } else {
            -self.start.duration_since(now).as_secs_f64()
        };
        self.samples.push(Sample {
            at_s,
            phase,
            what,
            rss_kib: self.proxy.rss_kib().context("the proxy is gone")?,
            fds: self.proxy.open_fds().context("the proxy is gone")?,
        });
        Ok(())
    }

    /// Sleeps until `until`, sampling whenever one is due.
    fn wait_until(&mut self, until: Instant, phase: usize) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            if now >= self.next {
                self.take(Some(phase), "periodic")?;
                self.next += self.every;
                continue;
            }
            std::thread::sleep(until.min(self.next) - now);
        }
    }
}

/// One restart of the flaky upstream, in seconds since the load started.
#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    /// The phase index.
    pub phase: usize,
    /// Killed at.
    pub down_at_s: f64,
    /// Listening again at.
    pub up_at_s: f64,
}

/// What the reloads did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reloads {
    /// Applied by SIGHUP.
    pub sighup: u64,
    /// Applied by POST /reload.
    pub post: u64,
    /// Refused or not applied within 5 s, with why.
    pub failed: Vec<String>,
    /// `GET /config` version at start and at the end.
    pub version_before: u64,
    /// See `version_before`.
    pub version_after: u64,
}

/// Runs the soak with the binaries in `bin_dir`.
pub fn run(args: &SoakArgs, bin_dir: &Path) -> anyhow::Result<()> {
    let total = args
        .duration
        .unwrap_or(Duration::from_secs(args.minutes * 60));
    let phase_len = args
        .phase
        .unwrap_or_else(|| (total / 9).clamp(Duration::from_secs(5), Duration::from_secs(30)));
    let phases = schedule(total, phase_len)?;
    if args.sample_every < Duration::from_secs(1) {
        anyhow::bail!("--sample-every must be at least 1s");
    }
    let cpus = Plan::new(&grpc_proxy::runtime::cores::available())?;
    let steady = procs::upstream(bin_dir, &cpus.upstream)?;
    let mut flaky = Some(procs::upstream(bin_dir, &cpus.upstream)?);
    let flaky_addr = flaky
        .as_ref()
        .map(|f| f.addr)
        .context("no flaky upstream")?;
    let listen = procs::free_port()?;
    let admin = procs::free_port()?;
    let config = |n| faults::config(listen, admin, steady.addr, flaky_addr, n);
    grpc_proxy::Config::parse(&config(0), "bench soak")
        .map_err(|e| anyhow::anyhow!("the soak's own config is invalid: {e}"))?;
    let proxy = procs::grpc_proxy_with_config(bin_dir, &cpus.proxy, &config(0), listen)?;
    let dir = proxy.dir().context("the proxy has no directory")?;
    let config_path = dir.join("grpc-proxy.toml");
    let mut reloads = Reloads {
        version_before: faults::wait_admin(admin)?,
        ..Reloads::default()
    };
    eprintln!(
        "soak: {:?} in {} phases of {:?}; proxy on CPU {:?}, upstreams on {:?}, load on {:?}; proxy log in {}",
        total,
        phases.len(),
        phase_len,
        cpus.proxy,
        cpus.upstream,
        cpus.load,
        dir.display()
    );

    let mut sampler = Sampler {
        proxy: &proxy,
        start: Instant::now(),
        every: args.sample_every,
        next: Instant::now(),
        samples: Vec::new(),
    };
    sampler.take(None, "idle before load")?;
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Some(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let schedule: Vec<Fault> = phases.iter().map(|p| p.0).collect();
    let load = load::start(
        load::LoadPlan {
            proxy: listen,
            schedule: schedule.clone(),
            rate: args.rate,
            probe_rate: args.probe_rate,
            slow_hold: phase_len.mul_f64(0.6),
            cpu: cpus.load[0],
        },
        phase_rx,
        ready_tx,
    )?;
    ready_rx
        .recv()
        .context("the load thread exited at start-up")?
        .map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    sampler.start = start;
    sampler.next = start + sampler.every;

    let mut restarts = Vec::new();
    let mut variant = 0;
    // The phases, in a closure so that the load is stopped on any error.
    let outcome = (|| -> anyhow::Result<()> {
        let mut phase_start = start;
        for (i, &(fault, len)) in phases.iter().enumerate() {
            let _ = phase_tx.send(Some(i));
            let end = phase_start + len;
            let since = |t: Instant| t.duration_since(start).as_secs_f64();
            match fault {
                Fault::UpstreamRestart => {
                    sampler.wait_until(phase_start + (len / 5).min(Duration::from_secs(1)), i)?;
                    let down_at = Instant::now();
                    drop(flaky.take());
                    sampler.wait_until(down_at + (len / 3).min(Duration::from_secs(5)), i)?;
                    flaky = Some(
                        procs::upstream_at(bin_dir, &cpus.upstream, flaky_addr)
                            .context("restarting the flaky upstream")?,
                    );
                    restarts.push(Restart {
                        phase: i,
                        down_at_s: since(down_at),
                        up_at_s: since(Instant::now()),
                    });
                }
                Fault::Reload => {
                    let mut version = faults::config_version(admin)?;
                    while Instant::now() + Duration::from_secs(1) < end {
                        let next = Instant::now() + Duration::from_secs(1);
                        variant += 1;
                        faults::write_config(&config_path, &config(variant))?;
                        let trigger = if variant % 2 == 1 {
                            faults::Trigger::Sighup
                        } else {
                            faults::Trigger::Post
                        };
                        match faults::reload(&proxy, admin, trigger, version) {
                            Ok(v) => {
                                version = v;
                                match trigger {
                                    faults::Trigger::Sighup => reloads.sighup += 1,
                                    faults::Trigger::Post => reloads.post += 1,
                                }
                            }
                            Err(e) => reloads.failed.push(format!("{e:#}")),
                        }
                        sampler.wait_until(next, i)?;
                    }
                }
                Fault::Quiet | Fault::SlowReaders | Fault::ClientResets => {}
            }
            sampler.wait_until(end, i)?;
            sampler.take(Some(i), "phase end")?;
            let s = sampler
                .samples
                .last()
                .map_or((0, 0), |s| (s.rss_kib, s.fds));
            eprintln!(
                "[{:>6.1}s] phase {i} {:<16} proxy RSS {:>6.1} MiB, {} fds",
                since(Instant::now()),
                fault.name(),
                s.0 as f64 / 1024.0,
                s.1
            );
            phase_start = end;
        }
        Ok(())
    })();
    let _ = phase_tx.send(None);
    let results = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    outcome?;
    std::thread::sleep(Duration::from_secs(2));
    sampler.take(None, "idle after load")?;
    reloads.version_after = faults::config_version(admin)?;
    let (_, metrics) = faults::admin(admin, "GET", "/metrics")?;
    let log = std::fs::read_to_string(dir.join("grpc-proxy.log")).unwrap_or_default();

    let summary = report::Summary::new(report::Inputs {
        phases: &phases,
        rate: args.rate,
        probe_rate: args.probe_rate,
        sample_every: args.sample_every,
        start,
        results: &results,
        samples: sampler.samples,
        peak_hwm_kib: proxy.peak_rss_kib()?,
        metrics: &metrics,
        restarts,
        reloads,
        log: &log,
    });
    println!("{}", summary.markdown());
    if let Some(d) = args.json.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&summary)? + "\n")?;
    eprintln!("JSON written to {}", args.json.display());
    drop(flaky);
    if summary.unexpected > 0 {
        anyhow::bail!(
            "{} unexpected errors (outcomes no fault explains); see the table",
            summary.unexpected
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_alternates_quiet_and_each_fault_and_ends_quiet() {
        let s = schedule(Duration::from_secs(600), Duration::from_secs(30)).unwrap();
        assert_eq!(s.len(), 19);
        assert!(s.iter().step_by(2).all(|p| p.0 == Fault::Quiet));
        assert_eq!(s[1].0, Fault::UpstreamRestart);
        assert_eq!(s[7].0, Fault::Reload);
        assert_eq!(s[9].0, Fault::UpstreamRestart);
        assert_eq!(s.last().unwrap().1, Duration::from_secs(60));
        let total: Duration = s.iter().map(|p| p.1).sum();
        assert_eq!(total, Duration::from_secs(600));
    }

    #[test]
    fn a_one_minute_schedule_has_every_fault_once() {
        let s = schedule(Duration::from_secs(60), Duration::from_secs(60) / 9).unwrap();
        let faults: Vec<_> = s
            .iter()
            .map(|p| p.0)
            .filter(|f| *f != Fault::Quiet)
            .collect();
        assert_eq!(faults, Fault::CYCLE);
    }

    #[test]
    fn too_short_a_run_is_refused() {
        assert!(schedule(Duration::from_secs(10), Duration::from_secs(5)).is_err());
        assert!(schedule(Duration::from_secs(60), Duration::from_secs(1)).is_err());
    }
}
