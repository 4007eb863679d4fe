//! `grpc-loadtest demo`: the main job end to end, on loopback.
//!
//! Starts the echo upstream and grpc-proxy in this process (each on its own
//! worker core), runs the same short loads directly against the upstream and
//! through the proxy, and prints the two side by side.

use std::time::Duration;

use grpc_proxy::{CoreSelection, ProxyBuilder, Route};

use crate::report::Report;

/// The figures a demo row shows: calls/s and call latency; for bidi,
/// messages/s and round-trip latency; for server streams, messages/s and
/// the time to the first message (the gaps between messages get a line of
/// their own: a stream sent at once has gaps of a microsecond or less).
struct Headline {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Headline {
    fn of(r: &Report, rpc: Rpc) -> Headline {
        let (rate, latency) = match rpc {
            Rpc::Bidi => (r.messages_per_sec, r.message_latency.as_ref()),
            Rpc::ServerStream => (r.messages_per_sec, r.first_message_latency.as_ref()),
            _ => (r.calls_per_sec, r.call_latency.as_ref()),
        };
        Headline {
            rate,
            p50: latency.map_or(f64::NAN, |l| l.p50_us),
            p99: latency.map_or(f64::NAN, |l| l.p99_us),
        }
    }
}

/// Microseconds with the precision they need: 0.35us, 12.4us, 480us.
fn us(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}us")
    } else if v < 100.0 {
        format!("{v:.1}us")
    } else {
        format!("{v:.0}us")
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
        let (d, p) = (Headline::of(&direct, rpc), Headline::of(&proxied, rpc));
        println!(
            "{:<46}{:>16.0}{:>16.0}{:>12}{:>12}{:>12}{:>12}",
            name,
            d.rate,
            p.rate,
            us(d.p50),
            us(p.p50),
            us(d.p99),
            us(p.p99)
        );
        if rpc == Rpc::ServerStream {
            let gap = |r: &Report, p99: bool| {
                r.message_latency
                    .as_ref()
                    .map_or(f64::NAN, |l| if p99 { l.p99_us } else { l.p50_us })
            };
            println!(
                "{:<46}{:>16}{:>16}{:>12}{:>12}{:>12}{:>12}",
                "  (the gap between its messages)",
                "",
                "",
                us(gap(&direct, false)),
                us(gap(&proxied, false)),
                us(gap(&direct, true)),
                us(gap(&proxied, true))
            );
        }
        for (which, r) in [("direct", &direct), ("proxied", &proxied)] {
            if r.calls_failed > 0 {
                println!("  {which}: {} calls failed: {:?}", r.calls_failed, r.errors);
            }
        }
    }
    println!("\n(streaming rows count messages/s; bidi latency is a round trip, server-stream latency the time to the first message; 2 loads share this machine's cores with both servers, so compare the columns, not the absolute numbers)");
    proxy.shutdown();
    drop(upstream);
    Ok(())
}
