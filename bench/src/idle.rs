//! Memory per idle client connection: each proxy's resident memory before
//! and after N client connections that sent the HTTP/2 preface and an
//! empty SETTINGS frame and then nothing, on a proxy process that served
//! nothing before them.
//!
//! Every connection waits for the proxy's first frame (its SETTINGS), so
//! each has been accepted and served before the second reading. The
//! connections come from this process, whose file descriptor limit is
//! raised to fit them.
//!
//! With `--quiet-after-call`, also N connections that each made one unary
//! call of 32 KiB each way and then went quiet, on another fresh process:
//! memory per connection right after the calls and some seconds later
//! (a proxy may hold what the call grew until it looks again).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::procs::Running;

/// One target's figure.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRow {
    /// The target's name.
    pub target: String,
    /// Connections held.
    pub connections: usize,
    /// Resident memory before them, MiB.
    pub rss_before_mib: f64,
    /// Resident memory with them, MiB.
    pub rss_after_mib: f64,
    /// The difference per connection, KiB.
    pub kib_per_connection: f64,
    /// Connections quiet after one call: KiB per connection right after
    /// the calls, and `settle_secs` later.
    pub after_call_kib: Option<f64>,
    /// See `after_call_kib`.
    pub settled_kib: Option<f64>,
    /// See `after_call_kib`.
    pub settle_secs: Option<u64>,
}

/// The request and response size of the call before going quiet.
const CALL: usize = 32 << 10;

const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Holds `n` idle connections to `addr` and measures `proxy`.
pub fn measure(
    target: &str,
    proxy: &Running,
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<IdleRow> {
    let _ = rlimit::increase_nofile_limit(n as u64 + 1024);
    let before = proxy.rss_kib()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.write_all(HELLO)?;
        conns.push(tcp);
    }
    for tcp in &mut conns {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head)?;
    }
    let after = proxy.rss_kib()?;
    drop(conns);
    Ok(IdleRow {
        target: target.into(),
        connections: n,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        kib_per_connection: after.saturating_sub(before) as f64 / n as f64,
        after_call_kib: None,
        settled_kib: None,
        settle_secs: None,
    })
}

/// Makes `n` connections to `addr` each send one unary call of 32 KiB to
/// the echo upstream and read its answer, then holds them quiet; returns
/// `proxy`'s memory per connection right after the calls and `settle`
/// later, KiB.
pub fn measure_quiet(
    proxy: &Running,
    addr: SocketAddr,
    n: usize,
    settle: Duration,
) -> anyhow::Result<(f64, f64)> {
    let _ = rlimit::increase_nofile_limit(n as u64 + 1024);
    let call = one_call();
    let before = proxy.rss_kib()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.write_all(&call)?;
        conns.push(tcp);
    }
    for tcp in &mut conns {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        answered(tcp)?;
    }
    let after = proxy.rss_kib()?;
    std::thread::sleep(settle);
    let settled = proxy.rss_kib()?;
    drop(conns);
    let per = |kib: u64| kib.saturating_sub(before) as f64 / n as f64;
    Ok((per(after), per(settled)))
}

/// The preface, SETTINGS, and a unary call on stream 1 whose message is
/// `CALL` bytes, in frames of 16 KiB at most, written with the engine's
/// frame and HPACK writers.
fn one_call() -> Vec<u8> {
    use grpc_proxy::hpack::encoder::encode_field;
    use grpc_proxy::http2::frame::{flag, kind, write_head};
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/loadtest.Echo/Unary"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
    }
    let mut message = vec![0u8];
    message.extend_from_slice(&(CALL as u32).to_be_bytes());
    message.resize(5 + CALL, 7);
    let mut out = HELLO.to_vec();
    write_head(&mut out, block.len(), kind::HEADERS, flag::END_HEADERS, 1);
    out.extend_from_slice(&block);
    let chunks: Vec<&[u8]> = message.chunks(16 << 10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let end = if i + 1 == chunks.len() {
            flag::END_STREAM
        } else {
            0
        };
        write_head(&mut out, chunk.len(), kind::DATA, end, 1);
        out.extend_from_slice(chunk);
    }
    out
}

/// Reads frames until stream 1 ends; an error if the connection closes
/// or goes away first.
fn answered(tcp: &mut TcpStream) -> anyhow::Result<()> {
    use grpc_proxy::http2::frame::{flag, kind, Head, HEAD_LEN};
    loop {
        let mut head = [0u8; HEAD_LEN];
        tcp.read_exact(&mut head)?;
        let head = Head::parse(&head);
        let mut payload = vec![0u8; head.length as usize];
        tcp.read_exact(&mut payload)?;
        if head.kind == kind::GOAWAY {
            anyhow::bail!("the proxy sent GOAWAY instead of answering the call");
        }
        let ends = head.kind == kind::DATA || head.kind == kind::HEADERS;
        if head.stream == 1 && ends && head.flags & flag::END_STREAM != 0 {
            return Ok(());
        }
    }
}

/// The markdown table.
pub fn markdown(rows: &[IdleRow]) -> String {
    let quiet = quiet_columns(rows);
    let mut out = format!(
        "**memory per idle client connection**\n\n| target | connections | RSS before MiB | RSS with them MiB | KiB per connection |{}\n| --- | ---: | ---: | ---: | ---: |{}\n",
        quiet.0, quiet.1
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.target, r.connections, r.rss_before_mib, r.rss_after_mib, r.kib_per_connection
        ));
        if !quiet.0.is_empty() {
            let kib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            out.push_str(&format!(
                " {} | {} |",
                kib(r.after_call_kib),
                kib(r.settled_kib)
            ));
        }
        out.push('\n');
    }
    out
}

/// The headers and alignments of the columns of connections quiet after
/// a call, if any row has them.
fn quiet_columns(rows: &[IdleRow]) -> (String, String) {
    match rows.iter().find_map(|r| r.settle_secs) {
        Some(secs) => (
            format!(" quiet after one 32 KiB call, KiB | {secs} s later, KiB |"),
            " ---: | ---: |".into(),
        ),
        None => (String::new(), String::new()),
    }
}

/// Across rounds: per target, the range of KiB per connection.
pub fn ranges(rows: &[IdleRow]) -> String {
    let quiet = quiet_columns(rows);
    let mut out = format!(
        "**memory per idle client connection** (ranges over rounds)\n\n| target | rounds | connections | KiB per connection |{}\n| --- | ---: | ---: | ---: |{}\n",
        quiet.0, quiet.1
    );
    for target in crate::e2e::first_seen(rows, |r| &r.target) {
        let kib: Vec<f64> = rows
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.kib_per_connection)
            .collect();
        let connections = rows
            .iter()
            .find(|r| r.target == target)
            .map_or(0, |r| r.connections);
        out.push_str(&format!(
            "| {target} | {} | {connections} | {} |",
            kib.len(),
            crate::e2e::span(&kib, 1, "")
        ));
        if !quiet.0.is_empty() {
            let of = |pick: fn(&IdleRow) -> Option<f64>| {
                let values: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.target == target)
                    .filter_map(pick)
                    .collect();
                if values.is_empty() {
                    "-".to_string()
                } else {
                    crate::e2e::span(&values, 1, "")
                }
            };
            out.push_str(&format!(
                " {} | {} |",
                of(|r| r.after_call_kib),
                of(|r| r.settled_kib)
            ));
        }
        out.push('\n');
    }
    out
}
