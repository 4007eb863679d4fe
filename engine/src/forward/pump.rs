//! Passing one DATA chunk from one stream to the other, as the receiving
//! peer's window allows, and releasing the sender's window only as the
//! bytes go on: end-to-end flow control, without copying payload.

use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};

pub(super) enum Pump {
    /// The chunk went out; `true` when it carried END_STREAM.
    Sent(bool),
    Pending,
    Failed,
}

/// Where a chunk being passed on came from.
pub(super) enum Source<'a> {
    /// The other side's stream: its window is released as the chunk goes
    /// on, and its end is the chunk's end.
    Stream(&'a mut RecvStream),
    /// DATA held for a retry: its window was released when it first went
    /// on (and its bytes counted); `end` when it is the request's last.
    Held { end: bool },
}

impl Source<'_> {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Stream(body) => body.is_end_stream(),
            Source::Held { end } => *end,
        }
    }
}

/// Sends `data` on `send` as the peer's window allows, releasing the same
/// amount of window on a `from` stream. Splits without copying; counts the
/// bytes taken from a stream into `count`.
pub(super) fn pump(
    data: &mut Bytes,
    mut from: Source<'_>,
    send: &mut SendStream<Bytes>,
    count: &mut u64,
    cx: &mut Context<'_>,
) -> Pump {
    loop {
        let room = send.capacity();
        if room == 0 {
            if data.is_empty() {
                // Only an empty final frame is ever kept; it needs no window.
                let end = from.is_end_stream();
                return match send.send_data(Bytes::new(), end) {
                    Ok(()) => Pump::Sent(end),
                    Err(_) => Pump::Failed,
                };
            }
            match send.poll_capacity(cx) {
                Poll::Pending => return Pump::Pending,
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(_))) => return Pump::Failed,
                Poll::Ready(None) => return Pump::Failed,
            }
        }
        let n = room.min(data.len());
        let piece = data.split_to(n);
        let end = data.is_empty() && from.is_end_stream();
        if send.send_data(piece, end).is_err() {
            return Pump::Failed;
        }
        if let Source::Stream(body) = &mut from {
            let _ = body.flow_control().release_capacity(n);
            *count += n as u64;
        }
        if data.is_empty() {
            return Pump::Sent(end);
        }
    }
}
