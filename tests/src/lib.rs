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
/// a hang fails after 60 s instead of blocking the suite, and prints what
/// this process's sockets and threads were doing (see [`hang_report`]).
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
        // Pinned here, not moved into the timeout: a hung body (its proxy
        // and peers among it) is still alive while the report is taken.
        let body = std::pin::pin!(body(driver));
        if tokio::time::timeout(Duration::from_secs(60), body)
            .await
            .is_err()
        {
            eprintln!("{}", hang_report());
            panic!("test timed out (hang guard)");
        }
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

/// What a hung test leaves to read: every TCP socket this process holds
/// (both ends of its loopback connections, the proxy's and the clients'),
/// with state and queued bytes, and every thread with its state and the
/// kernel function it sleeps in. It tells a client waiting on a connection
/// the proxy closed from a proxy that never closed it.
pub fn hang_report() -> String {
    use std::collections::HashSet;
    use std::fmt::Write;
    let ours: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut out =
        String::from("hang report: TCP sockets of this process (local remote state tx rx)\n");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !ours.contains(f[9]) {
                continue;
            }
            let (tx, rx) = f[4].split_once(':').unwrap_or((f[4], ""));
            let _ = writeln!(
                out,
                "  {} {} {} tx={} rx={}",
                tcp_endpoint(f[1]),
                tcp_endpoint(f[2]),
                tcp_state(f[3]),
                u64::from_str_radix(tx, 16).unwrap_or(0),
                u64::from_str_radix(rx, 16).unwrap_or(0),
            );
        }
    }
    out.push_str("threads (name state wchan)\n");
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit_once(") ").map_or("?", |(_, r)| &r[..1]);
        let _ = writeln!(
            out,
            "  {} {} {}",
            read("comm").trim(),
            state,
            read("wchan").trim()
        );
    }
    out
}

/// `0100007F:1F90` (as /proc/net/tcp writes an IPv4 endpoint) as
/// `127.0.0.1:8080`; other forms as they are.
fn tcp_endpoint(hex: &str) -> String {
    let Some((ip, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(ip, 16) {
        Ok(v4) if ip.len() == 8 => {
            format!("{}:{port}", std::net::Ipv4Addr::from(v4.swap_bytes()))
        }
        _ => format!("[{ip}]:{port}"),
    }
}

/// A TCP state as /proc/net/tcp numbers it.
fn tcp_state(hex: &str) -> &'static str {
    const STATES: [&str; 12] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
    ];
    STATES[u8::from_str_radix(hex, 16).map_or(0, usize::from).min(11)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hang_report_lists_both_ends_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let local = client.local_addr().expect("local");
        let report = super::hang_report();
        assert!(
            report.contains(&format!("{addr} 0.0.0.0:0 LISTEN")),
            "{report}"
        );
        assert!(
            report.contains(&format!("{local} {addr} ESTABLISHED")),
            "{report}"
        );
        assert!(
            report.contains(&format!("{addr} {local} ESTABLISHED")),
            "{report}"
        );
    }
}
