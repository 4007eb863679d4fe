//! HTTP/2 connection set-up with h2, the same way on both legs.
//!
//! Both legs use the windows, frame size, send buffer and header list
//! limit of [`Settings`]; the downstream server adds its stream limits, the
//! upstream client turns push off and opens its connection window wide
//! (see [`client`]). Every connection's writes go through
//! [`write_batch`](crate::transport::write_batch): [`accept`] and
//! [`connect`] wrap the socket, run h2's handshake with a flush after each
//! poll, and hand back what the caller drives (the server connection and
//! its flusher; the client's request handle and a connection future that
//! flushes as it goes).

use std::future::Future;
use std::io;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::PingPong;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Settings;
use crate::transport::write_batch::{batched, flushing, BatchedIo, Flusher};

/// Applies the settings both legs share to an h2 builder of either kind
/// (the two builder types have the same methods and no common trait).
macro_rules! shared {
    ($builder:expr, $settings:expr) => {
        $builder
            .initial_window_size($settings.stream_window)
            .initial_connection_window_size($settings.connection_window)
            .max_frame_size($settings.max_frame_size)
            .max_send_buffer_size($settings.max_send_buffer_size)
            .max_header_list_size($settings.max_header_list_size)
    };
}

/// The h2 server settings for downstream connections.
pub fn server(settings: &Settings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    shared!(b, settings)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams);
    b
}

/// The largest connection window HTTP/2 allows.
pub const CONNECTION_WINDOW_MAX: u32 = (1 << 31) - 1;

/// The h2 client settings for upstream connections.
///
/// The connection window is the largest there is, whatever `Settings`
/// says: an upstream connection is shared by the calls of many clients,
/// and window credit comes back only as each call's client takes its
/// bytes. With a window of a few stream windows, a handful of clients that
/// read nothing held all of it and every other call on the connection
/// stalled. What the proxy buffers stays bounded by the stream window,
/// per stream.
pub fn client(settings: &Settings) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    shared!(b, settings)
        .initial_connection_window_size(CONNECTION_WINDOW_MAX)
        .enable_push(false);
    b
}

/// Why an HTTP/2 handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Writing to the socket failed.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// The peer did not speak HTTP/2 as it should.
    #[error("{0}")]
    Http2(h2::Error),
}

/// A downstream server connection whose writes are batched.
pub type ServerConnection<T> = h2::server::Connection<BatchedIo<T>, Bytes>;

/// The server handshake over `io`: the connection, and the flusher its
/// driving task calls after every poll of it.
pub async fn accept<T>(
    builder: &h2::server::Builder,
    io: T,
) -> Result<(ServerConnection<T>, Flusher<T>), HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (io, flusher) = batched(io);
    let conn = flushing(builder.handshake::<_, Bytes>(io), flusher.clone())
        .await
        .map_err(HandshakeError::Write)?
        .map_err(HandshakeError::Http2)?;
    Ok((conn, flusher))
}

/// What an upstream client handshake gives: the request handle, the PING
/// handle, and the connection to drive on its own task (it flushes after
/// every poll; it ends with a write error, or h2's result).
pub struct Client<C> {
    /// Opens streams.
    pub send: SendRequest<Bytes>,
    /// Sends PINGs (taken before the connection is driven).
    pub ping: Option<PingPong>,
    /// The connection; poll it to completion.
    pub connection: C,
}

/// The client handshake over `io`.
pub async fn connect<T>(
    builder: &h2::client::Builder,
    io: T,
) -> Result<Client<impl Future<Output = io::Result<Result<(), h2::Error>>>>, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (io, flusher) = batched(io);
    let (send, mut connection) = flushing(builder.handshake::<_, Bytes>(io), flusher.clone())
        .await
        .map_err(HandshakeError::Write)?
        .map_err(HandshakeError::Http2)?;
    let ping = connection.ping_pong();
    Ok(Client {
        send,
        ping,
        connection: flushing(connection, flusher),
    })
}
