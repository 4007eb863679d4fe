//! HTTP/2 conformance of the listener: every RFC 9113 and RFC 7541 rule a
//! server can be tested for from the wire, sent by a hand-made client
//! ([`grpc_proxy_tests::peer`]) as a hostile or merely unusual peer would,
//! each answered with the error the RFC names.
//!
//! The cases follow the sections of h2spec, the independent conformance
//! suite, and keep its numbering so that a report from one can be found in
//! the other, but the verdicts are stricter: a connection error must be a
//! GOAWAY with the named code and then a close (h2spec also takes a bare
//! close), and a stream error a RST_STREAM (or GOAWAY) with the named code.
//! Every case runs twice: with gRPC calls to a tonic upstream behind the
//! proxy, and with what h2spec itself sends, `GET /` without a gRPC
//! content type, which the proxy answers itself (HTTP 415 and a line of
//! text), so that streams it answers are held to the same rules. Either
//! answer has a body for the flow-control cases to hold back.
//!
//! After every case a fresh connection makes a whole call: no case may
//! harm the listener for anyone else.

use std::net::SocketAddr;

use std::cell::Cell;

use grpc_proxy_tests::peer::{
    self, block, code, flag, frame, kind, message, priority, rst_stream, setting, settings_frame,
    window_update, Peer, Seen, Verdict, PREFACE,
};
use grpc_proxy_tests::{proxy_test, proxy_to, Upstream};

type Case = fn(SocketAddr) -> Verdict;

thread_local! {
    /// Whether the cases send what h2spec sends (`GET /`, no gRPC content
    /// type, answered by the proxy itself at once) instead of gRPC calls
    /// that reach the upstream.
    static PLAIN: Cell<bool> = const { Cell::new(false) };
}

fn plain() -> bool {
    PLAIN.with(Cell::get)
}

/// The request fields of the current mode.
fn fields() -> Vec<(&'static str, &'static str)> {
    if plain() {
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "localhost"),
        ]
    } else {
        peer::grpc_fields()
    }
}

fn request_block() -> Vec<u8> {
    block(&fields())
}

/// A request head on `stream`, whole, ending the stream if `end`.
fn request_head(stream: u32, end: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    frame(kind::HEADERS, flags, stream, &request_block())
}

/// A whole request: its head, then one DATA with one message.
fn request(stream: u32, payload: &[u8]) -> Vec<u8> {
    both(
        request_head(stream, false),
        data(stream, flag::END_STREAM, &message(payload)),
    )
}

/// A whole request as h2spec sends one: in plain mode its head alone,
/// ending the stream.
fn whole_request(stream: u32) -> Vec<u8> {
    if plain() {
        request_head(stream, true)
    } else {
        request(stream, b"hello")
    }
}

/// Runs every case on its own connection to one proxy, once with gRPC
/// calls and once with h2spec's plain requests, and reports all that
/// failed, by number.
fn run(driver: grpc_proxy::Driver, cases: &[(&str, &str, Case)]) {
    let upstream = Upstream::start("a");
    let proxy = proxy_to(driver, upstream.addr());
    let addr = proxy.local_addr();
    let mut failed = Vec::new();
    for mode in [false, true] {
        PLAIN.with(|p| p.set(mode));
        for (id, what, case) in cases {
            let verdict = case(addr).and_then(|()| {
                let mut p = open(addr);
                p.send(&request(1, b"still there?"));
                answered(&mut p, 1).map_err(|e| format!("afterwards, a new connection: {e}"))
            });
            if let Err(e) = verdict {
                let mode = if mode { "GET /" } else { "gRPC" };
                failed.push(format!("{id} {what} ({mode}): {e}"));
            }
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

fn open(addr: SocketAddr) -> Peer {
    Peer::connect(addr, &[])
}

/// A response on `stream`, to its end.
fn answered(p: &mut Peer, stream: u32) -> Verdict {
    let head = p.expect_headers(stream)?;
    if head.ends_stream() {
        return Ok(());
    }
    p.expect_stream_end(stream)
}

/// A whole request on `stream` is answered.
fn call_answered(p: &mut Peer, stream: u32) -> Verdict {
    p.send(&request(stream, b"hello"));
    answered(p, stream)
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(kind::DATA, flags, stream, payload)
}

/// A request head with these changes to its fields, whole and
/// ending the stream.
fn head_with(stream: u32, change: impl FnOnce(&mut Vec<(&'static str, &'static str)>)) -> Vec<u8> {
    let mut fields = fields();
    change(&mut fields);
    frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        stream,
        &block(&fields),
    )
}

/// A request that is not gRPC, head only, is answered.
fn plain_answered(addr: SocketAddr, method: &'static str) -> Verdict {
    let mut p = open(addr);
    p.send(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &plain_block(method),
    ));
    answered(&mut p, 1)
}

/// A request head of `block` is a connection error COMPRESSION_ERROR.
fn compression_error(addr: SocketAddr, block: &[u8]) -> Verdict {
    let mut p = open(addr);
    p.send(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        block,
    ));
    p.expect_connection_error(code::COMPRESSION_ERROR)
}

/// The head of a request that is not gRPC (what h2spec sends).
fn plain_block(method: &'static str) -> Vec<u8> {
    block(&[
        (":method", method),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
    ])
}

fn both<A, B>(a: A, b: B) -> Vec<u8>
where
    A: AsRef<[u8]>,
    B: AsRef<[u8]>,
{
    let mut out = a.as_ref().to_vec();
    out.extend_from_slice(b.as_ref());
    out
}

/// A header block split in two: HEADERS without END_HEADERS, then the
/// rest in `then` (built by the case).
fn first_half(stream: u32, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let b = request_block();
    let (a, rest) = b.split_at(b.len() / 2);
    (frame(kind::HEADERS, flags, stream, a), rest.to_vec())
}

/// Waits for the first DATA on `stream` and checks its length.
fn data_of_length(p: &mut Peer, stream: u32, len: usize) -> Verdict {
    let d = p.expect_data(stream)?;
    if d.payload.len() != len {
        return Err(format!(
            "expected DATA of {len} bytes; saw {}",
            d.payload.len()
        ));
    }
    Ok(())
}

/// Waits for the acknowledgement of our latest SETTINGS.
fn settings_acked(p: &mut Peer) -> Verdict {
    loop {
        match p.read() {
            Seen::Frame(f) if f.kind == kind::SETTINGS && f.flags & flag::ACK != 0 => return Ok(()),
            Seen::Frame(f) => p.seen.push(format!("{f:?}")),
            other => return Err(format!("expected a SETTINGS ACK; saw {other:?}")),
        }
    }
}

/// Section 3.5 and 4: the preface, the frame format and sizes, header
/// compression in frames.
const STARTING: &[(&str, &str, Case)] = &[
    ("3.5/1", "a client preface and a call", |addr| {
        call_answered(&mut open(addr), 1)
    }),
    ("3.5/2", "an invalid connection preface", |addr| {
        let mut p = Peer::connect_raw(addr);
        p.send_raw(b"INVALID CONNECTION PREFACE\r\n\r\n");
        // A connection error (GOAWAY PROTOCOL_ERROR) or a bare close:
        // nothing HTTP/2 was ever said on this connection.
        loop {
            match p.read() {
                Seen::Closed => return Ok(()),
                Seen::Frame(f) if f.kind == kind::GOAWAY => {
                    if f.error_code() != Some(code::PROTOCOL_ERROR) {
                        return Err(format!("GOAWAY {:?}", f.error_code()));
                    }
                    return p.expect_closed();
                }
                // The server's own preface may go out before it reads ours.
                Seen::Frame(f) if matches!(f.kind, kind::SETTINGS | kind::WINDOW_UPDATE) => {}
                other => return Err(format!("expected a close; saw {other:?}")),
            }
        }
    }),
    ("4.1/1", "a frame of unknown type is ignored", |addr| {
        let mut p = open(addr);
        p.send(&frame(0x16, 0, 0, b"unknown!"));
        p.expect_alive()
    }),
    ("4.1/2", "undefined flags are ignored", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, 0x16, 0, b"flags!!!"));
        p.expect_ping_ack(*b"flags!!!")
    }),
    (
        "4.1/3",
        "the reserved bit of the stream id is ignored",
        |addr| {
            let mut p = open(addr);
            p.send(&frame(kind::PING, 0, 0x8000_0000, b"reserved"));
            p.expect_ping_ack(*b"reserved")
        },
    ),
    ("4.2/1", "a DATA frame of 2^14 octets", |addr| {
        let mut p = open(addr);
        let payload = vec![7u8; 16_384 - 5];
        p.send(&both(
            request_head(1, false),
            data(1, flag::END_STREAM, &message(&payload)),
        ));
        answered(&mut p, 1)
    }),
    (
        "4.2/2",
        "a DATA frame above SETTINGS_MAX_FRAME_SIZE",
        |addr| {
            let mut p = open(addr);
            let max = p.setting(setting::MAX_FRAME_SIZE).unwrap_or(16_384) as usize;
            p.send(&both(
                request_head(1, false),
                data(1, 0, &vec![0u8; max + 1]),
            ));
            p.expect_stream_error(1, code::FRAME_SIZE_ERROR)
        },
    ),
    (
        "4.2/3",
        "a HEADERS frame above SETTINGS_MAX_FRAME_SIZE",
        |addr| {
            let mut p = open(addr);
            let max = p.setting(setting::MAX_FRAME_SIZE).unwrap_or(16_384) as usize;
            let mut fields = fields();
            let big = "x".repeat(max);
            let big: &'static str = Box::leak(big.into_boxed_str());
            fields.push(("x-big", big));
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                &block(&fields),
            ));
            p.expect_connection_error(code::FRAME_SIZE_ERROR)
        },
    ),
    ("4.3/1", "an invalid header block fragment", |addr| {
        let mut p = open(addr);
        // A literal whose name claims 10 bytes and has 3.
        p.send(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            b"\x00\x0aabc",
        ));
        p.expect_connection_error(code::COMPRESSION_ERROR)
    }),
    ("4.3/2", "a PRIORITY frame inside a header block", |addr| {
        let mut p = open(addr);
        let (head, rest) = first_half(1, flag::END_STREAM);
        p.send(&head);
        p.send(&priority(1, 0, 255));
        p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &rest));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "4.3/3",
        "HEADERS on another stream inside a header block",
        |addr| {
            let mut p = open(addr);
            let (head, rest) = first_half(1, flag::END_STREAM);
            p.send(&head);
            p.send(&request_head(3, true));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &rest));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
];

/// Section 5: stream states, identifiers, concurrency, priority, error
/// handling, extensions.
const STREAMS: &[(&str, &str, Case)] = &[
    ("5.1/1", "idle: DATA", |addr| {
        let mut p = open(addr);
        p.send(&data(1, flag::END_STREAM, b"test"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/2", "idle: RST_STREAM", |addr| {
        let mut p = open(addr);
        p.send(&rst_stream(1, code::CANCEL));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/3", "idle: WINDOW_UPDATE", |addr| {
        let mut p = open(addr);
        p.send(&window_update(1, 100));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/4", "idle: CONTINUATION", |addr| {
        let mut p = open(addr);
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &request_block(),
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1/5", "half-closed (remote): DATA", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, true));
        p.send(&data(1, flag::END_STREAM, b"test"));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("5.1/6", "half-closed (remote): HEADERS", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, true));
        p.send(&request_head(1, true));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("5.1/7", "half-closed (remote): CONTINUATION", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, true));
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &request_block(),
        ));
        p.expect_stream_error_of(1, &[code::STREAM_CLOSED, code::PROTOCOL_ERROR])
    }),
    ("5.1/8", "closed: DATA after RST_STREAM", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&rst_stream(1, code::CANCEL));
        p.send(&data(1, flag::END_STREAM, b"test"));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("5.1/9", "closed: HEADERS after RST_STREAM", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&rst_stream(1, code::CANCEL));
        p.send(&request_head(1, true));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("5.1/10", "closed: CONTINUATION after RST_STREAM", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&rst_stream(1, code::CANCEL));
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &request_block(),
        ));
        p.expect_stream_error_of(1, &[code::STREAM_CLOSED, code::PROTOCOL_ERROR])
    }),
    ("5.1/11", "closed: DATA after the stream ended", |addr| {
        let mut p = open(addr);
        call_answered(&mut p, 1)?;
        p.send(&data(1, flag::END_STREAM, b"test"));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("5.1/12", "closed: HEADERS after the stream ended", |addr| {
        let mut p = open(addr);
        call_answered(&mut p, 1)?;
        p.send(&request_head(1, true));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    (
        "5.1/13",
        "closed: CONTINUATION after the stream ended",
        |addr| {
            let mut p = open(addr);
            call_answered(&mut p, 1)?;
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                1,
                &request_block(),
            ));
            p.expect_stream_error_of(1, &[code::STREAM_CLOSED, code::PROTOCOL_ERROR])
        },
    ),
    ("5.1.1/1", "an even-numbered stream id", |addr| {
        let mut p = open(addr);
        p.send(&request_head(2, true));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("5.1.1/2", "a stream id below one already used", |addr| {
        let mut p = open(addr);
        call_answered(&mut p, 5)?;
        p.send(&request_head(3, true));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "5.1.2/1",
        "more streams than SETTINGS_MAX_CONCURRENT_STREAMS",
        |addr| {
            // As h2spec does it, `GET /` ending the stream, with no credit
            // for the answer's body, which holds each stream open; a gRPC
            // call keeps its stream open by not ending it.
            let mut p = Peer::connect(addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
            let Some(max) = p.setting(setting::MAX_CONCURRENT_STREAMS) else {
                return Err("the proxy announces no stream limit".into());
            };
            let mut burst = Vec::new();
            for i in 0..=max {
                burst.extend(request_head(1 + 2 * i, plain()));
            }
            p.send(&burst);
            let last = 1 + 2 * max;
            p.expect_stream_error_of(last, &[code::PROTOCOL_ERROR, code::REFUSED_STREAM])
        },
    ),
    (
        "5.3.1/1",
        "HEADERS that depend on their own stream",
        |addr| {
            let mut p = open(addr);
            let mut payload = 1u32.to_be_bytes().to_vec();
            payload.push(255);
            payload.extend(request_block());
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM | flag::PRIORITY,
                1,
                &payload,
            ));
            p.expect_stream_error(1, code::PROTOCOL_ERROR)
        },
    ),
    (
        "5.3.1/2",
        "PRIORITY that depends on its own stream",
        |addr| {
            let mut p = open(addr);
            p.send(&priority(1, 1, 255));
            p.expect_stream_error(1, code::PROTOCOL_ERROR)
        },
    ),
    ("5.4.1/1", "an invalid PING closes the connection", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, 0, 0, b"short"));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "5.4.1/2",
        "a PING on a stream is a connection error",
        |addr| {
            let mut p = open(addr);
            p.send(&frame(kind::PING, 0, 3, b"onstream"));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("5.5/1", "an unknown extension frame is ignored", |addr| {
        let mut p = open(addr);
        p.send(&frame(0xff, 0, 0, b"extension frame"));
        p.expect_alive()
    }),
    ("5.5/2", "an unknown frame inside a header block", |addr| {
        let mut p = open(addr);
        let (head, rest) = first_half(1, flag::END_STREAM);
        p.send(&head);
        p.send(&frame(0xff, 0, 1, b"extension"));
        p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &rest));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
];

/// Section 6: every frame type's own rules.
const FRAMES: &[(&str, &str, Case)] = &[
    ("6.1/1", "DATA on stream 0", |addr| {
        let mut p = open(addr);
        p.send(&data(0, flag::END_STREAM, b"test"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.1/2", "DATA on a stream that is not open", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, true));
        p.send(&data(1, flag::END_STREAM, b"test"));
        p.expect_stream_error(1, code::STREAM_CLOSED)
    }),
    ("6.1/3", "DATA with a pad length past its end", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            b"\x06test",
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.1/4", "DATA with padding", |addr| {
        let mut p = open(addr);
        let mut payload = vec![8u8];
        payload.extend(message(b"padded"));
        payload.extend([0u8; 8]);
        p.send(&request_head(1, false));
        p.send(&frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            &payload,
        ));
        answered(&mut p, 1)
    }),
    (
        "6.2/1",
        "HEADERS without END_HEADERS, then PRIORITY",
        |addr| {
            let mut p = open(addr);
            let (head, _) = first_half(1, flag::END_STREAM);
            p.send(&head);
            p.send(&priority(1, 0, 255));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.2/2",
        "HEADERS without END_HEADERS, then HEADERS on another stream",
        |addr| {
            let mut p = open(addr);
            let (head, _) = first_half(1, flag::END_STREAM);
            p.send(&head);
            p.send(&request_head(3, true));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.2/3", "HEADERS on stream 0", |addr| {
        let mut p = open(addr);
        p.send(&request_head(0, true));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.2/4", "HEADERS with a pad length past its end", |addr| {
        let mut p = open(addr);
        let mut payload = vec![255u8];
        payload.extend(request_block());
        p.send(&frame(
            kind::HEADERS,
            flag::PADDED | flag::END_HEADERS | flag::END_STREAM,
            1,
            &payload,
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.2/5", "HEADERS with padding and priority", |addr| {
        let mut p = open(addr);
        let mut payload = vec![4u8];
        payload.extend(0u32.to_be_bytes());
        payload.push(15);
        payload.extend(request_block());
        payload.extend([0u8; 4]);
        p.send(&frame(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            1,
            &payload,
        ));
        p.send(&data(1, flag::END_STREAM, &message(b"hi")));
        answered(&mut p, 1)
    }),
    ("6.3/1", "PRIORITY on stream 0", |addr| {
        let mut p = open(addr);
        p.send(&priority(0, 1, 255));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.3/2", "PRIORITY of 4 octets", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0]));
        p.expect_stream_error(1, code::FRAME_SIZE_ERROR)
    }),
    (
        "6.3/3",
        "PRIORITY frames of every kind are accepted",
        |addr| {
            let mut p = open(addr);
            p.send(&priority(3, 0, 0)); // weight 1, idle stream
            p.send(&priority(5, 0, 255)); // weight 256
            p.send(&priority(7, 3, 15)); // depends on another stream
            p.send(&priority(9, 0x8000_0003, 15)); // exclusive
            call_answered(&mut p, 1) // a lower id than the idle ones
        },
    ),
    ("6.4/1", "RST_STREAM on stream 0", |addr| {
        let mut p = open(addr);
        p.send(&rst_stream(0, code::CANCEL));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.4/2", "RST_STREAM on an idle stream", |addr| {
        let mut p = open(addr);
        p.send(&rst_stream(1, code::CANCEL));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.4/3", "RST_STREAM of 3 octets", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&frame(kind::RST_STREAM, 0, 1, &[0, 0, 0]));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "6.4/4",
        "RST_STREAM of an open stream; the connection goes on",
        |addr| {
            let mut p = open(addr);
            p.send(&request_head(1, false));
            p.send(&rst_stream(1, code::CANCEL));
            p.expect_alive()?;
            call_answered(&mut p, 3)
        },
    ),
    ("6.5/1", "a SETTINGS ACK with a payload", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::SETTINGS, flag::ACK, 0, &[0, 4, 0, 0, 0, 1]));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    ("6.5/2", "SETTINGS on a stream", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::SETTINGS, 0, 1, &[0, 3, 0, 0, 0, 100]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.5/3",
        "SETTINGS whose length is not a multiple of 6",
        |addr| {
            let mut p = open(addr);
            p.send(&frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0]));
            p.expect_connection_error(code::FRAME_SIZE_ERROR)
        },
    ),
    ("6.5.2/1", "SETTINGS_ENABLE_PUSH of 2", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[(setting::ENABLE_PUSH, 2)]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.5.2/2",
        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        |addr| {
            let mut p = open(addr);
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]));
            p.expect_connection_error(code::FLOW_CONTROL_ERROR)
        },
    ),
    ("6.5.2/3", "SETTINGS_MAX_FRAME_SIZE below 2^14", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[(setting::MAX_FRAME_SIZE, 16_383)]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.5.2/4", "SETTINGS_MAX_FRAME_SIZE above 2^24-1", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[(setting::MAX_FRAME_SIZE, 1 << 24)]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.5.2/5", "an unknown setting is ignored", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[(0xff, 1)]));
        settings_acked(&mut p)?;
        p.expect_alive()
    }),
    (
        "6.5.3/1",
        "several values of SETTINGS_INITIAL_WINDOW_SIZE: the last counts",
        |addr| {
            let mut p = open(addr);
            p.send(&settings_frame(&[
                (setting::INITIAL_WINDOW_SIZE, 100),
                (setting::INITIAL_WINDOW_SIZE, 1),
            ]));
            settings_acked(&mut p)?;
            p.send(&request(1, b"hello"));
            p.expect_headers(1)?;
            data_of_length(&mut p, 1, 1)
        },
    ),
    ("6.5.3/2", "SETTINGS are acknowledged", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[(setting::MAX_CONCURRENT_STREAMS, 50)]));
        settings_acked(&mut p)
    }),
    ("6.7/1", "PING is answered", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, 0, 0, b"h2spec!!"));
        p.expect_ping_ack(*b"h2spec!!")
    }),
    ("6.7/2", "a PING ACK is not answered", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, flag::ACK, 0, b"unwanted"));
        p.send(&frame(kind::PING, 0, 0, b"expected"));
        p.expect_ping_ack(*b"expected")
    }),
    ("6.7/3", "PING on a stream", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, 0, 1, b"onstream"));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.7/4", "PING of 6 octets", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::PING, 0, 0, b"sixsix"));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    ("6.8/1", "GOAWAY on a stream", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::GOAWAY, 0, 1, &[0, 0, 0, 0, 0, 0, 0, 0]));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.8/2", "a client's GOAWAY lets its calls finish", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
        p.send(&data(1, flag::END_STREAM, &message(b"after goaway")));
        answered(&mut p, 1)
    }),
    ("6.9/1", "WINDOW_UPDATE of 0 on the connection", |addr| {
        let mut p = open(addr);
        p.send(&window_update(0, 0));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("6.9/2", "WINDOW_UPDATE of 0 on a stream", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&window_update(1, 0));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("6.9/3", "WINDOW_UPDATE of 3 octets", |addr| {
        let mut p = open(addr);
        p.send(&frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1]));
        p.expect_connection_error(code::FRAME_SIZE_ERROR)
    }),
    (
        "6.9/4",
        "WINDOW_UPDATE on the connection and on a stream",
        |addr| {
            let mut p = open(addr);
            p.send(&window_update(0, 1));
            p.send(&request_head(1, false));
            p.send(&window_update(1, 1));
            p.send(&data(1, flag::END_STREAM, &message(b"hi")));
            answered(&mut p, 1)
        },
    ),
    (
        "6.9.1/1",
        "SETTINGS_INITIAL_WINDOW_SIZE of 1 holds DATA to 1 octet",
        |addr| {
            let mut p = open(addr);
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 1)]));
            settings_acked(&mut p)?;
            p.send(&request(1, b"hello"));
            p.expect_headers(1)?;
            data_of_length(&mut p, 1, 1)
        },
    ),
    ("6.9.1/2", "a connection window above 2^31-1", |addr| {
        let mut p = open(addr);
        p.send(&window_update(0, 0x7fff_ffff));
        p.send(&window_update(0, 0x7fff_ffff));
        p.expect_connection_error(code::FLOW_CONTROL_ERROR)
    }),
    ("6.9.1/3", "a stream window above 2^31-1", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&window_update(1, 0x7fff_ffff));
        p.send(&window_update(1, 0x7fff_ffff));
        p.expect_stream_error(1, code::FLOW_CONTROL_ERROR)
    }),
    (
        "6.9.2/1",
        "SETTINGS_INITIAL_WINDOW_SIZE changed after HEADERS",
        |addr| {
            let mut p = open(addr);
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 0)]));
            settings_acked(&mut p)?;
            p.send(&request(1, b"hello"));
            p.expect_headers(1)?;
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 1)]));
            data_of_length(&mut p, 1, 1)
        },
    ),
    (
        "6.9.2/2",
        "a SETTINGS change makes a stream window negative",
        |addr| {
            let mut p = open(addr);
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 3)]));
            settings_acked(&mut p)?;
            p.send(&request(1, b"hello"));
            data_of_length(&mut p, 1, 3)?;
            // The window was 3 and all of it is used: 2 makes it -1, and a
            // WINDOW_UPDATE of 2 lets exactly one more octet go.
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 2)]));
            settings_acked(&mut p)?;
            p.send(&window_update(1, 2));
            data_of_length(&mut p, 1, 1)
        },
    ),
    (
        "6.9.2/3",
        "SETTINGS_INITIAL_WINDOW_SIZE that overflows a window",
        |addr| {
            // The window must be whole when the SETTINGS comes: a gRPC
            // call still sending gets no answer yet, and in plain mode
            // HEAD's answer has no body (GET's might take some of the
            // window first, or not, as the reads fall).
            let head = if plain() {
                frame(kind::HEADERS, flag::END_HEADERS, 1, &plain_block("HEAD"))
            } else {
                request_head(1, false)
            };
            let mut p = open(addr);
            p.send(&head);
            p.send(&window_update(1, 0x7fff_ffff - 65_535));
            p.send(&settings_frame(&[(setting::INITIAL_WINDOW_SIZE, 65_536)]));
            p.expect_connection_error(code::FLOW_CONTROL_ERROR)
        },
    ),
    (
        "6.10/1",
        "a header block in HEADERS and several CONTINUATIONs",
        |addr| {
            let mut p = open(addr);
            let b = request_block();
            let third = b.len() / 3;
            p.send(&frame(kind::HEADERS, flag::END_STREAM, 1, &b[..third]));
            p.send(&frame(kind::CONTINUATION, 0, 1, &b[third..2 * third]));
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                1,
                &b[2 * third..],
            ));
            answered(&mut p, 1)
        },
    ),
    (
        "6.10/2",
        "a header block followed by a frame other than CONTINUATION",
        |addr| {
            let mut p = open(addr);
            let (head, _) = first_half(1, 0);
            p.send(&head);
            p.send(&data(1, flag::END_STREAM, b"test"));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.10/3", "CONTINUATION on stream 0", |addr| {
        let mut p = open(addr);
        let (head, rest) = first_half(1, flag::END_STREAM);
        p.send(&head);
        p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 0, &rest));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    (
        "6.10/4",
        "CONTINUATION after HEADERS with END_HEADERS",
        |addr| {
            let mut p = open(addr);
            p.send(&request_head(1, false));
            p.send(&frame(
                kind::CONTINUATION,
                flag::END_HEADERS,
                1,
                &request_block(),
            ));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    (
        "6.10/5",
        "CONTINUATION after CONTINUATION with END_HEADERS",
        |addr| {
            let mut p = open(addr);
            let (head, rest) = first_half(1, 0);
            p.send(&head);
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &rest));
            p.send(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &rest));
            p.expect_connection_error(code::PROTOCOL_ERROR)
        },
    ),
    ("6.10/6", "CONTINUATION after DATA", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&data(1, 0, &message(b"x")));
        p.send(&frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &request_block(),
        ));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
    ("8.2/1", "PUSH_PROMISE from a client", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        let mut payload = 2u32.to_be_bytes().to_vec();
        payload.extend(request_block());
        p.send(&frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &payload));
        p.expect_connection_error(code::PROTOCOL_ERROR)
    }),
];

/// Section 8: HTTP message rules (a malformed request is a stream error
/// of type PROTOCOL_ERROR).
const MESSAGES: &[(&str, &str, Case)] = &[
    ("8.1/1", "a second HEADERS without END_STREAM", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&data(1, 0, &message(b"x")));
        p.send(&frame(
            kind::HEADERS,
            flag::END_HEADERS,
            1,
            &block(&[("x-trailer", "t")]),
        ));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1/2", "trailers end a request", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&data(1, 0, &message(b"x")));
        p.send(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block(&[("x-trailer", "t")]),
        ));
        answered(&mut p, 1)
    }),
    ("8.1.2/1", "an uppercase header name", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f.push(("X-Upper", "x"))));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.1/1", "an unknown pseudo-header", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f.insert(0, (":test", "x"))));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    (
        "8.1.2.1/2",
        "a response pseudo-header in a request",
        |addr| {
            let mut p = open(addr);
            p.send(&head_with(1, |f| f.insert(0, (":status", "200"))));
            p.expect_stream_error(1, code::PROTOCOL_ERROR)
        },
    ),
    ("8.1.2.1/3", "a pseudo-header in trailers", |addr| {
        let mut p = open(addr);
        p.send(&request_head(1, false));
        p.send(&data(1, 0, &message(b"x")));
        p.send(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block(&[(":method", "POST"), ("x-trailer", "t")]),
        ));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    (
        "8.1.2.1/4",
        "a pseudo-header after a regular header",
        |addr| {
            let mut p = open(addr);
            p.send(&head_with(1, |f| {
                f.push(("x-regular", "x"));
                let path = f.remove(2);
                f.push(path);
            }));
            p.expect_stream_error(1, code::PROTOCOL_ERROR)
        },
    ),
    ("8.1.2.2/1", "a connection-specific header", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f.push(("connection", "keep-alive"))));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.2/2", "TE other than trailers", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| {
            f.retain(|(n, _)| *n != "te");
            f.push(("te", "trailers, deflate"));
        }));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/1", "an empty :path", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f[2] = (":path", "")));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/2", "no :method", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| {
            f.remove(0);
        }));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/3", "no :scheme", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| {
            f.remove(1);
        }));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/4", "no :path", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| {
            f.remove(2);
        }));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/5", "a duplicated :method", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f.insert(1, (":method", "POST"))));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/6", "a duplicated :scheme", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| f.insert(1, (":scheme", "http"))));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.3/7", "a duplicated :path", |addr| {
        let mut p = open(addr);
        p.send(&head_with(1, |f| {
            f.insert(3, (":path", "/test.Echo/Unary"))
        }));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    ("8.1.2.6/1", "content-length longer than the DATA", |addr| {
        let mut p = open(addr);
        let mut fields = fields();
        fields.push(("content-length", "100"));
        p.send(&frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields)));
        p.send(&data(1, flag::END_STREAM, &message(b"short")));
        p.expect_stream_error(1, code::PROTOCOL_ERROR)
    }),
    (
        "8.1.2.6/2",
        "content-length shorter than several DATA",
        |addr| {
            let mut p = open(addr);
            let mut fields = fields();
            fields.push(("content-length", "6"));
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields)));
            p.send(&data(1, 0, &message(b"x")));
            p.send(&data(1, flag::END_STREAM, &message(b"y")));
            p.expect_stream_error(1, code::PROTOCOL_ERROR)
        },
    ),
    ("8.1.2.6/3", "content-length that matches", |addr| {
        let mut p = open(addr);
        let mut fields = fields();
        fields.push(("content-length", "7"));
        p.send(&frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields)));
        p.send(&data(1, flag::END_STREAM, &message(b"ok")));
        answered(&mut p, 1)
    }),
    (
        "4/1",
        "a GET request that is not gRPC gets an answer",
        |addr| plain_answered(addr, "GET"),
    ),
    (
        "4/2",
        "a HEAD request that is not gRPC gets an answer",
        |addr| plain_answered(addr, "HEAD"),
    ),
    (
        "4/3",
        "a POST request that is not gRPC gets an answer",
        |addr| {
            let mut p = open(addr);
            p.send(&frame(
                kind::HEADERS,
                flag::END_HEADERS,
                1,
                &plain_block("POST"),
            ));
            p.send(&data(1, flag::END_STREAM, b"test"));
            answered(&mut p, 1)
        },
    ),
];

/// HPACK (RFC 7541): every representation is understood, every
/// malformed one is a connection error of type COMPRESSION_ERROR.
const HPACK: &[(&str, &str, Case)] = &[
    (
        "hpack/1",
        "indexed, incremental, never-indexed and Huffman fields",
        |addr| {
            let mut p = open(addr);
            let mut b = Vec::new();
            b.push(0x20); // a dynamic table size update to 0, first: allowed
            b.push(0x3f); // and back up to 4096
            b.extend([0xe1, 0x1f]);
            b.push(0x83); // :method POST, indexed
            b.push(0x86); // :scheme http, indexed
            b.push(0x44); // :path, incremental, indexed name
            b.push(16);
            b.extend(b"/test.Echo/Unary");
            // :authority www.example.com, incremental, indexed name, Huffman
            // (RFC 7541 C.4.1).
            b.push(0x41);
            b.extend([
                0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
            ]);
            // content-type, new name, incremental.
            b.push(0x40);
            b.push(12);
            b.extend(b"content-type");
            b.push(16);
            b.extend(b"application/grpc");
            b.push(0x10); // te, never indexed, new name
            b.push(2);
            b.extend(b"te");
            b.push(8);
            b.extend(b"trailers");
            // custom-key: custom-value, new name, both Huffman (C.4.3).
            b.push(0x40);
            b.extend([0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f]);
            b.extend([0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf]);
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, 1, &b));
            p.send(&data(1, flag::END_STREAM, &message(b"hpack")));
            answered(&mut p, 1)?;
            // The second request uses the dynamic table entries the first made.
            let mut b = vec![0x83, 0x86];
            // Newest first: custom-key 62, content-type 63, :authority 64,
            // :path 65.
            b.extend([0xc1, 0xc0, 0xbf, 0xbe]);
            b.extend(te_trailers());
            p.send(&frame(kind::HEADERS, flag::END_HEADERS, 3, &b));
            p.send(&data(3, flag::END_STREAM, &message(b"again")));
            answered(&mut p, 3)
        },
    ),
    (
        "hpack 2.3.3/1",
        "an indexed field past the tables",
        |addr| {
            let mut b = vec![0x83, 0x86, 0x84];
            b.push(0x80 | 70); // the dynamic table is empty
            compression_error(addr, &b)
        },
    ),
    (
        "hpack 2.3.3/2",
        "a literal whose name index is past the tables",
        |addr| {
            let mut b = vec![0x83, 0x86, 0x84];
            b.extend([0x40 | 0x3f, 70 - 63, 1, b'x']);
            compression_error(addr, &b)
        },
    ),
    (
        "hpack 4.2/1",
        "a table size update above SETTINGS_HEADER_TABLE_SIZE",
        |addr| {
            // What the proxy announces, read on a connection of its own.
            let allowed = open(addr)
                .setting(setting::HEADER_TABLE_SIZE)
                .unwrap_or(4096) as usize;
            let mut b = Vec::new();
            grpc_proxy_tests::peer::hpack_int(&mut b, 0x20, 5, allowed + 1);
            b.extend(request_block());
            compression_error(addr, &b)
        },
    ),
    (
        "hpack 5.2/1",
        "a Huffman string that contains EOS",
        |addr| {
            let mut b = request_block();
            b.extend([0x00, 0x01, b'x', 0x84, 0xff, 0xff, 0xff, 0xff]);
            compression_error(addr, &b)
        },
    ),
    (
        "hpack 5.2/2",
        "Huffman padding longer than 7 bits",
        |addr| {
            let mut b = request_block();
            // 'a' (00011) and 11 bits of ones.
            b.extend([0x00, 0x01, b'x', 0x82, 0x1f, 0xff]);
            compression_error(addr, &b)
        },
    ),
    (
        "hpack 5.2/3",
        "Huffman padding that is not a prefix of EOS",
        |addr| {
            let mut b = request_block();
            // 'a' (00011) and padding 000.
            b.extend([0x00, 0x01, b'x', 0x81, 0x18]);
            compression_error(addr, &b)
        },
    ),
    ("hpack 6.1/1", "an indexed field of index 0", |addr| {
        let mut b = request_block();
        b.push(0x80);
        compression_error(addr, &b)
    }),
    (
        "hpack 6.3/1",
        "a table size update after the first field",
        |addr| {
            let mut b = request_block();
            b.push(0x20);
            compression_error(addr, &b)
        },
    ),
];

/// `te: trailers`, as a literal without indexing.
fn te_trailers() -> Vec<u8> {
    block(&[("te", "trailers")])
}

/// What h2spec calls generic: the common frames and exchanges work.
const GENERIC: &[(&str, &str, Case)] = &[
    (
        "generic 2/1",
        "PRIORITY on an idle stream, then a call on it",
        |addr| {
            let mut p = open(addr);
            p.send(&priority(1, 0, 255));
            call_answered(&mut p, 1)
        },
    ),
    (
        "generic 2/2",
        "WINDOW_UPDATE on a half-closed (remote) stream",
        |addr| {
            let mut p = Peer::connect(addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
            p.send(&whole_request(1));
            p.send(&window_update(1, 1));
            data_of_length(&mut p, 1, 1)
        },
    ),
    (
        "generic 2/3",
        "PRIORITY on a half-closed (remote) stream",
        |addr| {
            let mut p = Peer::connect(addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
            p.send(&whole_request(1));
            p.send(&priority(1, 0, 255));
            p.send(&window_update(1, 1));
            data_of_length(&mut p, 1, 1)
        },
    ),
    (
        "generic 2/4",
        "RST_STREAM on a half-closed (remote) stream",
        |addr| {
            let mut p = open(addr);
            p.send(&request_head(1, true));
            p.send(&rst_stream(1, code::CANCEL));
            p.expect_alive()
        },
    ),
    ("generic 2/5", "PRIORITY on a closed stream", |addr| {
        let mut p = open(addr);
        call_answered(&mut p, 1)?;
        p.send(&priority(1, 0, 255));
        p.expect_alive()
    }),
    (
        "generic 3.1",
        "a request body in several DATA frames",
        |addr| {
            let mut p = open(addr);
            let body = message(b"in three parts");
            p.send(&request_head(1, false));
            p.send(&data(1, 0, &body[..3]));
            p.send(&data(1, 0, &body[3..9]));
            p.send(&data(1, flag::END_STREAM, &body[9..]));
            answered(&mut p, 1)
        },
    ),
    ("generic 3.5", "SETTINGS with values", |addr| {
        let mut p = open(addr);
        p.send(&settings_frame(&[
            (setting::HEADER_TABLE_SIZE, 1024),
            (setting::ENABLE_PUSH, 0),
            (setting::MAX_CONCURRENT_STREAMS, 10),
            (setting::INITIAL_WINDOW_SIZE, 100_000),
            (setting::MAX_FRAME_SIZE, 1 << 20),
            (setting::MAX_HEADER_LIST_SIZE, 1 << 16),
        ]));
        settings_acked(&mut p)?;
        call_answered(&mut p, 1)
    }),
    ("generic 3.9", "WINDOW_UPDATE on the connection", |addr| {
        let mut p = open(addr);
        p.send(&window_update(0, 1));
        p.expect_alive()
    }),
    (
        "generic 3.10",
        "a window left exactly at zero, then opened",
        |addr| {
            let mut p = Peer::connect(addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
            p.send(&request(1, b"zero"));
            p.expect_headers(1)?;
            p.send(&window_update(1, 100));
            answered_rest(&mut p, 1)
        },
    ),
    ("generic 4/4", "a preface sent byte by byte", |addr| {
        let mut p = Peer::connect_raw(addr);
        let mut all = PREFACE.to_vec();
        all.extend(settings_frame(&[]));
        all.extend(request(1, b"slow"));
        for byte in all {
            p.send_raw(&[byte]);
        }
        answered(&mut p, 1)
    }),
];

/// The rest of a response whose HEADERS came already.
fn answered_rest(p: &mut Peer, stream: u32) -> Verdict {
    p.expect_stream_end(stream)
}

proxy_test! {
    async fn starting_frames_and_sizes(driver) {
        run(driver, STARTING);
    }

    async fn streams_and_multiplexing(driver) {
        run(driver, STREAMS);
    }

    async fn frame_definitions(driver) {
        run(driver, FRAMES);
    }

    async fn http_message_exchanges(driver) {
        run(driver, MESSAGES);
    }

    async fn header_compression(driver) {
        run(driver, HPACK);
    }

    async fn generic_exchanges(driver) {
        run(driver, GENERIC);
    }
}

proxy_test! {
    // RFC 9113 8.1: a server that answers before the request has ended
    // may tell the client to stop sending with RST_STREAM NO_ERROR. The
    // proxy answers some calls itself (here: metadata past the header
    // list size, RESOURCE_EXHAUSTED) while the client's side is open;
    // unless it ends the stream, a client that keeps sending, or keeps
    // its side open, holds the stream against the connection's limit.
    // Trailers that follow such a head are the client's right too.
    async fn a_call_the_proxy_answers_before_its_request_ends_is_reset_with_no_error(driver) {
        let upstream = Upstream::start("a");
        let proxy = grpc_proxy_tests::proxy(
            driver,
            &format!(
                "[http2]\nmax_header_list_size = 1024\n{}\n[[routes]]\ncluster = \"a\"\n",
                grpc_proxy_tests::cluster("a", upstream.addr())
            ),
        );
        let addr = proxy.local_addr();
        let verdict = tokio::task::spawn_blocking(move || -> Verdict {
            let mut p = open(addr);
            // Past the list size (1 KiB), within what a block may take
            // raw (twice that).
            let big = "x".repeat(1100);
            let mut fields = fields();
            fields.push(("x-big", &big));
            let mut all = frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields));
            all.extend(data(1, 0, &message(b"hello")));
            all.extend(frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                &block(&[("x-trailer", "1")]),
            ));
            all.extend(frame(kind::HEADERS, flag::END_HEADERS, 3, &block(&fields)));
            p.send(&all);
            let head = p.expect_headers(1)?;
            if !head.ends_stream() {
                return Err("the answer should be trailers-only".into());
            }
            p.expect_headers(3)?;
            p.expect_stream_error(3, code::NO_ERROR)?;
            // Nothing of it was the client's mistake: the connection
            // still serves calls.
            call_answered(&mut p, 5)
        })
        .await
        .expect("the client thread");
        verdict.expect("the proxy's answers");
    }
}
