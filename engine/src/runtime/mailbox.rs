//! The control channel from the starting thread to one worker.
//!
//! A crossbeam channel carries the commands; a socket pair is the doorbell
//! that wakes the worker's runtime (a byte per command), so the worker
//! awaits its mailbox like any other I/O and never polls.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use monoio::io::AsyncReadRent;

use crate::downstream::snapshot::Plan;
use crate::telemetry::metrics::CoreReport;

/// What the control thread can ask of a worker.
#[derive(Clone, Debug)]
pub enum Command {
    /// Stop accepting, GOAWAY every connection, finish in-flight calls up to
    /// the drain timeout, then exit.
    Drain,
    /// Exit now, cutting every connection.
    Stop,
    /// Swap in this configuration for calls that start from now on, then
    /// say so on `done`.
    Reload {
        /// The configuration.
        plan: Arc<Plan>,
        /// Told the plan's version once this worker uses it.
        done: Sender<u64>,
    },
    /// Report this worker's counters.
    Scrape(Sender<CoreReport>),
}

/// The sending side, held by the control thread.
#[derive(Debug)]
pub struct Postbox {
    tx: Sender<Command>,
    bell: UnixStream,
}

impl Postbox {
    /// Sends a command; a worker that has exited ignores it.
    pub fn send(&self, command: Command) {
        if self.tx.send(command).is_ok() {
            // Non-blocking: if the pipe is full, a wake-up is pending anyway.
            let _ = (&self.bell).write(&[1]);
        }
    }
}

/// The receiving side, moved into the worker.
pub struct Mailbox {
    rx: Receiver<Command>,
    bell: UnixStream,
}

/// A connected pair.
pub fn channel() -> io::Result<(Postbox, Mailbox)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((Postbox { tx, bell: a }, Mailbox { rx, bell: b }))
}

impl Mailbox {
    /// Turns the mailbox into a stream of commands on the worker's runtime.
    /// Yields `Stop` if the control side is gone.
    pub async fn run(self, mut on_command: impl FnMut(Command)) {
        let mut bell = match monoio::net::UnixStream::from_std(self.bell) {
            Ok(bell) => bell,
            Err(e) => {
                tracing::error!(error = %e, "worker mailbox unusable; stopping");
                on_command(Command::Stop);
                return;
            }
        };
        let mut buf = vec![0u8; 64];
        loop {
            let (read, back) = bell.read(buf).await;
            buf = back;
            while let Ok(command) = self.rx.try_recv() {
                on_command(command);
            }
            if !matches!(read, Ok(n) if n > 0) {
                on_command(Command::Stop);
                return;
            }
        }
    }
}
