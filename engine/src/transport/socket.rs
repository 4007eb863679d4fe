//! TCP options of every connection, on both legs: no Nagle delay, and the
//! kernel's own watch for a peer that vanished without a FIN; and the wait
//! for bytes of a connection that holds no read buffer.
//!
//! With `SO_KEEPALIVE` an idle connection whose peer is gone is found by
//! probes (after `tcp_keepalive` of silence, one every 10 s, 3 unanswered
//! ones end it); with `TCP_USER_TIMEOUT` a connection whose sent bytes stay
//! unacknowledged for `tcp_user_timeout` ends then, instead of after the
//! kernel's ~15 minutes of retransmissions. Both are per socket and cost
//! nothing while the peer answers. Failures to set them are ignored: they
//! only narrow how long a dead peer can hold a connection.
//!
//! [`sent`] reads what the kernel knows of a connection's sent bytes: how
//! many the peer acknowledged, for keepalive PINGs that wait behind
//! bytes a slow peer is still reading.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::config::Settings;

/// Probes after the first one, and between them.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
const PROBES: u32 = 3;

/// Sets TCP_NODELAY, keepalive and the user timeout on a connected socket.
pub fn tune(tcp: &monoio::net::TcpStream, settings: &Settings) {
    let _ = tcp.set_nodelay(true);
    if let Some(idle) = settings.tcp_keepalive {
        let _ = tcp.set_tcp_keepalive(Some(idle), Some(PROBE_INTERVAL), Some(PROBES));
    }
    if let Some(timeout) = settings.tcp_user_timeout {
        set_user_timeout(tcp, timeout);
    }
}

#[allow(unsafe_code)]
fn set_user_timeout(tcp: &monoio::net::TcpStream, timeout: Duration) {
    // SAFETY: the descriptor belongs to `tcp`, which is borrowed for the
    // whole time `fd` is used, so it stays open and is not reused.
    let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(timeout));
}

/// What the kernel knows of a connection's sent bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Bytes the peer acknowledged so far.
    pub acked: u64,
    /// Bytes in the kernel's send queue: not sent yet, or not
    /// acknowledged yet.
    pub queued: u64,
}

/// What the kernel knows of the sent bytes of the TCP socket `fd`
/// (`TCP_INFO` and `SIOCOUTQ`); `None` if it does not say.
#[allow(unsafe_code)]
pub fn sent(fd: RawFd) -> Option<Sent> {
    // SAFETY: `info` is a plain C struct for which zeroes are valid, and
    // the kernel writes at most `len` bytes of it, and an int to
    // `queued`; a descriptor that is not a TCP socket makes the calls
    // fail, nothing else.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    // Old kernels (before 4.1) give a shorter struct, without the count.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    if r != 0 || (len as usize) < needed {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SIOCOUTQ, which is TIOCOUTQ's number.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return None;
    }
    Some(Sent {
        acked: info.tcpi_bytes_acked,
        queued: u64::try_from(queued).unwrap_or(0),
    })
}

/// Reads and throws away what the socket `fd` holds unread, without
/// waiting (at most 64 KiB): a socket closed with unread bytes is reset.
#[allow(unsafe_code)]
pub fn discard_unread(fd: RawFd) {
    let mut scrap = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: `scrap` is a live stack buffer of the length given; the
        // kernel writes at most that many bytes into it. A descriptor that
        // is not a socket makes the call fail, nothing else.
        let n = unsafe {
            libc::recv(
                fd,
                scrap.as_mut_ptr().cast(),
                scrap.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

/// The socket under a read half: it stays open while `half` lives.
#[allow(unsafe_code)]
pub fn read_fd(half: &monoio::net::tcp::TcpOwnedReadHalf) -> RawFd {
    // SAFETY: as in `readable`: the halves share the stream through this
    // cell; only its descriptor's number is read.
    unsafe { &*half.0.get() }.as_raw_fd()
}

/// The socket under a write half: it stays open while `half` lives.
#[allow(unsafe_code)]
pub fn write_fd(half: &monoio::net::tcp::TcpOwnedWriteHalf) -> RawFd {
    // SAFETY: as in `readable`: the halves share the stream through this
    // cell; only its descriptor's number is read.
    unsafe { &*half.0.get() }.as_raw_fd()
}

/// Waits until the socket under `half` has bytes to read, or its end or
/// an error: a poll on io_uring; on epoll, the readiness the driver
/// knows, confirmed by a `poll` of the socket (a readiness left from an
/// earlier read may be stale).
#[allow(unsafe_code)]
pub async fn readable(half: &monoio::net::tcp::TcpOwnedReadHalf) -> std::io::Result<()> {
    // SAFETY: monoio's halves share the stream through this cell, and
    // each takes a reference to it for its own operations, as its
    // `into_split` does; `readable` only submits a poll of the socket.
    let stream = unsafe { &*half.0.get() };
    stream.readable(false).await
}
