//! One connection of the relay, either leg: the protocol machine, what it
//! has to write, and which call each of its streams belongs to.
//!
//! A [`Side`] is shared (`Rc`) by the connection's reader task, its writer
//! task, and the calls linked to it: a call on another connection writes
//! frames into this side's outbox and wakes its writer. Borrows of a side
//! never live across an await, and a side's reader never borrows it while
//! another side's callback runs, so the `RefCell` never fails on one core.
//!
//! The writer writes whatever is waiting, oldest first, a segment per
//! write: small frames are gathered into one segment, and a large payload
//! is its own segment, never copied.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use crate::http2::connection::Connection;
use crate::http2::outbox::Outbox;
use crate::http2::streams::IdHasher;
use crate::runtime::wake::{Latch, Notify};

/// Stream id to the key of the call it carries.
pub type Links = HashMap<u32, usize, BuildHasherDefault<IdHasher>>;

/// The state of one connection that a borrow hands out.
pub struct Wire {
    /// The protocol machine.
    pub conn: Connection,
    /// Frames waiting for the writer.
    pub out: Outbox,
    /// The call of each linked stream.
    pub links: Links,
    /// Calls waiting for a stream on this (upstream) connection.
    pub waiting: VecDeque<usize>,
}

impl Wire {
    /// Gives the peer back the credit of `n` bytes of `stream`'s DATA.
    pub fn release(&mut self, stream: u32, n: u32) {
        self.conn.release(stream, n, &mut self.out);
    }
}

/// One connection, shared by its tasks and its calls.
pub struct Side {
    /// Its state.
    pub wire: RefCell<Wire>,
    /// Wakes the writer.
    pub wake: Notify,
    /// Set when the connection is done: the writer flushes and closes.
    pub closed: Latch,
    /// The reader has finished; no more events will come.
    pub gone: Cell<bool>,
}

impl Side {
    /// A side for a new connection, whose first frames `out` holds.
    pub fn new(conn: Connection, out: Outbox) -> Rc<Side> {
        Rc::new(Side {
            wire: RefCell::new(Wire {
                conn,
                out,
                links: Links::default(),
                waiting: VecDeque::new(),
            }),
            wake: Notify::default(),
            closed: Latch::default(),
            gone: Cell::new(false),
        })
    }

    /// Wakes the writer if anything waits.
    pub fn flush(&self) {
        if !self.wire.borrow().out.is_empty() {
            self.wake.notify_all();
        }
    }
}

/// Writes what `side` has waiting until it closes (then writes what is
/// left and returns) or a write fails.
pub async fn write_loop<W: AsyncWriteRent>(side: Rc<Side>, mut io: W, stop: Rc<Latch>) {
    let mut segments: Vec<Bytes> = Vec::new();
    loop {
        side.wire.borrow_mut().out.take_segments(&mut segments);
        if segments.is_empty() {
            if side.closed.is_set() || stop.is_set() {
                break;
            }
            monoio::select! {
                _ = side.wake.notified() => {}
                _ = side.closed.wait() => {}
                _ = stop.wait() => {}
            }
            continue;
        }
        for segment in segments.drain(..) {
            let (result, _) = io.write_all(segment).await;
            if result.is_err() {
                side.closed.set();
                return;
            }
        }
    }
    let _ = io.shutdown().await;
}

/// Room kept free at the end of a read buffer before each read.
const READ_ROOM: usize = 16 << 10;

/// Reads more bytes onto the end of `buf`; `Ok(0)` is the end of the
/// stream.
pub async fn read_more<R: monoio::io::AsyncReadRent>(
    io: &mut R,
    mut buf: bytes::BytesMut,
) -> (std::io::Result<usize>, bytes::BytesMut) {
    use monoio::buf::IoBufMut;
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(4 * READ_ROOM);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (result, slice) = io.read(buf.slice_mut(len..cap)).await;
    (result, slice.into_inner())
}
