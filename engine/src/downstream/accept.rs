//! The accept loop of one core's listener.
//!
//! Accepting never fails the worker: after a failed accept (a full fd
//! table, say) it waits, 10 ms doubling up to 1 s while failures go on,
//! and logs once when they start and once when they end, never once per
//! attempt. Past `max_connections_per_worker` (derived from the fd limit,
//! see [`fds`](crate::runtime::fds)) a new connection is closed at once.
//! Each admitted connection is served on its own task.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::downstream::server::Server;

/// Accepts connections and serves each on its own task with `serve`.
pub async fn accept_with<F, Fut>(server: &Rc<Server>, listener: &monoio::net::TcpListener, serve: F)
where
    F: Fn(Rc<Server>, monoio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut failures: u32 = 0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off until it works again");
                }
                failures = failures.saturating_add(1);
                monoio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(failures, "accepting again");
            failures = 0;
        }
        if !server.admit() {
            tracing::debug!(%peer, "connection limit reached; closing new connection");
            continue;
        }
        monoio::spawn(Served {
            serving: serve(server.clone(), tcp, peer),
            server: server.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: its future, then the server counts it closed.
    /// A struct, not an `async` block awaiting the future: the compiler
    /// lays such a block out with room for the future twice (captured,
    /// then awaited), and every connection would pay for both.
    struct Served<F> {
        #[pin]
        serving: F,
        server: Rc<Server>,
    }
}

impl<F: Future<Output = ()>> Future for Served<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        ready!(this.serving.poll(cx));
        this.server.closed();
        Poll::Ready(())
    }
}

/// The pause after the `n`-th failed accept in a row: 10 ms, doubling, at
/// most 1 s.
fn backoff(n: u32) -> Duration {
    let ms = 10u64.saturating_mul(1 << n.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_up_to_a_second() {
        let ms: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }
}
