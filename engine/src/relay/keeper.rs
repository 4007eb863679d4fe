//! The timers of a worker's client connections, on one heap: the
//! deadline for the client's preface and SETTINGS (`handshake_timeout`),
//! keepalive PINGs, whose answer must come within `ping_timeout` or the connection
//! closes (a client behind a dead link may still ACK at the TCP level),
//! unless the client is still reading what was queued ahead of the PING
//! and does not have the PING yet (see [`Side::reading`]);
//! GOAWAY after `idle_timeout` without calls (checked every
//! `idle_timeout`) and at `max_connection_age`, closing once the last call
//! ends; and the read buffer of a connection without calls let go (checked
//! every `idle_buffer`).
//!
//! One task and one timer serve every connection of the worker, as for
//! call deadlines: a task per connection cost about 1.8 KiB each, which an
//! idle connection should not pay. Each connection has at most one entry
//! on the heap, for its next timer; a connection that closed is dropped
//! when its entry comes due.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};

use monoio::time::Instant;

use crate::config::Settings;
use crate::relay::wire::{PingOut, Side};
use crate::runtime::timers::Timers;
use crate::runtime::wake::Latch;

/// One client connection's timers.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    /// For the log.
    peer: SocketAddr,
    /// Until the client's preface and SETTINGS have come: when the
    /// connection closes without them.
    preface_by: Option<Instant>,
    /// When the next keepalive PING goes.
    ping_at: Option<Instant>,
    /// While a PING is out: what tells whether the peer lives, and when
    /// its answer must have come (or the peer shown it still reads).
    waiting: Option<(PingOut, Instant)>,
    /// When to look for idleness next.
    idle_at: Option<Instant>,
    /// When to ask a connection without calls to let its read buffer go.
    quiet_at: Option<Instant>,
    /// When the connection is too old.
    age_at: Option<Instant>,
}

impl Keep {
    /// The timers of a connection from `peer` that opens `now` and must
    /// have sent its preface and SETTINGS by `preface_by`.
    pub fn new(settings: &Settings, peer: SocketAddr, now: Instant, preface_by: Instant) -> Keep {
        Keep {
            peer,
            preface_by: Some(preface_by),
            ping_at: settings.ping_interval.map(|every| now + every),
            waiting: None,
            idle_at: settings.idle_timeout.map(|idle| now + idle),
            quiet_at: settings.idle_buffer.map(|quiet| now + quiet),
            age_at: settings.max_connection_age.map(|age| now + age),
        }
    }

    /// When the next timer is due, if any is set. While a PING is out,
    /// the next one waits for its answer's deadline.
    fn next(&self) -> Option<Instant> {
        let ping = match self.waiting {
            Some((_, by)) => Some(by),
            None => self.ping_at,
        };
        [
            self.preface_by,
            ping,
            self.idle_at,
            self.quiet_at,
            self.age_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The timers of one worker's client connections: each connection's next
/// one, with its timers' state.
#[derive(Default)]
pub struct Keepers {
    timers: Timers<(Weak<Side>, Keep)>,
    /// Whether quiet connections are asked to let their read buffers go
    /// (see [`run`](Self::run)).
    quiet_looks: Cell<bool>,
}

impl Keepers {
    /// Whether quiet connections are asked to let their read buffers go.
    pub fn quiet_looks(&self) -> bool {
        self.quiet_looks.get()
    }

    /// Starts keeping `side` with timers `keep`.
    pub fn watch(&self, side: &Rc<Side>, mut keep: Keep) {
        if !self.quiet_looks.get() {
            keep.quiet_at = None;
        }
        if let Some(at) = keep.next() {
            self.timers.push(at, (Rc::downgrade(side), keep));
        }
    }

    /// Runs the timers as they come due, until `stop`; a connection that
    /// closed is dropped when its entry comes due. With `quiet_looks`,
    /// connections without calls are asked to give up their pending read
    /// and its buffer ([`Side::ask_let_go`]); only where that loses
    /// nothing: on epoll a read takes bytes only when it completes, but
    /// on io_uring the kernel may have read into the buffer of a read
    /// given up, and monoio 0.2.4 drops that result.
    pub async fn run(&self, settings: &Settings, stop: &Latch, quiet_looks: bool) {
        self.quiet_looks
            .set(quiet_looks && settings.idle_buffer.is_some());
        self.timers
            .run(stop, |(weak, mut keep), now| {
                let side = weak.upgrade()?;
                if side.closed.is_set() {
                    return None;
                }
                let at = step(&side, &mut keep, settings, now)?;
                Some((at, (weak, keep)))
            })
            .await;
    }
}

/// Runs `side`'s timers (`keep`) that are due at `now`; returns when its
/// next one is, if it has one.
fn step(side: &Rc<Side>, keep: &mut Keep, settings: &Settings, now: Instant) -> Option<Instant> {
    let peer = keep.peer;
    if let Some(by) = keep.preface_by {
        if side.wire.borrow().conn.ready() {
            keep.preface_by = None;
        } else if now >= by {
            tracing::debug!(%peer, "downstream handshake timed out");
            side.closed.set();
            return None;
        }
    }
    if let Some((mut ping, by)) = keep.waiting {
        if side.answered(&ping) {
            keep.waiting = None;
        } else if now >= by {
            if !side.reading(&mut ping) {
                tracing::debug!(%peer, "downstream connection did not answer a keepalive PING; closing it");
                side.closed.set();
                return None;
            }
            keep.waiting = Some((ping, now + settings.ping_timeout));
        }
    }
    if keep.ping_at.is_some_and(|at| now >= at) && keep.waiting.is_none() {
        keep.waiting = Some((side.ping(), now + settings.ping_timeout));
        keep.ping_at = settings.ping_interval.map(|every| now + every);
    }
    if keep.quiet_at.is_some_and(|at| now >= at) {
        keep.quiet_at = settings.idle_buffer.map(|quiet| now + quiet);
        side.ask_let_go();
    }
    let retire = if keep.age_at.is_some_and(|at| now >= at) {
        keep.age_at = None;
        Some("max connection age")
    } else if keep.idle_at.is_some_and(|at| now >= at) {
        keep.idle_at = settings.idle_timeout.map(|idle| now + idle);
        let idle = !side.active.replace(false) && side.wire.borrow().links.is_empty();
        idle.then_some("idle timeout")
    } else {
        None
    };
    if let (Some(why), false) = (retire, side.retiring.get()) {
        tracing::debug!(%peer, why, "downstream connection retiring (GOAWAY)");
        side.retiring.set(true);
        keep.idle_at = None;
        side.go_away();
    }
    keep.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_ping_out_waits_for_its_deadline_before_the_next() {
        let settings = Settings {
            ping_interval: Some(Duration::from_millis(200)),
            ping_timeout: Duration::from_millis(500),
            idle_timeout: None,
            max_connection_age: None,
            ..Settings::default()
        };
        let now = Instant::now();
        let preface_by = now + Duration::from_millis(100);
        let addr = "127.0.0.1:1".parse().expect("addr");
        let mut keep = Keep::new(&settings, addr, now, preface_by);
        assert_eq!(keep.next(), Some(preface_by));
        keep.preface_by = None;
        assert_eq!(keep.next(), Some(now + Duration::from_millis(200)));
        // A PING went at 200 ms: the ping time passes while it is out, and
        // the next due time is its answer's deadline, not the past.
        let sent = now + Duration::from_millis(200);
        keep.waiting = Some((PingOut::default(), sent + settings.ping_timeout));
        keep.ping_at = Some(sent);
        assert_eq!(keep.next(), Some(sent + Duration::from_millis(500)));
    }
}
