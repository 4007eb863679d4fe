//! Endpoint names resolved again in the background, on a thread of the
//! control side (never a worker's): every `[upstream] dns_refresh`, each
//! name an endpoint was written with is looked up again (in
//! `[upstream] hosts_file` first, if set, then by the system's resolver),
//! and every address it returns is an endpoint, as Envoy's STRICT_DNS
//! does: a DNS round-robin name or a Kubernetes headless Service just
//! works. See
//! [`Controller::refresh_endpoints`](crate::control::controller::Controller::refresh_endpoints)
//! for what a change does and what a failure keeps.
//!
//! A failed connect to an upstream brings the next round forward (a name's
//! endpoints may have moved), at most once per [`SOONEST`].
//!
//! The thread holds the controller weakly and ends with the proxy (or
//! once it drains).

use std::sync::Weak;
use std::time::{Duration, Instant};

/// What the thread needs of the proxy's control side (the
/// [`Controller`](crate::control::controller::Controller) has it); a trait
/// so that this file does not depend on the controller, which starts it.
pub(super) trait Names: Send + Sync + 'static {
    /// Whether the proxy is draining (or stopped): the thread ends.
    fn is_draining(&self) -> bool;
    /// Whether an upstream connect failed since the last call (and clears it).
    fn take_connect_failed(&self) -> bool;
    /// Resolves every endpoint name again and sends the workers what changed.
    fn refresh_endpoints(&self);
}

/// How often the thread looks whether the proxy is gone, or a connect
/// failed, between rounds.
const NAP: Duration = Duration::from_millis(100);

/// The least time between two rounds that failed connects bring forward.
pub const SOONEST: Duration = Duration::from_secs(1);

/// Starts resolving `control`'s endpoint names every `every`.
pub(super) fn start<C: Names>(control: Weak<C>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("grpc-proxy-dns".into())
        .spawn(move || run(control, every));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the DNS refresh thread; endpoint names stay as resolved at load");
    }
}

fn run<C: Names>(control: Weak<C>, every: Duration) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(NAP);
        let Some(c) = control.upgrade() else {
            return;
        };
        if c.is_draining() {
            return;
        }
        let since = last.elapsed();
        let due = since >= every || (since >= SOONEST.min(every) && c.take_connect_failed());
        if due {
            c.refresh_endpoints();
            last = Instant::now();
        }
    }
}
