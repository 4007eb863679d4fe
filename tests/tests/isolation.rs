//! Reliability: what one client or one upstream does must not change what
//! the others see. Each test is a failure scenario played the way a
//! hostile or broken peer plays it (bare h2 peers, frame-level upstreams,
//! a listener whose accept queue is full), and checks both the affected
//! call and that calls not involved keep working.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use grpc_proxy_tests::admin::{metric, sample, wait_until};
use grpc_proxy_tests::raw::{client as h2_client, frame, read_body, request};
use grpc_proxy_tests::silent::{Options, Silent};
use grpc_proxy_tests::{cluster, proxy, proxy_test, proxy_to, Client, Upstream};
use tonic::{Code, Request};

/// A listener that accepts nothing, its accept queue full: a TCP connect
/// to it hangs (the kernel drops the SYN). The connections that filled
/// the queue come back with it and must be kept open.
fn full_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    socket.listen(0).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (listener, fillers),
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

/// An HPACK header block for a gRPC request to `path`, written by hand:
/// indexed `:method POST` and `:scheme http`, and literals without
/// indexing (raw strings) for the rest.
fn headers_block(addr: SocketAddr, path: &str) -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, name_index: u8, value: &str) {
        out.push(name_index); // 0000xxxx: literal without indexing, name by index (< 15)
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    let mut b = vec![0x83, 0x86];
    literal(&mut b, 0x04, path);
    literal(&mut b, 0x01, &addr.to_string());
    // content-type is static entry 31: 0x0f then 31 - 15.
    b.extend_from_slice(&[0x0f, 0x10, 16]);
    b.extend_from_slice(b"application/grpc");
    // te: trailers, a new name.
    b.extend_from_slice(&[0x00, 2]);
    b.extend_from_slice(b"te");
    b.push(8);
    b.extend_from_slice(b"trailers");
    b
}

/// A proxy in front of a silent upstream, and a raw client of it that
/// opens streams and resets them at once.
struct Resets {
    upstream: Silent,
    proxy: grpc_proxy::ProxyHandle,
    raw: RawClient,
    block: Vec<u8>,
    /// The next stream id.
    next: u32,
}

impl Resets {
    async fn start(driver: grpc_proxy::Driver) -> Resets {
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        Resets {
            upstream,
            raw: RawClient::connect(addr).await,
            block: headers_block(addr, "/test.Echo/Echo"),
            proxy,
            next: 1,
        }
    }

    /// Writes `n` streams (HEADERS, END_HEADERS, no END_STREAM), each
    /// followed at once by RST_STREAM CANCEL; false if the connection is
    /// gone.
    async fn burst(&mut self, n: usize) -> bool {
        self.burst_then(n, [3, 0], [0, 0, 0, 8]).await
    }

    /// The same, each HEADERS followed by a frame of this type and flags
    /// with a 4-byte payload on its stream.
    async fn burst_then(&mut self, n: usize, kind_flags: [u8; 2], payload: [u8; 4]) -> bool {
        let mut burst = Vec::new();
        for _ in 0..n {
            let id = self.next.to_be_bytes();
            let len = self.block.len();
            burst.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 4]);
            burst.extend_from_slice(&id);
            burst.extend_from_slice(&self.block);
            burst.extend_from_slice(&[0, 0, 4]);
            burst.extend_from_slice(&kind_flags);
            burst.extend_from_slice(&id);
            burst.extend_from_slice(&payload);
            self.next += 2;
        }
        self.raw.send(&burst).await
    }
}

/// An HTTP/2 client on a raw socket, past the preface and an empty
/// SETTINGS: what it sends is up to the test; of what the proxy sends, it
/// acknowledges SETTINGS and reports the first GOAWAY's code and the
/// first PING ACK.
struct RawClient {
    write: tokio::net::tcp::OwnedWriteHalf,
    acks: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    goaway: tokio::sync::oneshot::Receiver<u32>,
    pong: tokio::sync::oneshot::Receiver<()>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut read, mut write) = tcp.into_split();
        write
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        write
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("settings");
        let (goaway_tx, goaway) = tokio::sync::oneshot::channel();
        let (pong_tx, pong) = tokio::sync::oneshot::channel();
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut goaway_tx = Some(goaway_tx);
            let mut pong_tx = Some(pong_tx);
            loop {
                let mut head = [0u8; 9];
                if read.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    return;
                }
                match head[3] {
                    4 if head[4] & 1 == 0 => {
                        let _ = ack_tx.send(vec![0, 0, 0, 4, 1, 0, 0, 0, 0]);
                    }
                    6 if head[4] & 1 == 1 => {
                        if let Some(tx) = pong_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    7 if payload.len() >= 8 => {
                        let code =
                            u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                        if let Some(tx) = goaway_tx.take() {
                            let _ = tx.send(code);
                        }
                    }
                    _ => {}
                }
            }
        });
        RawClient {
            write,
            acks,
            goaway,
            pong,
        }
    }

    /// Writes `bytes` after any SETTINGS ACK owed; false if the
    /// connection is gone.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        while let Ok(ack) = self.acks.try_recv() {
            let _ = self.write.write_all(&ack).await;
        }
        self.write.write_all(bytes).await.is_ok()
    }
}

/// What a client that never reads managed to write before its writes
/// stalled for 2 s, up to `limit` bytes: HEAD requests without a
/// content-type (not gRPC: each is answered with a 415 head), a thousand
/// at a time, on a socket with a small receive buffer. `Err` if the
/// proxy closed the connection; the socket is handed back.
fn head_requests_without_reading(
    addr: SocketAddr,
    limit: usize,
) -> Result<(usize, bool, std::net::TcpStream), String> {
    use socket2::{Domain, Socket, Type};
    use std::io::Write;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    socket
        .set_send_buffer_size(65536)
        .map_err(|e| e.to_string())?;
    socket.connect(&addr.into()).map_err(|e| e.to_string())?;
    let mut tcp: std::net::TcpStream = socket.into();
    tcp.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // Our SETTINGS, and the acknowledgement of the proxy's.
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0]);
    tcp.write_all(&hello).map_err(|e| e.to_string())?;
    // :method HEAD (a literal, name 2), :path / (4), :scheme http (6),
    // :authority x (a literal, name 1): no content-type.
    let block = [0x02, 4, b'H', b'E', b'A', b'D', 0x84, 0x86, 0x01, 1, b'x'];
    let (mut id, mut written) = (1u32, 0usize);
    while written < limit {
        let mut chunk = Vec::new();
        for _ in 0..1000 {
            chunk.extend_from_slice(&[0, 0, block.len() as u8, 1, 5]);
            chunk.extend_from_slice(&id.to_be_bytes());
            chunk.extend_from_slice(&block);
            id += 2;
        }
        let mut at = 0;
        while at < chunk.len() {
            match tcp.write(&chunk[at..]) {
                Ok(n) => at += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok((written + at, true, tcp));
                }
                Err(e) => return Err(format!("after {} bytes: {e}", written + at)),
            }
        }
        written += chunk.len();
    }
    Ok((written, false, tcp))
}

/// What [`slow_download`] read.
#[derive(Debug, Default)]
struct Download {
    /// DATA payload bytes of stream 1.
    data: usize,
    /// PINGs read (and acknowledged).
    pings: usize,
}

/// One `/test.Echo/Flood` call on a raw socket with the largest windows
/// and a 16 KiB receive buffer: read at about 250 KB/s for 2.5 s, then
/// at full speed until stream 1 ends (trailers or a reset),
/// acknowledging every PING read. `Err` if the connection ends first.
fn slow_download(addr: SocketAddr, block: &[u8]) -> Result<Download, String> {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(16 << 10)
        .map_err(|e| e.to_string())?;
    socket.connect(&addr.into()).map_err(|e| e.to_string())?;
    let mut tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 2^31 - 1, the connection window
    // as large, and the acknowledgement of the proxy's SETTINGS.
    hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff]);
    hello.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&(0x7fff_ffff_u32 - 65_535).to_be_bytes());
    hello.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
    let len = block.len();
    hello.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        4,
        0,
        0,
        0,
        1,
    ]);
    hello.extend_from_slice(block);
    // An empty message, END_STREAM.
    hello.extend_from_slice(&[0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    tcp.write_all(&hello).map_err(|e| e.to_string())?;
    let slow_until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut seen = Download::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let slow = std::time::Instant::now() < slow_until;
        let n = tcp
            .read(&mut chunk)
            .map_err(|e| format!("{e} after {seen:?}"))?;
        if n == 0 {
            return Err(format!("the connection ended after {seen:?}"));
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while pending.len() - at >= 9 {
            let head = &pending[at..at + 9];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            if pending.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let payload = &pending[at + 9..at + 9 + len];
            match kind {
                0 if stream == 1 => seen.data += len,
                // The flood ends with a reset (h2 drops its stream).
                1 if stream == 1 && flags & 1 == 1 && seen.data > 0 => return Ok(seen),
                3 if stream == 1 => return Ok(seen),
                6 if flags & 1 == 0 => {
                    seen.pings += 1;
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(payload);
                    tcp.write_all(&ack).map_err(|e| e.to_string())?;
                }
                7 => return Err(format!("GOAWAY after {seen:?}")),
                _ => {}
            }
            at += 9 + len;
        }
        pending.drain(..at);
        if slow {
            std::thread::sleep(Duration::from_micros(n as u64 * 4));
        }
    }
}

/// A proxy whose keepalive PINGs every 200 ms and gives up after 300 ms.
async fn quick_keepalive(driver: grpc_proxy::Driver) -> (Silent, grpc_proxy::ProxyHandle) {
    let upstream = Silent::with(Options::default()).await;
    let proxy = proxy(
        driver,
        &format!(
            "[timeouts]\nping_interval = \"200ms\"\nping_timeout = \"300ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ),
    );
    (upstream, proxy)
}

/// A raw connection to `addr` past the preface, an empty SETTINGS and the
/// acknowledgement of the proxy's.
async fn raw_past_preface(
    addr: SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (read, mut write) = tcp.into_split();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0]);
    write.write_all(&hello).await.expect("preface");
    (read, write)
}

/// Whether the proxy closes a connection that has read nothing for
/// 1.5 s, within 5 s more of reading what it sent.
async fn closes_after_a_while(read: &mut tokio::net::tcp::OwnedReadHalf) -> bool {
    use tokio::io::AsyncReadExt;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sink = vec![0u8; 1 << 16];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A call with the client's own deadline, so that a stuck proxy fails the
/// test instead of hanging it.
async fn echo_within(
    client: &mut Client,
    method: &str,
    timeout: Duration,
) -> Result<Bytes, tonic::Status> {
    let mut request = Request::new(frame(b"ping").slice(5..));
    request.set_timeout(timeout);
    client.unary(method, request).await.map(|r| r.into_inner())
}

proxy_test! {
    async fn a_call_that_gives_up_during_a_connect_does_not_block_the_endpoint(driver) {
        // Scenario: the upstream's accept queue is full, so the proxy's
        // connect hangs; the only call gives up (its route's deadline)
        // halfway through the connect. Then the upstream accepts again:
        // later calls must connect and succeed, not wait for a connect
        // that nobody is making any more.
        let (listener, _fillers) = full_listener();
        let addr = listener.local_addr().expect("addr");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"30s\"\n{}\n\
             [[routes]]\nheaders = [{{ name = \"x-short\" }}]\ncluster = \"a\"\ntimeout = \"300ms\"\n\
             [[routes]]\ncluster = \"a\"\n",
            cluster("a", addr)
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut short = Request::new(Bytes::from_static(b"x"));
        short.metadata_mut().insert("x-short", "1".parse().expect("value"));
        let status = client.unary("Echo", short).await.expect_err("the connect hangs");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

        let upstream = Silent::on(listener, Options::default());
        let reply = echo_within(&mut client, "Echo", Duration::from_secs(5)).await;
        assert!(reply.is_ok(), "a later call reaches the upstream: {reply:?}");
        assert!(upstream.connections() >= 1);
    }

    async fn an_upstream_that_accepts_and_never_speaks_http2_fails_calls_at_the_connect_timeout(driver) {
        // Scenario: an upstream whose process hangs while its kernel still
        // accepts connections: the TCP connect succeeds and nothing comes,
        // not even SETTINGS. A call without a deadline must not wait for
        // it forever: the connect timeout runs until the upstream's
        // SETTINGS, and the call fails UNAVAILABLE. A call to another
        // cluster goes on.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = Silent::with(Options::default()).await;
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"300ms\"\n{}\n{}\n\
             [[routes]]\nheaders = [{{ name = \"x-other\" }}]\ncluster = \"b\"\n\
             [[routes]]\ncluster = \"a\"\n",
            cluster("a", mute.local_addr().expect("addr")),
            cluster("b", other.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let call = client.unary("Echo", Request::new(Bytes::from_static(b"x")));
        let status = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ends within 10 s")
            .expect_err("the upstream never answers");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let mut request = Request::new(Bytes::from_static(b"x"));
        request.metadata_mut().insert("x-other", "1".parse().expect("value"));
        request.set_timeout(Duration::from_secs(5));
        let reply = client.unary("Echo", request).await;
        assert!(reply.is_ok(), "a call to another cluster goes on: {reply:?}");
    }

    async fn a_health_check_that_times_out_during_a_connect_does_not_block_the_endpoint(driver) {
        // The same, with the health probe (timeout 200 ms) giving up.
        let (listener, _fillers) = full_listener();
        let addr = listener.local_addr().expect("addr");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"30s\"\n\
             [[clusters]]\nname = \"a\"\nendpoints = [\"{addr}\"]\n\
             health_check = {{ interval = \"50ms\", timeout = \"200ms\" }}\n\
             [[routes]]\ncluster = \"a\"\n"
        ));
        // Let a probe start its connect and give up.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _upstream = Silent::on(listener, Options::default());
        let mut client = Client::connect(proxy.local_addr()).await;
        let reply = echo_within(&mut client, "Echo", Duration::from_secs(5)).await;
        assert!(reply.is_ok(), "a call reaches the upstream once it accepts: {reply:?}");
    }

    async fn calls_queued_at_an_upstreams_stream_limit_all_complete(driver) {
        // Scenario: the upstream takes 2 streams per connection and answers
        // after 20 ms; 400 calls arrive at once on 4 client connections.
        // The proxy opens up to 8 connections (16 streams) and every call
        // must complete: none may be forgotten in a queue.
        let upstream = Silent::with(Options {
            max_concurrent_streams: Some(2),
            delay: Some(Duration::from_millis(20)),
            ..Options::default()
        })
        .await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let mut calls = Vec::new();
        for _ in 0..4 {
            let client = h2_client(addr, 65_535).await;
            for _ in 0..100 {
                let client = client.clone();
                calls.push(tokio::spawn(async move {
                    let mut ready = client.ready().await.expect("ready");
                    let mut request = request(addr, "Unary");
                    request.headers_mut().insert("grpc-timeout", "10S".parse().expect("value"));
                    let (response, mut body) = ready.send_request(request, false).expect("send");
                    // An answer may come on the headers alone, before this goes.
                    let _ = body.send_data(frame(b""), true);
                    let response = response.await.expect("response");
                    response.headers().get("grpc-status").cloned()
                }));
            }
        }
        let mut ok = 0;
        for call in calls {
            if call.await.expect("task").as_ref().is_some_and(|s| s == "0") {
                ok += 1;
            }
        }
        assert_eq!(ok, 400, "every queued call completed before its 10 s deadline");
        assert!(upstream.connections() <= 8, "{} upstream connections", upstream.connections());
    }

    async fn a_client_that_reads_nothing_does_not_stall_others_on_the_same_upstream(driver) {
        // Scenario: one client sets its stream window to 0 and opens 64
        // streams that each want 16 MiB from the upstream, then reads
        // nothing. Another client's calls to the same upstream, on the
        // same upstream connection, must still be answered.
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let slow = h2_client(addr, 0).await;
        let mut stalled = Vec::new();
        for _ in 0..64 {
            let mut ready = slow.clone().ready().await.expect("ready");
            let (response, mut body) = ready.send_request(request(addr, "Flood"), false).expect("send");
            // An answer may come on the headers alone, before this goes.
            let _ = body.send_data(frame(b""), true);
            stalled.push(response);
        }
        // Wait until the upstream has pushed what the stalled streams take.
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = upstream.flood_sent();
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
        let mut client = Client::connect(addr).await;
        for i in 0..5 {
            let reply = echo_within(&mut client, "Echo", Duration::from_secs(3)).await;
            assert!(reply.is_ok(), "call {i} of another client: {reply:?}");
        }
        assert_eq!(upstream.connections(), 1, "all on the one shared upstream connection");
        drop(stalled);
    }

    async fn a_refused_client_stream_is_retried_with_all_of_its_request(driver) {
        // Scenario: the first upstream connection grants no window and
        // refuses the stream while the proxy holds request DATA back; the
        // client is still sending. The retry must carry the whole request,
        // not what was held so far followed by END_STREAM.
        let upstream = Silent::with(Options { refuse_first_blocked: true, ..Options::default() }).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 1 << 20).await;
        let mut ready = client.ready().await.expect("ready");
        let (response, mut body) = ready.send_request(request(addr, "Echo"), false).expect("send");
        body.send_data(frame(b"one"), false).expect("data");
        // The retry reaches the second, ordinary connection.
        upstream.wait_requests(1).await;
        body.send_data(frame(b"two"), false).expect("data");
        body.send_data(frame(b"three"), true).expect("data");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let echoed = read_body(&mut body).await;
        let want = [frame(b"one"), frame(b"two"), frame(b"three")].concat();
        assert_eq!(echoed, want, "the upstream got the whole request");
        let trailers = body.trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers["grpc-status"], "0");
    }

    async fn a_call_reset_while_waiting_for_a_connect_lets_go_at_once(driver) {
        // Scenario: the connect hangs; the client resets its call. The call
        // must end now (its stream and anything it holds), not when the
        // connect times out 30 s later.
        let (listener, _fillers) = full_listener();
        let addr = listener.local_addr().expect("addr");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"30s\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", addr)
        ));
        let client = h2_client(proxy.local_addr(), 65_535).await;
        let mut ready = client.ready().await.expect("ready");
        let (_response, mut body) = ready.send_request(request(proxy.local_addr(), "Echo"), false).expect("send");
        body.send_data(frame(b"x"), false).expect("data");
        let active = "grpc_proxy_downstream_streams_active{core=\"0\"}";
        while metric(&proxy, active) < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        body.send_reset(h2::Reason::CANCEL);
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(&proxy, active) > 0.0 {
            assert!(tokio::time::Instant::now() < until, "the reset call still waits for its connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(listener);
    }

    async fn streams_reset_at_once_never_reach_the_upstream_and_the_connection_gets_goaway(driver) {
        // Scenario (rapid reset, CVE-2023-44487): a client writes, frame by
        // frame on a raw socket, bursts of HEADERS each followed at once by
        // RST_STREAM. No reset stream may cost an upstream stream, and a
        // connection that resets most of what it opens is closed with
        // GOAWAY ENHANCE_YOUR_CALM; other clients go on.
        let mut r = Resets::start(driver).await;
        for _ in 0..30 {
            if !r.burst(20).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let code = tokio::time::timeout(Duration::from_secs(5), r.raw.goaway)
            .await
            .expect("a GOAWAY within 5 s")
            .expect("a GOAWAY");
        assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
        // A stream reset in the read that opened it never reaches the
        // upstream; one whose HEADERS and RST_STREAM a read boundary split
        // (the first read of a burst is 512 bytes on the own path) may.
        // Without the protection every stream did.
        let sent = (r.next / 2) as usize;
        let reached = r.upstream.requests();
        assert!(reached * 10 < sent, "{reached} of {sent} reset streams reached the upstream");
        let floods = "grpc_proxy_downstream_reset_floods_total{core=\"0\"}";
        assert_eq!(metric(&r.proxy, floods), 1.0, "the proxy's own reset count closed it");
        let mut other = Client::connect(r.proxy.local_addr()).await;
        let reply = echo_within(&mut other, "Echo", Duration::from_secs(3)).await;
        assert!(reply.is_ok(), "another client goes on: {reply:?}");
    }

    async fn streams_the_client_makes_the_proxy_reset_count_as_its_resets(driver) {
        // Scenario ("MadeYouReset", CVE-2025-8671): instead of resetting
        // its streams, a client follows each HEADERS with a frame that is
        // a stream error (a WINDOW_UPDATE of 0), so that the proxy resets
        // them. That must cost the client the same as resetting them
        // itself: GOAWAY ENHANCE_YOUR_CALM, and other clients go on.
        let mut r = Resets::start(driver).await;
        for _ in 0..30 {
            if !r.burst_then(20, [8, 0], [0, 0, 0, 0]).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let code = tokio::time::timeout(Duration::from_secs(5), r.raw.goaway)
            .await
            .expect("a GOAWAY within 5 s")
            .expect("a GOAWAY");
        assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
        let floods = "grpc_proxy_downstream_reset_floods_total{core=\"0\"}";
        assert_eq!(metric(&r.proxy, floods), 1.0, "the proxy's own reset count closed it");
        let mut other = Client::connect(r.proxy.local_addr()).await;
        let reply = echo_within(&mut other, "Echo", Duration::from_secs(3)).await;
        assert!(reply.is_ok(), "another client goes on: {reply:?}");
    }

    async fn resets_spread_over_seconds_are_counted_per_second(driver) {
        // Scenario: a client that cancels calls now and then, for longer
        // than a second. 300 resets in five bursts 1.2 s apart is more
        // than one second's budget (200) in all, but at most three bursts
        // (180) fall within any second the worker counts, even one that
        // runs long: the connection stays open and still answers.
        let mut r = Resets::start(driver).await;
        for burst in 0..5 {
            if burst > 0 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            assert!(r.burst(60).await, "burst {burst} written");
        }
        // A PING after the last burst: its ACK comes after every GOAWAY
        // the bursts could have caused.
        assert!(r.raw.send(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).await, "PING written");
        let pong = tokio::time::timeout(Duration::from_secs(5), r.raw.pong)
            .await
            .expect("a PING ACK within 5 s");
        assert!(pong.is_ok(), "the connection answered the PING");
        assert!(r.raw.goaway.try_recv().is_err(), "no GOAWAY");
        let floods = "grpc_proxy_downstream_reset_floods_total{core=\"0\"}";
        assert_eq!(metric(&r.proxy, floods), 0.0);
    }

    async fn a_client_that_never_reads_its_answers_is_read_no_further(driver) {
        // Scenario: on a raw socket, a client sends requests that are not
        // gRPC as fast as it can and never reads the 415s it is answered
        // with (RST_STREAMs for stream errors or PING ACKs would do the
        // same, as long as their budgets allow). Once what waits to be
        // written to it reaches its budget (`[limits]
        // buffer_per_connection`), the proxy must stop reading it, so
        // that its writes stall, rather than queue answers without end.
        // Once it reads again, so does the proxy; other clients go on.
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy(driver, &format!(
            "[limits]\nbuffer_per_connection = 65536\n\
             {}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ));
        let addr = proxy.local_addr();
        // Without the limit all of it would go in: the proxy's receive
        // buffer and what it answers in the kernel take a few MiB.
        let limit = 48 << 20;
        let (written, stalled, tcp) =
            tokio::task::spawn_blocking(move || head_requests_without_reading(addr, limit))
                .await
                .expect("the flood's thread")
                .expect("the proxy keeps the connection");
        assert!(stalled, "the proxy read all {written} bytes of requests whose answers wait unread");

        let mut other = Client::connect(addr).await;
        let reply = echo_within(&mut other, "Echo", Duration::from_secs(5)).await;
        assert!(reply.is_ok(), "another client goes on: {reply:?}");

        // The client reads again: the proxy must read its requests again.
        let resumed = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut reader = tcp.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut sink = vec![0u8; 1 << 16];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            });
            let mut tcp = tcp;
            tcp.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
            // The socket's buffers are full: even a few PINGs go only if
            // the proxy reads.
            let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8].repeat(100);
            tcp.write_all(&ping).map_err(|e| e.to_string())
        })
        .await
        .expect("the reading thread");
        assert!(resumed.is_ok(), "the proxy reads the client again: {resumed:?}");
    }

    async fn acknowledgements_of_pings_guessed_from_one_read_do_not_keep_a_connection(driver) {
        // Scenario: a client reads the proxy's first keepalive PING, then
        // stops reading and keeps sending ACKs for the payloads it guesses
        // the next PINGs carry (the first's, and what a simple count on
        // top of it would give). Payloads must not be guessable: the
        // keepalive must close the connection.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_upstream, proxy) = quick_keepalive(driver).await;
        let (mut read, mut write) = raw_past_preface(proxy.local_addr()).await;
        // Frames until the first PING (not an ACK): its payload.
        let first = loop {
            let mut head = [0u8; 9];
            read.read_exact(&mut head).await.expect("a frame");
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            read.read_exact(&mut payload).await.expect("its payload");
            if head[3] == 6 && head[4] & 1 == 0 {
                break u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
            }
        };
        let fakes = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let guess = first ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&guess.to_be_bytes());
                if write.write_all(&ack).await.is_err() {
                    return;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        let closed = closes_after_a_while(&mut read).await;
        fakes.abort();
        assert!(closed, "the connection is still open after guessed acknowledgements");
    }

    async fn acknowledgements_of_pings_never_read_do_not_keep_a_connection(driver) {
        // Scenario: a client that reads nothing keeps sending PING ACKs,
        // with the payload the proxy's keepalive PINGs used to carry.
        // Only an acknowledgement of a PING the client read may count as
        // an answer: the keepalive must close the connection.
        use tokio::io::AsyncWriteExt;
        let (_upstream, proxy) = quick_keepalive(driver).await;
        let (mut read, mut write) = raw_past_preface(proxy.local_addr()).await;
        let fakes = tokio::spawn(async move {
            let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
            ack.extend_from_slice(b"grpcprxy");
            while write.write_all(&ack).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let closed = closes_after_a_while(&mut read).await;
        fakes.abort();
        assert!(closed, "the connection is still open after fake acknowledgements");
    }

    async fn a_client_that_opens_huge_windows_and_reads_nothing_holds_only_its_budget(driver) {
        // Scenario: on a raw socket, a client announces the largest
        // windows HTTP/2 allows, opens 16 streams that each want 16 MiB
        // from the upstream, and never reads its socket. Its windows let
        // the proxy send everything, so only the proxy's own budget
        // (`[limits] buffer_per_connection`: what may wait to be written,
        // and how far its streams' upstream windows may grow past 64 KiB)
        // bounds what it holds: the upstream must be granted little more
        // than that (plus what the kernel's socket buffers take), not the
        // 256 MiB asked for. Other clients on the same upstream connection
        // go on.
        use tokio::io::AsyncWriteExt;
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy(driver, &format!(
            "[limits]\nbuffer_per_connection = 1048576\n\
             {}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ));
        let addr = proxy.local_addr();
        let mut hostile = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (4) = 2^31 - 1.
        hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff]);
        // The connection window to 2^31 - 1 as well.
        hello.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0]);
        hello.extend_from_slice(&(0x7fff_ffff_u32 - 65_535).to_be_bytes());
        let block = headers_block(addr, "/test.Echo/Flood");
        for i in 0..16u32 {
            let id = (2 * i + 1).to_be_bytes();
            let len = block.len();
            hello.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 4]);
            hello.extend_from_slice(&id);
            hello.extend_from_slice(&block);
            // An empty message, END_STREAM.
            hello.extend_from_slice(&[0, 0, 5, 0, 1]);
            hello.extend_from_slice(&id);
            hello.extend_from_slice(&[0; 5]);
        }
        hostile.write_all(&hello).await.expect("write");
        // Wait until the upstream is granted nothing more.
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = upstream.flood_sent();
            if (now == last && now > 0) || now > 64 << 20 {
                break;
            }
            last = now;
        }
        let granted = upstream.flood_sent();
        assert!(
            granted < 24 << 20,
            "the upstream was granted {} MiB for a client that reads nothing",
            granted >> 20
        );
        let mut client = Client::connect(addr).await;
        for i in 0..5 {
            let reply = echo_within(&mut client, "Echo", Duration::from_secs(3)).await;
            assert!(reply.is_ok(), "call {i} of another client: {reply:?}");
        }
        assert_eq!(upstream.connections(), 1, "all on the one shared upstream connection");
        drop(hostile);
    }

    async fn upstream_addresses_and_errors_do_not_leak_to_clients(driver) {
        // The client gets a short generic message; the detail is logged.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = dead.local_addr().expect("addr");
        drop(dead);
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\naccess_log = \"{}\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            log.path().display(),
            cluster("a", addr)
        );
        let config = grpc_proxy::Config::parse(&text, "test").expect("config");
        let (builder, routes) = grpc_proxy::ProxyBuilder::from_config(&config).expect("builder");
        let proxy = builder.driver(driver).start(routes).expect("proxy starts");
        let mut client = Client::connect(proxy.local_addr()).await;
        let status = client.echo(Bytes::from_static(b"x")).await.expect_err("nothing listens");
        assert_eq!(status.code(), Code::Unavailable);
        let message = status.message();
        assert!(!message.contains(&addr.port().to_string()), "{message:?} names the upstream");
        assert!(!message.contains("127.0.0.1"), "{message:?} names the upstream");
        assert!(!message.to_lowercase().contains("refused"), "{message:?} leaks the OS error");
        // The detail goes to the access log.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let line = loop {
            let text = std::fs::read_to_string(log.path()).expect("access log");
            if let Some(line) = text.lines().next() {
                break serde_json::from_str::<serde_json::Value>(line).expect("JSON");
            }
            assert!(tokio::time::Instant::now() < until, "no access log line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let error = line["error"].as_str().expect("an error field");
        assert!(error.contains(&addr.to_string()), "{error:?} names the endpoint");
    }

    async fn the_upstream_is_told_the_routes_shorter_deadline(driver) {
        // The client allows 10 s, the route 300 ms: the upstream must be
        // told the deadline the proxy enforces, not the client's.
        let mut silent = Silent::start().await;
        let proxy = proxy(driver, &format!(
            "{}\n[[routes]]\ncluster = \"a\"\ntimeout = \"300ms\"\n",
            cluster("a", silent.addr())
        ));
        let client = h2_client(proxy.local_addr(), 65_535).await;
        let mut ready = client.ready().await.expect("ready");
        let mut request = request(proxy.local_addr(), "Hang");
        request.headers_mut().insert("grpc-timeout", "10S".parse().expect("value"));
        let (response, mut body) = ready.send_request(request, false).expect("send");
        // An answer may come on the headers alone, before this goes.
        let _ = body.send_data(frame(b""), true);
        let response = response.await.expect("response");
        assert_eq!(response.headers()["grpc-status"], "4");
        let seen = silent.next_ended().await;
        let told = seen.grpc_timeout.expect("a grpc-timeout upstream");
        let told = grpc_proxy::grpc::timeout::parse(told.as_bytes()).expect("valid");
        assert!(told <= Duration::from_millis(300), "told {told:?}");
    }

    async fn a_healthy_upstream_keeps_serving_while_another_hangs(driver) {
        // Isolation between upstreams on the same core: one cluster's
        // connects hang, the other's calls go through.
        let (listener, _fillers) = full_listener();
        let good = Upstream::start("good");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"30s\"\n{}{}\
             [[routes]]\nheaders = [{{ name = \"x-bad\" }}]\ncluster = \"bad\"\n\
             [[routes]]\ncluster = \"good\"\n",
            cluster("bad", listener.local_addr().expect("addr")),
            cluster("good", good.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut bad = client.clone();
        let hanging = tokio::spawn(async move {
            let mut request = Request::new(Bytes::from_static(b"x"));
            request.metadata_mut().insert("x-bad", "1".parse().expect("value"));
            request.set_timeout(Duration::from_secs(2));
            bad.unary("Unary", request).await
        });
        for _ in 0..10 {
            client.echo(Bytes::from_static(b"ok")).await.expect("the good cluster answers");
        }
        assert!(hanging.await.expect("task").is_err());
    }

    async fn a_cluster_at_its_active_call_limit_refuses_more_at_once(driver) {
        // Scenario: an upstream that never answers; the cluster allows 2
        // active calls per core. A third call is refused at once with
        // UNAVAILABLE instead of queueing; when a call ends, room returns.
        let silent = Silent::start().await;
        let proxy = proxy(driver, &format!(
            "{}max_active_calls = 2\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", silent.addr())
        ));
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let mut hanging = Vec::new();
        for _ in 0..2 {
            let mut ready = client.clone().ready().await.expect("ready");
            let (response, mut body) = ready.send_request(request(addr, "Hang"), false).expect("send");
            // An answer may come on the headers alone, before this goes.
            let _ = body.send_data(frame(b""), true);
            hanging.push((response, body));
        }
        silent.wait_requests(2).await;
        let answer = |method: &'static str| {
            let client = client.clone();
            async move {
                let mut ready = client.ready().await.expect("ready");
                let (response, mut body) = ready.send_request(request(addr, method), false).expect("send");
                // An answer may come on the headers alone, before this goes.
                let _ = body.send_data(frame(b""), true);
                let response = tokio::time::timeout(Duration::from_secs(2), response)
                    .await
                    .expect("answered at once")
                    .expect("response");
                response.headers().clone()
            }
        };
        let refused = answer("Unary").await;
        assert_eq!(refused["grpc-status"], "14", "UNAVAILABLE");
        let message = refused["grpc-message"].to_str().expect("text");
        assert!(message.contains("overloaded"), "{message}");
        let overloaded = "grpc_proxy_upstream_overloaded_total{cluster=\"a\"}";
        assert_eq!(metric(&proxy, overloaded), 1.0);
        // One hanging call ends; a new call gets through.
        let (_, mut body) = hanging.pop().expect("a call");
        body.send_reset(h2::Reason::CANCEL);
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let headers = answer("Unary").await;
            if headers["grpc-status"] == "0" {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "room never came back: {headers:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn a_cluster_at_its_pending_call_limit_refuses_more_at_once(driver) {
        // Scenario: connects hang; the cluster lets 2 calls wait per core.
        // A third is refused at once, while another cluster serves on.
        let (listener, _fillers) = full_listener();
        let good = Upstream::start("good");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nconnect = \"30s\"\n{}max_pending_calls = 2\n{}\
             [[routes]]\nheaders = [{{ name = \"x-bad\" }}]\ncluster = \"bad\"\n\
             [[routes]]\ncluster = \"good\"\n",
            cluster("bad", listener.local_addr().expect("addr")),
            cluster("good", good.addr())
        ));
        let client = Client::connect(proxy.local_addr()).await;
        let bad = |timeout: Duration| {
            let mut client = client.clone();
            async move {
                let mut request = Request::new(Bytes::from_static(b"x"));
                request.metadata_mut().insert("x-bad", "1".parse().expect("value"));
                request.set_timeout(timeout);
                client.unary("Unary", request).await
            }
        };
        let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(bad(Duration::from_secs(5)))).collect();
        let active = "grpc_proxy_downstream_streams_active{core=\"0\"}";
        while metric(&proxy, active) < 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = bad(Duration::from_secs(3)).await.expect_err("refused");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("overloaded"), "{refused:?}");
        let overloaded = "grpc_proxy_upstream_overloaded_total{cluster=\"bad\"}";
        assert_eq!(metric(&proxy, overloaded), 1.0);
        let mut good_client = client.clone();
        good_client.echo(Bytes::from_static(b"ok")).await.expect("the other cluster serves");
        for w in waiting {
            w.abort();
        }
    }

    async fn a_silently_dead_upstream_connection_is_found_by_keepalive_pings(driver) {
        // Scenario: the upstream's link dies without a FIN (the relay goes
        // silent). With keepalive PINGs the proxy notices within interval
        // + timeout, closes the connection, and the next call connects
        // afresh; calls no longer go to a connection that looks alive.
        let up = Upstream::start("a");
        let relay = grpc_proxy_tests::relay::Relay::start(up.addr()).await;
        let proxy = proxy(driver, &format!(
            "[[clusters]]\nname = \"a\"\nendpoints = [\"{}\"]\nkeepalive = {{ interval = \"1s\", timeout = \"1s\" }}\n\
             [[routes]]\ncluster = \"a\"\n",
            relay.addr()
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        client.echo(Bytes::from_static(b"before")).await.expect("through the relay");
        relay.freeze();
        let connections = "grpc_proxy_upstream_connections{cluster=\"a\"}";
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(&proxy, connections) > 0.0 {
            assert!(tokio::time::Instant::now() < until, "the dead connection is still in use");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = echo_within(&mut client, "Unary", Duration::from_secs(5)).await;
        assert!(reply.is_ok(), "the next call connects afresh: {reply:?}");
        assert_eq!(relay.connections(), 2);
    }

    async fn a_client_that_reads_slowly_is_not_closed_by_keepalive(driver) {
        // Scenario: a client downloads a large stream at about 250 KB/s
        // (it announced the largest windows, so the proxy queues up to
        // its budget for it, and the kernel's buffers more). It answers
        // every PING it reads, but a keepalive PING waits behind all
        // that (about 5 MB): many seconds, where the proxy gives 1 s for
        // an answer. The client is reading, so the connection must stay:
        // once it reads at full speed, the stream comes to its end (16
        // MiB; the flood ends with a reset, which may drop the last of
        // what the proxy held).
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy(driver, &format!(
            "[timeouts]\nping_interval = \"200ms\"\nping_timeout = \"1s\"\n\
             [limits]\nbuffer_per_connection = 1048576\n\
             {}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ));
        let addr = proxy.local_addr();
        let block = headers_block(addr, "/test.Echo/Flood");
        let seen = tokio::task::spawn_blocking(move || slow_download(addr, &block))
            .await
            .expect("the reading thread");
        let seen = seen.expect("the download");
        assert!(seen.pings >= 1, "the keepalive ran: {seen:?}");
        assert!(seen.data > 12 << 20, "the stream went on to its end: {seen:?}");
    }

    async fn connections_on_both_legs_have_tcp_keepalive(driver) {
        // The kernel's keepalive timer runs on the proxy's sockets, both
        // the client's and the upstream's (/proc/net/tcp, timer 2).
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        client.echo(Bytes::from_static(b"x")).await.expect("call");
        let port = proxy.local_addr().port();
        // While sent bytes await their ACK the retransmit timer shows
        // instead; look again until the connections are quiet.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
            let mut downstream = false;
            let mut upstream = false;
            for line in tcp.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (local, remote, timer) = (f[1], f[2], f[5]);
                let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
                let keepalive = timer.starts_with("02:");
                downstream |= port_of(local) == Some(port) && keepalive;
                upstream |= port_of(remote) == Some(up.addr().port()) && keepalive;
            }
            if downstream && upstream {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "keepalive on the client's socket: {downstream}, on the upstream's: {upstream}\n{tcp}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn an_upstream_that_stops_reading_holds_only_its_own_calls(driver) {
        // Scenario: the upstream takes a call and never reads its request
        // body; the client pushes 8 MiB into it. The proxy takes only what
        // the windows allow, and other calls to the same upstream, on the
        // same core, go on.
        let silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let pusher = h2_client(addr, 65_535).await;
        let mut ready = pusher.ready().await.expect("ready");
        let (_response, mut body) = ready.send_request(request(addr, "Hang"), false).expect("send");
        body.reserve_capacity(8 << 20);
        let pushed = tokio::spawn(async move {
            let mut sent = 0usize;
            let chunk = Bytes::from(vec![0u8; 64 << 10]);
            while sent < 8 << 20 {
                match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => {
                        let n = n.min(chunk.len());
                        if body.send_data(chunk.slice(..n), false).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    Some(Ok(_)) => continue,
                    _ => break,
                }
            }
            sent
        });
        silent.wait_requests(1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pushed.is_finished(), "the client could not push 8 MiB past an upstream that reads nothing");
        let mut other = h2_client(addr, 65_535).await;
        for i in 0..5 {
            let mut ready = other.clone().ready().await.expect("ready");
            let (response, mut b) = ready.send_request(request(addr, "Unary"), false).expect("send");
            // The bare upstream answers on the headers alone, and the
            // proxy passes its answer on at once: on a busy machine it can
            // arrive before this DATA goes, which h2 then refuses to send.
            let _ = b.send_data(frame(b""), true);
            let response = tokio::time::timeout(Duration::from_secs(3), response)
                .await
                .unwrap_or_else(|_| panic!("call {i} of another client was not answered"))
                .expect("response");
            assert_eq!(response.headers()["grpc-status"], "0");
            other = h2_client(addr, 65_535).await;
        }
        pushed.abort();
    }

    async fn a_request_that_sends_nothing_is_ended_but_a_quiet_one_is_not(driver) {
        // Scenario (slowloris after the preface): a client opens a stream
        // with HEADERS alone and sends nothing more, holding an upstream
        // stream. With [timeouts] silent_request it is ended with
        // DEADLINE_EXCEEDED and the upstream stream reset; a call that has
        // sent a message and then goes quiet for longer is left alone.
        let mut silent = Silent::start().await;
        let proxy = proxy(driver, &format!(
            "[timeouts]\nsilent_request = \"300ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", silent.addr())
        ));
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, _body) = ready.send_request(request(addr, "Hang"), false).expect("send");
        let response = tokio::time::timeout(Duration::from_secs(3), response)
            .await
            .expect("ended by the proxy")
            .expect("response");
        assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
        let seen = silent.next_ended().await;
        assert_eq!(seen.reset, Some(h2::Reason::CANCEL), "the upstream stream was reset");

        let mut ready = client.ready().await.expect("ready");
        let (response, mut body) = ready.send_request(request(addr, "Echo"), false).expect("send");
        body.send_data(frame(b"one"), false).expect("data");
        tokio::time::sleep(Duration::from_millis(700)).await;
        body.send_data(frame(b"two"), true).expect("data");
        let response = response.await.expect("response");
        let echoed = read_body(&mut response.into_body()).await;
        assert_eq!(echoed, [frame(b"one"), frame(b"two")].concat(), "the quiet call went on");
    }

    async fn an_endpoint_that_lets_deadlines_pass_unanswered_is_ejected(driver) {
        // Scenario: one of two endpoints accepts calls and never answers;
        // each call there ends at the route's 200 ms deadline. After 3 in
        // a row it is ejected, and calls go to the endpoint that answers.
        let stuck = Silent::with(Options { delay: Some(Duration::from_secs(30)), ..Options::default() }).await;
        let good = Upstream::start("good");
        let proxy = proxy(driver, &format!(
            "[[clusters]]\nname = \"a\"\nendpoints = [\"{}\", \"{}\"]\n\
             outlier = {{ consecutive_failures = 3, base_ejection = \"30s\" }}\n\
             [[routes]]\ncluster = \"a\"\ntimeout = \"200ms\"\n",
            stuck.addr(),
            good.addr()
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut timed_out = 0;
        for _ in 0..6 {
            match client.echo(Bytes::from_static(b"x")).await {
                Ok(_) => {}
                Err(status) => {
                    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
                    timed_out += 1;
                }
            }
        }
        assert_eq!(timed_out, 3, "round robin sent every other call to the stuck endpoint");
        for i in 0..10 {
            let reply = client.echo(Bytes::from_static(b"y")).await;
            assert!(reply.is_ok(), "call {i} after the ejection: {reply:?}");
        }
    }

    async fn a_client_reset_frees_a_call_whose_request_waits_for_upstream_window(driver) {
        // Scenario: the upstream reads nothing of a 100 KB request, so its
        // 64 KiB window fills and the rest waits in the proxy. The client
        // gives up (RST_STREAM): the upstream stream must be reset at once,
        // which also gives the shared upstream connection its window back
        // for the next call. (The reset used to go unheard while the
        // request waited for window.)
        let mut upstream = Silent::with(Options::default()).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let mut client = client.ready().await.expect("ready");
        let (_response, mut body) = client.send_request(request(addr, "Hang"), false).expect("send");
        body.send_data(frame(&vec![1u8; 100_000]), false).expect("data");
        upstream.wait_requests(1).await;
        // Let the request fill the upstream's window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        body.send_reset(h2::Reason::CANCEL);
        let seen = tokio::time::timeout(Duration::from_secs(5), upstream.next_ended())
            .await
            .expect("the upstream stream is reset within 5 s");
        assert_eq!(seen.reset, Some(h2::Reason::CANCEL));

        let mut client = client.ready().await.expect("ready");
        let (response, mut body) = client.send_request(request(addr, "Echo"), false).expect("send");
        let message = frame(&vec![2u8; 30_000]);
        body.send_data(message.clone(), true).expect("data");
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered within 5 s")
            .expect("response");
        let echoed = read_body(&mut response.into_body()).await;
        assert_eq!(echoed, message, "the next call gets the connection's window");
    }

    async fn held_retry_bytes_stay_within_the_connection_budget_and_go_when_answered(driver) {
        // Scenario: calls wait on an upstream that never answers, each with
        // 20 KiB of request held for a retry. One connection's holds stay
        // within its budget (64 KiB here): past it, calls go on unheld;
        // another connection has a budget of its own. Holds end with the
        // calls, and as soon as a call's response headers arrive.
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy(driver, &format!(
            "retry_buffer_per_connection = \"64KiB\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ));
        let addr = proxy.local_addr();
        let held = "grpc_proxy_retry_held_bytes{core=\"0\"}";
        let refused = "grpc_proxy_retry_holds_refused_total{core=\"0\"}";
        let hang = |client: &h2::client::SendRequest<Bytes>| {
            let mut client = client.clone();
            async move {
                client = client.ready().await.expect("ready");
                let (response, mut body) =
                    client.send_request(request(addr, "Hang"), false).expect("send");
                // Sent in one piece once the window allows it all, so that
                // it arrives as the same frames every time (16 KiB, then
                // the rest): h2 cuts DATA to the window it has, and the
                // charges depend on the chunk sizes.
                let message = frame(&[1u8; 20_000]);
                body.reserve_capacity(message.len());
                while body.capacity() < message.len() {
                    match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        other => panic!("no window for the request: {other:?}"),
                    }
                }
                body.send_data(message, true).expect("data");
                (response, body)
            }
        };
        let first = h2_client(addr, 65_535).await;
        let mut calls = Vec::new();
        for _ in 0..8 {
            calls.push(hang(&first).await);
        }
        upstream.wait_requests(8).await;
        // Holds are copies, charged as they are: three fit.
        let turned_away = 5.0;
        wait_until(&proxy, "the rest of the holds refused", |m| {
            sample(m, refused).unwrap_or(0.0) >= turned_away
        })
        .await;
        let one = metric(&proxy, held);
        assert!(one > 20_000.0 && one <= 65_536.0, "one connection holds {one} bytes");

        let second = h2_client(addr, 65_535).await;
        let other = hang(&second).await;
        upstream.wait_requests(9).await;
        wait_until(&proxy, "the second connection holds its call", |m| {
            sample(m, held).unwrap_or(0.0) > one
        })
        .await;
        assert!(metric(&proxy, held) <= 2.0 * 65_536.0);

        drop(calls);
        drop(other);
        wait_until(&proxy, "the holds end with their calls", |m| {
            sample(m, held).unwrap_or(0.0) == 0.0
        })
        .await;

        // A stream whose response has begun holds nothing, though it lasts.
        let echo = Upstream::start("echo");
        let proxy = proxy_to(driver, echo.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let (tx, mut replies) = client.open_bidi(4).await;
        tx.send(Bytes::from(vec![3u8; 10_000])).await.expect("send");
        let reply = replies.message().await.expect("reply").expect("a message");
        assert_eq!(reply.len(), 10_000);
        assert_eq!(metric(&proxy, held), 0.0, "answered: nothing held");
        tx.send(Bytes::from_static(b"more")).await.expect("send");
        assert!(replies.message().await.expect("reply").is_some());
        assert_eq!(metric(&proxy, held), 0.0, "nothing held after the answer began");
    }
}
