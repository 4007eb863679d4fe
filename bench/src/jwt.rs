//! `bench jwt`: what a JWT route costs end to end. The same small unary
//! load (10 B, 8 connections x 16 streams) against grpc-proxy on one core,
//! four ways, each call carrying an ES256 bearer token:
//! - `plain`: a route without `jwt` (the token rides along unread);
//! - `jwt`: the route verifies it (after the first call, from the
//!   worker's cache);
//! - `jwt + edits`: and also removes it and sends `x-user-id: <sub>`;
//! - `jwt, new tokens`: the `jwt` route, each call with the next of
//!   16,384 tokens, four times what a worker keeps: every call a cache
//!   miss, a signature check.
//!
//! Rounds alternate the four so drift hits all alike. The criterion bench
//! (`director/jwt: ... cache miss`) gives a miss's cost per algorithm.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use grpc_loadtest::run::{self, Rotating, Rpc, RunOptions};
use grpc_proxy::CoreSelection;
use grpc_proxy_tests::tokens::{self, SigningKey};
use http::{HeaderName, HeaderValue};

use crate::e2e::Plan;
use crate::procs::{self, TempDir};

/// `bench jwt`'s flags.
#[derive(Args, Debug)]
pub struct JwtArgs {
    /// Measured seconds per load.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of the four loads.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Do not build grpc-proxy and grpc-loadtest first.
    #[arg(long)]
    pub no_build: bool,
}

const JWT: &str = r#"jwt = { issuer = "https://auth.test", audiences = ["api"], jwks = "JWKS", claims = [{ name = "scope", contains = "echo" }] }"#;

/// Each load: its name, its route's extra keys, and whether every call
/// brings a new token.
const ROUTES: [(&str, &str, bool); 4] = [
    ("plain", "", false),
    ("jwt", JWT, false),
    (
        "jwt + edits",
        concat!(
            r#"jwt = { issuer = "https://auth.test", audiences = ["api"], jwks = "JWKS", claims = [{ name = "scope", contains = "echo" }] }"#,
            "\n",
            r#"request_headers = { remove = ["authorization"], set = { "x-user-id" = "${jwt.sub}" } }"#
        ),
        false,
    ),
    ("jwt, new tokens", JWT, true),
];

/// Distinct tokens of the `new tokens` load.
const MANY: usize = 4 * grpc_proxy::routing::jwt::CACHE_ENTRIES;

/// Runs the rounds and prints a markdown table of CPU per call.
pub fn run(args: &JwtArgs, bin_dir: &Path) -> anyhow::Result<()> {
    let plan = Plan::new(&grpc_proxy::runtime::cores::available())?;
    let upstream = procs::upstream(bin_dir, &plan.upstream)?;
    let keys_dir = TempDir::new("jwt-keys")?;
    let key = SigningKey::ec("bench");
    let jwks = keys_dir.path().join("jwks.json");
    tokens::write_jwks(&jwks, &[&key]);
    let sign = |sub: usize| {
        let mut claims = tokens::claims(&format!("user-{sub}"));
        claims["scope"] = serde_json::json!("read echo");
        claims["exp"] = serde_json::json!(tokens::now() + 24 * 3600);
        key.sign(&claims)
    };
    let token = sign(1);
    let authorization = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let many = (0..MANY)
        .map(|i| HeaderValue::from_str(&format!("Bearer {}", sign(100_000 + i))))
        .collect::<Result<Vec<_>, _>>()?;
    let name = HeaderName::from_static("authorization");
    let many =
        Arc::new(Rotating::new(name.clone(), many).ok_or_else(|| anyhow::anyhow!("no tokens"))?);
    eprintln!(
        "proxy on CPU {:?}, echo upstream on {:?}, load on {:?}; a {}-byte ES256 token on every call",
        plan.proxy,
        plan.upstream,
        plan.load,
        token.len()
    );
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ROUTES.len()];
    for round in 1..=args.rounds {
        for (i, (label, route, new_tokens)) in ROUTES.iter().enumerate() {
            let listen = procs::free_port()?;
            let config = format!(
                "listen = \"{listen}\"\n[[clusters]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[routes]]\ncluster = \"a\"\n{}\n",
                upstream.addr,
                route.replace("JWKS", &jwks.display().to_string())
            );
            let proxy = procs::grpc_proxy_with_config(bin_dir, &plan.proxy, &config, listen)?;
            let warmup = Duration::from_secs(1);
            let options = RunOptions {
                target: listen,
                rpc: Rpc::Unary,
                payload: 10,
                connections: 8,
                streams: 16,
                cores: CoreSelection::Set(plan.load.clone()),
                duration: Duration::from_secs(args.seconds),
                warmup,
                metadata: if *new_tokens {
                    Vec::new()
                } else {
                    vec![(name.clone(), authorization.clone())]
                },
                rotating: new_tokens.then(|| many.clone()),
                ..RunOptions::default()
            };
            let cpu0 = proxy.cpu_seconds()?;
            let report = run::run(&options)?;
            let cpu1 = proxy.cpu_seconds()?;
            if report.calls_failed > 0 {
                anyhow::bail!("{label}: {} calls failed", report.calls_failed);
            }
            let calls = report.calls_per_sec * (report.seconds + warmup.as_secs_f64());
            let cpu_us = (cpu1 - cpu0) * 1e6 / calls;
            eprintln!(
                "  round {round}  {label:<16} {:>9.0} calls/s  cpu {cpu_us:.2} us/call",
                report.calls_per_sec
            );
            results[i].push((report.calls_per_sec, cpu_us));
        }
    }
    println!("| route | calls/s | CPU per call (us) |\n| --- | --- | --- |");
    for ((name, _, _), rows) in ROUTES.iter().zip(&results) {
        let range = |f: fn(&(f64, f64)) -> f64, digits: usize| {
            let lo = rows.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = rows.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.digits$}-{hi:.digits$}")
        };
        println!("| {name} | {} | {} |", range(|r| r.0, 0), range(|r| r.1, 2));
    }
    Ok(())
}
