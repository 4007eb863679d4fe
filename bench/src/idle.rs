//! Memory per idle client connection: each proxy's resident memory before
//! and after N client connections that sent the HTTP/2 preface and an
//! empty SETTINGS frame and then nothing, on a proxy process that served
//! nothing before them.
//!
//! Every connection waits for the proxy's first frame (its SETTINGS), so
//! each has been accepted and served before the second reading. The
//! connections come from this process, whose file descriptor limit is
//! raised to fit them.

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
}

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
    })
}

/// The markdown table.
pub fn markdown(rows: &[IdleRow]) -> String {
    let mut out = String::from(
        "**memory per idle client connection**\n\n| target | connections | RSS before MiB | RSS with them MiB | KiB per connection |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.target, r.connections, r.rss_before_mib, r.rss_after_mib, r.kib_per_connection
        ));
    }
    out
}

/// Across rounds: per target, the range of KiB per connection.
pub fn ranges(rows: &[IdleRow]) -> String {
    let mut out = String::from(
        "**memory per idle client connection** (ranges over rounds)\n\n| target | rounds | connections | KiB per connection |\n| --- | ---: | ---: | ---: |\n",
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
            "| {target} | {} | {connections} | {} |\n",
            kib.len(),
            crate::e2e::span(&kib, 1, "")
        ));
    }
    out
}
