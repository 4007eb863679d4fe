//! `grpc-loadtest demo`: the main job end to end, on loopback.
//!
//! Starts the echo upstream and grpc-proxy in this process (each on its own
//! worker core), runs the same short loads directly against the upstream and
//! through the proxy, and prints the two side by side.

use std::time::Duration;

use grpc_proxy::{CoreSelection, ProxyBuilder, Route};

use crate::report::Report;

/// The figures a demo row shows: calls/s and call latency, or for streams
/// messages/s and per-message latency.
struct Headline {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Headline {
    fn of(r: &Report, streaming: bool) -> Headline {
        let (rate, latency) = if streaming {
            (r.messages_per_sec, r.message_latency.as_ref())
        } else {
            (r.calls_per_sec, r.call_latency.as_ref())
        };
        Headline {
            rate,
            p50: latency.map_or(f64::NAN, |l| l.p50_us),
            p99: latency.map_or(f64::NAN, |l| l.p99_us),
        }
    }
}
use crate::run::{self, Rpc, RunOptions};
use crate::serve::{self, ServeOptions};

/// Runs the demo; `seconds` per measured load.
pub fn demo(seconds: u64) -> anyhow::Result<()> {
    let cpus = grpc_proxy::runtime::cores::available();
    let last = *cpus
        .last()
        .ok_or_else(|| anyhow::anyhow!("no CPU available"))?;
    let upstream = serve::start(ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        cores: CoreSelection::Set(vec![last]),
        ..ServeOptions::default()
    })?;
    let mut builder =
        ProxyBuilder::new("127.0.0.1:0".parse()?).cores(CoreSelection::Set(vec![cpus[0]]));
    let echo = builder.cluster("echo", [upstream.local_addr()]);
    let proxy = builder.start(move |_| move |_: &grpc_proxy::Call<'_>| Route::to(echo))?;
    println!(
        "echo upstream and load generator on CPU {last} ({}), grpc-proxy on {} (CPU {}, {} driver)\n",
        upstream.local_addr(),
        proxy.local_addr(),
        cpus[0],
        proxy.driver()
    );
    let scenarios = [
        ("unary 10B, 4 conns x 16 streams", Rpc::Unary, 4, 16, 10),
        ("unary 1KiB, 4 conns x 16 streams", Rpc::Unary, 4, 16, 1024),
        (
            "bidi ping-pong 10B, 1 conn x 16 streams",
            Rpc::Bidi,
            1,
            16,
            10,
        ),
        (
            "server-stream 1KiB x 10, 1 conn x 8 streams",
            Rpc::ServerStream,
            1,
            8,
            1024,
        ),
    ];
    println!(
        "{:<46}{:>16}{:>16}{:>12}{:>12}{:>12}{:>12}",
        "load", "direct /s", "proxied /s", "p50 direct", "p50 proxy", "p99 direct", "p99 proxy"
    );
    for (name, rpc, connections, streams, payload) in scenarios {
        let options = |target| RunOptions {
            target,
            rpc,
            payload,
            connections,
            streams,
            duration: Duration::from_secs(seconds),
            warmup: Duration::from_millis(500),
            // The load shares the upstream's core, so that the proxy has
            // one of its own, as it would in production.
            cores: CoreSelection::Set(vec![last]),
            ..RunOptions::default()
        };
        let direct = run::run(&options(upstream.local_addr()))?;
        let proxied = run::run(&options(proxy.local_addr()))?;
        let streaming = matches!(rpc, Rpc::Bidi | Rpc::ServerStream);
        let (d, p) = (
            Headline::of(&direct, streaming),
            Headline::of(&proxied, streaming),
        );
        println!(
            "{:<46}{:>16.0}{:>16.0}{:>10.0}us{:>10.0}us{:>10.0}us{:>10.0}us",
            name, d.rate, p.rate, d.p50, p.p50, d.p99, p.p99
        );
        for (which, r) in [("direct", &direct), ("proxied", &proxied)] {
            if r.calls_failed > 0 {
                println!("  {which}: {} calls failed: {:?}", r.calls_failed, r.errors);
            }
        }
    }
    println!("\n(streaming rows count messages/s and per-message latency; 2 loads share this machine's cores with both servers, so compare the columns, not the absolute numbers)");
    proxy.shutdown();
    drop(upstream);
    Ok(())
}
