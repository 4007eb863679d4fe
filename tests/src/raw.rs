//! A bare h2 client, for what tonic would hide or refuse to do: no
//! timers of its own, any stream window, resets and partial requests at
//! will.

use std::net::SocketAddr;

use bytes::Bytes;

/// A bare h2 client connection to `addr`, with this stream window; the
/// connection is driven on its own task.
pub async fn client(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("handshake");
    tokio::spawn(connection);
    send
}

/// The head of a gRPC call to `/test.Echo/<method>` at `addr`.
pub fn request(addr: SocketAddr, method: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/test.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// One gRPC message frame of `payload`.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut f = vec![0u8];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// Reads a response body to its end, giving the window back as it goes.
pub async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    all
}
