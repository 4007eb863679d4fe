//! The soak's gRPC client: a reconnecting HTTP/2 connection to the proxy
//! and one call of each kind, on a tokio current-thread runtime (a
//! `LocalSet`, so connections are `Rc`s).
//!
//! Unlike `grpc-loadtest run`, every call ends in an [`Outcome`] the caller
//! keeps, and the caller may stop a call midway (reset it, stop reading,
//! drop the connection): the soak's faults are clients that do that. Wire
//! framing and the echo service's names come from `grpc_loadtest::grpc`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use grpc_loadtest::grpc::{self as wire, Deframer};
use grpc_loadtest::h2io::{recv_data, send_data};
use grpc_loadtest::run::Rpc;
use grpc_proxy::Code;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How a call ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A gRPC status in trailers (or trailers-only); `Ok` included.
    Status(Code),
    /// The proxy reset the stream.
    Reset(Reason),
    /// The proxy sent GOAWAY and the call did not finish.
    GoAway(Reason),
    /// The connection to the proxy broke.
    ConnectionLost,
    /// A non-200 HTTP answer.
    Http(u16),
    /// The response ended without a `grpc-status`.
    NoStatus,
    /// Response bytes that are not gRPC messages.
    Malformed,
    /// No connection to the proxy at all.
    Connect,
    /// Another h2 error.
    Other(String),
    /// We cancelled the call midway (RST_STREAM CANCEL): the fault itself.
    Cancelled,
    /// We left with the call open (dropped the connection): the fault itself.
    Left,
}

impl Outcome {
    /// The label in tables: gRPC code names, else what happened on the wire.
    pub fn label(&self) -> String {
        match self {
            Outcome::Status(c) => c.name().into(),
            Outcome::Reset(r) => format!("RST_STREAM {r:?}"),
            Outcome::GoAway(r) => format!("GOAWAY {r:?}"),
            Outcome::ConnectionLost => "connection lost".into(),
            Outcome::Http(s) => format!("HTTP {s}"),
            Outcome::NoStatus => "no grpc-status".into(),
            Outcome::Malformed => "malformed response".into(),
            Outcome::Connect => "cannot connect to the proxy".into(),
            Outcome::Other(e) => format!("h2: {e}"),
            Outcome::Cancelled => "cancelled by the client".into(),
            Outcome::Left => "client left".into(),
        }
    }

    /// Whether this is a failure (not OK, and not the client's own doing).
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            Outcome::Status(Code::Ok) | Outcome::Cancelled | Outcome::Left
        )
    }

    fn from_h2(e: &h2::Error) -> Outcome {
        match e.reason() {
            Some(r) if e.is_reset() => Outcome::Reset(r),
            Some(r) if e.is_go_away() => Outcome::GoAway(r),
            _ if e.is_io() => Outcome::ConnectionLost,
            _ => Outcome::Other(e.to_string()),
        }
    }
}

impl From<h2::Error> for Outcome {
    fn from(e: h2::Error) -> Outcome {
        Outcome::from_h2(&e)
    }
}

/// How a connection's socket is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Normally, with h2's default windows.
    Normal,
    /// Large windows (8 MiB per stream) and a socket that can be paused:
    /// a client whose TCP receive side stops, so the proxy's writes block.
    Pausable,
}

/// One HTTP/2 connection to the proxy; reconnects when it breaks.
pub struct Conn {
    addr: SocketAddr,
    reading: Reading,
    /// The current connection and its generation, so that a caller that
    /// saw an old one break does not drop a new one.
    send: RefCell<Option<(u64, SendRequest<Bytes>)>>,
    generation: Cell<u64>,
    driver: RefCell<Option<tokio::task::JoinHandle<()>>>,
    paused: Rc<Cell<bool>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Conn {
    /// A connection to `addr`, opened on first use.
    pub fn new(addr: SocketAddr, reading: Reading) -> Rc<Conn> {
        Rc::new(Conn {
            addr,
            reading,
            send: RefCell::new(None),
            generation: Cell::new(0),
            driver: RefCell::new(None),
            paused: Rc::new(Cell::new(false)),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// A handle ready for a new stream, connecting if needed.
    pub async fn ready(&self) -> Result<SendRequest<Bytes>, Outcome> {
        loop {
            let current = self.send.borrow().clone();
            if let Some((generation, send)) = current {
                match send.ready().await {
                    Ok(send) => return Ok(send),
                    Err(_) => {
                        let mut slot = self.send.borrow_mut();
                        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                            *slot = None;
                        }
                        continue;
                    }
                }
            }
            let _one_at_a_time = self.connecting.lock().await;
            if self.send.borrow().is_some() {
                continue;
            }
            let send = self.connect().await?;
            let generation = self.generation.get() + 1;
            self.generation.set(generation);
            *self.send.borrow_mut() = Some((generation, send));
        }
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, Outcome> {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.addr))
            .await
            .map_err(|_| Outcome::Connect)?
            .map_err(|_| Outcome::Connect)?;
        let _ = tcp.set_nodelay(true);
        self.paused.set(false);
        let io = Pausable {
            inner: tcp,
            paused: self.paused.clone(),
        };
        let mut builder = h2::client::Builder::new();
        builder.enable_push(false);
        if self.reading == Reading::Pausable {
            builder
                .initial_window_size(8 << 20)
                .initial_connection_window_size(64 << 20);
        }
        let (send, conn) = builder
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|_| Outcome::Connect)?;
        let driver = tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        if let Some(old) = self.driver.replace(Some(driver)) {
            old.abort();
        }
        Ok(send)
    }

    /// Stops reading the socket (with [`Reading::Pausable`]).
    pub fn pause_reading(&self) {
        self.paused.set(true);
    }

    /// Drops the connection at once, without GOAWAY or resets: the client
    /// vanished. The next call reconnects.
    pub fn abort(&self) {
        self.send.borrow_mut().take();
        if let Some(d) = self.driver.borrow_mut().take() {
            d.abort();
        }
    }
}

/// A socket whose reads can be stopped for good (until the next connect):
/// reads return `Pending` and nothing will wake them; the client leaves by
/// dropping the connection.
struct Pausable {
    inner: TcpStream,
    paused: Rc<Cell<bool>>,
}

impl AsyncRead for Pausable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.get() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pausable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a call sends: the method, its metadata and its messages.
#[derive(Clone)]
pub struct Shape {
    /// RPC kind.
    pub rpc: Rpc,
    uri: Uri,
    headers: HeaderMap,
    /// Requests (client stream) or round trips (bidi).
    pub messages: usize,
    frame: Bytes,
}

impl Shape {
    /// A call of `rpc` to the proxy at `proxy`, with `payload`-byte requests.
    pub fn new(proxy: SocketAddr, rpc: Rpc, payload: usize) -> Shape {
        let path = match rpc {
            Rpc::Unary => wire::UNARY,
            Rpc::ServerStream => wire::SERVER_STREAM,
            Rpc::ClientStream => wire::CLIENT_STREAM,
            Rpc::Bidi => wire::BIDI,
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(proxy.to_string())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| Uri::from_static("http://localhost/"));
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        Shape {
            rpc,
            uri,
            headers,
            messages: 10,
            frame: wire::frame_zeros(payload),
        }
    }

    /// Adds request metadata.
    pub fn with(mut self, name: &'static str, value: impl ToString) -> Shape {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.insert(name, v);
        }
        self
    }

    /// Sets the number of messages (and tells the echo server for server
    /// streams).
    pub fn messages(mut self, n: usize) -> Shape {
        self.messages = n;
        if self.rpc == Rpc::ServerStream {
            self = self.with(wire::MESSAGES, n);
        }
        self
    }

    /// One request message.
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// Opens the stream.
    pub async fn open(&self, conn: &Conn) -> Result<(ResponseFuture, SendStream<Bytes>), Outcome> {
        let mut send = conn.ready().await?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        Ok(send.send_request(request, false)?)
    }
}

/// A call to its end.
pub async fn call(conn: &Conn, shape: &Shape) -> Outcome {
    let (response, mut stream) = match shape.open(conn).await {
        Ok(s) => s,
        Err(o) => return o,
    };
    exchange(shape, response, &mut stream)
        .await
        .unwrap_or_else(Outcome::from)
}

async fn exchange(
    shape: &Shape,
    response: ResponseFuture,
    stream: &mut SendStream<Bytes>,
) -> Result<Outcome, h2::Error> {
    let sends = match shape.rpc {
        Rpc::ClientStream => shape.messages.max(1),
        Rpc::Unary | Rpc::ServerStream | Rpc::Bidi => 1,
    };
    for i in 0..sends {
        let last = i + 1 == sends && shape.rpc != Rpc::Bidi;
        send_data(stream, shape.frame(), last).await?;
    }
    let mut body = match head(response).await? {
        Ok(body) => body,
        Err(outcome) => return Ok(outcome),
    };
    let mut deframer = Deframer::default();
    let mut round_trips = 1;
    while let Some(chunk) = recv_data(&mut body).await {
        deframer.push(chunk?);
        loop {
            match deframer.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return Ok(Outcome::Malformed),
            }
            if shape.rpc == Rpc::Bidi {
                if round_trips < shape.messages.max(1) {
                    round_trips += 1;
                    send_data(stream, shape.frame(), false).await?;
                } else {
                    stream.send_data(Bytes::new(), true)?;
                }
            }
        }
    }
    trailers(&mut body).await
}

/// The response head: the body to read, or how the call already ended
/// (trailers-only, or not gRPC).
pub async fn head(response: ResponseFuture) -> Result<Result<RecvStream, Outcome>, h2::Error> {
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        return Ok(Err(Outcome::Http(response.status().as_u16())));
    }
    if let Some(code) = Code::from_trailers(response.headers()) {
        return Ok(Err(Outcome::Status(code)));
    }
    Ok(Ok(response.into_body()))
}

/// The status in the trailers, once the body is read.
pub async fn trailers(body: &mut RecvStream) -> Result<Outcome, h2::Error> {
    let trailers = poll_fn(|cx| body.poll_trailers(cx)).await?;
    Ok(trailers
        .as_ref()
        .and_then(Code::from_trailers)
        .map_or(Outcome::NoStatus, Outcome::Status))
}

/// Reads until one whole message has arrived; `None` if the body ended.
pub async fn one_message(
    body: &mut RecvStream,
    deframer: &mut Deframer,
) -> Result<Option<()>, Outcome> {
    loop {
        match deframer.next_frame() {
            Ok(Some(_)) => return Ok(Some(())),
            Ok(None) => {}
            Err(_) => return Err(Outcome::Malformed),
        }
        match recv_data(body).await {
            Some(chunk) => deframer.push(chunk?),
            None => return Ok(None),
        }
    }
}
