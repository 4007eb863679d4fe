//! systemd's notify protocol (`Type=notify`), without a library: the
//! state is one datagram to the unix socket named by `NOTIFY_SOCKET` (a
//! path, or an abstract name written with a leading `@`).
//!
//! The binary says `READY=1` once every worker listens, `RELOADING=1` and
//! then `READY=1` around a reload, `STOPPING=1` when it drains; with
//! `WATCHDOG_USEC` set, a [`Watchdog`] pings every half of it while every
//! worker still answers its mailbox, so that a worker whose runtime is
//! stuck stops the pings and systemd restarts the service.
//!
//! Without `NOTIFY_SOCKET` nothing is sent; a datagram that cannot be sent
//! is logged once and never fails the proxy.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::controller::Controller;

/// Where the service manager listens for the notify datagrams.
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if the service manager set one.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        Notifier::to(std::path::Path::new(&name))
    }

    /// A notifier that sends to `path` (an abstract name if it starts with
    /// `@`); `None` if no socket can be made for it.
    pub fn to(path: &std::path::Path) -> Option<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let to = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).ok()?
            }
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier {
            socket,
            to,
            failed: AtomicBool::new(false),
        })
    }

    /// Sends `state` (newline-separated `KEY=value` lines).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }

    /// `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1`, with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining");
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is
    // always supported on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// The watchdog interval the service manager asks of this process:
/// `WATCHDOG_USEC`, if `WATCHDOG_PID` is unset or names this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog every half `interval` while every worker answers
/// its mailbox within a quarter of it; stops when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging `notifier` for `control`'s workers.
    pub fn start(
        notifier: Arc<Notifier>,
        control: Arc<Controller>,
        interval: Duration,
    ) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let every = interval / 2;
        let patience = (interval / 4).max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("grpc-proxy-watchdog".into())
            .spawn(move || {
                let mut stuck = false;
                while !done.load(Ordering::Relaxed) {
                    if control.responsive(patience) {
                        if stuck {
                            tracing::info!("every worker answers again; watchdog pings resume");
                            stuck = false;
                        }
                        notifier.notify("WATCHDOG=1");
                    } else if !stuck {
                        tracing::error!("a worker does not answer: watchdog pings withheld");
                        stuck = true;
                    }
                    std::thread::park_timeout(every);
                }
            })
            .ok();
        Watchdog { stop, thread }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_arrive_as_datagrams_at_a_path_and_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("grpc-proxy-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::to(&path).expect("notifier");
        notifier.ready("serving");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        notifier.reloading();
        let n = listener.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("grpc-proxy-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let abstract_listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let notifier = Notifier::to(std::path::Path::new(&format!("@{name}"))).expect("notifier");
        notifier.stopping();
        let n = abstract_listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
