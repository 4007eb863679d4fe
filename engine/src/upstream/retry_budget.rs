//! What requests held for a retry may pin: a budget per client connection
//! (`[upstream] retry_buffer_per_connection`) and one per core
//! (`retry_buffer_per_worker`). A call whose hold (its encoded head and a
//! copy of its request DATA, see [`relay::calls`](crate::relay::calls))
//! would exceed either is not held at all: it goes on, but cannot be
//! retried. The charge is given back the moment the call can no longer
//! be retried.

use std::cell::Cell;
use std::rc::Rc;

/// Bytes that held requests may pin, shared by the calls of one client
/// connection or of one core.
pub struct Budget {
    limit: usize,
    used: Cell<usize>,
    /// Holds refused because this budget (or, for a core's, the
    /// connection's) was full.
    refused: Cell<u64>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Rc<Budget> {
        Rc::new(Budget {
            limit,
            used: Cell::new(0),
            refused: Cell::new(0),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Calls whose hold was refused for want of budget.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    fn take(&self, n: usize) -> bool {
        let used = self.used.get().saturating_add(n);
        if used > self.limit {
            return false;
        }
        self.used.set(used);
        true
    }

    fn count_refusal(&self) {
        self.refused.set(self.refused.get() + 1);
    }

    fn give(&self, n: usize) {
        self.used.set(self.used.get().saturating_sub(n));
    }
}

/// What one call's hold is charged, against its connection's budget and
/// its core's; given back when dropped.
pub struct Charge {
    connection: Rc<Budget>,
    core: Rc<Budget>,
    bytes: usize,
}

impl Charge {
    /// An empty charge against these budgets.
    pub fn new(connection: Rc<Budget>, core: Rc<Budget>) -> Charge {
        Charge {
            connection,
            core,
            bytes: 0,
        }
    }

    /// Charges `n` more bytes; `false` (and nothing charged, and a refusal
    /// counted on the core) if either budget lacks them.
    pub fn add(&mut self, n: usize) -> bool {
        if !self.connection.take(n) {
            self.core.count_refusal();
            return false;
        }
        if !self.core.take(n) {
            self.connection.give(n);
            self.core.count_refusal();
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.connection.give(self.bytes);
        self.core.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_stays_within_both_budgets_and_gives_back_when_dropped() {
        let connection = Budget::new(100);
        let core = Budget::new(150);
        let mut first = Charge::new(connection.clone(), core.clone());
        assert!(first.add(60));
        let mut second = Charge::new(Budget::new(100), core.clone());
        assert!(second.add(80));
        // The core has 10 left: refused, nothing charged, counted there.
        let mut third = Charge::new(connection.clone(), core.clone());
        assert!(!third.add(20));
        assert_eq!(
            (connection.used(), core.used(), core.refused()),
            (60, 140, 1)
        );
        // The connection has 40 left.
        assert!(!first.add(41));
        assert_eq!((connection.used(), core.refused()), (60, 2));
        drop(first);
        drop(second);
        assert_eq!((connection.used(), core.used()), (0, 0));
    }
}
