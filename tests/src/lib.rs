//! Test harness: real tonic servers and clients around a real grpc-proxy.
//!
//! - [`Upstream`]: a tonic server of the `test.Echo` service on
//!   `127.0.0.1:0`, on its own thread and tokio runtime; readiness comes over
//!   a channel, never a sleep.
//! - [`Client`]: a tonic client for the same service.
//! - [`Pki`]: a CA, server and client certificates made with rcgen.
//! - [`proxy`]: a grpc-proxy started in this process from a TOML snippet.
//! - [`admin`]: one HTTP/1.1 request to the admin endpoint.
//! - [`relay`]: a TCP relay that can go silent (a dead link).
//! - [`raw`]: a bare h2 client, for what tonic would hide.
//! - [`tokens`]: JWT signing keys, their JWKS file, and signed tokens.
//! - [`peer`]: a hand-made HTTP/2 peer, frames built byte by byte, for
//!   conformance tests of both legs.
//! - [`proxy_test!`]: turns one async test body into two tests, one per
//!   monoio driver (io_uring, legacy).
//!
//! No protoc and no generated code: messages are raw bytes
//! ([`BytesCodec`]) and the service is written by hand against tonic's
//! server API, the way generated code does it. The proxy never decodes
//! messages, so bytes are all a test needs.

pub mod admin;
pub mod client;
pub mod codec;
pub mod echo;
pub mod peer;
pub mod pki;
pub mod raw;
pub mod relay;
pub mod silent;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use client::Client;
pub use codec::BytesCodec;
pub use echo::{Events, Upstream};
pub use grpc_proxy::{Driver, ProxyHandle};
pub use pki::{Issued, Pki};

/// Runs one test body on a fresh tokio runtime with the proxy on `driver`;
/// a hang fails after 60 s instead of blocking the suite.
pub fn run_on<F, Fut>(driver: Driver, body: F)
where
    F: FnOnce(Driver) -> Fut,
    Fut: Future<Output = ()>,
{
    if driver == Driver::IoUring && Driver::Auto.resolve() != Driver::IoUring {
        eprintln!("io_uring is unavailable on this machine: skipped");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), body(driver))
            .await
            .expect("test timed out (hang guard)");
    });
}

/// Declares a test that runs once per monoio driver:
/// `proxy_test! { async fn name(driver) { ... } }` makes `name::io_uring`
/// and `name::legacy`.
#[macro_export]
macro_rules! proxy_test {
    ($(async fn $name:ident($driver:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn body($driver: $crate::Driver) $body
                #[test]
                fn io_uring() {
                    $crate::run_on($crate::Driver::IoUring, body)
                }
                #[test]
                fn legacy() {
                    $crate::run_on($crate::Driver::Legacy, body)
                }
            }
        )*
    };
}

/// Starts a proxy on `127.0.0.1:0`, one worker, from a TOML snippet of
/// clusters, routes and settings (no `listen`), on `driver`.
pub fn proxy(driver: Driver, toml: &str) -> ProxyHandle {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncores = 1\n[upstream]\nreconnect_backoff_min = \"20ms\"\nreconnect_backoff_max = \"100ms\"\n{toml}"
    );
    let config = grpc_proxy::Config::parse(&text, "test").expect("valid test config");
    let (builder, routes) = grpc_proxy::ProxyBuilder::from_config(&config).expect("builder");
    builder.driver(driver).start(routes).expect("proxy starts")
}

/// A proxy that forwards every call to one upstream.
pub fn proxy_to(driver: Driver, upstream: SocketAddr) -> ProxyHandle {
    proxy(
        driver,
        &format!("{}\n[[routes]]\ncluster = \"a\"\n", cluster("a", upstream)),
    )
}

/// A `[[clusters]]` entry.
pub fn cluster(name: &str, addr: SocketAddr) -> String {
    format!("[[clusters]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\n")
}

/// File descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
