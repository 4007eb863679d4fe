//! The streams of one connection: small fixed entries in a slab, found by
//! id through a map, and gone as soon as both halves have closed.
//!
//! A closed stream leaves nothing behind: whether an id is idle or closed
//! is told from the highest id each side has opened (RFC 9113, section
//! 5.1.1: ids only grow), which is the "closed sentinel" HAProxy uses in
//! place of per-stream timers. The price is that frames a peer may still
//! send on a recently closed stream (WINDOW_UPDATE, RST_STREAM, PRIORITY)
//! cannot be told from frames on a long-closed one; both are ignored, as
//! section 5.1 allows for the former.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One open stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The stream id.
    pub id: u32,
    /// The peer may still send on it (not half-closed remote).
    pub recv_open: bool,
    /// We may still send on it (not half-closed local).
    pub send_open: bool,
    /// Its head has arrived: the next HEADERS are trailers.
    pub head_received: bool,
    /// Its head was over the header list size: the stream waits for its
    /// answer, and the DATA that follows is dropped.
    pub head_refused: bool,
    /// Credit the peer has to send DATA; never below zero.
    pub recv_window: i64,
    /// The stream's window size: what the peer may have in flight on it,
    /// the initial window unless [`grown`](crate::http2::connection::Connection::release_growing).
    pub window: u32,
    /// Received bytes released by the consumer and not yet returned to
    /// the peer in a WINDOW_UPDATE.
    pub credit: u32,
    /// Our credit to send DATA; negative after the peer shrinks
    /// SETTINGS_INITIAL_WINDOW_SIZE (section 6.9.2).
    pub send_window: i64,
    /// The head's content-length, if any, and the DATA bytes so far.
    pub content_length: Option<u64>,
    /// DATA bytes received.
    pub received: u64,
}

impl Stream {
    /// A stream that has just opened, with the windows both sides start
    /// from.
    pub fn new(id: u32, recv_window: u32, send_window: u32) -> Self {
        Self {
            id,
            recv_open: true,
            send_open: true,
            head_received: false,
            head_refused: false,
            recv_window: i64::from(recv_window),
            window: recv_window,
            credit: 0,
            send_window: i64::from(send_window),
            content_length: None,
            received: 0,
        }
    }
}

/// A hasher for stream ids, which are already well spread.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The open streams of a connection.
#[derive(Debug, Default)]
pub struct Streams {
    slots: Vec<Option<Stream>>,
    free: Vec<u32>,
    by_id: HashMap<u32, u32, BuildHasherDefault<IdHasher>>,
}

impl Streams {
    /// No streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a stream; its id must be new.
    pub fn insert(&mut self, stream: Stream) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(stream);
                slot
            }
            None => {
                self.slots.push(Some(stream));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(stream.id, slot);
    }

    /// The stream with this id, if open.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The stream with this id, if open.
    pub fn get(&self, id: u32) -> Option<&Stream> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Forgets a stream.
    pub fn remove(&mut self, id: u32) -> Option<Stream> {
        let slot = self.by_id.remove(&id)?;
        self.free.push(slot);
        self.slots.get_mut(slot as usize)?.take()
    }

    /// Every open stream.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.slots.iter_mut().flatten()
    }

    /// Frees the slab and map of a connection with no open stream: they
    /// keep the room of its busiest moment otherwise.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            *self = Self::default();
        }
    }

    /// The ids of every open stream.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_ids_found() {
        let mut s = Streams::new();
        for id in [1, 3, 5] {
            s.insert(Stream::new(id, 10, 20));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.remove(3).map(|x| x.id), Some(3));
        assert!(s.get(3).is_none());
        s.insert(Stream::new(7, 10, 20));
        assert_eq!(s.slots.len(), 3, "the freed slot was reused");
        s.get_mut(7).expect("open").credit = 5;
        assert_eq!(s.get(7).map(|x| x.credit), Some(5));
        let mut ids: Vec<u32> = s.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 5, 7]);
        assert!(std::mem::size_of::<Stream>() <= 64);
    }
}
