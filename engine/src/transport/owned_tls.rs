//! TLS on monoio's owned-buffer I/O, for the own frame path: rustls's
//! [`Connection`] driven by hand (no poll adapter), with one reader and
//! one writer half sharing it on one core.
//!
//! - [`accept`] and [`connect`] run the handshake on the TCP stream, the
//!   first flight's answer included (a TLS 1.3 server's session tickets),
//!   and hand back the connection with any ciphertext read past the
//!   handshake.
//! - [`split`] gives a [`TlsReader`] that decrypts into the relay's read
//!   buffer, and a [`TlsWriter`] that encrypts what the relay writes and
//!   sends it with one write per batch.
//! - Records the reader makes the connection owe (an alert, a key update
//!   answer) are written by the writer: the reader wakes it through
//!   [`TlsWriter::owed`], so only one task ever writes to the socket.
//!
//! Plaintext is copied once each way (rustls decrypts and encrypts in its
//! own buffers); no buffer is kept per connection beyond rustls's own, a
//! ciphertext read buffer and a write buffer, both reused.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::runtime::wake::Notify;

/// The ciphertext read size: one TLS record and its overhead.
const CIPHER_READ: usize = 16 * 1024 + 512;

/// A TLS connection shared by its reader and writer halves.
struct Shared {
    conn: RefCell<Connection>,
    /// Woken when the reader made the connection owe records.
    owed: Notify,
}

/// The server side of a handshake on `tcp`. Returns the connection and the
/// ciphertext read past the handshake (for [`split`]).
pub async fn accept(
    tcp: &mut TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<(Connection, Vec<u8>)> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    handshake(tcp, Connection::Server(conn)).await
}

/// The client side of a handshake on `tcp`, to `name`.
pub async fn connect(
    tcp: &mut TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<(Connection, Vec<u8>)> {
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    handshake(tcp, Connection::Client(conn)).await
}

async fn handshake(tcp: &mut TcpStream, mut conn: Connection) -> io::Result<(Connection, Vec<u8>)> {
    // Our own write budget bounds what waits; rustls's is not needed.
    conn.set_buffer_limit(None);
    let mut out = Vec::new();
    let mut cipher = Cipher::new(Vec::with_capacity(CIPHER_READ));
    loop {
        // What the handshake has to say goes first, an alert included.
        out = write_owed(tcp, &mut conn, out).await?;
        if !conn.is_handshaking() {
            return Ok((conn, cipher.into_rest()));
        }
        if !cipher.refill(tcp).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Err(e) = cipher.feed(&mut conn).map(drop) {
            let _ = write_owed(tcp, &mut conn, out).await;
            return Err(e);
        }
    }
}

/// Ciphertext read from the socket that rustls has not taken yet.
struct Cipher {
    buf: Vec<u8>,
    /// Where what rustls has not taken starts.
    start: usize,
}

impl Cipher {
    fn new(buf: Vec<u8>) -> Cipher {
        Cipher { buf, start: 0 }
    }

    /// Reads more from `io` once rustls has taken all there was;
    /// `Ok(false)` at the end of the stream.
    async fn refill<R: AsyncReadRent>(&mut self, io: &mut R) -> io::Result<bool> {
        if self.start < self.buf.len() {
            return Ok(true);
        }
        // Taken for the read: a read given up (its future dropped) takes
        // the buffer with it, and the next one starts a new buffer, as
        // one let go while idle does (see `TlsReader::ready`).
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(CIPHER_READ);
        }
        self.start = 0;
        let (read, buf) = io.read(buf).await;
        self.buf = buf;
        Ok(read? > 0)
    }

    /// Hands rustls what it takes of the ciphertext, and has it processed;
    /// returns how many bytes it took.
    fn feed(&mut self, conn: &mut Connection) -> io::Result<usize> {
        let mut rest = &self.buf[self.start..];
        let fed = conn.read_tls(&mut rest);
        let taken = self.buf.len() - rest.len() - self.start;
        self.start += taken;
        fed?;
        conn.process_new_packets()
            .map(|_| taken)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// What rustls has not taken, for the reading half.
    fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// Writes every record the connection owes.
async fn write_owed<W: AsyncWriteRent>(
    io: &mut W,
    conn: &mut Connection,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    while conn.wants_write() {
        out.clear();
        conn.write_tls(&mut out)?;
        let (written, o) = io.write_all(out).await;
        out = o;
        written?;
    }
    Ok(out)
}

/// Splits a connection that finished its handshake on `tcp` (with
/// `cipher` read past it) into its halves.
pub fn split(tcp: TcpStream, conn: Connection, cipher: Vec<u8>) -> (TlsReader, TlsWriter) {
    use monoio::io::Splitable;
    let shared = Rc::new(Shared {
        conn: RefCell::new(conn),
        owed: Notify::default(),
    });
    let (read, write) = tcp.into_split();
    let mut buf = cipher;
    buf.reserve(CIPHER_READ.saturating_sub(buf.len()));
    (
        TlsReader {
            io: read,
            shared: shared.clone(),
            cipher: Cipher::new(buf),
            spend: Spend::new(),
        },
        TlsWriter {
            io: write,
            shared,
            out: Vec::new(),
        },
    )
}

/// What a peer's ciphertext bought, per second: a peer may send records
/// that carry almost nothing (a byte each, or none, KeyUpdates between
/// them), each costing a decryption (and a KeyUpdate a key derivation)
/// that HTTP/2's budgets never see. Past an allowance, ciphertext more
/// than 8 times the plaintext it carried in the second ends the
/// connection: records that each carry a whole frame stay under 4.2
/// times (a 9-byte frame under TLS 1.2's AES-GCM). A peer that pads each
/// KeyUpdate with 8 bytes of data or more still gets through: the cost
/// is then bounded per byte, not ended.
struct Spend {
    since: monoio::time::Instant,
    cipher: usize,
    plain: usize,
}

/// Ciphertext a second may spend on anything.
const SPEND_ALLOWANCE: usize = 64 << 10;
/// Ciphertext bytes per byte of plaintext past the allowance.
const SPEND_RATIO: usize = 8;

impl Spend {
    fn new() -> Spend {
        Spend {
            since: monoio::time::Instant::now(),
            cipher: 0,
            plain: 0,
        }
    }

    /// Counts `cipher` bytes taken; whether the second's spending is now
    /// out of proportion to what it carried. Each second starts afresh:
    /// cheap plaintext sent earlier buys nothing later.
    fn out_of_proportion(&mut self, cipher: usize) -> bool {
        if self.since.elapsed() >= std::time::Duration::from_secs(1) {
            *self = Spend::new();
        }
        self.cipher += cipher;
        self.cipher > SPEND_ALLOWANCE + SPEND_RATIO * self.plain
    }
}

/// The reading half: ciphertext in, plaintext onto the relay's buffer.
pub struct TlsReader {
    io: TcpOwnedReadHalf,
    shared: Rc<Shared>,
    cipher: Cipher,
    spend: Spend,
}

impl TlsReader {
    /// Appends at most `want` bytes of plaintext to `buf`, reading and
    /// decrypting as needed; `Ok(0)` at the end of the stream (a
    /// close_notify, or the peer closing TCP).
    pub async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        loop {
            if let Some(n) = self.plaintext(buf, want)? {
                self.spend.plain += n;
                return Ok(n);
            }
            if !self.cipher.refill(&mut self.io).await? {
                return Ok(0);
            }
            let mut conn = self.shared.conn.borrow_mut();
            let fed = self.cipher.feed(&mut conn);
            if conn.wants_write() {
                self.shared.owed.notify_all();
            }
            if self.spend.out_of_proportion(fed?) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS records out of proportion to what they carry",
                ));
            }
        }
    }

    /// Waits until [`read_into`](Self::read_into) has something to give:
    /// ciphertext rustls has not taken, plaintext it holds, the end of
    /// the session, or bytes on the socket. Waiting on the socket, it
    /// holds no buffer: the ciphertext buffer (16.5 KiB) goes, and the
    /// next read takes a new one.
    pub async fn ready(&mut self) -> io::Result<()> {
        let held = self.cipher.start < self.cipher.buf.len() || {
            let mut conn = self.shared.conn.borrow_mut();
            let state = conn.reader().fill_buf().map(|chunk| chunk.len());
            !matches!(state, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        };
        if held {
            return Ok(());
        }
        self.cipher = Cipher::new(Vec::new());
        crate::transport::socket::readable(&self.io).await
    }

    /// The TCP connection under it, for reads that skip TLS (see
    /// [`linger`](crate::transport::linger)); the session goes.
    pub fn into_tcp(self) -> TcpOwnedReadHalf {
        self.io
    }

    /// Plaintext rustls holds, if any: `Some(0)` once the peer closed the
    /// TLS session.
    fn plaintext(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<Option<usize>> {
        let mut conn = self.shared.conn.borrow_mut();
        let mut reader = conn.reader();
        let mut n = 0;
        loop {
            match reader.fill_buf() {
                Ok([]) => return Ok(Some(n)),
                Ok(chunk) => {
                    let take = chunk.len().min(want - n);
                    buf.extend_from_slice(&chunk[..take]);
                    reader.consume(take);
                    n += take;
                    if n == want {
                        return Ok(Some(n));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((n > 0).then_some(n));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The most plaintext one write encrypts: what rustls holds as records
/// for one socket write (its own limit is off) stays bounded, however
/// much waits in the connection's write list.
const PLAINTEXT_PER_WRITE: usize = 256 << 10;

/// The room for records kept between writes: one write of a few full
/// records and a connection's owed records fit.
const OUT_KEPT: usize = 64 << 10;

/// The writing half: plaintext segments in, one socket write per batch.
pub struct TlsWriter {
    io: TcpOwnedWriteHalf,
    shared: Rc<Shared>,
    out: Vec<u8>,
}

impl TlsWriter {
    /// The TCP socket under it.
    pub fn socket(&self) -> std::os::fd::RawFd {
        crate::transport::socket::write_fd(&self.io)
    }

    /// Encrypts up to [`PLAINTEXT_PER_WRITE`] bytes of `segments`, in as
    /// few records as they fill (not one or more per segment: a DATA
    /// frame is a header segment and a payload segment), and writes them
    /// with what else the connection owes; returns the plaintext bytes
    /// taken.
    pub async fn write(&mut self, segments: &[Bytes]) -> io::Result<usize> {
        let n = {
            let mut left = PLAINTEXT_PER_WRITE;
            let mut slices = Vec::with_capacity(segments.len());
            for s in segments {
                if left == 0 {
                    break;
                }
                let take = s.len().min(left);
                left -= take;
                if take > 0 {
                    slices.push(io::IoSlice::new(&s[..take]));
                }
            }
            let mut conn = self.shared.conn.borrow_mut();
            conn.writer().write_vectored(&slices)?
        };
        self.flush_owed().await?;
        Ok(n)
    }

    /// Waits until the reader made the connection owe records.
    pub async fn owed(&self) {
        if !self.shared.conn.borrow().wants_write() {
            self.shared.owed.notified().await;
        }
    }

    /// Writes the records the connection owes.
    pub async fn flush_owed(&mut self) -> io::Result<()> {
        loop {
            let out = {
                let mut conn = self.shared.conn.borrow_mut();
                if !conn.wants_write() {
                    // A large write's room is not kept for the
                    // connection's life.
                    if self.out.capacity() > OUT_KEPT {
                        self.out = Vec::new();
                    }
                    return Ok(());
                }
                let mut out = std::mem::take(&mut self.out);
                out.clear();
                conn.write_tls(&mut out)?;
                out
            };
            let (written, out) = self.io.write_all(out).await;
            self.out = out;
            written?;
        }
    }

    /// Ends the session (close_notify) and the socket's writing side.
    pub async fn shutdown(&mut self) {
        self.shared.conn.borrow_mut().send_close_notify();
        let _ = self.flush_owed().await;
        let _ = self.io.shutdown().await;
    }
}
