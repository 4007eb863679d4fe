//! The engine's frame codec and HPACK against `h2`, an implementation we
//! did not write, in both directions.
//!
//! - h2's client encodes requests (with its dynamic table, Huffman coding
//!   and never-indexed fields) and our parser and decoder read them.
//! - Our encoder writes requests, split into HEADERS and CONTINUATION
//!   frames, and h2's server reads them (all but the never-indexed flag,
//!   which h2's decoder drops).
//!
//! Header lists are generated, and several go over one connection so that
//! h2's dynamic table fills and evicts.

use std::collections::BTreeMap;

use bytes::{Buf, BytesMut};
use grpc_proxy::hpack::{encode_field, Decoder};
use grpc_proxy::http2::frame::{self, flag, kind, Frame, Head, HEAD_LEN, PREFACE};
use http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request's regular headers: (name, value, sensitive).
type Fields = Vec<(String, String, bool)>;

fn header_lists() -> impl Strategy<Value = Vec<Fields>> {
    let name = prop_oneof![
        Just("content-type".to_owned()),
        Just("grpc-timeout".to_owned()),
        Just("authorization".to_owned()),
        Just("user-agent".to_owned()),
        "x-[a-z0-9-]{1,12}",
    ];
    let value = "[ -~]{0,120}".prop_map(|v| v.trim().to_owned());
    let field = (name, value, any::<bool>());
    proptest::collection::vec(proptest::collection::vec(field, 0..12), 1..6)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// What one request came to on the far side: pseudo-headers by name, and
/// regular fields in order.
#[derive(Debug, PartialEq)]
struct Seen {
    pseudo: BTreeMap<String, String>,
    fields: Fields,
}

fn expected(path: &str, fields: &Fields) -> Seen {
    let mut map = http::HeaderMap::new();
    for (name, value, sensitive) in fields {
        let mut v = HeaderValue::from_str(value).expect("a value");
        v.set_sensitive(*sensitive);
        map.append(HeaderName::from_bytes(name.as_bytes()).expect("a name"), v);
    }
    Seen {
        pseudo: [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", path),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect(),
        // A HeaderMap groups a name's values at its first place; both ends
        // see it in that order.
        fields: fields_of(&map),
    }
}

fn fields_of(map: &http::HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                v.to_str().expect("ascii").to_owned(),
                v.is_sensitive(),
            )
        })
        .collect()
}

/// Reads frames until `want` requests' header blocks have arrived,
/// answering SETTINGS, and decodes each block with our decoder.
async fn read_requests(io: &mut tokio::io::DuplexStream, want: usize) -> Vec<Seen> {
    let mut buf = BytesMut::new();
    while buf.len() < PREFACE.len() {
        io.read_buf(&mut buf).await.expect("read");
    }
    assert_eq!(&buf[..PREFACE.len()], PREFACE);
    buf.advance(PREFACE.len());
    let mut decoder = Decoder::new(4096);
    let mut block = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < want {
        let head = loop {
            if buf.len() >= HEAD_LEN {
                let head = Head::parse(buf[..HEAD_LEN].try_into().expect("nine"));
                if buf.len() >= HEAD_LEN + head.length as usize {
                    break head;
                }
            }
            assert!(io.read_buf(&mut buf).await.expect("read") > 0, "h2 hung up");
        };
        head.check_size(16_384).expect("within our frame size");
        let payload = &buf[HEAD_LEN..HEAD_LEN + head.length as usize];
        let (fragment, end) = match frame::parse(head, payload).expect("a valid frame") {
            Frame::Settings { ack: false, .. } => {
                let mut ack = Vec::new();
                frame::write_settings_ack(&mut ack);
                io.write_all(&ack).await.expect("write");
                (None, false)
            }
            Frame::Headers {
                fragment,
                end_headers,
                ..
            } => (Some(fragment), end_headers),
            Frame::Continuation {
                fragment,
                end_headers,
                ..
            } => (Some(fragment), end_headers),
            _ => (None, false),
        };
        if let Some(fragment) = fragment {
            block.extend_from_slice(fragment);
        }
        if end {
            let mut one = Seen {
                pseudo: BTreeMap::new(),
                fields: Vec::new(),
            };
            decoder
                .decode(&block, usize::MAX, |f| {
                    let name = String::from_utf8(f.name.to_vec()).expect("utf-8");
                    let value = String::from_utf8(f.value.to_vec()).expect("utf-8");
                    if name.starts_with(':') {
                        one.pseudo.insert(name, value);
                    } else {
                        one.fields.push((name, value, f.sensitive));
                    }
                })
                .expect("h2's block decodes");
            seen.push(one);
            block.clear();
        }
        buf.advance(HEAD_LEN + head.length as usize);
    }
    seen
}

fn h2_encodes_we_decode(lists: &[Fields]) -> (Vec<Seen>, Vec<Seen>) {
    runtime().block_on(async {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let mut settings = Vec::new();
        frame::write_settings(&mut settings, []);
        server_io.write_all(&settings).await.expect("write");
        let (mut send, connection) = h2::client::handshake(client_io).await.expect("handshake");
        let driver = tokio::spawn(connection);
        let mut want = Vec::new();
        for (i, fields) in lists.iter().enumerate() {
            let path = format!("/pkg.Svc/M{i}");
            let mut request = Request::post(format!("http://example.com{path}"));
            for (name, value, sensitive) in fields {
                let mut v = HeaderValue::from_str(value).expect("a value");
                v.set_sensitive(*sensitive);
                request = request.header(name.as_str(), v);
            }
            send = send.ready().await.expect("ready");
            let _response = send
                .send_request(request.body(()).expect("a request"), true)
                .expect("sent");
            want.push(expected(&path, fields));
        }
        let seen = read_requests(&mut server_io, lists.len()).await;
        driver.abort();
        (seen, want)
    })
}

/// Writes a header block as HEADERS plus CONTINUATIONs of at most `max`.
fn write_block(out: &mut Vec<u8>, stream: u32, block: &[u8], max: usize) {
    let mut chunks = block.chunks(max).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let (k, mut flags) = if first {
            (kind::HEADERS, flag::END_STREAM)
        } else {
            (kind::CONTINUATION, 0)
        };
        if last {
            flags |= flag::END_HEADERS;
        }
        frame::write_head(out, chunk.len(), k, flags, stream);
        out.extend_from_slice(chunk);
        first = false;
        if last {
            break;
        }
    }
}

fn we_encode_h2_decodes(lists: &[Fields], max: usize) -> (Vec<Seen>, Vec<Seen>) {
    runtime().block_on(async {
        let (mut client_io, server_io) = tokio::io::duplex(1 << 20);
        let mut out = PREFACE.to_vec();
        frame::write_settings(&mut out, []);
        let mut want = Vec::new();
        for (i, fields) in lists.iter().enumerate() {
            let path = format!("/pkg.Svc/M{i}");
            let mut block = Vec::new();
            encode_field(b":method", b"POST", false, &mut block);
            encode_field(b":scheme", b"http", false, &mut block);
            encode_field(b":authority", b"example.com", false, &mut block);
            encode_field(b":path", path.as_bytes(), false, &mut block);
            for (name, value, sensitive) in fields {
                encode_field(name.as_bytes(), value.as_bytes(), *sensitive, &mut block);
            }
            write_block(&mut out, 2 * i as u32 + 1, &block, max);
            // h2's decoder does not mark never-indexed fields sensitive
            // (a TODO in its decoder), so only the other direction and our
            // own round trip can check that flag.
            let mut want_one = expected(&path, fields);
            for field in &mut want_one.fields {
                field.2 = false;
            }
            want.push(want_one);
        }
        client_io.write_all(&out).await.expect("write");
        let mut server = h2::server::handshake(server_io).await.expect("handshake");
        let mut seen = Vec::new();
        while seen.len() < lists.len() {
            let (request, _respond) = server.accept().await.expect("a request").expect("valid");
            let uri = request.uri();
            seen.push(Seen {
                pseudo: [
                    (":method", request.method().as_str()),
                    (":scheme", uri.scheme_str().unwrap_or("")),
                    (":authority", uri.authority().map_or("", |a| a.as_str())),
                    (":path", uri.path()),
                ]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
                fields: fields_of(request.headers()),
            });
        }
        (seen, want)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn h2s_requests_decode_as_sent(lists in header_lists()) {
        let (seen, want) = h2_encodes_we_decode(&lists);
        prop_assert_eq!(seen, want);
    }

    #[test]
    fn our_requests_decode_in_h2_as_sent(lists in header_lists(), max in 1usize..200) {
        let (seen, want) = we_encode_h2_decodes(&lists, max);
        prop_assert_eq!(seen, want);
    }
}

mod connection {
    //! Our connection machine as a server, with h2's client as the peer:
    //! an echo service that answers each request with its own body and
    //! trailers, and returns credit only as it echoes, so the client's
    //! flow control is exactly as fast as ours drains.

    use std::collections::{BTreeMap, VecDeque};

    use bytes::{Bytes, BytesMut};
    use grpc_proxy::http2::connection::{Connection, Event, Limits, Role};
    use grpc_proxy::http2::headers::{pseudo, Kind};
    use grpc_proxy::http2::outbox::Outbox;
    use http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Echo {
        queued: VecDeque<Bytes>,
        ended: bool,
        head_sent: bool,
        done: bool,
    }

    /// Serves echo on `io` until the peer closes it; returns the paths seen
    /// and the streams the peer reset.
    async fn serve(mut io: tokio::io::DuplexStream, limits: Limits) -> (Vec<String>, Vec<u32>) {
        let mut out = Outbox::new();
        let mut conn = Connection::new(Role::Server, limits, &mut out);
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut calls: BTreeMap<u32, Echo> = BTreeMap::new();
        let mut paths = Vec::new();
        let mut resets = Vec::new();
        loop {
            let wrote = out.take_all();
            if !wrote.is_empty() {
                io.write_all(&wrote).await.expect("write");
            }
            if io.read_buf(&mut buf).await.expect("read") == 0 {
                return (paths, resets);
            }
            conn.recv(&mut buf, &mut out, |event| match event {
                Event::Headers {
                    stream,
                    list,
                    end_stream,
                } => {
                    if list.kind() == Kind::Request {
                        let path = list.pseudo(pseudo::PATH).expect("a path");
                        paths.push(String::from_utf8_lossy(path).into_owned());
                    }
                    let call = calls.entry(stream).or_default();
                    call.ended |= end_stream;
                }
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    let call = calls.entry(stream).or_default();
                    call.queued.push_back(data);
                    call.ended |= end_stream;
                }
                Event::Reset { stream, .. } => {
                    calls.remove(&stream);
                    resets.push(stream);
                }
                _ => {}
            })
            .expect("the peer keeps the protocol");
            for (&id, call) in calls.iter_mut() {
                if call.done {
                    continue;
                }
                if !conn.streams().get(id).is_some_and(|s| s.head_received) {
                    continue;
                }
                if !call.head_sent {
                    let head: [(&[u8], &[u8], bool); 2] = [
                        (b":status", b"200", false),
                        (b"content-type", b"application/grpc", false),
                    ];
                    conn.send_headers(id, head.into_iter(), false, &mut out)
                        .expect("open");
                    call.head_sent = true;
                }
                while let Some(front) = call.queued.front_mut() {
                    let room = conn.send_capacity(id);
                    if room == 0 {
                        break;
                    }
                    let chunk = front.split_to(front.len().min(room));
                    if front.is_empty() {
                        call.queued.pop_front();
                    }
                    let n = chunk.len() as u32;
                    conn.send_data(id, chunk, false, &mut out)
                        .expect("within capacity");
                    conn.release(id, n, &mut out);
                }
                if call.ended && call.queued.is_empty() {
                    let trailers: [(&[u8], &[u8], bool); 1] = [(b"grpc-status", b"0", false)];
                    conn.send_headers(id, trailers.into_iter(), true, &mut out)
                        .expect("open");
                    call.done = true;
                }
            }
            calls.retain(|_, c| !c.done);
        }
    }

    #[test]
    fn h2_clients_calls_echo_through_our_server_machine() {
        let rt = super::runtime();
        // A flow-control bug shows as a stall: fail it rather than hang.
        let stall = std::time::Duration::from_secs(120);
        rt.block_on(async {
            tokio::time::timeout(stall, async {
                let (client_io, server_io) = tokio::io::duplex(64 << 10);
                let limits = Limits {
                    stream_window: 64 << 10,
                    connection_window: 256 << 10,
                    ..Limits::default()
                };
                let server = tokio::spawn(serve(server_io, limits));
                let (send, connection) = h2::client::handshake(client_io).await.expect("handshake");
                let driver = tokio::spawn(connection);
                let mut calls = Vec::new();
                for i in 0..8usize {
                    let mut send = send.clone().ready().await.expect("ready");
                    calls.push(tokio::spawn(async move {
                        let request = Request::post(format!("http://x/echo.Echo/Call{i}"))
                            .body(())
                            .expect("request");
                        let (response, mut body) = send.send_request(request, false).expect("sent");
                        let len = i * 150_000 + 7;
                        let sent: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
                        let payload = Bytes::from(sent.clone());
                        let writer = tokio::spawn(async move {
                            let mut rest = payload;
                            while !rest.is_empty() {
                                body.reserve_capacity(rest.len().min(40_000));
                                let granted = std::future::poll_fn(|cx| body.poll_capacity(cx))
                                    .await
                                    .expect("capacity")
                                    .expect("no error");
                                let chunk = rest.split_to(granted.min(rest.len()));
                                body.send_data(chunk, false).expect("data");
                            }
                            body.send_data(Bytes::new(), true).expect("end");
                        });
                        let response = response.await.expect("a response");
                        let mut recv = response.into_body();
                        let mut got = Vec::new();
                        while let Some(chunk) = recv.data().await {
                            let chunk = chunk.expect("data");
                            recv.flow_control()
                                .release_capacity(chunk.len())
                                .expect("release");
                            got.extend_from_slice(&chunk);
                        }
                        let trailers = recv.trailers().await.expect("trailers").expect("some");
                        writer.await.expect("writer");
                        assert_eq!(trailers.get("grpc-status").expect("status"), "0");
                        assert_eq!(got.len(), sent.len(), "call {i}");
                        assert!(got == sent, "call {i} echoed intact");
                    }));
                }
                for call in calls {
                    call.await.expect("call");
                }
                drop(send);
                driver.abort();
                let (paths, _) = server.await.expect("server");
                assert_eq!(paths.len(), 8);
            })
            .await
        })
        .expect("every call finishes");
    }
}

mod client_role {
    //! Our connection machine as a client, with h2's server as the peer:
    //! calls go out with bodies larger than h2's default windows, and the
    //! answers come back whole.

    use bytes::{Bytes, BytesMut};
    use grpc_proxy::http2::connection::{Connection, Event, Limits, Role};
    use grpc_proxy::http2::headers::{pseudo, Kind};
    use grpc_proxy::http2::outbox::Outbox;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// h2's server: answers each request with its body reversed and a
    /// grpc-status trailer.
    async fn h2_server(io: tokio::io::DuplexStream) {
        let mut server = h2::server::handshake(io).await.expect("handshake");
        while let Some(accepted) = server.accept().await {
            let (request, mut respond) = accepted.expect("a request");
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("data");
                    body.flow_control()
                        .release_capacity(chunk.len())
                        .expect("release");
                    got.extend_from_slice(&chunk);
                }
                got.reverse();
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response");
                let mut send = respond.send_response(response, false).expect("head");
                let mut rest = Bytes::from(got);
                while !rest.is_empty() {
                    send.reserve_capacity(rest.len());
                    let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .expect("capacity")
                        .expect("no error");
                    send.send_data(rest.split_to(granted.min(rest.len())), false)
                        .expect("data");
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().expect("value"));
                send.send_trailers(trailers).expect("trailers");
            });
        }
    }

    #[test]
    fn our_client_machine_calls_h2s_server() {
        let rt = super::runtime();
        rt.block_on(async {
            let (mut io, server_io) = tokio::io::duplex(64 << 10);
            tokio::spawn(h2_server(server_io));
            let mut out = Outbox::new();
            let mut conn = Connection::new(Role::Client, Limits::default(), &mut out);
            let mut buf = BytesMut::new();
            let bodies: Vec<Vec<u8>> = (0..6usize)
                .map(|i| (0..i * 90_000 + 3).map(|b| (b % 251) as u8).collect())
                .collect();
            // The peer's SETTINGS come first: wait for them, as the pool will.
            while !conn.ready() {
                io.write_all(&out.take_all()).await.expect("write");
                io.read_buf(&mut buf).await.expect("read");
                conn.recv(&mut buf, &mut out, |_| {}).expect("valid");
            }
            let mut calls = Vec::new();
            for (i, body) in bodies.iter().enumerate() {
                let path = format!("/rev.Rev/Call{i}");
                let head: [(&[u8], &[u8], bool); 5] = [
                    (b":method", b"POST", false),
                    (b":scheme", b"http", false),
                    (b":authority", b"upstream", false),
                    (b":path", path.as_bytes(), false),
                    (b"content-type", b"application/grpc", false),
                ];
                let id = conn
                    .open(head.into_iter(), false, &mut out)
                    .expect("a stream");
                // (id, unsent body, response body, status, done)
                calls.push((
                    id,
                    Bytes::from(body.clone()),
                    Vec::new(),
                    None::<String>,
                    false,
                ));
            }
            while calls.iter().any(|c| !c.4) {
                for call in calls.iter_mut() {
                    let (id, rest, ..) = call;
                    while conn.send_capacity(*id) > 0 && !rest.is_empty() {
                        let n = conn.send_capacity(*id).min(rest.len());
                        let chunk = rest.split_to(n);
                        let end = rest.is_empty();
                        conn.send_data(*id, chunk, end, &mut out)
                            .expect("within capacity");
                    }
                }
                let wrote = out.take_all();
                if !wrote.is_empty() {
                    io.write_all(&wrote).await.expect("write");
                }
                assert!(io.read_buf(&mut buf).await.expect("read") > 0, "h2 hung up");
                let mut released = Vec::new();
                conn.recv(&mut buf, &mut out, |event| match event {
                    Event::Headers {
                        stream,
                        list,
                        end_stream,
                    } => {
                        let call = calls.iter_mut().find(|c| c.0 == stream).expect("ours");
                        match list.kind() {
                            Kind::Response => {
                                assert_eq!(list.pseudo(pseudo::STATUS), Some(&b"200"[..]))
                            }
                            _ => {
                                call.3 = list
                                    .get(b"grpc-status")
                                    .map(|s| String::from_utf8_lossy(s).into_owned());
                            }
                        }
                        call.4 |= end_stream;
                    }
                    Event::Data {
                        stream,
                        data,
                        end_stream,
                    } => {
                        let call = calls.iter_mut().find(|c| c.0 == stream).expect("ours");
                        call.2.extend_from_slice(&data);
                        released.push((stream, data.len() as u32));
                        call.4 |= end_stream;
                    }
                    Event::Reset { stream, code, .. } => panic!("stream {stream} reset: {code}"),
                    _ => {}
                })
                .expect("h2 keeps the protocol");
                for (stream, n) in released {
                    conn.release(stream, n, &mut out);
                }
            }
            for (i, call) in calls.iter().enumerate() {
                let mut want = bodies[i].clone();
                want.reverse();
                assert!(call.2 == want, "call {i} came back whole");
                assert_eq!(call.3.as_deref(), Some("0"));
            }
            assert!(conn.streams().is_empty(), "every stream closed");
        });
    }
}
