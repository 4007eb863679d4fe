//! Listening sockets: one SO_REUSEPORT listener per worker, all bound by
//! the starting thread so that a busy port is one clear start-up error.
//!
//! Why bind here and not in each worker: `SO_REUSEPORT` lets any other
//! process of the same user bind the same port and silently take a share of
//! the connections. A probe bind without `SO_REUSEPORT` first proves the
//! port is free (and picks the port when 0 is asked for); then every worker
//! socket is bound to that port with `SO_REUSEPORT` and set non-blocking
//! (monoio's `from_std` does not, and a blocking accept would stall the
//! legacy driver).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr`, returning them and the bound address.
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    let probe = socket(addr)?;
    probe.bind(&addr.into())?;
    let bound = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))?;
    drop(probe);
    let listeners = (0..count)
        .map(|_| {
            let s = socket(bound)?;
            s.set_reuse_port(true)?;
            s.bind(&bound.into())?;
            s.listen(BACKLOG)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .collect::<io::Result<_>>()?;
    Ok((listeners, bound))
}

fn socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_is_refused_and_port_zero_is_shared() {
        let (listeners, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 3).expect("binds");
        assert_eq!(listeners.len(), 3);
        assert_ne!(bound.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr"), bound);
        }
        let err = bind_all(bound, 1).expect_err("port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
