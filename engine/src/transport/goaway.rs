//! Reads the last stream id of an upstream's GOAWAY, which h2 keeps to
//! itself.
//!
//! A stream above a GOAWAY's last stream id was never processed and may be
//! sent again; one at or below it may have been. h2 fails both kinds with
//! the same error, so [`Watch`] sits between an upstream connection's
//! stream and h2 and follows the frames it reads (headers only: payloads
//! are skipped by length, so the cost is per frame, not per byte), noting
//! the lowest last stream id of any GOAWAY, and counts the connection's
//! first GOAWAY into its endpoint's counter. Writes pass straight through.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The lowest last stream id of the GOAWAYs received so far, if any.
pub type LastStreamId = Rc<Cell<Option<u32>>>;

/// Frame boundaries of the inbound byte stream.
#[derive(Default)]
struct Scan {
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// In a GOAWAY's payload: the last-stream-id bytes read so far.
    goaway: Option<([u8; 4], usize)>,
}

impl Scan {
    fn feed(&mut self, mut bytes: &[u8], last: &Cell<Option<u32>>) {
        while !bytes.is_empty() {
            if let Some((id, got)) = &mut self.goaway {
                let k = (4 - *got).min(bytes.len());
                id[*got..*got + k].copy_from_slice(&bytes[..k]);
                *got += k;
                self.skip -= k;
                bytes = &bytes[k..];
                if *got == 4 {
                    let stream = u32::from_be_bytes(*id) & 0x7fff_ffff;
                    last.set(Some(last.get().map_or(stream, |l| l.min(stream))));
                    self.goaway = None;
                }
                continue;
            }
            if self.skip > 0 {
                let k = self.skip.min(bytes.len());
                self.skip -= k;
                bytes = &bytes[k..];
                continue;
            }
            let k = (9 - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + k].copy_from_slice(&bytes[..k]);
            self.head_len += k;
            bytes = &bytes[k..];
            if self.head_len == 9 {
                self.head_len = 0;
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == 7 && self.skip >= 8 {
                    self.goaway = Some(([0; 4], 0));
                }
            }
        }
    }
}

/// An upstream stream whose inbound frames are watched for GOAWAY.
pub struct Watch<T> {
    io: T,
    scan: Scan,
    last: LastStreamId,
    goaways: Rc<Cell<u64>>,
}

impl<T> Watch<T> {
    /// Watches `io`: GOAWAYs are noted in `last`, and the first one counted
    /// in `goaways`.
    pub fn new(io: T, last: LastStreamId, goaways: Rc<Cell<u64>>) -> Watch<T> {
        Watch {
            io,
            scan: Scan::default(),
            last,
            goaways,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let had = this.last.get().is_some();
            this.scan.feed(&buf.filled()[before..], &this.last);
            if !had && this.last.get().is_some() {
                this.goaways.set(this.goaways.get() + 1);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_the_last_stream_id_across_any_split() {
        let mut bytes = frame(4, 0, &[0, 3, 0, 0, 0, 100]); // SETTINGS
        bytes.extend(frame(0, 1, &[7u8; 300])); // DATA
        bytes.extend(frame(7, 0, &[0, 0, 0, 5, 0, 0, 0, 0, b'b', b'y', b'e'])); // GOAWAY 5
        bytes.extend(frame(6, 0, &[0; 8])); // PING
        bytes.extend(frame(7, 0, &[0x80, 0, 0, 3, 0, 0, 0, 2])); // GOAWAY 3 (reserved bit set)
        for chunk in [1, 2, 3, 5, 8, 13, bytes.len()] {
            let last = Cell::new(None);
            let mut scan = Scan::default();
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                scan.feed(piece, &last);
                seen.push(last.get());
            }
            assert_eq!(last.get(), Some(3), "chunks of {chunk}");
            assert!(
                seen.contains(&Some(5)) || chunk == bytes.len(),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn no_goaway_no_id() {
        let last = Cell::new(None);
        let mut scan = Scan::default();
        scan.feed(&frame(1, 1, &[0; 40]), &last);
        scan.feed(&frame(3, 1, &[0, 0, 0, 8]), &last); // RST_STREAM
        assert_eq!(last.get(), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_in_any_pieces_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cut in 1usize..64) {
                let last = Cell::new(None);
                let mut scan = Scan::default();
                for piece in bytes.chunks(cut) {
                    scan.feed(piece, &last);
                }
            }

            #[test]
            fn frames_in_any_pieces_give_the_lowest_goaway(
                frames in proptest::collection::vec((0u8..10, 0u32..1000, proptest::collection::vec(any::<u8>(), 0..64)), 0..32),
                cut in 1usize..32,
            ) {
                let mut bytes = Vec::new();
                let mut want: Option<u32> = None;
                for (kind, stream, mut payload) in frames {
                    if kind == 7 {
                        // A GOAWAY: last stream id, error code, debug data.
                        let mut p = stream.to_be_bytes().to_vec();
                        p.extend_from_slice(&[0, 0, 0, 0]);
                        p.append(&mut payload);
                        payload = p;
                        want = Some(want.map_or(stream, |w: u32| w.min(stream)));
                    }
                    bytes.extend(frame(kind, 0, &payload));
                }
                let last = Cell::new(None);
                let mut scan = Scan::default();
                for piece in bytes.chunks(cut) {
                    scan.feed(piece, &last);
                }
                prop_assert_eq!(last.get(), want);
            }
        }
    }
}
