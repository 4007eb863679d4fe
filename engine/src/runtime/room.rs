//! A room for a bounded number of occupants where, at the limit, a
//! newcomer ends the stay of the one that has been in longest.
//!
//! Used where what occupies a place should be brief, and a plain cap that
//! made newcomers wait would let a few peers that arrive and stall lock
//! everyone else out: TLS handshakes under way on a worker, connections to
//! the admin endpoint. An honest occupant leaves in a round trip or two;
//! stalled ones are what goes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::runtime::wake::{Latch, LatchWait};

/// Places for up to a limit of occupants.
pub struct Room {
    state: Rc<State>,
}

struct State {
    limit: usize,
    next: Cell<u64>,
    /// By arrival: the first entry has been in longest.
    inside: RefCell<BTreeMap<u64, Rc<Latch>>>,
    evicted: Cell<u64>,
}

impl Room {
    /// Room for `limit` occupants (at least one).
    pub fn new(limit: usize) -> Room {
        Room {
            state: Rc::new(State {
                limit: limit.max(1),
                next: Cell::new(0),
                inside: RefCell::new(BTreeMap::new()),
                evicted: Cell::new(0),
            }),
        }
    }

    /// Takes a place, ending the longest stay if the room is full. Drop
    /// the place to leave.
    pub fn enter(&self) -> Place {
        let state = &self.state;
        let mut inside = state.inside.borrow_mut();
        if inside.len() >= state.limit {
            if let Some((_, oldest)) = inside.pop_first() {
                oldest.set();
                state.evicted.set(state.evicted.get() + 1);
            }
        }
        let id = state.next.get();
        state.next.set(id + 1);
        let evicted = Rc::new(Latch::default());
        inside.insert(id, evicted.clone());
        Place {
            state: state.clone(),
            id,
            evicted,
        }
    }

    /// Occupants now.
    pub fn occupied(&self) -> usize {
        self.state.inside.borrow().len()
    }

    /// Stays ended to make room, since the start.
    pub fn evicted(&self) -> u64 {
        self.state.evicted.get()
    }
}

/// One occupant's place in a [`Room`].
pub struct Place {
    state: Rc<State>,
    id: u64,
    evicted: Rc<Latch>,
}

impl Place {
    /// Completes if the stay was ended to make room for a newcomer.
    pub fn evicted(&self) -> LatchWait<'_> {
        self.evicted.wait()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.state.inside.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_longest_stay_ends() {
        let room = Room::new(2);
        let first = room.enter();
        let second = room.enter();
        assert_eq!(room.occupied(), 2);
        let third = room.enter();
        assert!(first.evicted.is_set(), "the longest stay made room");
        assert!(!second.evicted.is_set() && !third.evicted.is_set());
        assert_eq!((room.occupied(), room.evicted()), (2, 1));
        drop(second);
        let fourth = room.enter();
        assert!(
            !third.evicted.is_set() && !fourth.evicted.is_set(),
            "a place was free"
        );
        drop((first, third, fourth));
        assert_eq!(room.occupied(), 0);
    }
}
