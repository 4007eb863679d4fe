//! A bare HTTP/2 upstream (the `h2` crate on tokio) for what tonic would
//! hide: it never enforces deadlines, can cap concurrent streams, can send
//! GOAWAY, and reports what it saw.
//!
//! Requests to `/test.Echo/Echo` get their own body back (then grpc-status
//! 0). Requests to `/test.Echo/Hang` are never answered; the upstream records
//! their `grpc-timeout` and how they were reset. `/test.Echo/Drip` answers
//! response headers and echoes each request DATA chunk as it comes, but never
//! ends; it is recorded like `Hang`. `/test.Echo/Reset` resets the stream
//! itself, before or after response headers (`x-reset`,
//! `x-reset-mid-stream`). Any other request gets a trailers-only OK carrying
//! `x-connection: N`, the 1-based index of the connection it arrived on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, Notify};

/// What the upstream saw of one `Hang` or `Drip` call.
#[derive(Debug)]
pub struct Seen {
    /// The request's path.
    pub path: String,
    /// The `grpc-timeout` header, if any.
    pub grpc_timeout: Option<String>,
    /// The reset reason the stream ended with.
    pub reset: Option<h2::Reason>,
}

/// How the bare upstream behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// SETTINGS_MAX_CONCURRENT_STREAMS to advertise.
    pub max_concurrent_streams: Option<u32>,
    /// Start a graceful shutdown (GOAWAY) on a connection once it has
    /// received this many requests; the requests in flight still finish.
    pub goaway_after: Option<usize>,
    /// Refuse this many requests in all (RST_STREAM REFUSED_STREAM, before
    /// reading anything), then serve.
    pub refuse_first: usize,
    /// Read each refused request to its end before refusing it: the
    /// proxy has then sent all of it, whatever the timing.
    pub refuse_after_body: bool,
    /// Reset every request with this reason instead of answering.
    pub reset_all: Option<h2::Reason>,
    /// On the first connection only, answer the first request's HEADERS
    /// with GOAWAY(last_stream_id = 0) and keep the connection open: the
    /// request was above the last stream id, never processed. Spoken at
    /// the frame level, as no HTTP/2 library sends such a GOAWAY.
    pub goaway_below_first: bool,
    /// On the first connection only, speak at the frame level: advertise
    /// a stream window of 0 (no request DATA can be sent), and answer the
    /// first HEADERS with RST_STREAM REFUSED_STREAM, so that the refusal
    /// meets request DATA the proxy is holding back for want of window.
    pub refuse_first_blocked: bool,
    /// Wait this long before answering a request (not `Hang` or `Flood`).
    pub delay: Option<std::time::Duration>,
    /// The connection window to grant (h2's default is 65,535): larger,
    /// one stream that holds its request DATA unread does not stop the
    /// connection's other streams.
    pub connection_window: Option<u32>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    refused: AtomicUsize,
    flood_sent: AtomicUsize,
    drip_received: AtomicUsize,
    changed: Notify,
}

/// A running bare upstream; stops when dropped.
pub struct Silent {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    /// Starts with default options on a free loopback port, on the current
    /// tokio runtime.
    pub async fn start() -> Silent {
        Silent::with(Options::default()).await
    }

    /// Starts with these options.
    pub async fn with(options: Options) -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Silent::on(listener, options)
    }

    /// Starts accepting on a listener bound (and perhaps already
    /// connected to) before.
    pub fn on(listener: std::net::TcpListener, options: Options) -> Silent {
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = c.connections.fetch_add(1, Ordering::SeqCst) + 1;
                c.changed.notify_waiters();
                if options.goaway_below_first && index == 1 {
                    tokio::spawn(goaway_below(tcp));
                    continue;
                }
                if options.refuse_first_blocked && index == 1 {
                    tokio::spawn(refuse_blocked(tcp));
                    continue;
                }
                tokio::spawn(serve(tcp, index, options, tx.clone(), c.clone()));
            }
        });
        Silent {
            addr,
            seen,
            counts,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes a `/test.Echo/Flood` response has handed to h2 so far (h2
    /// takes them only within the flow-control window it was granted).
    pub fn flood_sent(&self) -> usize {
        self.counts.flood_sent.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far (by the h2 server, not the frame-level one).
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) {
        self.wait_count(&self.counts.requests, n).await;
    }

    /// Waits until `Drip` calls have received `n` bytes of request DATA
    /// in all.
    pub async fn wait_drip_received(&self, n: usize) {
        self.wait_count(&self.counts.drip_received, n).await;
    }

    async fn wait_count(&self, count: &AtomicUsize, n: usize) {
        loop {
            let changed = self.counts.changed.notified();
            if count.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    }

    /// The next `Hang` or `Drip` call that ended.
    pub async fn next_ended(&mut self) -> Seen {
        self.seen.recv().await.expect("the upstream is running")
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    index: usize,
    options: Options,
    tx: mpsc::UnboundedSender<Seen>,
    counts: Arc<Counts>,
) {
    let mut builder = h2::server::Builder::new();
    if let Some(n) = options.max_concurrent_streams {
        builder.max_concurrent_streams(n);
    }
    if let Some(window) = options.connection_window {
        builder.initial_connection_window_size(window);
    }
    let Ok(mut conn) = builder.handshake::<_, bytes::Bytes>(tcp).await else {
        return;
    };
    let mut on_this = 0;
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        on_this += 1;
        counts.requests.fetch_add(1, Ordering::SeqCst);
        counts.changed.notify_waiters();
        if options.goaway_after == Some(on_this) {
            conn.graceful_shutdown();
        }
        if let Some(reason) = options.reset_all {
            respond.send_reset(reason);
            continue;
        }
        if counts.refused.fetch_add(1, Ordering::SeqCst) < options.refuse_first {
            if options.refuse_after_body {
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                });
            } else {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
            continue;
        }
        if request.uri().path() == "/test.Echo/Echo" {
            tokio::spawn(echo(request, respond, index));
            continue;
        }
        if request.uri().path() == "/test.Echo/Drip" {
            tokio::spawn(drip(request, respond, tx.clone(), counts.clone()));
            continue;
        }
        if request.uri().path() == "/test.Echo/Reset" {
            tokio::spawn(reset_on_cue(request, respond));
            continue;
        }
        if let (Some(delay), true) = (options.delay, request.uri().path() != "/test.Echo/Hang") {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                answer_ok(respond, index);
            });
            continue;
        }
        if request.uri().path() == "/test.Echo/Flood" {
            tokio::spawn(flood(respond, counts.clone()));
            continue;
        }
        if request.uri().path() != "/test.Echo/Hang" {
            answer_ok(respond, index);
            continue;
        }
        let grpc_timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _body = request.into_body();
            let reset = std::future::poll_fn(|cx| match respond.poll_reset(cx) {
                Poll::Ready(r) => Poll::Ready(r.ok()),
                Poll::Pending => Poll::Pending,
            })
            .await;
            let _ = tx.send(Seen {
                path: "/test.Echo/Hang".into(),
                grpc_timeout,
                reset,
            });
        });
    }
}

/// Sends gRPC response headers (a body follows); `None` if the stream is
/// gone.
fn start_response(
    respond: &mut h2::server::SendResponse<bytes::Bytes>,
) -> Option<h2::SendStream<bytes::Bytes>> {
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("response");
    respond.send_response(response, false).ok()
}

/// A trailers-only OK carrying `x-connection: index`.
fn answer_ok(mut respond: h2::server::SendResponse<bytes::Bytes>, index: usize) {
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "0")
        .header("x-connection", index.to_string())
        .body(())
        .expect("response");
    let _ = respond.send_response(response, true);
}

/// A minimal HTTP/2 server at the frame level: sends `settings` (a whole
/// SETTINGS frame), acknowledges the peer's SETTINGS, answers PINGs, and
/// answers the first HEADERS frame with `on_headers(frame head)`. The
/// connection stays open until the peer closes it.
async fn frame_level(
    mut tcp: tokio::net::TcpStream,
    settings: &[u8],
    on_headers: impl Fn(&[u8; 9]) -> Vec<u8>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    if tcp.write_all(settings).await.is_err() {
        return;
    }
    let mut answered = false;
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply: Vec<u8> = match kind {
            // SETTINGS without ACK: acknowledge.
            4 if flags & 1 == 0 => vec![0, 0, 0, 4, 1, 0, 0, 0, 0],
            // PING without ACK: answer with the same payload.
            6 if flags & 1 == 0 => [&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &payload].concat(),
            1 if !answered => {
                answered = true;
                on_headers(&head)
            }
            _ => Vec::new(),
        };
        if !reply.is_empty() && tcp.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Empty SETTINGS; the first HEADERS gets GOAWAY with last stream id 0
/// (NO_ERROR): the request was never processed.
async fn goaway_below(tcp: tokio::net::TcpStream) {
    let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    frame_level(tcp, &settings, |_| {
        vec![0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    })
    .await
}

/// SETTINGS_INITIAL_WINDOW_SIZE = 0 (no request DATA can be sent); the
/// first HEADERS gets RST_STREAM REFUSED_STREAM on its stream, so that the
/// refusal meets request DATA the proxy is holding back.
async fn refuse_blocked(tcp: tokio::net::TcpStream) {
    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    frame_level(tcp, &settings, |head| {
        [&[0, 0, 4, 3, 0][..], &head[5..9], &[0, 0, 0, 7]].concat()
    })
    .await
}

/// Answers with the request's body (its gRPC frames, so a valid gRPC
/// response) and `x-connection`.
async fn echo(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    index: usize,
) {
    let mut body = request.into_body();
    let mut all = bytes::BytesMut::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .header("x-connection", index.to_string())
        .body(())
        .expect("response");
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let _ = stream.send_data(all.freeze(), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// `/test.Echo/Drip`: unless the request has `x-drip-headers: no`,
/// response headers at once, then each request DATA chunk echoed back as it
/// arrives; the response never ends. Request bytes are counted as they
/// arrive; with `x-drip-hold: yes` their window is never given back (the
/// stream window fills). When the stream is reset, it is reported like a
/// `Hang` call.
async fn drip(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    tx: mpsc::UnboundedSender<Seen>,
    counts: Arc<Counts>,
) {
    let grpc_timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = request
        .headers()
        .get("x-drip-headers")
        .is_none_or(|v| v != "no");
    let hold = request
        .headers()
        .get("x-drip-hold")
        .is_some_and(|v| v == "yes");
    let mut body = request.into_body();
    let mut stream = None;
    if headers {
        stream = start_response(&mut respond);
    }
    let mut body_open = true;
    let reset = std::future::poll_fn(|cx| loop {
        let reset = match &mut stream {
            Some(s) => s.poll_reset(cx),
            None => respond.poll_reset(cx),
        };
        if let Poll::Ready(r) = reset {
            return Poll::Ready(r.ok());
        }
        if !body_open {
            return Poll::Pending;
        }
        match body.poll_data(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if !hold {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                counts
                    .drip_received
                    .fetch_add(chunk.len(), Ordering::SeqCst);
                counts.changed.notify_waiters();
                if let Some(s) = &mut stream {
                    let _ = s.send_data(chunk, false);
                }
            }
            Poll::Ready(_) => body_open = false,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    let _ = tx.send(Seen {
        path: "/test.Echo/Drip".into(),
        grpc_timeout,
        reset,
    });
}

/// `/test.Echo/Reset`: resets the stream with the HTTP/2 error code in
/// `x-reset`. At once, before any response, unless the request has
/// `x-reset-mid-stream`; with it, response headers and an echo of the first
/// request DATA chunk come first, and the reset follows the next request
/// DATA chunk (the client's cue: by then it has seen headers and message).
async fn reset_on_cue(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
) {
    let reason = request
        .headers()
        .get("x-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(h2::Reason::INTERNAL_ERROR, h2::Reason::from);
    if !request.headers().contains_key("x-reset-mid-stream") {
        respond.send_reset(reason);
        return;
    }
    let mut body = request.into_body();
    let Some(Ok(first)) = body.data().await else {
        return;
    };
    let _ = body.flow_control().release_capacity(first.len());
    let Some(mut stream) = start_response(&mut respond) else {
        return;
    };
    let _ = stream.send_data(first, false);
    let _cue = body.data().await;
    stream.send_reset(reason);
}

/// Answers with 16 MiB of DATA, sending only what flow control grants
/// and counting it.
async fn flood(mut respond: h2::server::SendResponse<bytes::Bytes>, counts: Arc<Counts>) {
    let Some(mut stream) = start_response(&mut respond) else {
        return;
    };
    let mut left: usize = 16 << 20;
    let zeros = bytes::Bytes::from(vec![0u8; 64 * 1024]);
    while left > 0 {
        stream.reserve_capacity(left.min(zeros.len()));
        let granted = std::future::poll_fn(|cx| loop {
            if stream.capacity() > 0 {
                return Poll::Ready(Some(stream.capacity()));
            }
            match stream.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        let Some(n) = granted else { return };
        let n = n.min(left).min(zeros.len());
        if stream.send_data(zeros.slice(..n), false).is_err() {
            return;
        }
        left -= n;
        counts.flood_sent.fetch_add(n, Ordering::SeqCst);
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
