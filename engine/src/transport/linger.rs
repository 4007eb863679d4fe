//! Lingering close: a client connection the proxy ends reads on, and
//! throws away, what the client still sends until the client has
//! acknowledged every byte written to it (the FIN among them), ends its
//! own side, or `[timeouts] linger` passes.
//!
//! Closing a socket whose receive queue holds bytes makes Linux answer
//! with a reset at once and throw away what it has not yet sent or seen
//! acknowledged: the last DATA, trailers and GOAWAY of a client that
//! reads slowly, or is far away. Such bytes come often: the
//! WINDOW_UPDATE for the last DATA, a request crossing the GOAWAY, what
//! follows a frame that broke the protocol. A socket closed with an empty
//! queue fares no better once bytes arrive after it: the kernel resets
//! it then. nginx (`lingering_close`) and HAProxy read on the same way.
//!
//! The wait costs a read of 4 KiB at most and a look at the socket
//! (`SIOCOUTQ`) now and then, from 5 ms apart to 250 ms; a client that
//! has all its bytes lets the connection go at the next look.

use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::tcp::TcpOwnedReadHalf;
use monoio::time::Instant;

use crate::runtime::wake::Latch;
use crate::transport::socket;

/// The most one read of the wait takes.
const READ: usize = 4 << 10;
/// The first look at what the client has not acknowledged, and the most
/// time between two; each wait doubles it.
const FIRST_LOOK: Duration = Duration::from_millis(5);
const LAST_LOOK: Duration = Duration::from_millis(250);

/// Reads and throws away what comes on `tcp`, whose writing side was
/// shut down, until the peer acknowledged everything written to it, ends
/// its side or fails, `until` passes, or `stop` is set.
pub async fn linger(tcp: &mut TcpOwnedReadHalf, until: Instant, stop: &Latch) {
    let fd = socket::read_fd(tcp);
    let mut look = FIRST_LOOK;
    // When to look at what the client has not acknowledged: at once, then
    // as the looks space out, and after a read that found the socket
    // drained (not after each of a flood's full reads).
    let mut next = Instant::now();
    let mut spare = Vec::new();
    loop {
        let now = Instant::now();
        if now >= next {
            // Without the count (kernels before 4.1), nothing to wait for.
            if socket::sent(fd).is_none_or(|sent| sent.queued == 0) {
                // The client has every byte; what it sent since the last
                // read goes too, or the close would still be a reset, and
                // a client on some systems drops what it has not read yet
                // when one comes.
                socket::discard_unread(fd);
                return;
            }
            next = (now + look).min(until);
            look = (look * 2).min(LAST_LOOK);
        }
        if now >= until || stop.is_set() {
            return;
        }
        if spare.capacity() == 0 {
            // New, or gone with a read the timer cut short.
            spare = Vec::with_capacity(READ);
        }
        let read = monoio::select! {
            biased;
            _ = stop.wait() => return,
            _ = monoio::time::sleep_until(next) => None,
            read = tcp.read(std::mem::take(&mut spare)) => Some(read),
        };
        match read {
            None => {}
            Some((Ok(0) | Err(_), _)) => return,
            Some((Ok(n), buf)) => {
                spare = buf;
                spare.clear();
                if n < READ {
                    next = Instant::now();
                }
            }
        }
    }
}
