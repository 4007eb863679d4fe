//! One upstream endpoint: its address, how many connections and streams
//! this core has to it, and what this core knows of its health.
//!
//! An endpoint keeps two kinds of state that back off
//! exponentially: reconnects after a failed connect (from
//! `reconnect_backoff_min` up to `reconnect_backoff_max`), and passive
//! ejection after calls fail in a row (from `base_ejection` up to
//! `max_ejection`); both double with `doubling`. Active health checks
//! set [`Endpoint::health_result`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::{HealthCheck, Outlier};
use crate::upstream::error::UpstreamError;

/// One upstream address, its connections and its state.
pub struct Endpoint {
    addr: SocketAddr,
    /// Connect failures in a row (reconnect back-off).
    failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
    last_error: RefCell<Rc<str>>,
    /// Streams open on this endpoint's connections.
    pub(super) active: Cell<usize>,
    /// Connections open to it.
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
    pub(super) goaways: Cell<u64>,
}

impl Endpoint {
    pub(super) fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
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
            goaways: Cell::new(0),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection opened to it (`true`) or closed, for the metrics.
    pub fn relayed(&self, opened: bool) {
        let n = self.relayed.get();
        self.relayed
            .set(if opened { n + 1 } else { n.saturating_sub(1) });
    }

    /// One of its connections received a GOAWAY.
    pub fn went_away(&self) {
        self.goaways.set(self.goaways.get() + 1);
    }

    /// Connections open to it.
    pub(super) fn connections(&self) -> usize {
        self.relayed.get()
    }

    /// A stream opened on one of its connections (`true`) or closed; for
    /// balancing, call limits and the metrics.
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
        // Calls that were under way when it was ejected end one after
        // another (an upstream restart fails them all at once): they are
        // the same fault, not one more ejection each, which would double
        // the ejection's length up to its maximum in one burst.
        if self
            .ejected_until
            .get()
            .is_some_and(|until| Instant::now() < until)
        {
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

    /// Whether a failed connect's back-off lasts: no new connection to
    /// it is tried until it ends.
    pub(crate) fn waiting_to_reconnect(&self) -> bool {
        self.retry_at.get().is_some_and(|at| Instant::now() < at)
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

    /// A connect succeeded: the back-off is over.
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

/// `first`, doubled `step` times, at most `max`.
pub(super) fn doubling(first: Duration, step: u32, max: Duration) -> Duration {
    first.saturating_mul(1u32 << step.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_while_ejected_do_not_lengthen_the_ejection() {
        let e = Endpoint::new("127.0.0.1:1".parse().expect("addr"));
        let outlier = Outlier::default();
        for _ in 0..35 {
            e.call_result(true, &outlier);
        }
        let left = e.ejected_until.get().expect("ejected") - Instant::now();
        assert!(
            left <= outlier.base_ejection,
            "{left:?}: ejected once, not seven times"
        );
    }

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
