//! HTTP/2 conformance of the upstream leg: a hand-made upstream
//! ([`grpc_proxy_tests::peer`]) takes one gRPC call from the proxy and then
//! misbehaves the way h2spec's client suite does (bad frame sizes, invalid
//! HPACK, CONTINUATION misuse, frames on idle and closed streams, bad
//! SETTINGS, malformed responses). For each case:
//!
//! - the proxy answers the upstream as RFC 9113 says: a connection error is
//!   a GOAWAY with the named code, a stream error a RST_STREAM with it;
//! - the client's call ends with a gRPC status (OK where the upstream only
//!   did something unusual but allowed, and went on to answer);
//! - the next call through the same proxy succeeds, on the same upstream
//!   connection or a new one: one bad upstream connection harms nobody
//!   after it.
//!
//! Cases keep h2spec's numbering (its client mode) where they have one.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_proxy_tests::peer::{
    block, code, flag, frame, grpc_call, grpc_headers, kind, message, priority, rst_stream,
    setting, settings_frame, window_update, Frame, Peer, Seen, Verdict,
};
use grpc_proxy_tests::{proxy_test, proxy_to, Client};
use tonic::{Code, Request};

/// A case gets the upstream end of the proxy's connection and the stream
/// id of the call it carries, whose request has arrived whole.
type Case = fn(&mut Peer, u32) -> Verdict;

/// Whether the call the case is given ends well for the client (any
/// reply) or with a clean gRPC status; and when the proxy itself ends the
/// call's upstream stream for a stream error, whether the client is told
/// so (INTERNAL, naming the error), not that the upstream reset it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Call {
    Ok,
    Fails,
    BrokeStream,
}

const REPLY: &[u8] = b"upstream reply";

/// Runs every case against its own proxy and upstream, and reports all
/// that failed, by number.
async fn run(driver: grpc_proxy::Driver, cases: &[(&str, &str, Call, Case)]) {
    let mut failed = Vec::new();
    for &(id, what, call, case) in cases {
        if let Err(e) = run_case(driver, call, case).await {
            failed.push(format!("{id} {what}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

async fn run_case(driver: grpc_proxy::Driver, call: Call, case: Case) -> Verdict {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = proxy_to(driver, listener.local_addr().expect("addr"));
    let (judged, judged_rx) = std::sync::mpsc::channel::<()>();
    let upstream = std::thread::spawn(move || -> Verdict {
        let mut p = Peer::accept(&listener, &[])?;
        let stream = request(&mut p)?;
        case(&mut p, stream).map_err(|e| format!("the proxy's answer: {e}"))?;
        let _ = judged.send(());
        serve_next(p, &listener).map_err(|e| format!("the next call: {e}"))
    });
    let mut client = Client::connect(proxy.local_addr()).await;
    let first = unary(&mut client).await;
    // The next call goes once the proxy has answered the misbehaviour (a
    // call sent on a connection the upstream then breaks is lost with it,
    // as it should be). It is made whatever became of the first, so that
    // the upstream thread always ends.
    let _ = tokio::task::spawn_blocking(move || judged_rx.recv()).await;
    let second = unary(&mut client).await;
    let verdict = tokio::task::spawn_blocking(move || upstream.join())
        .await
        .expect("join")
        .unwrap_or_else(|_| Err("the upstream thread panicked".into()));
    verdict?;
    match (call, first) {
        (Call::Ok, Ok(_)) => {}
        (Call::Ok, other) => return Err(format!("the call should succeed: {other:?}")),
        (Call::Fails | Call::BrokeStream, Ok(reply)) => {
            return Err(format!("the call should fail: {reply:?}"))
        }
        (Call::Fails, Err(status)) => clean(&status)?,
        (Call::BrokeStream, Err(status)) => broke_stream(&status)?,
    }
    match second {
        Ok(reply) if reply == REPLY => Ok(()),
        other => Err(format!("the next call through the proxy: {other:?}")),
    }
}

/// What a scripted upstream's thread concluded, once it ends.
async fn joined(upstream: std::thread::JoinHandle<Verdict>) -> Verdict {
    tokio::task::spawn_blocking(move || upstream.join())
        .await
        .expect("join")
        .unwrap_or_else(|_| Err("the upstream thread panicked".into()))
}

/// A failure the proxy chose, with a status a client can act on, not a
/// broken transport.
fn clean(status: &tonic::Status) -> Verdict {
    let ok = matches!(
        status.code(),
        Code::Unavailable | Code::Internal | Code::Cancelled | Code::Unknown
    ) && !status.message().contains("transport error")
        && !status.message().contains("h2 protocol error");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the call failed without a clean status: {status:?}"
        ))
    }
}

/// The status of a call whose upstream stream the proxy reset because
/// the upstream broke a rule on it (a stream error the proxy found; a
/// GOAWAY for it, which the RFC always allows, ends the call as `clean`
/// says).
fn broke_stream(status: &tonic::Status) -> Verdict {
    if status.code() == Code::Unavailable {
        return clean(status);
    }
    let named = status.message().contains("upstream broke HTTP/2")
        && status.message().contains("_ERROR")
        || status.message().contains("STREAM_CLOSED");
    if status.code() == Code::Internal && named {
        Ok(())
    } else {
        Err(format!(
            "expected INTERNAL saying how the upstream broke HTTP/2: {status:?}"
        ))
    }
}

async fn unary(client: &mut Client) -> Result<Bytes, tonic::Status> {
    let mut request = Request::new(Bytes::from_static(b"conformance"));
    request.set_timeout(Duration::from_secs(5));
    client.unary("Unary", request).await.map(|r| r.into_inner())
}

/// Reads one whole request (HEADERS, then DATA to END_STREAM) and returns
/// its stream id.
fn request(p: &mut Peer) -> Result<u32, String> {
    let head = next_frame(p, |f| f.kind == kind::HEADERS)?;
    let mut ended = head.ends_stream();
    while !ended {
        ended = next_frame(p, |f| f.kind == kind::DATA && f.stream == head.stream)?.ends_stream();
    }
    Ok(head.stream)
}

/// The next frame `wanted` takes, answering PINGs and SETTINGS on the way.
fn next_frame(p: &mut Peer, wanted: impl Fn(&Frame) -> bool) -> Result<Frame, String> {
    loop {
        match p.read() {
            Seen::Frame(f) if wanted(&f) => return Ok(f),
            Seen::Frame(f) => answer_control(p, &f),
            other => return Err(format!("waiting for a request: {other:?}")),
        }
    }
}

fn answer_control(p: &mut Peer, f: &Frame) {
    if f.kind == kind::PING && f.flags & flag::ACK == 0 {
        p.send(&frame(kind::PING, flag::ACK, 0, &f.payload));
    }
    if f.kind == kind::SETTINGS && f.flags & flag::ACK == 0 {
        p.send(&frame(kind::SETTINGS, flag::ACK, 0, &[]));
    }
}

/// Serves the next request, on this connection or a new one.
fn serve_next(mut p: Peer, listener: &TcpListener) -> Verdict {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((tcp, _)) = listener.accept() {
            tcp.set_nonblocking(false).expect("blocking");
            p = Peer::accepted(tcp, &[])?;
        }
        match p.read_within(Duration::from_millis(20)) {
            Seen::Frame(f) if f.kind == kind::HEADERS && f.flags & flag::END_STREAM == 0 => {
                let stream = f.stream;
                next_frame(&mut p, |d| {
                    d.kind == kind::DATA && d.stream == stream && d.ends_stream()
                })?;
                respond(&mut p, stream);
                // Stay until the proxy has read the answer.
                let _ = p.expect_alive();
                return Ok(());
            }
            Seen::Frame(f) => answer_control(&mut p, &f),
            Seen::Closed => std::thread::sleep(Duration::from_millis(10)),
            Seen::Timeout => {}
        }
    }
    Err("no second call reached the upstream".into())
}

fn head_block() -> Vec<u8> {
    block(&[(":status", "200"), ("content-type", "application/grpc")])
}

fn trailers_block() -> Vec<u8> {
    block(&[("grpc-status", "0")])
}

fn head(stream: u32) -> Vec<u8> {
    frame(kind::HEADERS, flag::END_HEADERS, stream, &head_block())
}

fn body(stream: u32) -> Vec<u8> {
    frame(kind::DATA, 0, stream, &message(REPLY))
}

fn trailers(stream: u32) -> Vec<u8> {
    frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        stream,
        &trailers_block(),
    )
}

/// A whole successful response on `stream`.
fn respond(p: &mut Peer, stream: u32) {
    let mut all = head(stream);
    all.extend(body(stream));
    all.extend(trailers(stream));
    p.send(&all);
}

/// Responds, then checks the connection is still in good standing.
fn respond_alive(p: &mut Peer, stream: u32) -> Verdict {
    respond(p, stream);
    p.expect_alive()
}

const CASES: &[(&str, &str, Call, Case)] = &[
    ("1/1", "a response", Call::Ok, |p, s| respond_alive(p, s)),
    (
        "4.1/1",
        "a frame of unknown type is ignored",
        Call::Ok,
        |p, s| {
            p.send(&frame(0x16, 0, 0, b"unknown!"));
            respond_alive(p, s)
        },
    ),
    ("4.1/2", "undefined flags are ignored", Call::Ok, |p, s| {
        p.send(&frame(kind::PING, 0x16, 0, b"flags!!!"));
        p.expect_ping_ack(*b"flags!!!")?;
        respond_alive(p, s)
    }),
    (
        "4.1/3",
        "the reserved bit of the stream id is ignored",
        Call::Ok,
        |p, s| {
            p.send(&frame(kind::PING, 0, 0x8000_0000, b"reserved"));
            p.expect_ping_ack(*b"reserved")?;
            respond_alive(p, s)
        },
    ),
    ("4.2/1", "a DATA frame of 2^14 octets", Call::Ok, |p, s| {
        // One message that fills the frame: the proxy's first stream
        // window (64 KiB) takes it whole.
        let mut all = head(s);
        all.extend(frame(kind::DATA, 0, s, &message(&[b'x'; 16_384 - 5])));
        all.extend(trailers(s));
        p.send(&all);
        p.expect_alive()
    }),
    (
        "4.2/2",
        "DATA above the proxy's SETTINGS_MAX_FRAME_SIZE",
        Call::BrokeStream,
        |p, s| {
            let max = p.setting(setting::MAX_FRAME_SIZE).unwrap_or(16_384) as usize;
            p.send(&head(s));
            p.send(&frame(kind::DATA, 0, s, &vec![0u8; max + 1]));
            p.expect_stream_error(s, code::FRAME_SIZE_ERROR)
        },
    ),
    (
        "4.2/3",
        "HEADERS above the proxy's SETTINGS_MAX_FRAME_SIZE",
        Call::Fails,
        |p, s| {
            let max = p.setting(setting::MAX_FRAME_SIZE).unwrap_or(16_384) as usize;
            let big = "x".repeat(max);
            let b = block(&[(":status", "200"), ("x-big", &big)]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_connection_error(code::FRAME_SIZE_ERROR)
        },
    ),
    (
        "4.3/1",
        "an invalid header block fragment",
        Call::Fails,
        |p, s| {
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, b"\x00\x0aabc"));
            p.expect_connection_error(code::COMPRESSION_ERROR)
        },
    ),
    (
        "4.3/2",
        "PRIORITY inside a header block",
        Call::Fails,
        |p, s| {
            let b = head_block();
            p.send(&frame(kind::HEADERS, 0, s, &b[..4]));
            p.send(&priority(s, 0, 255));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, s, &b[4..]));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("5.1/1", "idle: DATA", Call::Fails, |p, _| {
        p.send(&frame(kind::DATA, flag::END_STREAM, 2, b"test"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/2", "idle: RST_STREAM", Call::Fails, |p, _| {
        p.send(&rst_stream(2, code::CANCEL));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/3", "idle: WINDOW_UPDATE", Call::Fails, |p, _| {
        p.send(&window_update(2, 100));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/4", "idle: CONTINUATION", Call::Fails, |p, _| {
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            2,
            &head_block(),
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "5.1/5",
        "closed: DATA after RST_STREAM",
        Call::Fails,
        |p, s| {
            p.send(&head(s));
            p.send(&rst_stream(s, code::CANCEL));
            p.send(&frame(kind::DATA, flag::END_STREAM, s, b"test"));
            p.expect_stream_error(s, code::STREAM_CLOSED)
        },
    ),
    (
        "5.1/6",
        "closed: HEADERS after RST_STREAM",
        Call::Fails,
        |p, s| {
            p.send(&head(s));
            p.send(&rst_stream(s, code::CANCEL));
            p.send(&trailers(s));
            p.expect_stream_error(s, code::STREAM_CLOSED)
        },
    ),
    (
        "5.1/7",
        "closed: CONTINUATION after RST_STREAM",
        Call::Fails,
        |p, s| {
            p.send(&head(s));
            p.send(&rst_stream(s, code::CANCEL));
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                s,
                &trailers_block(),
            ));
            p.expect_stream_error_of(s, &[code::STREAM_CLOSED, code::PROTOCOL_ERROR])
        },
    ),
    (
        "5.1/8",
        "closed: DATA after END_STREAM",
        Call::Ok,
        |p, s| {
            respond(p, s);
            p.send(&frame(kind::DATA, flag::END_STREAM, s, b"test"));
            p.expect_connection_error(code::STREAM_CLOSED)
        },
    ),
    (
        "5.1/9",
        "closed: HEADERS after END_STREAM",
        Call::Ok,
        |p, s| {
            respond(p, s);
            p.send(&trailers(s));
            p.expect_connection_error(code::STREAM_CLOSED)
        },
    ),
    (
        "5.1/10",
        "closed: CONTINUATION after END_STREAM",
        Call::Ok,
        |p, s| {
            respond(p, s);
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                s,
                &trailers_block(),
            ));
            p.expect_connection_error_of(&[code::STREAM_CLOSED, code::PROTOCOL_ERROR])
        },
    ),
    (
        "5.1.1/1",
        "HEADERS on an odd stream the proxy never opened",
        Call::Fails,
        |p, s| {
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS,
                s + 2,
                &head_block(),
            ));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "5.1.1/2",
        "HEADERS on an even stream (a push without a promise)",
        Call::Fails,
        |p, _| {
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, 2, &head_block()));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("5.4.1/1", "an invalid PING", Call::Fails, |p, _| {
        p.send(&frame(kind::PING, 0, 0, b"short"));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "5.5/1",
        "an unknown extension frame is ignored",
        Call::Ok,
        |p, s| {
            p.send(&frame(0xff, 0, 0, b"extension frame"));
            p.send(&frame(0xff, 0, s, b"extension frame"));
            respond_alive(p, s)
        },
    ),
    (
        "5.5/2",
        "an unknown frame inside a header block",
        Call::Fails,
        |p, s| {
            let b = head_block();
            p.send(&frame(kind::HEADERS, 0, s, &b[..4]));
            p.send(&frame(0xff, 0, s, b"extension"));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, s, &b[4..]));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.1/1", "DATA on stream 0", Call::Fails, |p, _| {
        p.send(&frame(kind::DATA, 0, 0, b"test"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.1/2",
        "DATA with a pad length past its end",
        Call::Fails,
        |p, s| {
            p.send(&head(s));
            p.send(&frame(kind::DATA, flag::PADDED, s, b"\x06test"));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.1/3",
        "DATA and HEADERS with padding",
        Call::Ok,
        |p, s| {
            let mut hp = vec![3u8];
            hp.extend(head_block());
            hp.extend([0u8; 3]);
            p.send(&frame(
                kind::HEADERS,
                flag::PADDED | flag::END_HEADERS,
                s,
                &hp,
            ));
            let mut dp = vec![5u8];
            dp.extend(message(REPLY));
            dp.extend([0u8; 5]);
            p.send(&frame(kind::DATA, flag::PADDED, s, &dp));
            p.send(&trailers(s));
            p.expect_alive()
        },
    ),
    (
        "6.2/1",
        "HEADERS without END_HEADERS, then PRIORITY",
        Call::Fails,
        |p, s| {
            p.send(&frame(kind::HEADERS, 0, s, &head_block()[..4]));
            p.send(&priority(s, 0, 255));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.2/2", "HEADERS on stream 0", Call::Fails, |p, _| {
        p.send(&frame(kind::HEADERS, flag::END_HEADERS, 0, &head_block()));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.2/3",
        "HEADERS with a pad length past its end",
        Call::Fails,
        |p, s| {
            let mut hp = vec![200u8];
            hp.extend(head_block());
            p.send(&frame(
                kind::HEADERS,
                flag::PADDED | flag::END_HEADERS,
                s,
                &hp,
            ));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.3/1", "PRIORITY on stream 0", Call::Fails, |p, _| {
        p.send(&priority(0, 1, 255));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.3/2",
        "PRIORITY of 4 octets",
        Call::BrokeStream,
        |p, s| {
            p.send(&frame(kind::PRIORITY, 0, s, &[0, 0, 0, 0]));
            p.expect_stream_error(s, code::FRAME_SIZE_ERROR)
        },
    ),
    ("6.4/1", "RST_STREAM on stream 0", Call::Fails, |p, _| {
        p.send(&rst_stream(0, code::CANCEL));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.4/2",
        "RST_STREAM on an idle stream",
        Call::Fails,
        |p, s| {
            p.send(&rst_stream(s + 2, code::CANCEL));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.4/3", "RST_STREAM of 3 octets", Call::Fails, |p, s| {
        p.send(&frame(kind::RST_STREAM, 0, s, &[0, 0, 0]));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "6.5/1",
        "a SETTINGS ACK with a payload",
        Call::Fails,
        |p, _| {
            p.send(&frame(kind::SETTINGS, flag::ACK, 0, &[0, 4, 0, 0, 0, 1]));
            p.expect_connection_error(code::FRAME_SIZE_ERROR)
        },
    ),
    ("6.5/2", "SETTINGS on a stream", Call::Fails, |p, s| {
        p.send(&frame(kind::SETTINGS, 0, s, &[0, 3, 0, 0, 0, 100]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.5/3",
        "SETTINGS whose length is not a multiple of 6",
        Call::Fails,
        |p, _| {
            p.send(&frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0]));
            p.expect_connection_error(code::FRAME_SIZE_ERROR)
        },
    ),
    (
        "6.5.2/1",
        "SETTINGS_ENABLE_PUSH of 2",
        Call::Fails,
        |p, _| {
            p.send(&settings_frame(&[(setting::ENABLE_PUSH, 2)]));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.5.2/2",
        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        Call::Fails,
        |p, _| {
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]));
            p.expect_connection_error(code::FLOW_CONTROL_ERROR)
        },
    ),
    (
        "6.5.2/3",
        "SETTINGS_MAX_FRAME_SIZE below 2^14",
        Call::Fails,
        |p, _| {
            p.send(&settings_frame(&[(setting::MAX_FRAME_SIZE, 16_383)]));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.5.2/4",
        "SETTINGS_MAX_FRAME_SIZE above 2^24-1",
        Call::Fails,
        |p, _| {
            p.send(&settings_frame(&[(setting::MAX_FRAME_SIZE, 1 << 24)]));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.5.2/5",
        "an unknown setting is ignored",
        Call::Ok,
        |p, s| {
            p.send(&settings_frame(&[(0xff, 1)]));
            respond_alive(p, s)
        },
    ),
    ("6.5.3/1", "SETTINGS are acknowledged", Call::Ok, |p, s| {
        p.send(&settings_frame(&[(setting::MAX_CONCURRENT_STREAMS, 50)]));
        loop {
            match p.read() {
                Seen::Frame(f) if f.kind == kind::SETTINGS && f.flags & flag::ACK != 0 => break,
                Seen::Frame(f) => answer_control(p, &f),
                other => return Err(format!("expected a SETTINGS ACK; saw {other:?}")),
            }
        }
        respond_alive(p, s)
    }),
    ("6.7/1", "PING is answered", Call::Ok, |p, s| {
        p.send(&frame(kind::PING, 0, 0, b"h2spec!!"));
        p.expect_ping_ack(*b"h2spec!!")?;
        respond_alive(p, s)
    }),
    ("6.7/2", "a PING ACK is not answered", Call::Ok, |p, s| {
        p.send(&frame(kind::PING, flag::ACK, 0, b"unwanted"));
        p.send(&frame(kind::PING, 0, 0, b"expected"));
        p.expect_ping_ack(*b"expected")?;
        respond_alive(p, s)
    }),
    ("6.7/3", "PING on a stream", Call::Fails, |p, s| {
        p.send(&frame(kind::PING, 0, s, b"onstream"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.7/4", "PING of 6 octets", Call::Fails, |p, _| {
        p.send(&frame(kind::PING, 0, 0, b"sixsix"));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    ("6.8/1", "GOAWAY on a stream", Call::Fails, |p, s| {
        p.send(&frame(kind::GOAWAY, 0, s, &[0, 0, 0, 0, 0, 0, 0, 0]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.8/2",
        "a GOAWAY that keeps the call lets it finish",
        Call::Ok,
        |p, s| {
            let mut g = s.to_be_bytes().to_vec();
            g.extend(code::NO_ERROR.to_be_bytes());
            p.send(&frame(kind::GOAWAY, 0, 0, &g));
            respond(p, s);
            Ok(())
        },
    ),
    (
        "6.9/1",
        "WINDOW_UPDATE of 0 on the connection",
        Call::Fails,
        |p, _| {
            p.send(&window_update(0, 0));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.9/2",
        "WINDOW_UPDATE of 0 on a stream",
        Call::BrokeStream,
        |p, s| {
            p.send(&window_update(s, 0));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    ("6.9/3", "WINDOW_UPDATE of 3 octets", Call::Fails, |p, _| {
        p.send(&frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1]));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "6.9.1/1",
        "a connection window above 2^31-1",
        Call::Fails,
        |p, _| {
            p.send(&window_update(0, 0x7fff_ffff));
            p.send(&window_update(0, 0x7fff_ffff));
            p.expect_connection_error(code::FLOW_CONTROL_ERROR)
        },
    ),
    (
        "6.9.1/2",
        "a stream window above 2^31-1",
        Call::BrokeStream,
        |p, s| {
            p.send(&window_update(s, 0x7fff_ffff));
            p.send(&window_update(s, 0x7fff_ffff));
            p.expect_stream_error(s, code::FLOW_CONTROL_ERROR)
        },
    ),
    (
        "6.10/1",
        "a response head in HEADERS and CONTINUATIONs",
        Call::Ok,
        |p, s| {
            let b = head_block();
            p.send(&frame(kind::HEADERS, 0, s, &b[..3]));
            p.send(&frame(kind::CONTINUATION, 0, s, &b[3..8]));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, s, &b[8..]));
            p.send(&body(s));
            p.send(&trailers(s));
            p.expect_alive()
        },
    ),
    (
        "6.10/2",
        "a header block followed by DATA",
        Call::Fails,
        |p, s| {
            p.send(&frame(kind::HEADERS, 0, s, &head_block()[..4]));
            p.send(&body(s));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.10/3", "CONTINUATION on stream 0", Call::Fails, |p, s| {
        let b = head_block();
        p.send(&frame(kind::HEADERS, 0, s, &b[..4]));
        p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 0, &b[4..]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.10/4",
        "CONTINUATION after HEADERS with END_HEADERS",
        Call::Fails,
        |p, s| {
            p.send(&head(s));
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                s,
                &trailers_block(),
            ));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.10/5",
        "CONTINUATION after CONTINUATION with END_HEADERS",
        Call::Fails,
        |p, s| {
            let b = head_block();
            p.send(&frame(kind::HEADERS, 0, s, &b[..4]));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, s, &b[4..]));
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                s,
                &trailers_block(),
            ));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.10/6", "CONTINUATION after DATA", Call::Fails, |p, s| {
        p.send(&head(s));
        p.send(&body(s));
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            s,
            &trailers_block(),
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "8.1/1",
        "trailers without END_STREAM",
        Call::BrokeStream,
        |p, s| {
            p.send(&head(s));
            p.send(&body(s));
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS,
                s,
                &trailers_block(),
            ));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2/1",
        "an uppercase header name in a response",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[(":status", "200"), ("Content-Type", "application/grpc")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.1/1",
        "an unknown pseudo-header in a response",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[(":status", "200"), (":test", "x")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.1/2",
        "a request pseudo-header in a response",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[(":status", "200"), (":path", "/")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.1/3",
        "a pseudo-header in trailers",
        Call::BrokeStream,
        |p, s| {
            p.send(&head(s));
            p.send(&body(s));
            let b = block(&[(":status", "200"), ("grpc-status", "0")]);
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                s,
                &b,
            ));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.1/4",
        "a pseudo-header after a regular header",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[("content-type", "application/grpc"), (":status", "200")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.2/1",
        "a connection-specific header in a response",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[(":status", "200"), ("connection", "keep-alive")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.4/1",
        "a response without :status",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[("content-type", "application/grpc")]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.1.2.6/1",
        "content-length that the DATA does not match",
        Call::BrokeStream,
        |p, s| {
            let b = block(&[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("content-length", "100"),
            ]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.send(&body(s));
            p.send(&trailers(s));
            p.expect_stream_error(s, code::PROTOCOL_ERROR)
        },
    ),
    (
        "8.2/1",
        "PUSH_PROMISE, which the proxy disabled",
        Call::Fails,
        |p, s| {
            let mut pp = 2u32.to_be_bytes().to_vec();
            pp.extend(block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "x"),
            ]));
            p.send(&frame(kind::PUSH_PROMISE, flag::END_HEADERS, s, &pp));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "hpack 2.3.3/1",
        "an indexed field past the tables",
        Call::Fails,
        |p, s| {
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS,
                s,
                &[0x88, 0x80 | 70],
            ));
            p.expect_connection_error(code::COMPRESSION_ERROR)
        },
    ),
    (
        "hpack 5.2/1",
        "a Huffman string that contains EOS",
        Call::Fails,
        |p, s| {
            let b = [0x88, 0x00, 0x01, b'x', 0x84, 0xff, 0xff, 0xff, 0xff];
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_connection_error(code::COMPRESSION_ERROR)
        },
    ),
    (
        "hpack 6.3/1",
        "a table size update after the first field",
        Call::Fails,
        |p, s| {
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &[0x88, 0x20]));
            p.expect_connection_error(code::COMPRESSION_ERROR)
        },
    ),
    (
        "own/1",
        "a response head past the announced header list size, the stream left open",
        Call::Fails,
        |p, s| {
            // 70 KB decoded, past the 64 KiB announced; the block itself
            // is within what the proxy takes. The proxy fails the call and
            // must end the stream, which the upstream keeps open: else it
            // holds a slot of the connection's stream limit for good.
            let big = "x".repeat(70_000);
            let b = block(&[(":status", "200"), ("x-big", &big)]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, s, &b));
            p.expect_stream_error(s, code::CANCEL)
        },
    ),
];

proxy_test! {
    async fn the_upstream_leg_answers_misbehaving_upstreams_as_the_rfc_says(driver) {
        run(driver, CASES).await;
    }
}

/// Makes one call through a proxy configured with `upstream` (lines of the
/// `[upstream]` table) whose upstream answers with one DATA frame carrying
/// a `len`-byte message. Returns the SETTINGS_MAX_FRAME_SIZE the proxy
/// announced to the upstream, what the client got, and what the upstream
/// saw after its answer (`answered`).
async fn one_frame_reply(
    driver: grpc_proxy::Driver,
    upstream: &str,
    len: usize,
    answered: Case,
) -> (u32, Result<Bytes, tonic::Status>, Verdict) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy = grpc_proxy_tests::proxy(
        driver,
        &format!(
            "{upstream}\n{}\n[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", addr)
        ),
    );
    let upstream = std::thread::spawn(move || -> Result<(u32, Verdict), String> {
        let mut p = Peer::accept(&listener, &[])?;
        let s = request(&mut p)?;
        let max = p.setting(setting::MAX_FRAME_SIZE).unwrap_or(16_384);
        let mut all = head(s);
        all.extend(frame(kind::DATA, 0, s, &message(&pattern(len))));
        all.extend(trailers(s));
        p.send(&all);
        Ok((max, answered(&mut p, s)))
    });
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = unary(&mut client).await;
    let (max, verdict) = tokio::task::spawn_blocking(move || upstream.join())
        .await
        .expect("join")
        .expect("the upstream thread panicked")
        .expect("the upstream took the call");
    (max, reply, verdict)
}

/// `len` bytes that differ from their neighbours, so that a slice out of
/// place shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

proxy_test! {
    // Upstreams may send DATA frames of up to 1 MiB (`upstream.max_frame_size`):
    // an upstream then writes a large message in a few frames rather than
    // one per 16 KiB, which is most of its cost of streaming through the
    // proxy. The client, which announced no frame size (16 KiB), gets the
    // message split into frames it takes, whole and in order.
    async fn an_upstream_may_send_frames_above_16_kib_and_the_client_gets_them_split(driver) {
        // 60 KiB: within the first window of an upstream stream (64 KiB).
        let len = 60 << 10;
        let (max, reply, verdict) =
            one_frame_reply(driver, "", len, |p, _| p.expect_alive()).await;
        let reply = reply.expect("the call");
        assert!(reply[..] == pattern(len)[..], "the message arrived changed");
        verdict.expect("the upstream connection goes on");
        assert_eq!(max, 1 << 20, "the frame size announced to upstreams");
    }

    // The limit is the configured one: a frame above it is a FRAME_SIZE_ERROR
    // for the upstream and a clean status for the client.
    async fn a_frame_above_the_configured_upstream_frame_size_is_refused(driver) {
        let (max, reply, verdict) = one_frame_reply(
            driver,
            "max_frame_size = \"32KiB\"",
            32 << 10,
            |p, s| p.expect_stream_error(s, code::FRAME_SIZE_ERROR),
        )
        .await;
        assert_eq!(max, 32 << 10, "the frame size announced to upstreams");
        verdict.expect("FRAME_SIZE_ERROR");
        clean(&reply.expect_err("the call fails")).expect("a clean status");
    }
}

proxy_test! {
    // A call refused unprocessed (REFUSED_STREAM after its whole request)
    // is retried on a new connection, its request replayed from the retry
    // hold. That connection's upstream opens no window, so the replay
    // waits; then the client resets the call. The bytes replayed were
    // credited to the client when first sent: they must not be credited
    // again when the call ends, or the client's connection window drifts
    // past what the proxy holds for it (and past 2^31 - 1 in time).
    async fn a_replay_dropped_when_its_call_ends_is_not_credited_twice(driver) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let proxy = grpc_proxy_tests::proxy(
            driver,
            &format!(
                "[http2]\nconnection_window = 65535\n{}\n[[routes]]\ncluster = \"a\"\n",
                grpc_proxy_tests::cluster("a", addr)
            ),
        );
        let (retried, retried_rx) = std::sync::mpsc::channel::<()>();
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut first = Peer::accept(&listener, &[])?;
            let s = request(&mut first)?;
            first.send(&rst_stream(s, code::REFUSED_STREAM));
            let mut second = Peer::accept(&listener, &[(setting::INITIAL_WINDOW_SIZE, 0)])?;
            next_frame(&mut second, |f| f.kind == kind::HEADERS)?;
            let _ = retried.send(());
            // The next call, after the reset, goes on the first connection.
            let s = request(&mut first)?;
            respond(&mut first, s);
            let _ = first.expect_alive();
            Ok(())
        });
        let client = tokio::task::spawn_blocking(move || -> Result<(u32, u32), String> {
            let mut c = Peer::connect(proxy.local_addr(), &[]);
            let msg = message(&vec![7u8; 20_000]);
            let (a, b) = msg.split_at(10_000);
            c.send(&grpc_headers(1, false));
            c.send(&frame(kind::DATA, 0, 1, a));
            c.send(&frame(kind::DATA, flag::END_STREAM, 1, b));
            retried_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "the call was never retried".to_string())?;
            c.send(&rst_stream(1, code::CANCEL));
            // A second call: its answer comes after all the proxy wrote
            // for the first one's end.
            let second = grpc_call(3, b"x");
            c.send(&second);
            let sent = (msg.len() + message(b"x").len()) as u32;
            let mut credited = 0u32;
            loop {
                match c.read() {
                    Seen::Frame(f) if f.kind == kind::WINDOW_UPDATE && f.stream == 0 => {
                        credited += u32::from_be_bytes([
                            f.payload[0], f.payload[1], f.payload[2], f.payload[3],
                        ]);
                    }
                    Seen::Frame(f) if f.stream == 3 && f.ends_stream() => break,
                    Seen::Frame(_) => {}
                    other => return Err(format!("the second call: {other:?}")),
                }
            }
            drop(proxy);
            Ok((sent, credited))
        })
        .await
        .expect("the client thread");
        let verdict = joined(upstream).await;
        let (sent, credited) = client.expect("the client");
        verdict.expect("the upstream");
        assert!(
            credited <= sent,
            "the client's connection was credited {credited} bytes for {sent} sent"
        );
    }
}

proxy_test! {
    // The upstream answers a call whole (head, message, trailers ending
    // the stream) and, in the same write, breaks the connection (DATA on
    // stream 0). The client has its answer; the proxy must count the call
    // as answered, not as failed with the connection (which would also
    // count against the endpoint for outlier ejection).
    async fn a_call_answered_whole_before_a_connection_error_in_the_same_read_counts_as_answered(driver) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = proxy_to(driver, listener.local_addr().expect("addr"));
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut p = Peer::accept(&listener, &[])?;
            let s = request(&mut p)?;
            let mut all = head(s);
            all.extend(frame(kind::DATA, 0, s, &message(REPLY)));
            all.extend(trailers(s));
            all.extend(frame(kind::DATA, 0, 0, b"x"));
            p.send(&all);
            p.expect_connection_error(code::PROTOCOL_ERROR)
        });
        let mut client = Client::connect(proxy.local_addr()).await;
        let reply = unary(&mut client).await;
        let verdict = joined(upstream).await;
        verdict.expect("the upstream");
        assert_eq!(reply.expect("the call").as_ref(), REPLY);
        let counted = |m: &str| m.contains("cluster_calls_finished_total{");
        grpc_proxy_tests::admin::wait_until(&proxy, "the call counted", counted).await;
        let finished: Vec<String> = proxy
            .metrics()
            .render()
            .lines()
            .filter(|l| l.contains("cluster_calls_finished") && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        assert!(
            finished.len() == 1 && finished[0].contains("grpc_code=\"OK\""),
            "{finished:?}"
        );
    }
}

proxy_test! {
    // The upstream refuses a call (REFUSED_STREAM: unprocessed, safe to
    // retry) and breaks the connection in the same write. With one
    // connection allowed per endpoint, the retry must go on a new
    // connection, not be queued on the one that just failed.
    async fn a_call_refused_as_its_connection_fails_is_retried_on_a_new_one(driver) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = grpc_proxy_tests::proxy(
            driver,
            &format!(
                "max_connections_per_endpoint = 1\n{}\n[[routes]]\ncluster = \"a\"\n",
                grpc_proxy_tests::cluster("a", listener.local_addr().expect("addr"))
            ),
        );
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut p = Peer::accept(&listener, &[])?;
            let s = request(&mut p)?;
            let mut all = rst_stream(s, code::REFUSED_STREAM);
            all.extend(frame(kind::DATA, 0, 0, b"x"));
            p.send(&all);
            p.expect_connection_error(code::PROTOCOL_ERROR)?;
            serve_next(p, &listener)
        });
        let mut client = Client::connect(proxy.local_addr()).await;
        let reply = unary(&mut client).await;
        let verdict = joined(upstream).await;
        verdict.expect("the upstream");
        assert_eq!(reply.expect("the retried call").as_ref(), REPLY);
    }
}

/// A listener whose connections have a 16 KiB receive buffer.
fn small_buffer_listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(16 << 10)
        .expect("receive buffer");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    socket.listen(16).expect("listen");
    socket.into()
}

/// Reads one request at about 250 KB/s for 3.5 s, then at full speed,
/// answering every PING it reads; then answers it. The bytes of DATA
/// read, and the PINGs.
fn read_slowly_and_respond(p: &mut Peer) -> Result<(usize, usize), String> {
    let slow_until = Instant::now() + Duration::from_millis(3500);
    let (mut data, mut pings, mut stream) = (0, 0, None);
    loop {
        let f = match p.read() {
            Seen::Frame(f) => f,
            other => return Err(format!("{other:?} after {data} bytes and {pings} PINGs")),
        };
        match f.kind {
            kind::HEADERS => stream = Some(f.stream),
            kind::DATA => data += f.payload.len(),
            kind::PING if f.flags & flag::ACK == 0 => pings += 1,
            kind::GOAWAY | kind::RST_STREAM => {
                return Err(format!("{f:?} after {data} bytes and {pings} PINGs"))
            }
            _ => {}
        }
        answer_control(p, &f);
        if let (Some(stream), true) = (stream, f.kind == kind::DATA && f.ends_stream()) {
            respond(p, stream);
            let _ = p.expect_alive();
            return Ok((data, pings));
        }
        if Instant::now() < slow_until {
            std::thread::sleep(Duration::from_micros(4 * f.payload.len() as u64));
        }
    }
}

proxy_test! {
    async fn an_upstream_that_reads_a_large_request_slowly_is_not_closed_by_keepalive(driver) {
        // Scenario: the upstream announces the largest windows, then reads
        // an 8 MiB request at about 250 KB/s, answering every PING it
        // reads. The proxy's keepalive PINGs (every second, a second for
        // an answer) wait behind the request's bytes, for seconds: the
        // upstream is reading, so its connection must stay and the call
        // end OK.
        let listener = small_buffer_listener();
        let addr = listener.local_addr().expect("addr");
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut p = Peer::accept(&listener, &[(setting::INITIAL_WINDOW_SIZE, 0x7fff_ffff)])?;
            p.send(&window_update(0, 0x7fff_ffff - 65_535));
            let (data, pings) = read_slowly_and_respond(&mut p)?;
            if data < 8 << 20 || pings == 0 {
                return Err(format!("{data} bytes and {pings} PINGs"));
            }
            Ok(())
        });
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[[clusters]]\nname = \"a\"\nendpoints = [\"{addr}\"]\n\
             keepalive = {{ interval = \"1s\", timeout = \"1s\" }}\n\
             [[routes]]\ncluster = \"a\"\n"
        ));
        let client = grpc_proxy_tests::raw::client(proxy.local_addr(), 65_535).await;
        let head = grpc_proxy_tests::raw::request(proxy.local_addr(), "Unary");
        let mut ready = client.ready().await.expect("ready");
        let (response, mut body) = ready.send_request(head, false).expect("send");
        body.send_data(grpc_proxy_tests::raw::frame(&vec![7u8; (8 << 20) - 5]), true)
            .expect("data");
        let verdict = joined(upstream).await;
        verdict.expect("the upstream");
        let response = response.await.expect("response");
        let mut answer = response.into_body();
        let _ = grpc_proxy_tests::raw::read_body(&mut answer).await;
        let trailers = answer.trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }
}

/// The upstream end of the proxy's first connection to `listener`, with
/// no stream limit of its own (as grpc-go's default), and the stream of
/// the first request's HEADERS, which `first` is told of.
fn accept_unlimited(
    listener: &TcpListener,
    first: tokio::sync::oneshot::Sender<()>,
) -> Result<(Peer, u32), String> {
    let mut p = Peer::accept(listener, &[(setting::MAX_CONCURRENT_STREAMS, 100_000)])?;
    let opened = next_frame(&mut p, |f| f.kind == kind::HEADERS)?;
    let _ = first.send(());
    Ok((p, opened.stream))
}

/// Sends `n` calls with 32 KiB of metadata each to `addr` (the second
/// once `first_seen` says the first reached the upstream), each handed to
/// `each` with its request body.
async fn big_calls<T: Send + 'static>(
    addr: std::net::SocketAddr,
    n: usize,
    first_seen: tokio::sync::oneshot::Receiver<()>,
    each: impl Fn(h2::client::ResponseFuture, h2::SendStream<Bytes>) -> tokio::task::JoinHandle<T>,
) -> Vec<tokio::task::JoinHandle<T>> {
    let client = grpc_proxy_tests::raw::client(addr, 65_535).await;
    let big = "x".repeat(32 << 10);
    let mut first_seen = Some(first_seen);
    let mut calls = Vec::new();
    for i in 0..n {
        if let (1, Some(seen)) = (i, first_seen.take()) {
            // The connection is up and took a call: the rest find it ready.
            seen.await.expect("the first call reached the upstream");
        }
        let mut head = grpc_proxy_tests::raw::request(addr, "Unary");
        head.headers_mut()
            .insert("x-big", big.parse().expect("value"));
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, body) = ready.send_request(head, false).expect("send");
        calls.push(each(response, body));
    }
    calls
}

proxy_test! {
    async fn new_calls_wait_rather_than_pile_heads_on_an_upstream_that_reads_nothing(driver) {
        // Scenario: the upstream takes the connection, then never reads
        // its socket again; clients keep sending calls with 32 KiB of
        // metadata each. Every call's head would go into the connection's
        // write list, without end (the upstream sets no stream limit). Past the connection's write budget
        // (256 KiB here), new calls must wait instead, and at the
        // cluster's pending limit (8) be refused at once, UNAVAILABLE.
        let listener = small_buffer_listener();
        let addr = listener.local_addr().expect("addr");
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let (first, first_seen) = tokio::sync::oneshot::channel::<()>();
        let upstream = std::thread::spawn(move || -> Verdict {
            let _held = accept_unlimited(&listener, first)?;
            let _ = finish.recv();
            Ok(())
        });
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "[limits]\nbuffer_per_connection = 262144\n\
             [[clusters]]\nname = \"a\"\nendpoints = [\"{addr}\"]\nmax_pending_calls = 8\n\
             [[routes]]\ncluster = \"a\"\n"
        ));
        let responses = big_calls(proxy.local_addr(), 400, first_seen, |response, body| {
            tokio::spawn(async move {
                let _body = body;
                let answer = tokio::time::timeout(Duration::from_secs(2), response).await;
                matches!(answer, Ok(Ok(r)) if r.headers().get("grpc-status").map(|s| s.as_bytes()) == Some(b"14"))
            })
        })
        .await;
        let mut refused = 0;
        for response in responses {
            refused += usize::from(response.await.expect("task"));
        }
        let _ = done.send(());
        joined(upstream).await.expect("the upstream");
        // 12.8 MB of heads: the budget and the kernel's buffers (a few
        // MB) take some, 8 wait, and the rest are refused.
        assert!(refused > 150, "{refused} of 400 calls refused at the pending limit");
    }
}

proxy_test! {
    async fn calls_that_waited_for_a_connection_at_its_budget_go_once_it_drains(driver) {
        // Scenario: one connection per endpoint. The upstream stops
        // reading its socket while 200 calls with 32 KiB of metadata each
        // come: past the connection's write budget (256 KiB) and what the
        // kernel takes, calls wait for it. Then the upstream reads again
        // and takes every request before it answers any: every call must
        // go through, the waiting ones once the writer has drained.
        let listener = small_buffer_listener();
        let addr = listener.local_addr().expect("addr");
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        let (first, first_seen) = tokio::sync::oneshot::channel::<()>();
        let upstream = std::thread::spawn(move || -> Verdict {
            let (mut p, opened) = accept_unlimited(&listener, first)?;
            // Replies of 300 bytes: h2 clients refuse to buffer many
            // small DATA frames at once (under 256 bytes).
            let answer = |p: &mut Peer, stream: u32| {
                let mut all = head(stream);
                all.extend(frame(kind::DATA, 0, stream, &message(&[7u8; 300])));
                all.extend(trailers(stream));
                p.send(&all);
            };
            let _ = resumed.recv();
            // Every head before any answer: no call ends to make room,
            // only the writer's drain lets the waiting ones go.
            let mut streams = vec![opened];
            while streams.len() < 200 {
                let next = next_frame(&mut p, |f| f.kind == kind::HEADERS)?;
                streams.push(next.stream);
            }
            for stream in streams {
                answer(&mut p, stream);
            }
            let _ = p.expect_alive();
            Ok(())
        });
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "max_connections_per_endpoint = 1\n\
             [limits]\nbuffer_per_connection = 262144\n\
             [[clusters]]\nname = \"a\"\nendpoints = [\"{addr}\"]\nmax_pending_calls = 1000\n\
             [[routes]]\ncluster = \"a\"\n"
        ));
        let responses = big_calls(proxy.local_addr(), 200, first_seen, |response, mut body| {
            let _ = body.send_data(grpc_proxy_tests::raw::frame(b"m"), true);
            tokio::spawn(async move {
                let response = tokio::time::timeout(Duration::from_secs(30), response)
                    .await
                    .map_err(|_| "not answered".to_string())?
                    .map_err(|e| e.to_string())?;
                let mut body = response.into_body();
                let _ = grpc_proxy_tests::raw::read_body(&mut body).await;
                let trailers = body.trailers().await.map_err(|e| e.to_string())?;
                let status = trailers.and_then(|t| t.get("grpc-status").cloned());
                Ok::<_, String>(status.map(|s| s.as_bytes().to_vec()))
            })
        })
        .await;
        let waiting = "grpc_proxy_upstream_pending_calls{cluster=\"a\"}";
        grpc_proxy_tests::admin::wait_until(&proxy, "calls wait for the connection", |m| {
            grpc_proxy_tests::admin::sample(m, waiting).is_some_and(|n| n > 0.0)
        })
        .await;
        let _ = resume.send(());
        for (i, response) in responses.into_iter().enumerate() {
            let status = response.await.expect("task");
            assert_eq!(status, Ok(Some(b"0".to_vec())), "call {i}");
        }
        joined(upstream).await.expect("the upstream");
    }
}

proxy_test! {
    async fn calls_waiting_for_a_stream_go_elsewhere_when_the_connection_ends(driver) {
        // Scenario: the upstream allows one stream per connection; call A
        // has it and call B waits. The upstream then closes the connection
        // (a restart): A is lost with it, but B was never sent, and must
        // go on a new connection rather than fail.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a_seen, a_arrived) = tokio::sync::oneshot::channel::<()>();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut first = Peer::accept(&listener, &[(setting::MAX_CONCURRENT_STREAMS, 1)])?;
            next_frame(&mut first, |f| f.kind == kind::HEADERS)?;
            let _ = a_seen.send(());
            let _ = closing.recv();
            drop(first);
            let mut second = Peer::accept(&listener, &[])?;
            let stream = request(&mut second)?;
            respond(&mut second, stream);
            let _ = second.expect_alive();
            Ok(())
        });
        let proxy = grpc_proxy_tests::proxy(driver, &format!(
            "max_connections_per_endpoint = 1\n{}[[routes]]\ncluster = \"a\"\n",
            grpc_proxy_tests::cluster("a", addr)
        ));
        let client = Client::connect(proxy.local_addr()).await;
        let mut a_client = client.clone();
        let a = tokio::spawn(async move { unary(&mut a_client).await });
        a_arrived.await.expect("call A reached the upstream");
        let mut b_client = client.clone();
        let b = tokio::spawn(async move { unary(&mut b_client).await });
        let waiting = "grpc_proxy_upstream_pending_calls{cluster=\"a\"}";
        grpc_proxy_tests::admin::wait_until(&proxy, "call B waits for a stream", |m| {
            grpc_proxy_tests::admin::sample(m, waiting) == Some(1.0)
        })
        .await;
        let _ = close.send(());
        let b = b.await.expect("task");
        assert!(b.as_ref().is_ok_and(|r| r.as_ref() == REPLY), "{b:?}");
        let a = a.await.expect("task");
        assert_eq!(a.map_err(|s| s.code()), Err(Code::Unavailable), "A was lost with its connection");
        joined(upstream).await.expect("the upstream");
    }
}

proxy_test! {
    async fn a_whole_response_waiting_for_the_client_survives_the_upstreams_no_error_reset(driver) {
        // Scenario (RFC 9113 8.1, as grpc-go does it): the upstream sends
        // its whole response, 60 KiB and trailers, while the client has
        // not ended its request, then RST_STREAM(NO_ERROR): it wants no
        // more of the request. The client's window (1,000 bytes) holds
        // most of the response in the proxy at that moment: it must still
        // reach the client whole, with its status, not INTERNAL.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut p = Peer::accept(&listener, &[])?;
            let stream = next_frame(&mut p, |f| f.kind == kind::HEADERS)?.stream;
            let mut all = head(stream);
            let body = message(&[7u8; 60 << 10]);
            for chunk in body.chunks(16 << 10) {
                all.extend(frame(kind::DATA, 0, stream, chunk));
            }
            all.extend(trailers(stream));
            all.extend(rst_stream(stream, code::NO_ERROR));
            p.send(&all);
            p.expect_alive()
        });
        let proxy = proxy_to(driver, addr);
        let client = grpc_proxy_tests::raw::client(proxy.local_addr(), 1_000).await;
        let mut ready = client.ready().await.expect("ready");
        let request = grpc_proxy_tests::raw::request(proxy.local_addr(), "Bidi");
        let (response, _still_sending) = ready.send_request(request, false).expect("send");
        let verdict = joined(upstream).await;
        verdict.expect("the upstream");
        let mut body = response.await.expect("response").into_body();
        let got = grpc_proxy_tests::raw::read_body(&mut body).await;
        assert_eq!(got.len(), 5 + (60 << 10), "the whole message");
        let trailers = body.trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }
}

proxy_test! {
    async fn an_upstream_that_turns_every_connection_away_does_not_keep_a_call_moving(driver) {
        // Scenario: the upstream answers each new connection with its
        // SETTINGS and a GOAWAY in one write. A call waiting for the
        // connection goes to another once; there it is turned away again
        // and must be refused (it was never sent), not moved from one new
        // connection to the next until its deadline.
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let upstream = std::thread::spawn(move || {
            let mut open = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let Ok((mut tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nonblocking(false);
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).is_ok() {
                    let mut hello = settings_frame(&[]);
                    hello.extend(frame(kind::GOAWAY, 0, 0, &[0; 8]));
                    let _ = tcp.write_all(&hello);
                }
                open.push(tcp);
            }
        });
        let proxy = proxy_to(driver, addr);
        let mut client = Client::connect(proxy.local_addr()).await;
        let status = unary(&mut client).await.expect_err("turned away");
        stop.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || upstream.join()).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let n = accepted.load(Ordering::SeqCst);
        assert!(n <= 3, "{n} connections for one call");
    }
}

/// How an upstream ends after it answered a call whole.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Closes the connection.
    Closes,
    /// GOAWAY naming no stream as processed (wrongly: it answered one),
    /// the connection kept open.
    GoesAwayAtZero,
}

/// A unary call whose client takes 16 bytes of response at a time: the
/// upstream answers it whole (1,000 bytes, then trailers) and then does
/// `then`; once the proxy has seen that, the client reads. Returns the
/// body and trailers the client got.
async fn whole_answer_then(
    driver: grpc_proxy::Driver,
    then: Then,
) -> Result<(Vec<u8>, Option<http::HeaderMap>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = proxy_to(driver, listener.local_addr().expect("addr"));
    let (done, hold) = std::sync::mpsc::channel::<()>();
    let upstream = std::thread::spawn(move || -> Verdict {
        let mut p = Peer::accept(&listener, &[])?;
        let s = request(&mut p)?;
        let mut all = head(s);
        all.extend(frame(kind::DATA, 0, s, &message(&pattern(995))));
        all.extend(trailers(s));
        p.send(&all);
        match then {
            Then::Closes => {}
            Then::GoesAwayAtZero => {
                p.send(&frame(kind::GOAWAY, 0, 0, &[0; 8]));
                let _ = hold.recv_timeout(Duration::from_secs(20));
            }
        }
        Ok(())
    });
    let addr = proxy.local_addr();
    let send = grpc_proxy_tests::raw::client(addr, 16).await;
    let (response, mut body) = send
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .send_request(grpc_proxy_tests::raw::request(addr, "Unary"), false)
        .map_err(|e| e.to_string())?;
    body.send_data(grpc_proxy_tests::raw::frame(b"hi"), true)
        .map_err(|e| e.to_string())?;
    let mut response = response.await.map_err(|e| e.to_string())?.into_body();
    let seen = |m: &str| match then {
        Then::Closes => {
            grpc_proxy_tests::admin::sample(m, "grpc_proxy_upstream_connections{cluster=\"a\"}")
                == Some(0.0)
        }
        Then::GoesAwayAtZero => {
            grpc_proxy_tests::admin::sample(m, "grpc_proxy_upstream_goaways_total{cluster=\"a\"}")
                == Some(1.0)
        }
    };
    grpc_proxy_tests::admin::wait_until(&proxy, "the proxy sees the upstream's end", seen).await;
    let got = grpc_proxy_tests::raw::read_body(&mut response).await;
    let trailers = response.trailers().await.map_err(|e| e.to_string())?;
    let _ = done.send(());
    tokio::task::spawn_blocking(move || upstream.join())
        .await
        .expect("join")
        .expect("the upstream thread")?;
    Ok((got, trailers))
}

proxy_test! {
    async fn a_whole_answer_waiting_for_a_slow_client_outlives_its_upstream_connection(driver) {
        for then in [Then::Closes, Then::GoesAwayAtZero] {
            let (got, trailers) = whole_answer_then(driver, then).await.expect("the call");
            assert!(got == message(&pattern(995)), "{then:?}: {} of 1,000 bytes", got.len());
            let status = trailers.as_ref().and_then(|t| t.get("grpc-status"));
            assert_eq!(status.map(|v| v.as_bytes()), Some(&b"0"[..]), "{then:?}: {trailers:?}");
        }
    }
}

proxy_test! {
    async fn a_connection_the_upstream_sent_goaway_on_is_closed_once_its_calls_end(driver) {
        // An upstream that says GOAWAY and then keeps the connection open
        // (answering PINGs): the pool takes no new calls to it, so the
        // proxy must close it once its calls are done, or every such
        // connection would stay open for good.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = proxy_to(driver, listener.local_addr().expect("addr"));
        let upstream = std::thread::spawn(move || -> Verdict {
            let mut p = Peer::accept(&listener, &[])?;
            let s = request(&mut p)?;
            let mut last = s.to_be_bytes().to_vec();
            last.extend([0, 0, 0, 0]);
            p.send(&frame(kind::GOAWAY, 0, 0, &last));
            respond(&mut p, s);
            p.expect_closed()
        });
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(unary(&mut client).await.expect("answered"), REPLY);
        joined(upstream).await.expect("the proxy closes the connection");
    }
}
