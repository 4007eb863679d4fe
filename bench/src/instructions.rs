//! `bench instructions`: the instructions grpc-proxy's own code executes
//! per call, counted by valgrind's callgrind. A count, not a time: the same
//! build under the same load gives the same figure whatever else the
//! machine is doing, so a change to the per-call path can be judged on a
//! shared VM whose CPU times move by a fifth from run to run. It leaves
//! out the kernel (system calls, the network stack), which `e2e`'s CPU per
//! call includes.
//!
//! The proxy runs under callgrind with one worker; the echo upstream and
//! the load run natively. Each load is one connection with one call at a
//! time, so that every call takes the same path (with more at once, how
//! many share a read or a write depends on timing). Each is measured twice,
//! over `calls` and over three times as many, with the counters zeroed
//! before each: the difference, divided by the difference in calls, is
//! the cost of a call without the connection's set-up, timers or start-up.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use grpc_loadtest::run::{self, Rpc, RunOptions};
use grpc_proxy::CoreSelection;

use crate::e2e::Plan;
use crate::procs::{self, Running, TempDir};

/// `bench instructions`' flags.
#[derive(Args, Debug)]
pub struct InstructionsArgs {
    /// Calls in the first measurement of each load (the second makes three
    /// times as many).
    #[arg(long, default_value_t = 2000)]
    pub calls: u64,
    /// Functions to list per load, by their own instructions per unit.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Only loads whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Do not build grpc-proxy and grpc-loadtest first.
    #[arg(long)]
    pub no_build: bool,
}

/// One load: one connection, one call at a time.
struct Load {
    name: &'static str,
    rpc: Rpc,
    payload: usize,
    /// The echo upstream's response size, if not the request's.
    response_size: Option<usize>,
    /// Round trips (bidi) or responses (server streaming) per call,
    /// counted as units.
    messages: usize,
    unit: &'static str,
    /// `--calls` is divided by this for the load: a streaming call
    /// carries 16 MiB, and the proxy runs under callgrind.
    calls_divisor: u64,
}

const LOADS: [Load; 4] = [
    Load {
        name: "unary 10B",
        rpc: Rpc::Unary,
        payload: 10,
        response_size: None,
        messages: 1,
        unit: "call",
        calls_divisor: 1,
    },
    Load {
        name: "unary 1KiB",
        rpc: Rpc::Unary,
        payload: 1024,
        response_size: None,
        messages: 1,
        unit: "call",
        calls_divisor: 1,
    },
    Load {
        name: "bidi ping-pong 64B",
        rpc: Rpc::Bidi,
        payload: 64,
        response_size: None,
        messages: 10,
        unit: "round trip",
        calls_divisor: 1,
    },
    // How many bytes a read brings depends on timing here (the upstream
    // writes faster than a proxy under callgrind reads), so this count
    // moves by about a tenth between runs, not 1%.
    Load {
        name: "server stream 1MiB",
        rpc: Rpc::ServerStream,
        payload: 10,
        response_size: Some(1 << 20),
        messages: 16,
        unit: "MiB",
        calls_divisor: 100,
    },
];

/// Instructions by function (their own, not their callees').
type Profile = HashMap<String, u64>;

/// Runs every load and prints a markdown table, then each load's top
/// functions.
pub fn run(args: &InstructionsArgs, bin_dir: &Path) -> anyhow::Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        if !procs::installed(tool) {
            bail!("{tool} is not installed (apt-get install valgrind)");
        }
    }
    if args.calls == 0 {
        bail!("--calls must be at least 1");
    }
    let plan = Plan::new(&grpc_proxy::runtime::cores::available())?;
    let upstream = procs::upstream(bin_dir, &plan.upstream)?;
    let dir = TempDir::new("callgrind")?;
    let out = dir.path().join("callgrind.out");
    let proxy = procs::grpc_proxy_under_callgrind(bin_dir, &plan.proxy, upstream.addr, &out)?;
    let mut counter = Counter {
        proxy: &proxy,
        out,
        dumps: 0,
    };
    eprintln!(
        "grpc-proxy under callgrind on CPU {:?}, echo upstream on {:?}, load on {:?}",
        plan.proxy, plan.upstream, plan.load
    );
    let mut results = Vec::new();
    for load in LOADS
        .iter()
        .filter(|l| args.only.as_deref().is_none_or(|o| l.name.contains(o)))
    {
        let calls = args.calls.div_ceil(load.calls_divisor);
        let options = |calls: u64| RunOptions {
            target: proxy.addr,
            rpc: load.rpc,
            payload: load.payload,
            response_size: load.response_size,
            messages: load.messages,
            cores: CoreSelection::Set(plan.load.clone()),
            calls: Some(calls),
            warmup: Duration::ZERO,
            ..RunOptions::default()
        };
        // The first calls through a new proxy open its upstream
        // connection and grow its buffers: not counted.
        run::run(&options(calls.div_ceil(10)))?;
        let mut measure = |calls: u64| -> anyhow::Result<(u64, Profile)> {
            counter.zero()?;
            let report = run::run(&options(calls))?;
            if report.calls_failed > 0 {
                bail!("{}: {} calls failed", load.name, report.calls_failed);
            }
            let profile = counter.dump()?;
            Ok((report.calls_ok * load.messages as u64, profile))
        };
        let (units_a, a) = measure(calls)?;
        let (units_b, b) = measure(3 * calls)?;
        if units_b <= units_a {
            bail!("{}: the longer run made no more calls", load.name);
        }
        let units = (units_b - units_a) as f64;
        let per_unit = difference(&a, &b, units);
        let total: f64 = per_unit.iter().map(|(_, n)| n).sum();
        eprintln!(
            "  {:<20} {total:>9.0} instructions per {}",
            load.name, load.unit
        );
        results.push((load, total, per_unit));
    }
    println!("| load (1 connection, 1 call at a time) | proxy instructions | per |");
    println!("| --- | ---: | --- |");
    for (load, total, _) in &results {
        println!("| {} | {total:.0} | {} |", load.name, load.unit);
    }
    for (load, total, per_unit) in &results {
        println!(
            "\n**{}**: the functions with the most instructions of their own, per {}\n",
            load.name, load.unit
        );
        println!("| function | instructions | share |\n| --- | ---: | ---: |");
        for (name, n) in per_unit.iter().take(args.top) {
            println!(
                "| `{}` | {n:.0} | {:.1}% |",
                short(name),
                100.0 * n / total.max(1.0)
            );
        }
    }
    Ok(())
}

/// Talks to the callgrind of the proxy: zeroes its counters, and dumps
/// them to the next numbered file.
struct Counter<'a> {
    proxy: &'a Running,
    out: PathBuf,
    dumps: u32,
}

impl Counter<'_> {
    fn control(&self, flag: &str) -> anyhow::Result<()> {
        let status = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.proxy.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run callgrind_control")?;
        if !status.success() {
            bail!("callgrind_control {flag} failed ({status})");
        }
        Ok(())
    }

    fn zero(&mut self) -> anyhow::Result<()> {
        self.control("-z")
    }

    fn dump(&mut self) -> anyhow::Result<Profile> {
        self.control("-d")?;
        self.dumps += 1;
        let path = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        // The file is complete once its totals are written.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                if text.lines().any(|l| l.starts_with("totals:")) {
                    return Ok(parse(&text));
                }
            }
            if Instant::now() > deadline {
                bail!("callgrind wrote no complete {}", path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The own instructions of each function in a callgrind dump written with
/// `--compress-strings=no --compress-pos=no`: the cost lines under each
/// `fn=`, except the line after each `calls=`, which is what that call cost
/// inclusively (the callee's own lines count it already).
fn parse(text: &str) -> Profile {
    let mut profile = Profile::new();
    let mut function: Option<&str> = None;
    let mut after_call = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("fn=") {
            function = Some(name);
            continue;
        }
        if line.starts_with("calls=") {
            after_call = true;
            continue;
        }
        let starts_cost = line
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'*');
        if !starts_cost {
            continue;
        }
        if std::mem::take(&mut after_call) {
            continue;
        }
        let cost = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u64>().ok());
        if let (Some(f), Some(cost)) = (function, cost) {
            *profile.entry(f.to_owned()).or_default() += cost;
        }
    }
    profile
}

/// Per unit, by function, most first: what the longer run `b` counted
/// beyond the shorter `a`, over `units` more units.
fn difference(a: &Profile, b: &Profile, units: f64) -> Vec<(String, f64)> {
    let mut per_unit: Vec<(String, f64)> = b
        .iter()
        .map(|(name, &n)| {
            let extra = n.saturating_sub(a.get(name).copied().unwrap_or(0));
            (name.clone(), extra as f64 / units)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    per_unit.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    per_unit
}

/// A function's name for a table cell: `|` escaped, cut at 110 characters.
fn short(name: &str) -> String {
    name.replace('|', "\\|").chars().take(110).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
events: Ir
fl=/src/a.rs
fn=a::outer
10 5
11 7
cfl=/src/b.rs
cfn=b::inner
calls=2 20
12 100
13 1
fl=/src/b.rs
fn=b::inner
20 60
21 40
totals: 113
";

    #[test]
    fn own_instructions_leave_out_what_calls_cost() {
        let p = parse(DUMP);
        assert_eq!(p["a::outer"], 13, "5 + 7 + 1: not the 100 of the call");
        assert_eq!(p["b::inner"], 100);
        assert_eq!(p.values().sum::<u64>(), 113, "the totals line");
    }

    #[test]
    fn difference_is_per_unit_and_sorted() {
        let a = Profile::from([("f".into(), 100), ("g".into(), 50)]);
        let b = Profile::from([("f".into(), 300), ("g".into(), 450), ("h".into(), 0)]);
        let d = difference(&a, &b, 100.0);
        assert_eq!(d, vec![("g".into(), 4.0), ("f".into(), 2.0)]);
    }
}
