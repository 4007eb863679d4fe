//! The accept loop of one core's listener.
//!
//! Accepting never fails the worker: a full fd table or another accept
//! error is logged and retried after a pause; past
//! `max_connections_per_worker` a new connection is closed at once. Each
//! admitted connection is served on its own task.

use std::rc::Rc;
use std::time::Duration;

use crate::downstream::connection;
use crate::downstream::server::Server;

/// Accepts connections and serves each on its own task, until the caller
/// stops polling (drain or stop).
pub async fn accept(server: &Rc<Server>, listener: &monoio::net::TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: log, pause briefly, go on serving.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !server.admit() {
            tracing::debug!(%peer, "connection limit reached; closing new connection");
            continue;
        }
        let server = server.clone();
        monoio::spawn(async move {
            connection::serve(&server, tcp, peer).await;
            server.closed();
        });
    }
}
