//! The channel from the control thread to one worker.
//!
//! A crossbeam channel carries the messages; a socket pair is the doorbell
//! that wakes the worker's runtime (a byte per message), so the worker
//! awaits its mailbox like any other I/O and never polls. The message type
//! is the user's: the proxy's workers take
//! `Command`s (`control/worker.rs`), the load generator's echo
//! workers a stop.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use crossbeam_channel::{Receiver, Sender};
use monoio::io::AsyncReadRent;

/// The sending side, held by the control thread.
#[derive(Debug)]
pub struct Postbox<M> {
    tx: Sender<M>,
    bell: UnixStream,
}

impl<M> Postbox<M> {
    /// Sends a message; a worker that has exited ignores it.
    pub fn send(&self, message: M) {
        if self.tx.send(message).is_ok() {
            // Non-blocking: if the pipe is full, a wake-up is pending anyway.
            let _ = (&self.bell).write(&[1]);
        }
    }
}

/// The receiving side, moved into the worker.
pub struct Mailbox<M> {
    rx: Receiver<M>,
    bell: UnixStream,
}

/// A connected pair.
pub fn channel<M>() -> io::Result<(Postbox<M>, Mailbox<M>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((Postbox { tx, bell: a }, Mailbox { rx, bell: b }))
}

impl<M> Mailbox<M> {
    /// Hands each message to `on_message`, on the worker's runtime, until
    /// the control side is gone (or the doorbell cannot be used, which is
    /// logged); then it returns, and the worker should stop.
    pub async fn run(self, mut on_message: impl FnMut(M)) {
        let mut bell = match monoio::net::UnixStream::from_std(self.bell) {
            Ok(bell) => bell,
            Err(e) => {
                tracing::error!(error = %e, "worker mailbox unusable; stopping");
                return;
            }
        };
        let mut buf = vec![0u8; 64];
        loop {
            let (read, back) = bell.read(buf).await;
            buf = back;
            while let Ok(message) = self.rx.try_recv() {
                on_message(message);
            }
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
    }
}
