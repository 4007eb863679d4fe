//! The downstream server of one core: the connections it holds and what
//! they share.
//!
//! Key type: [`Server`], built once per worker and shared (`Rc`) by the
//! core's connection tasks. It holds the config snapshot that connections
//! and calls starting now get ([`Server::snapshot`]; a reload swaps it with
//! [`Server::swap`]), the settings, the drain and stop latches, and the
//! narrow [`CallContext`] that each call is given.
//!
//! It counts the connections it holds, up to `max_connections_per_worker`;
//! [`accept`](crate::downstream::accept) admits them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::config::Settings;
use crate::downstream::context::CallContext;
use crate::downstream::snapshot::Snapshot;
use crate::runtime::room::Room;
use crate::runtime::wake::{Latch, Notify};
use crate::telemetry::metrics::add;

/// The downstream side of one core.
pub struct Server {
    /// Routes, clusters and TLS for connections and calls starting now.
    current: RefCell<Rc<Snapshot>>,
    pub(crate) settings: Rc<Settings>,
    /// Set to drain: connections GOAWAY and finish their streams.
    pub(crate) drain: Latch,
    /// Set when the worker exits: every task that owns a socket watches it.
    pub(crate) stop: Rc<Latch>,
    /// What each call is given.
    pub(crate) calls: Rc<CallContext>,
    /// TLS handshakes under way, at most `max_tls_handshakes_per_worker`:
    /// at the limit, the one under way longest is given up. Each holds
    /// rustls state until it ends; a plain cap that made newcomers wait
    /// would let clients that stall mid-handshake lock honest ones out.
    pub(crate) handshakes: Room,
    connections: Cell<usize>,
    idle: Notify,
}

impl Server {
    /// A server whose first calls see `first`.
    pub fn new(
        first: Rc<Snapshot>,
        settings: Rc<Settings>,
        stop: Rc<Latch>,
        calls: Rc<CallContext>,
    ) -> Server {
        Server {
            current: RefCell::new(first),
            handshakes: Room::new(settings.max_tls_handshakes_per_worker),
            settings,
            drain: Latch::default(),
            stop,
            calls,
            connections: Cell::new(0),
            idle: Notify::default(),
        }
    }

    /// The configuration for a connection or call that starts now.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Makes `next` the configuration of connections and calls that start
    /// from now on; those already running keep theirs.
    pub fn swap(&self, next: Rc<Snapshot>) {
        *self.current.borrow_mut() = next;
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Completes once no connection is open.
    pub async fn idle(&self) {
        while self.connections.get() > 0 {
            self.idle.notified().await;
        }
    }

    /// Counts a connection in, unless the worker's limit is reached.
    pub(crate) fn admit(&self) -> bool {
        let n = self.connections.get();
        if n >= self.settings.max_connections_per_worker {
            return false;
        }
        self.connections.set(n + 1);
        add(&self.calls.counters.connections_accepted, 1);
        true
    }

    /// Counts a connection out.
    pub(crate) fn closed(&self) {
        self.connections.set(self.connections.get() - 1);
        if self.connections.get() == 0 {
            self.idle.notify_all();
        }
    }
}
