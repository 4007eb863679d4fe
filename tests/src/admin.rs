//! Talking to the admin endpoint: one HTTP/1.1 request per connection over
//! a plain socket, so that the tests need no HTTP client of their own.

use std::io::{Read, Write};
use std::net::ToSocketAddrs;

/// Sends `method path` to `addr` and returns the status code and body.
pub fn request(addr: impl ToSocketAddrs, method: &str, path: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).expect("admin connects");
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of one sample line of a Prometheus text exposition; panics,
/// showing the exposition, if there is none.
pub fn must_sample(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// The value of one sample line of a Prometheus text exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of a counter or gauge in `proxy`'s merged counters; 0 if it
/// has no sample yet.
pub fn metric(proxy: &grpc_proxy::ProxyHandle, series: &str) -> f64 {
    sample(&proxy.metrics().render(), series).unwrap_or(0.0)
}

/// Polls `proxy`'s merged counters (every 10 ms, for up to 20 s) until
/// `done` holds for their exposition; panics naming `what` if it never
/// does.
pub async fn wait_until(proxy: &grpc_proxy::ProxyHandle, what: &str, done: impl Fn(&str) -> bool) {
    for _ in 0..2000 {
        if done(&proxy.metrics().render()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}
