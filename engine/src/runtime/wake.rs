//! Single-thread wake-up primitives for one worker's tasks.
//!
//! Key types: [`Latch`], a flag set once that every waiter sees (the drain
//! signal), and [`Notify`], a repeatable "something changed" broadcast (the
//! pool's connection slots). Both are `!Send` on purpose: they live on one
//! core and cost a `Cell` and a small waker slab, no atomics.
//!
//! A waiter keeps one slot in the slab for its whole life and replaces its
//! waker in place on every poll, so a long-lived waiter polled a million
//! times still holds one slot.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, RawWakerVTable, Waker};

/// Waiters held in place before the slab is used.
const NEAR: usize = 2;

/// The wakers of a latch's or notify's waiters. The first two live in
/// place: a connection's latch and notify have one or two waiters each,
/// and an idle connection should not pay an allocation for each. The rest
/// live in a slab, keyed from `NEAR` up.
#[derive(Default)]
struct WaitList {
    near: RefCell<[Option<Waker>; NEAR]>,
    /// Bit `i`: near slot `i` belongs to a waiter.
    near_taken: Cell<u8>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl WaitList {
    fn register(&self, key: &mut Option<usize>, waker: &Waker) {
        let i = match *key {
            Some(i) => i,
            None => {
                let i = self.take_slot();
                *key = Some(i);
                i
            }
        };
        let store = |slot: &mut Option<Waker>| match slot {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        };
        if i < NEAR {
            store(&mut self.near.borrow_mut()[i]);
        } else {
            store(&mut self.slots.borrow_mut()[i - NEAR]);
        }
    }

    /// A slot for a new waiter: a near one if one is free.
    fn take_slot(&self) -> usize {
        let taken = self.near_taken.get();
        if let Some(i) = (0..NEAR).find(|i| taken & (1 << i) == 0) {
            self.near_taken.set(taken | 1 << i);
            return i;
        }
        if let Some(i) = self.free.borrow_mut().pop() {
            return NEAR + i;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(None);
        NEAR + slots.len() - 1
    }

    fn remove(&self, key: &mut Option<usize>) {
        match key.take() {
            Some(i) if i < NEAR => {
                self.near.borrow_mut()[i] = None;
                self.near_taken.set(self.near_taken.get() & !(1 << i));
            }
            Some(i) => {
                self.slots.borrow_mut()[i - NEAR] = None;
                self.free.borrow_mut().push(i - NEAR);
            }
            None => {}
        }
    }

    fn wake_all(&self) {
        // Taken out before any wakes: a waker may register again.
        let near = std::mem::take(&mut *self.near.borrow_mut());
        // The empty case first: collecting nothing still costs about 55
        // instructions per wake (callgrind, `bench instructions`).
        let far: Vec<Waker> = {
            let mut slots = self.slots.borrow_mut();
            if slots.is_empty() {
                Vec::new()
            } else {
                slots.iter_mut().filter_map(Option::take).collect()
            }
        };
        for w in near.into_iter().flatten() {
            w.wake();
        }
        for w in far {
            w.wake();
        }
    }
}

impl WaitList {
    /// Wakes every waiter and keeps its slot and waker: each is polled
    /// again, still registered.
    fn wake_in_place(&self) {
        let near: [Option<Waker>; NEAR] = self.near.borrow().clone();
        let far: Vec<Waker> = {
            let slots = self.slots.borrow();
            slots.iter().flatten().cloned().collect()
        };
        for w in near.iter().flatten().chain(&far) {
            w.wake_by_ref();
        }
    }
}

/// A flag that is set once; every waiter wakes when it is.
#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    waiters: WaitList,
}

impl Latch {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if !self.set.replace(true) {
            self.waiters.wake_all();
        }
    }

    /// Wakes every waiter without setting the flag: each task polls its
    /// wait again, finds it pending and still registered, and looks at
    /// whatever else it waits on beside it (see
    /// [`Side::ask_let_go`](crate::relay::wire::Side::ask_let_go)).
    pub fn nudge(&self) {
        self.waiters.wake_in_place();
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// A future that completes once the flag is set.
    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait {
            latch: self,
            key: None,
            holds: None,
        }
    }
}

/// Completes once its [`Latch`] is set.
pub struct LatchWait<'a> {
    latch: &'a Latch,
    key: Option<usize>,
    /// The waker last registered (its data and vtable). A wait kept for
    /// a whole loop is polled by the same task on every turn, and then
    /// has nothing to register: its slot keeps that waker until the
    /// latch is set.
    holds: Option<(*const (), *const RawWakerVTable)>,
}

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.latch.is_set() {
            return Poll::Ready(());
        }
        let waker = cx.waker();
        let id = (waker.data(), std::ptr::from_ref(waker.vtable()));
        if this.key.is_none() || this.holds != Some(id) {
            this.latch.waiters.register(&mut this.key, waker);
            this.holds = Some(id);
        }
        Poll::Pending
    }
}

impl Drop for LatchWait<'_> {
    fn drop(&mut self) {
        self.latch.waiters.remove(&mut self.key);
    }
}

/// A repeatable broadcast: `notified()` completes at the next `notify_all`.
#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: WaitList,
}

impl Notify {
    /// Wakes everyone waiting now.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        self.waiters.wake_all();
    }

    /// A future that completes at the next `notify_all` after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            key: None,
        }
    }
}

/// Completes at the next [`Notify::notify_all`].
pub struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    key: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.notify.epoch.get() != this.epoch {
            return Poll::Ready(());
        }
        this.notify.waiters.register(&mut this.key, cx.waker());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        self.notify.waiters.remove(&mut self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn latch_wakes_each_waiter_once_and_keeps_one_slot() {
        let latch = Latch::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wait = latch.wait();
        for _ in 0..1000 {
            assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiters.near_taken.get(), 1, "one near slot");
        assert!(latch.waiters.slots.borrow().is_empty(), "no slab");
        latch.set();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut wait).poll(&mut cx).is_ready());
        drop(wait);
        assert_eq!(latch.waiters.near_taken.get(), 0, "given back");
    }

    #[test]
    fn a_latch_wait_polled_by_another_task_wakes_that_one() {
        let latch = Latch::default();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut wait = latch.wait();
        for _ in 0..3 {
            assert!(Pin::new(&mut wait)
                .poll(&mut Context::from_waker(&wa))
                .is_pending());
        }
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&wb))
            .is_pending());
        latch.set();
        assert_eq!(
            a.0.load(Ordering::SeqCst),
            0,
            "the first task no longer waits"
        );
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_nudged_latch_wait_stays_registered_for_the_set() {
        let latch = Latch::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waits: Vec<_> = (0..3).map(|_| latch.wait()).collect();
        for w in &mut waits {
            assert!(Pin::new(w).poll(&mut cx).is_pending());
        }
        latch.nudge();
        assert_eq!(count.0.load(Ordering::SeqCst), 3, "each waiter woke");
        // Polled again by the same task, a wait registers nothing: the
        // nudge must have left its waker in place for the set.
        for w in &mut waits {
            assert!(Pin::new(w).poll(&mut cx).is_pending());
        }
        latch.set();
        assert_eq!(count.0.load(Ordering::SeqCst), 6, "and each woke again");
        for w in &mut waits {
            assert!(Pin::new(w).poll(&mut cx).is_ready());
        }
    }

    #[test]
    fn notify_completes_only_after_a_notify() {
        let notify = Notify::default();
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut n = notify.notified();
        assert!(Pin::new(&mut n).poll(&mut cx).is_pending());
        notify.notify_all();
        assert!(Pin::new(&mut n).poll(&mut cx).is_ready());
        let mut later = notify.notified();
        assert!(Pin::new(&mut later).poll(&mut cx).is_pending());
    }

    #[test]
    fn waiters_past_the_near_slots_use_the_slab_and_all_wake() {
        let latch = Latch::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waits: Vec<_> = (0..5).map(|_| latch.wait()).collect();
        for w in &mut waits {
            assert!(Pin::new(w).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiters.slots.borrow().len(), 3);
        // A waiter that leaves gives its slot to the next one.
        drop(waits.remove(0));
        drop(waits.remove(3));
        let mut again = latch.wait();
        assert!(Pin::new(&mut again).poll(&mut cx).is_pending());
        let mut more = latch.wait();
        assert!(Pin::new(&mut more).poll(&mut cx).is_pending());
        assert_eq!(latch.waiters.slots.borrow().len(), 3, "no slot leaked");
        latch.set();
        assert_eq!(count.0.load(Ordering::SeqCst), 5);
    }
}
