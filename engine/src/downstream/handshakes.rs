//! The TLS handshakes under way on one core, up to a limit.
//!
//! A handshake in progress holds rustls state (its record buffers and the
//! handshake's own) until it completes or `[timeouts] handshake` ends it.
//! At `max_tls_handshakes_per_worker`, a new handshake makes room by
//! ending the one that has been under way longest. A plain cap that made
//! newcomers wait would let a few hundred clients that start handshakes and
//! stall lock everyone out for the whole timeout; with the oldest given
//! up, stalled handshakes are what goes, since an honest one finishes in a
//! round trip or two.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::runtime::wake::{Latch, LatchWait};

/// One core's handshakes in progress.
pub struct Handshakes {
    limit: usize,
    next: Cell<u64>,
    /// By start order: the first entry is the oldest.
    running: RefCell<BTreeMap<u64, Rc<Latch>>>,
    evicted: Cell<u64>,
}

impl Handshakes {
    /// Room for `limit` handshakes at once (at least one).
    pub fn new(limit: usize) -> Handshakes {
        Handshakes {
            limit: limit.max(1),
            next: Cell::new(0),
            running: RefCell::new(BTreeMap::new()),
            evicted: Cell::new(0),
        }
    }

    /// Registers a handshake starting now, ending the oldest one if the
    /// core is at its limit. Drop the slot when the handshake is over.
    pub fn start(&self) -> Slot<'_> {
        let mut running = self.running.borrow_mut();
        if running.len() >= self.limit {
            if let Some((_, oldest)) = running.pop_first() {
                oldest.set();
                self.evicted.set(self.evicted.get() + 1);
            }
        }
        let id = self.next.get();
        self.next.set(id + 1);
        let given_up = Rc::new(Latch::default());
        running.insert(id, given_up.clone());
        Slot {
            owner: self,
            id,
            given_up,
        }
    }

    /// Handshakes under way now.
    pub fn running(&self) -> usize {
        self.running.borrow().len()
    }

    /// Handshakes ended to make room for newer ones, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }
}

/// A handshake's place among the core's handshakes.
pub struct Slot<'a> {
    owner: &'a Handshakes,
    id: u64,
    given_up: Rc<Latch>,
}

impl Slot<'_> {
    /// Completes if the handshake was given up to make room.
    pub fn given_up(&self) -> LatchWait<'_> {
        self.given_up.wait()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.running.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_handshake_gives_way() {
        let handshakes = Handshakes::new(2);
        let first = handshakes.start();
        let second = handshakes.start();
        assert_eq!(handshakes.running(), 2);
        let third = handshakes.start();
        assert!(first.given_up.is_set(), "the oldest made room");
        assert!(!second.given_up.is_set() && !third.given_up.is_set());
        assert_eq!((handshakes.running(), handshakes.evicted()), (2, 1));
        drop(second);
        let fourth = handshakes.start();
        assert!(
            !third.given_up.is_set() && !fourth.given_up.is_set(),
            "room was free"
        );
        drop((first, third, fourth));
        assert_eq!(handshakes.running(), 0);
    }
}
