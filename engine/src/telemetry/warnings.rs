//! Warnings a peer can set off, let through at most once a second per
//! worker: the worker writes its log lines on its own thread, so a flood
//! of hostile connections must not become a flood of lines (and of
//! waits on a slow log pipe) on the path every call takes. Those held
//! back are counted into the next line let through; the metric beside
//! each warning counts every one.

use std::cell::Cell;

/// One kind of warning's allowance.
#[derive(Default)]
pub struct OncePerSecond {
    /// The second of the last one let through.
    last: Cell<Option<u64>>,
    /// Held back since.
    held: Cell<u64>,
}

impl OncePerSecond {
    /// In `second` (the worker's clock): `Some(held)` to write the line
    /// now, saying how many were held back since the last one; `None`
    /// to hold this one back.
    pub fn pass(&self, second: u64) -> Option<u64> {
        if self.last.get() == Some(second) {
            self.held.set(self.held.get() + 1);
            return None;
        }
        self.last.set(Some(second));
        Some(self.held.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_a_second_goes_through_and_says_how_many_were_held() {
        let w = OncePerSecond::default();
        assert_eq!(w.pass(7), Some(0));
        assert_eq!(w.pass(7), None);
        assert_eq!(w.pass(7), None);
        assert_eq!(w.pass(8), Some(2));
        assert_eq!(w.pass(8), None);
        assert_eq!(w.pass(20), Some(1));
        assert_eq!(w.pass(21), Some(0));
    }
}
