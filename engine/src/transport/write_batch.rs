//! Write batching for HTTP/2 connections: one write per connection poll.
//!
//! h2 writes a DATA payload of 256 bytes or more by reference (vectored),
//! and must flush each such frame before it can buffer the next one, so a
//! busy connection of 1 KiB messages costs one write syscall per frame.
//! [`BatchedIo`] sits between h2 and the socket: small writes (under
//! [`COPY_MAX`]) are copied into one per-connection buffer and h2's flushes
//! return at once; the task that drives the connection calls
//! [`Flusher::poll_flush`] after every poll of it, which writes the whole
//! batch with one syscall. Large payloads are still written from h2's own
//! buffers, without a copy, after the batch before them.
//!
//! Invariants: bytes reach the socket in the order h2 wrote them; the batch
//! never grows past [`LIMIT`] (beyond it, writes wait for the socket, so
//! h2's back-pressure holds); shutdown writes the batch first.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at most this large are copied into the batch.
pub const COPY_MAX: usize = 4096;
/// The batch is written out before it grows past this.
pub const LIMIT: usize = 64 * 1024;

struct Shared<T> {
    io: T,
    batch: BytesMut,
}

impl<T: AsyncWrite + Unpin> Shared<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.batch.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.batch))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.batch.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drains the batch, then flushes the stream below: a TLS stream may
    /// hold records it could not write when the socket was full, which
    /// only a flush (or a later write) sends. On a TCP socket it is free.
    fn poll_drain_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// The I/O object h2 gets; see the module docs.
pub struct BatchedIo<T> {
    shared: Rc<RefCell<Shared<T>>>,
}

/// Writes the batch; held by the task that drives the connection.
pub struct Flusher<T> {
    shared: Rc<RefCell<Shared<T>>>,
}

impl<T> Clone for Flusher<T> {
    fn clone(&self) -> Self {
        Flusher {
            shared: self.shared.clone(),
        }
    }
}

/// Wraps `io`; give the first half to h2 and keep the second.
pub fn batched<T>(io: T) -> (BatchedIo<T>, Flusher<T>) {
    let shared = Rc::new(RefCell::new(Shared {
        io,
        batch: BytesMut::with_capacity(16 * 1024),
    }));
    (
        BatchedIo {
            shared: shared.clone(),
        },
        Flusher { shared },
    )
}

impl<T: AsyncWrite + Unpin> Flusher<T> {
    /// Writes everything batched so far, and flushes the stream below.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.borrow_mut().poll_drain_and_flush(cx)
    }
}

/// Polls `future`, then writes whatever it batched, on every poll: the way
/// to drive an h2 handshake or client connection over [`BatchedIo`]. A
/// write error ends it early with that error.
pub async fn flushing<F, T>(future: F, flusher: Flusher<T>) -> Result<F::Output, io::Error>
where
    F: std::future::Future,
    T: AsyncWrite + Unpin,
{
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let polled = future.as_mut().poll(cx);
        if let Poll::Ready(Err(e)) = flusher.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        polled.map(Ok)
    })
    .await
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.borrow_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.shared.borrow_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len > COPY_MAX {
            // Large: write the batch, then these bytes straight from h2's
            // buffers (no copy).
            ready!(s.poll_drain(cx))?;
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        if s.batch.len() + len > LIMIT {
            ready!(s.poll_drain(cx))?;
        }
        for b in bufs {
            s.batch.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The driving task flushes once per poll of the connection.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// Records each write call, and counts flushes.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.writes.push(all);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_flusher_flushes_the_stream_below_even_with_an_empty_batch() {
        // A TLS stream keeps records the socket refused until it is
        // flushed; the driving task's flush must reach it.
        let (_io, flusher) = batched(Recorder::default());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(flusher.poll_flush(&mut cx).is_ready());
        assert_eq!(flusher.shared.borrow().io.flushes, 1);
    }

    #[test]
    fn small_writes_become_one_write_in_order_and_large_ones_pass_through() {
        let (mut io, flusher) = batched(Recorder::default());
        let mut cx = Context::from_waker(Waker::noop());
        for chunk in [&b"head"[..], b"1k-ish body", b"trailers"] {
            assert!(matches!(
                Pin::new(&mut io).poll_write(&mut cx, chunk),
                Poll::Ready(Ok(_))
            ));
            assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        }
        assert!(
            io.shared.borrow().io.writes.is_empty(),
            "nothing written before the flusher runs"
        );
        let big = vec![7u8; COPY_MAX + 1];
        assert!(
            matches!(Pin::new(&mut io).poll_write(&mut cx, &big), Poll::Ready(Ok(n)) if n == big.len())
        );
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"tail"),
            Poll::Ready(Ok(4))
        ));
        assert!(flusher.poll_flush(&mut cx).is_ready());
        let writes = &io.shared.borrow().io.writes;
        assert_eq!(writes.len(), 3);
        assert_eq!(writes[0], b"head1k-ish bodytrailers");
        assert_eq!(writes[1], big);
        assert_eq!(writes[2], b"tail");
    }
}
