//! Many timers on one task: a heap of items, each due at an instant, and
//! one loop that sleeps until the earliest and hands out what is due.
//! A worker keeps its calls' deadlines and its connections' keepalive and
//! idle timers this way, instead of a task and a timer each.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use monoio::time::Instant;

use crate::runtime::wake::{Latch, Notify};

/// One item, due at `at`.
struct Entry<T> {
    at: Instant,
    /// Orders items due at the same instant (first pushed, first due).
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Items due at instants, earliest first.
pub struct Timers<T> {
    heap: RefCell<BinaryHeap<Reverse<Entry<T>>>>,
    seq: Cell<u64>,
    /// Wakes [`run`](Self::run) when an earlier item arrives.
    wake: Notify,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Self {
            heap: RefCell::new(BinaryHeap::new()),
            seq: Cell::new(0),
            wake: Notify::default(),
        }
    }
}

impl<T> Timers<T> {
    /// Adds `item`, due at `at`.
    pub fn push(&self, at: Instant, item: T) {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let mut heap = self.heap.borrow_mut();
        let earliest = heap.peek().is_none_or(|Reverse(first)| at < first.at);
        heap.push(Reverse(Entry { at, seq, item }));
        drop(heap);
        if earliest {
            self.wake.notify_all();
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.heap.borrow().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the items for which `keep` holds.
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        self.heap
            .borrow_mut()
            .retain(|Reverse(entry)| keep(&entry.item));
    }

    /// Hands each item to `due` as it comes due, with the time, until
    /// `stop`; an item `due` returns with an instant is due again then
    /// (at the earliest a millisecond later, so that a pass always ends).
    /// No borrow of the heap is held while `due` runs: it may push.
    pub async fn run(&self, stop: &Latch, mut due: impl FnMut(T, Instant) -> Option<(Instant, T)>) {
        loop {
            let next = self.heap.borrow().peek().map(|Reverse(entry)| entry.at);
            monoio::select! {
                _ = sleep_until(next) => {}
                _ = self.wake.notified() => continue,
                _ = stop.wait() => return,
            }
            let now = Instant::now();
            loop {
                let entry = {
                    let mut heap = self.heap.borrow_mut();
                    match heap.peek() {
                        Some(Reverse(entry)) if entry.at <= now => heap.pop(),
                        _ => None,
                    }
                };
                let Some(Reverse(entry)) = entry else {
                    break;
                };
                if let Some((at, item)) = due(entry.item, now) {
                    let soonest = now + std::time::Duration::from_millis(1);
                    self.push(at.max(soonest), item);
                }
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => monoio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn items_come_due_in_order_and_may_be_due_again() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let timers = Rc::new(Timers::default());
            let stop = Rc::new(Latch::default());
            let now = Instant::now();
            timers.push(now + Duration::from_millis(6), "c");
            timers.push(now + Duration::from_millis(2), "a");
            timers.push(now + Duration::from_millis(4), "b");
            timers.retain(|item| *item != "b");
            let mut seen = Vec::new();
            let s = stop.clone();
            timers
                .run(&stop, |item, at| {
                    seen.push(item);
                    if seen.len() == 3 {
                        s.set();
                    }
                    // "a" is due once more, after "c".
                    (item == "a" && seen.len() == 1).then(|| (at + Duration::from_millis(8), "a"))
                })
                .await;
            assert_eq!(seen, ["a", "c", "a"]);
            assert!(timers.is_empty());
        });
    }
}
