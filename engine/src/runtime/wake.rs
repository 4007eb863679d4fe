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
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct WaitList {
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl WaitList {
    fn register(&self, key: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.slots.borrow_mut();
        match *key {
            Some(i) => match &mut slots[i] {
                Some(w) if w.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            },
            None => {
                let i = match self.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        slots.push(Some(waker.clone()));
                        slots.len() - 1
                    }
                };
                *key = Some(i);
            }
        }
    }

    fn remove(&self, key: &mut Option<usize>) {
        if let Some(i) = key.take() {
            self.slots.borrow_mut()[i] = None;
            self.free.borrow_mut().push(i);
        }
    }

    fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
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

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// A future that completes once the flag is set.
    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait {
            latch: self,
            key: None,
        }
    }
}

/// Completes once its [`Latch`] is set.
pub struct LatchWait<'a> {
    latch: &'a Latch,
    key: Option<usize>,
}

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.latch.is_set() {
            return Poll::Ready(());
        }
        this.latch.waiters.register(&mut this.key, cx.waker());
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
        assert_eq!(latch.waiters.slots.borrow().len(), 1);
        latch.set();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut wait).poll(&mut cx).is_ready());
        drop(wait);
        assert_eq!(latch.waiters.free.borrow().len(), 1);
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
}
