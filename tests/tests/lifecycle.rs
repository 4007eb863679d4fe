//! Upstreams that fail and come back, drain, hostile connections, and a
//! busy port.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy::{ProxyBuilder, Route, StartError};
use grpc_proxy_tests::raw::{frame, request};
use grpc_proxy_tests::{proxy_test, proxy_to, Client, Upstream};
use tonic::Code;

async fn ping(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    replies: &mut tonic::Streaming<Bytes>,
    m: &'static str,
) {
    tx.send(Bytes::from(m)).await.expect("send");
    assert_eq!(replies.next().await.expect("reply").expect("ok"), m);
}

proxy_test! {
    async fn an_unreachable_upstream_is_unavailable_at_once(driver) {
        let mut up = Upstream::start("gone");
        let addr = up.addr();
        up.stop();
        let proxy = proxy_to(driver, addr);
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut pushbacks = 0;
        for _ in 0..10 {
            let status = client.echo("x").await.expect_err("nothing listens there");
            assert_eq!(status.code(), Code::Unavailable);
            // The kind of failure, not the address (that goes to the log).
            assert!(status.message().starts_with("upstream unavailable"), "{}", status.message());
            assert!(!status.message().contains(&addr.to_string()), "{}", status.message());
            // While the endpoint backs off (20 to 100 ms in tests), the
            // client is told when a retry could succeed.
            let backing_off = status.message().contains("waiting to reconnect");
            let pushback = status.metadata().get("grpc-retry-pushback-ms");
            assert_eq!(backing_off, pushback.is_some(), "{status:?}");
            if let Some(ms) = pushback {
                let ms: u64 = ms.to_str().ok().and_then(|v| v.parse().ok()).expect("a number");
                assert!(ms <= 100, "{ms} ms");
                pushbacks += 1;
            }
        }
        assert!(pushbacks > 0, "ten calls in a row meet the back-off");
    }

    async fn calls_recover_when_the_upstream_comes_back(driver) {
        let mut up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        client.echo("before").await.expect("first call");
        up.restart();
        // The proxy's old connection is dead; within its reconnect back-off
        // (20-100 ms in tests) calls must succeed again.
        let mut recovered = false;
        for _ in 0..200 {
            match client.echo("after").await {
                Ok(m) => {
                    assert_eq!(m, "after");
                    recovered = true;
                    break;
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        assert!(recovered, "calls did not recover after the upstream restarted");
    }

    async fn drain_lets_a_stream_in_flight_finish(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let addr = proxy.local_addr();
        let mut client = Client::connect(addr).await;
        let (tx, mut replies) = client.open_bidi(1).await;
        ping(&tx, &mut replies, "before drain").await;
        proxy.drain();
        // The stream in flight goes on working after GOAWAY...
        ping(&tx, &mut replies, "during drain").await;
        // ...while the listener is closed to new connections.
        let mut refused = false;
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "new connections are still accepted while draining");
        ping(&tx, &mut replies, "still draining").await;
        drop(tx);
        assert!(replies.next().await.is_none(), "the stream ends with OK");
        drop(client);
        // With its last stream done, the proxy exits well before the 30 s
        // drain timeout.
        tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || proxy.wait()))
            .await
            .expect("the proxy exits once drained")
            .expect("join");
    }

    async fn hostile_connections_do_not_disturb_a_call(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let addr = proxy.local_addr();
        let mut client = Client::connect(addr).await;
        let (tx, mut replies) = client.open_bidi(1).await;
        ping(&tx, &mut replies, "one").await;
        tokio::task::spawn_blocking(move || {
            // Port probes: connect and close.
            for _ in 0..20 {
                drop(std::net::TcpStream::connect(addr).expect("connect"));
            }
            // HTTP/1.1 and garbage: the proxy closes them.
            for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xffu8; 64][..], b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"] {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                let _ = s.write_all(junk);
                let mut buf = [0u8; 1024];
                // Read until the proxy closes the connection (0) or resets it.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
        })
        .await
        .expect("hostile clients");
        // A silent client that never sends the preface stays open meanwhile.
        let _silent = std::net::TcpStream::connect(addr).expect("connect");
        ping(&tx, &mut replies, "two").await;
        assert_eq!(client.clone().echo("fresh").await.expect("a new call"), "fresh");
        drop(tx);
        assert!(replies.next().await.is_none());
    }

    async fn a_second_proxy_on_the_same_port_is_refused(driver) {
        let up = Upstream::start("a");
        let first = proxy_to(driver, up.addr());
        let mut builder = ProxyBuilder::new(first.local_addr()).driver(driver);
        let a = builder.cluster("a", [up.addr()]);
        match builder.start(move |_| move |_: &grpc_proxy::Call<'_>| Route::to(a)) {
            Err(StartError::Bind { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse),
            Err(other) => panic!("expected a bind error, got {other}"),
            Ok(_) => panic!("a second proxy bound a port in use"),
        }
        // The first one still serves.
        assert_eq!(Client::connect(first.local_addr()).await.echo("x").await.expect("call"), "x");
    }
}

/// A bare h2 connection to the proxy and a handle to await its end.
async fn bare_client(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("handshake");
    (
        send,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    )
}

proxy_test! {
    async fn an_idle_connection_gets_goaway_and_closes(driver) {
        let up = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nidle = \"200ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let (send, connection) = bare_client(addr).await;
        // One call, then silence: the proxy retires the connection.
        let mut ready = send.ready().await.expect("ready");
        let (response, mut body) = ready.send_request(request(addr, "Unary"), false).expect("send");
        body.send_data(frame(b"hi"), true).expect("data");
        assert_eq!(response.await.expect("response").status(), 200);
        drop(ready);
        tokio::time::timeout(Duration::from_secs(20), connection)
            .await
            .expect("the proxy closes an idle connection")
            .expect("join");
    }

    async fn a_connection_quiet_after_its_calls_lets_its_buffer_go_and_serves_on(driver) {
        // Scenario: idle_buffer 50 ms. One client sends a large request
        // (its connection's reads grow to 64 KiB), then is quiet across
        // several of the keeper's looks, which give up its pending read
        // and the buffer with it; another keeps a bidi stream open and
        // idle across them (a connection with a call is not asked). Both
        // go on as before.
        let up = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nidle_buffer = \"50ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let big = Bytes::from(vec![7u8; 512 << 10]);
        let mut quiet = Client::connect(addr).await;
        assert_eq!(quiet.echo(big.clone()).await.expect("a large call"), big);
        let mut streaming = Client::connect(addr).await;
        let (tx, mut replies) = streaming.open_bidi(4).await;
        ping(&tx, &mut replies, "before").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        ping(&tx, &mut replies, "after").await;
        assert_eq!(quiet.echo(big.clone()).await.expect("a large call after"), big);
        assert_eq!(quiet.echo("small").await.expect("a small call after"), "small");
        drop(tx);
        assert!(replies.next().await.is_none(), "the stream ends cleanly");
    }

    async fn a_frame_part_read_survives_the_quiet_looks(driver) {
        // A client with no calls sends half a PING and pauses across
        // several of the keeper's looks (idle_buffer 50 ms): the half it
        // sent is held, not given up with the pending read, and the
        // PING is answered once the rest comes. Then a call (answered
        // after 200 ms) with the HEADERS of a second one behind it, without
        // END_HEADERS; the first call ends, the connection is quiet across
        // more looks and gives back its room, and then the CONTINUATION
        // comes: the block begun was kept.
        use grpc_proxy_tests::peer::{flag, frame, grpc_block, grpc_call, kind, message, Peer};
        let up = Upstream::start_slow("a", Duration::from_millis(200));
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nidle_buffer = \"50ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let ping = frame(kind::PING, 0, 0, b"halfway!");
        tokio::task::spawn_blocking(move || {
            let mut peer = Peer::connect(addr, &[]);
            peer.send_raw(&ping[..5]);
            std::thread::sleep(Duration::from_millis(400));
            peer.send_raw(&ping[5..]);
            peer.expect_ping_ack(*b"halfway!")?;
            let block = grpc_block();
            let (first, rest) = block.split_at(block.len() / 2);
            let mut both = grpc_call(1, b"first");
            both.extend(frame(kind::HEADERS, 0, 3, first));
            peer.send(&both);
            peer.expect_stream_end(1)?;
            std::thread::sleep(Duration::from_millis(400));
            peer.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 3, rest));
            peer.send(&frame(kind::DATA, flag::END_STREAM, 3, &message(b"late")));
            peer.expect_headers(3)?;
            peer.expect_stream_end(3)
        })
        .await
        .expect("join")
        .expect("the PING and the header block split across pauses are served");
    }

    async fn pings_survive_frequent_quiet_looks(driver) {
        // idle_buffer 1 ms: two clients without calls send PINGs a
        // millisecond or so apart, so the keeper's looks land next to
        // reads over and over. A read given up must never lose what it
        // read: on io_uring it could (the kernel may have read into it
        // already), so the keeper asks only on epoll. Found by review: on
        // io_uring this failed within a few dozen PINGs.
        use grpc_proxy_tests::peer::{frame, kind, Peer};
        let up = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nidle_buffer = \"1ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let clients = (0..2u64).map(|c| {
            tokio::task::spawn_blocking(move || {
                let mut peer = Peer::connect(addr, &[]);
                for i in 0..400u64 {
                    let data = (c << 32 | i).to_be_bytes();
                    peer.send(&frame(kind::PING, 0, 0, &data));
                    peer.expect_ping_ack(data)
                        .map_err(|e| format!("client {c}, PING {i}: {e}"))?;
                    std::thread::sleep(Duration::from_micros(900 + (i % 7) * 100));
                }
                Ok::<(), String>(())
            })
        });
        for client in clients.collect::<Vec<_>>() {
            client.await.expect("join").expect("every PING answered");
        }
    }

    async fn a_client_that_does_not_finish_its_preface_in_time_is_closed(driver) {
        // Scenario: handshake timeout 300 ms. One client connects and says
        // nothing; one sends the preface and stops before SETTINGS; one
        // completes its preface and SETTINGS and then idles. The first two
        // are closed when the timeout passes; the third stays and makes a
        // call long after it.
        let up = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nhandshake = \"300ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let closes = |mut s: std::net::TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        };
        let silent = std::net::TcpStream::connect(addr).expect("connect");
        let mut half = std::net::TcpStream::connect(addr).expect("connect");
        half.write_all(grpc_proxy_tests::peer::PREFACE).expect("preface");
        let mut whole = grpc_proxy_tests::peer::Peer::connect(addr, &[]);
        let started = std::time::Instant::now();
        let (silent, half) = tokio::task::spawn_blocking(move || (closes(silent), closes(half)))
            .await
            .expect("join");
        assert!(silent, "the silent client is closed");
        assert!(half, "the client without SETTINGS is closed");
        assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
        tokio::time::sleep(Duration::from_millis(300)).await;
        whole.send(&grpc_proxy_tests::peer::grpc_call(1, b"late but welcome"));
        let head = whole.expect_headers(1).expect("the settled connection still serves");
        assert!(!head.ends_stream(), "a response with a body");
        whole.expect_stream_end(1).expect("the call ends");
    }

    async fn max_connection_age_sends_goaway_and_lets_streams_finish(driver) {
        let up = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[timeouts]\nidle = \"0s\"\nmax_connection_age = \"300ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let (send, connection) = bare_client(addr).await;
        let mut ready = send.clone().ready().await.expect("ready");
        let (response, mut body) = ready.send_request(request(addr, "Bidi"), false).expect("send");
        body.send_data(frame(b"one"), false).expect("data");
        let mut replies = response.await.expect("response").into_body();
        let first = replies.data().await.expect("a reply").expect("ok");
        assert_eq!(&first[5..], b"one");
        // The connection ages out: GOAWAY makes new streams impossible...
        let mut goaway = false;
        for _ in 0..1000 {
            if send.clone().ready().await.is_err() {
                goaway = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(goaway, "no GOAWAY after the maximum connection age");
        // ...while the stream in flight goes on and ends normally.
        body.send_data(frame(b"two"), true).expect("data after GOAWAY");
        let second = replies.data().await.expect("a reply").expect("ok");
        assert_eq!(&second[5..], b"two");
        let trailers = replies.trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers["grpc-status"], "0");
        drop((send, ready));
        tokio::time::timeout(Duration::from_secs(20), connection)
            .await
            .expect("the connection closes once its stream is done")
            .expect("join");
    }
}

/// A client connection with a small receive buffer that asks for a
/// server stream of `count` messages of 16 KiB, reads nothing until the
/// proxy has the whole response, then sends a connection error (DATA on
/// stream 0) with 65 KiB after it that the proxy, closing, never reads.
fn unread_bytes_at_a_connection_error(
    addr: std::net::SocketAddr,
    count: &'static str,
    window: u32,
    ready: impl Fn(&std::net::TcpStream) -> bool,
) -> std::net::TcpStream {
    use grpc_proxy_tests::peer::{
        block, flag, frame, kind, message, setting, settings_frame, window_update, PREFACE,
    };
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut tcp: std::net::TcpStream = socket.into();
    tcp.set_nodelay(true).expect("nodelay");
    let mut fields = grpc_proxy_tests::peer::grpc_fields();
    fields[2] = (":path", "/test.Echo/ServerStream");
    fields.push(("x-count", count));
    let mut hello = PREFACE.to_vec();
    hello.extend(settings_frame(&[(setting::INITIAL_WINDOW_SIZE, window)]));
    hello.extend(window_update(0, 0x7fff_0000));
    // The proxy's SETTINGS went out at accept; they are acknowledged unread.
    hello.extend(frame(kind::SETTINGS, flag::ACK, 0, &[]));
    hello.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields)));
    let payload = [7u8; (16 << 10) - 5];
    hello.extend(frame(kind::DATA, flag::END_STREAM, 1, &message(&payload)));
    tcp.write_all(&hello).expect("the call");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready(&tcp) {
        assert!(
            std::time::Instant::now() < deadline,
            "the response never came"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut error = frame(kind::DATA, 0, 0, b"on stream 0");
    error.extend(frame(0xfe, 0, 0, &vec![0u8; 65 << 10]));
    tcp.write_all(&error).expect("the connection error");
    tcp
}

/// Reads everything at 4 KiB per millisecond: the frame types in order,
/// and how the connection ended.
fn read_slowly(mut tcp: std::net::TcpStream) -> (Vec<u8>, Result<(), std::io::Error>) {
    let (mut wire, mut chunk) = (Vec::new(), [0u8; 4096]);
    let end = loop {
        match tcp.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => wire.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut kinds = Vec::new();
    let mut at = 0;
    while wire.len() >= at + 9 {
        let len = u32::from_be_bytes([0, wire[at], wire[at + 1], wire[at + 2]]) as usize;
        kinds.push(wire[at + 3]);
        at += 9 + len;
    }
    (kinds, end)
}

/// Whether `proxy` counts one call finished OK.
fn one_call_finished(proxy: &grpc_proxy::ProxyHandle) -> bool {
    proxy.metrics().render().lines().any(|l| {
        l.starts_with("grpc_proxy_route_calls_finished_total")
            && l.contains("\"OK\"")
            && l.ends_with(" 1")
    })
}

proxy_test! {
    async fn a_client_reading_slowly_gets_the_last_frames_of_a_connection_closed_with_its_bytes_unread(driver) {
        let up = Upstream::start("a");
        let proxy = std::sync::Arc::new(proxy_to(driver, up.addr()));
        let addr = proxy.local_addr();
        let (kinds, end) = tokio::task::spawn_blocking(move || {
            read_slowly(unread_bytes_at_a_connection_error(addr, "32", 0x7fff_ffff, |_| {
                one_call_finished(&proxy)
            }))
        })
        .await
        .expect("the client");
        use grpc_proxy_tests::peer::kind;
        let data = kinds.iter().filter(|&&k| k == kind::DATA).count();
        // Every message, the trailers, then GOAWAY, and the end of the stream
        // rather than a reset that threw away what the kernel still held.
        assert!(end.is_ok(), "the connection was reset after {data} DATA frames and {kinds:?}: {end:?}");
        assert!(data >= 32, "{data} DATA frames");
        assert_eq!(kinds.last(), Some(&kind::GOAWAY), "{kinds:?}");
    }

    async fn a_client_that_reads_nothing_is_let_go_after_the_linger(driver) {
        let up = Upstream::start("a");
        let toml = format!("[timeouts]\nlinger = \"300ms\"\n{}\n[[routes]]\ncluster = \"a\"\n", grpc_proxy_tests::cluster("a", up.addr()));
        let proxy = std::sync::Arc::new(grpc_proxy_tests::proxy(driver, &toml));
        let addr = proxy.local_addr();
        let reset = tokio::task::spawn_blocking(move || {
            // 12 KiB of response (the stream window the client gives):
            // more than the client's receive buffer takes, far less than
            // the proxy's send buffer holds, so its writer finishes. The
            // error goes once the first bytes have come.
            let mut tcp = unread_bytes_at_a_connection_error(addr, "4", 12 << 10, |tcp| {
                tcp.set_nonblocking(true).expect("nonblocking");
                let seen = tcp.peek(&mut [0u8; 16 << 10]).unwrap_or(0);
                tcp.set_nonblocking(false).expect("blocking");
                seen >= 2048
            });
            // While the proxy lingers it reads what comes and throws it
            // away; once it has closed, what comes makes the kernel reset
            // the connection.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let _ = tcp.write_all(&grpc_proxy_tests::peer::frame(grpc_proxy_tests::peer::kind::PING, 0, 0, &[0; 8]));
                match socket2::SockRef::from(&tcp).take_error().expect("SO_ERROR") {
                    Some(e) => return e,
                    None if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    None => panic!("the proxy still holds a connection whose client reads nothing"),
                }
            }
        })
        .await
        .expect("the client");
        assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset, "{reset}");
    }
}
