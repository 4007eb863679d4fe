//! `bench`: grpc-proxy next to what users would run instead.
//!
//! `cargo run --release -p bench -- e2e` compares direct, grpc-proxy,
//! HAProxy and nginx end to end; `-- allocs` counts allocations per proxied
//! call; `-- soak` runs grpc-proxy for minutes under load while faults come
//! and go; `-- instructions` counts the proxy's own instructions per call
//! under callgrind. Micro-benches of hot paths: `cargo bench -p bench`.

mod allocs;
mod e2e;
mod idle;
mod instructions;
mod jwt;
mod procs;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use grpc_proxy::config::parse_duration;

use crate::procs::Target;

#[global_allocator]
static ALLOCATOR: allocs::Counting = allocs::Counting;

/// Benchmarks for grpc-proxy.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Direct vs grpc-proxy vs HAProxy vs nginx, end to end.
    E2e {
        /// Measured seconds per load.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Warm-up before each measurement.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Only scenarios whose name contains this text.
        #[arg(long)]
        only: Option<String>,
        /// Targets to run (direct, grpc-proxy, haproxy, nginx, scale).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,grpc-proxy,haproxy,nginx,scale"
        )]
        targets: Vec<String>,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench-e2e.json")]
        json: PathBuf,
        /// Idle client connections to hold against each proxy after its
        /// loads, to measure memory per connection (0: skip).
        #[arg(long, default_value_t = 5000)]
        idle: usize,
        /// Also as many connections that each make one unary call of 32
        /// KiB and then go quiet, on another fresh process: memory per
        /// connection right after the calls and this many seconds later
        /// (a proxy may hold what a call grew until it looks again;
        /// grpc-proxy's `[timeouts] idle_buffer` is 10 s). 0: skip.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        quiet_after_call: u64,
        /// Do not build grpc-proxy and grpc-loadtest first.
        #[arg(long)]
        no_build: bool,
        /// Draw each scenario as an SVG in this folder, one line per
        /// target: latency by percentile, rate and p99 over time.
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
        /// Clients speak TLS to the proxies (certificates made for the run;
        /// the proxies speak cleartext HTTP/2 to the upstream); adds a
        /// connection-per-call scenario that measures handshakes. Skips
        /// direct, whose upstream has no TLS.
        #[arg(long)]
        tls: bool,
        /// Run everything this many times, the targets in a different
        /// order each round, and end with the range of every figure (a
        /// shared machine's weather moves single runs by a fifth). The
        /// pictures are the first round's.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
        rounds: u64,
    },
    /// Allocations per proxied call on the proxy's worker thread.
    Allocs {
        /// Calls per measurement.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
    },
    /// Minutes of mixed load through grpc-proxy while upstream restarts,
    /// slow readers, client resets and config reloads come and go.
    Soak(soak::SoakArgs),
    /// The proxy's own instructions per call, counted by callgrind: the
    /// same figure on a busy machine as on a quiet one.
    Instructions(instructions::InstructionsArgs),
    /// CPU per call of a JWT route (cache hit, with and without header
    /// edits; cache miss), next to a plain route.
    Jwt(jwt::JwtArgs),
}

fn main() -> ExitCode {
    let cli = match grpc_proxy::config::flags::parse::<Cli>("bench") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Allocs { calls } => allocs::report(calls),
        Cmd::Soak(args) => soak::run(&args, &binaries(args.no_build)?),
        Cmd::Jwt(args) => jwt::run(&args, &binaries(args.no_build)?),
        Cmd::Instructions(args) => instructions::run(&args, &binaries(args.no_build)?),
        Cmd::E2e {
            seconds,
            warmup,
            only,
            targets,
            json,
            no_build,
            tls,
            idle,
            quiet_after_call,
            plot,
            rounds,
        } => {
            let bin_dir = &binaries(no_build)?;
            let plan = e2e::Plan::new(&grpc_proxy::runtime::cores::available())?;
            let upstream = procs::upstream(bin_dir, &plan.upstream)?;
            let tls_files = tls.then(procs::TlsFiles::generate).transpose()?;
            let scenarios: Vec<_> = e2e::scenarios(tls)
                .into_iter()
                .filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o)))
                .collect();
            eprintln!(
                "proxy on CPU {:?}, echo upstream on {:?}, load on {:?}; {seconds}s per load after {warmup:?} warm-up",
                plan.proxy, plan.upstream, plan.load
            );
            let mut rows = Vec::new();
            let mut idle_rows = Vec::new();
            for round in 1..=rounds as usize {
                if rounds > 1 {
                    eprintln!("round {round} of {rounds}:");
                }
                let mut these_targets = targets.clone();
                these_targets.rotate_left((round - 1) % targets.len().max(1));
                let mut round_rows = Vec::new();
                let mut round_idle = Vec::new();
                for name in &these_targets {
                    let target = match name.as_str() {
                        "direct" => Target::Direct,
                        "grpc-proxy" => Target::GrpcProxy(1),
                        "haproxy" => Target::Haproxy,
                        "nginx" => Target::Nginx,
                        "scale" => Target::GrpcProxy(2),
                        other => anyhow::bail!("unknown target {other:?}"),
                    };
                    let program = match target {
                        Target::Haproxy => Some("haproxy"),
                        Target::Nginx => Some("nginx"),
                        _ => None,
                    };
                    if let Some(p) = program {
                        if !procs::installed(p) {
                            eprintln!("{p} is not installed (apt-get install {p}); skipping it");
                            continue;
                        }
                    }
                    if tls && target == Target::Direct {
                        eprintln!("direct: the echo upstream has no TLS; skipping it");
                        continue;
                    }
                    let these: Vec<_> = if target == Target::GrpcProxy(2) {
                        scenarios
                            .iter()
                            .filter(|s| {
                                s.name.starts_with("unary 10B")
                                    || s.name.starts_with("fan-in")
                                    || s.name.starts_with("new TLS")
                            })
                            .cloned()
                            .collect()
                    } else {
                        scenarios.clone()
                    };
                    eprintln!("{}:", target.name());
                    let (these_rows, idle) = e2e::run_target(
                        target,
                        bin_dir,
                        &plan,
                        upstream.addr,
                        &e2e::Timing {
                            seconds,
                            warmup,
                            tls: tls_files.as_ref(),
                            idle: if target == Target::Direct || target == Target::GrpcProxy(2) {
                                0
                            } else {
                                idle
                            },
                            quiet_after_call: (quiet_after_call > 0)
                                .then(|| Duration::from_secs(quiet_after_call)),
                        },
                        &these,
                    )?;
                    round_rows.extend(these_rows.into_iter().map(|r| e2e::Row { round, ..r }));
                    round_idle.extend(idle);
                }
                // A round's tables in the order of the targets given.
                round_rows.sort_by_key(|r| targets.iter().position(|t| target_of(t) == r.target));
                round_idle.sort_by_key(|r| targets.iter().position(|t| target_of(t) == r.target));
                if rounds > 1 {
                    println!("\n### Round {round} of {rounds}");
                }
                println!("{}", e2e::markdown(&round_rows));
                if !round_idle.is_empty() {
                    println!("{}", idle::markdown(&round_idle));
                }
                rows.extend(round_rows);
                idle_rows.extend(round_idle);
            }
            if rounds > 1 {
                println!("\n### All {rounds} rounds");
                println!("{}", e2e::ranges(&rows));
                if !idle_rows.is_empty() {
                    println!("{}", idle::ranges(&idle_rows));
                }
            }
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json, serde_json::to_string_pretty(&rows)? + "\n")?;
            eprintln!("JSON written to {}", json.display());
            if let Some(dir) = plot {
                let first: Vec<_> = rows.iter().filter(|r| r.round == 1).cloned().collect();
                for path in e2e::plots(&dir, &first)? {
                    eprintln!("picture written to {}", path.display());
                }
            }
            Ok(())
        }
    }
}

/// The name a target's rows carry, from its name on the command line.
fn target_of(name: &str) -> String {
    match name {
        "scale" => "grpc-proxy x2".into(),
        other => other.into(),
    }
}

/// The directory of the binaries the bench starts: the bench's own (so the
/// same profile and `CARGO_TARGET_DIR`), built first unless `no_build`.
fn binaries(no_build: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    if !no_build {
        build(bin_dir)?;
    }
    Ok(bin_dir.to_path_buf())
}

/// Builds the binaries the bench starts, in the same profile and target
/// directory as the bench itself.
fn build(bin_dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = bin_dir.ends_with("release");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "grpc-proxy", "-p", "grpc-loadtest"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("building grpc-proxy and grpc-loadtest failed");
    }
    Ok(())
}
