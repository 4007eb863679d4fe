//! One upstream endpoint: its address, its HTTP/2 connections, and what
//! this core knows of its health.
//!
//! Key types: [`Endpoint`] and [`UpConn`] (one HTTP/2 connection and its
//! stream count). An endpoint keeps two kinds of state that back off
//! exponentially: reconnects after a failed connect (from
//! `reconnect_backoff_min` up to `reconnect_backoff_max`), and passive
//! ejection after calls fail in a row (from `base_ejection` up to
//! `max_ejection`); both double with `doubling`. Active health checks
//! set [`Endpoint::health_result`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use crate::config::{HealthCheck, Outlier};
use crate::runtime::wake::Notify;
use crate::upstream::error::UpstreamError;

/// One HTTP/2 connection to an upstream endpoint.
pub struct UpConn {
    /// The connection's request handle. Each stream is opened on a clone
    /// of it: h2 keeps one pending-open slot and one waker per handle, so
    /// calls sharing one handle at the upstream's stream limit overwrote
    /// each other's wake-ups and waited until their deadlines.
    pub(super) send: SendRequest<Bytes>,
    /// Streams open on it.
    pub(super) active: Cell<usize>,
    /// False once retired: it takes no new streams.
    pub(super) usable: Cell<bool>,
    /// The last stream id of the upstream's GOAWAY, once one came.
    pub(super) goaway_last: crate::transport::goaway::LastStreamId,
}

impl UpConn {
    pub(super) fn has_room(&self) -> bool {
        self.active.get() < self.send.current_max_send_streams()
    }
}

/// One upstream address, its connections and its state.
pub struct Endpoint {
    addr: SocketAddr,
    pub(super) conns: RefCell<Vec<Rc<UpConn>>>,
    /// A connect is in progress; other calls wait for it.
    pub(super) connecting: Cell<bool>,
    /// Woken when a connect ends or a connection is retired.
    pub(super) changed: Notify,
    /// Connect failures in a row (reconnect back-off).
    failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
    last_error: RefCell<Rc<str>>,
    /// Streams open on this endpoint's connections.
    pub(super) active: Cell<usize>,
    /// Connections of the own frame path open to it (they are not in
    /// `conns`).
    relayed: Cell<usize>,
    /// Active health: false after `unhealthy_threshold` failed checks.
    healthy: Cell<bool>,
    /// Checks passed (when unhealthy) or failed (when healthy) in a row.
    health_streak: Cell<u32>,
    /// Passive: call failures in a row, ejections so far, ejected until.
    call_failures: Cell<u32>,
    ejections: Cell<u32>,
    ejected_until: Cell<Option<Instant>>,
    /// Connections of this endpoint that received a GOAWAY.
    pub(super) goaways: Rc<Cell<u64>>,
}

impl Endpoint {
    pub(super) fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            conns: RefCell::new(Vec::new()),
            connecting: Cell::new(false),
            changed: Notify::default(),
            failures: Cell::new(0),
            retry_at: Cell::new(None),
            last_error: RefCell::new(Rc::from("")),
            active: Cell::new(0),
            relayed: Cell::new(0),
            healthy: Cell::new(true),
            health_streak: Cell::new(0),
            call_failures: Cell::new(0),
            ejections: Cell::new(0),
            ejected_until: Cell::new(None),
            goaways: Rc::default(),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection of the own frame path opened to it (`true`) or
    /// closed, for the metrics.
    pub fn relayed(&self, opened: bool) {
        let n = self.relayed.get();
        self.relayed
            .set(if opened { n + 1 } else { n.saturating_sub(1) });
    }

    /// One of its own-path connections received a GOAWAY.
    pub fn went_away(&self) {
        self.goaways.set(self.goaways.get() + 1);
    }

    /// Connections open to it, on either frame path.
    pub(super) fn connections(&self) -> usize {
        self.conns.borrow().len() + self.relayed.get()
    }

    /// A stream opened on one of its connections (`true`) or closed; for
    /// balancing, call limits and the metrics (the own frame path's
    /// connections are not in `conns`).
    pub fn stream(&self, opened: bool) {
        let n = self.active.get();
        self.active
            .set(if opened { n + 1 } else { n.saturating_sub(1) });
    }

    /// Whether it should take calls now: healthy and not ejected.
    pub(super) fn is_up(&self) -> bool {
        if !self.healthy.get() {
            return false;
        }
        match self.ejected_until.get() {
            None => true,
            Some(until) if Instant::now() >= until => {
                self.ejected_until.set(None);
                true
            }
            Some(_) => false,
        }
    }

    /// Records a health-check result; says when the state changed.
    pub fn health_result(&self, passed: bool, check: &HealthCheck) -> Option<bool> {
        let healthy = self.healthy.get();
        if passed == healthy {
            self.health_streak.set(0);
            return None;
        }
        let streak = self.health_streak.get() + 1;
        let threshold = if healthy {
            check.unhealthy_threshold
        } else {
            check.healthy_threshold
        };
        if streak < threshold {
            self.health_streak.set(streak);
            return None;
        }
        self.health_streak.set(0);
        self.healthy.set(passed);
        Some(passed)
    }

    /// Records how a call on this endpoint went, for passive ejection.
    pub(super) fn call_result(&self, failed: bool, outlier: &Outlier) {
        if !failed {
            self.call_failures.set(0);
            self.ejections.set(0);
            return;
        }
        let n = self.call_failures.get() + 1;
        self.call_failures.set(n);
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures {
            return;
        }
        self.call_failures.set(0);
        let k = self.ejections.get();
        self.ejections.set(k.saturating_add(1));
        let length = doubling(outlier.base_ejection, k, outlier.max_ejection);
        self.ejected_until.set(Some(Instant::now() + length));
        tracing::warn!(upstream = %self.addr, failures = n, ejected_for = ?length, "upstream endpoint ejected");
    }

    /// A usable connection with the fewest streams, other than `avoid`.
    pub(super) fn least_loaded(&self, avoid: Option<&Rc<UpConn>>) -> Option<Rc<UpConn>> {
        self.conns
            .borrow()
            .iter()
            .filter(|c| c.usable.get() && avoid.is_none_or(|a| !Rc::ptr_eq(a, c)))
            .min_by_key(|c| c.active.get())
            .cloned()
    }

    /// The back-off error, while a failed connect's back-off lasts.
    pub(crate) fn backing_off(&self) -> Option<UpstreamError> {
        let at = self.retry_at.get()?;
        let now = Instant::now();
        (now < at).then(|| UpstreamError::BackingOff {
            addr: self.addr,
            last: self.last_error.borrow().clone(),
            retry_in: at - now,
        })
    }

    /// A connect succeeded: the back-off is over, the connection joins.
    pub(super) fn connected(&self, conn: Rc<UpConn>) {
        self.failures.set(0);
        self.retry_at.set(None);
        self.conns.borrow_mut().push(conn);
    }

    /// A connect of the own frame path succeeded: the back-off is over.
    pub(crate) fn reachable(&self) {
        self.failures.set(0);
        self.retry_at.set(None);
    }

    /// A connect failed: wait longer before the next one, doubling from
    /// `min` up to `max`.
    pub(crate) fn connect_failed(&self, error: &UpstreamError, min: Duration, max: Duration) {
        let failures = self.failures.get().saturating_add(1);
        self.failures.set(failures);
        let wait = doubling(min, failures - 1, max);
        self.retry_at.set(Some(Instant::now() + wait));
        *self.last_error.borrow_mut() = Rc::from(error.to_string());
        tracing::warn!(upstream = %self.addr, error = %error, retry_in = ?wait, "upstream connect failed");
    }
}

/// Takes a connection out of rotation; its open streams run on.
pub(super) fn retire(endpoint: &Endpoint, conn: &Rc<UpConn>) {
    if conn.usable.replace(false) {
        endpoint.conns.borrow_mut().retain(|c| !Rc::ptr_eq(c, conn));
        endpoint.changed.notify_all();
    }
}

/// `first`, doubled `step` times, at most `max`.
pub(super) fn doubling(first: Duration, step: u32, max: Duration) -> Duration {
    first.saturating_mul(1u32 << step.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let ms = Duration::from_millis;
        let steps: Vec<_> = (0..6).map(|k| doubling(ms(100), k, ms(2000))).collect();
        assert_eq!(
            steps,
            [ms(100), ms(200), ms(400), ms(800), ms(1600), ms(2000)]
        );
        assert_eq!(doubling(ms(5), u32::MAX, Duration::MAX), ms(5 << 16));
    }
}
