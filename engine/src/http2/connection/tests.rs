//! Hostile peers, frame by frame, against the server role.

use bytes::BytesMut;

use super::*;
use crate::hpack::encode_field;
use crate::http2::frame::{flag, kind, Head, HEAD_LEN, MAX_ID};

/// What came out: events (owned) and frames written.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<String>,
    frames: Vec<(u8, u8, u32, Vec<u8>)>,
    result: Option<Result<(), ConnectionError>>,
}

impl Seen {
    fn rst(&self) -> Vec<(u32, ErrorCode)> {
        self.frames
            .iter()
            .filter(|f| f.0 == kind::RST_STREAM)
            .map(|f| {
                (
                    f.2,
                    ErrorCode(u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]])),
                )
            })
            .collect()
    }

    fn goaway(&self) -> Option<ErrorCode> {
        self.frames
            .iter()
            .find(|f| f.0 == kind::GOAWAY)
            .map(|f| ErrorCode(u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]])))
    }
}

struct Server {
    conn: Connection,
    out: Outbox,
}

fn frames_of(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= HEAD_LEN {
        let head = Head::parse(bytes[..HEAD_LEN].try_into().expect("nine"));
        let end = HEAD_LEN + head.length as usize;
        frames.push((
            head.kind,
            head.flags,
            head.stream,
            bytes[HEAD_LEN..end].to_vec(),
        ));
        bytes = &bytes[end..];
    }
    frames
}

impl Server {
    fn new(limits: Limits) -> Self {
        let mut out = Outbox::new();
        let conn = Connection::new(Role::Server, limits, &mut out);
        out.take_all();
        let mut server = Self { conn, out };
        let mut hello = frame::PREFACE.to_vec();
        frame::write_settings(&mut hello, []);
        let seen = server.feed(&hello);
        assert_eq!(seen.result, Some(Ok(())));
        server
    }

    fn feed(&mut self, bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        let mut buf = BytesMut::from(bytes);
        let events = &mut seen.events;
        let result = self.conn.recv(&mut buf, &mut self.out, |e| {
            events.push(match e {
                Event::Headers {
                    stream,
                    list,
                    end_stream,
                } => {
                    format!(
                        "headers {stream} {:?} {} end={end_stream}",
                        list.kind(),
                        list.all().count()
                    )
                }
                other => format!("{other:?}"),
            })
        });
        seen.result = Some(result);
        seen.frames = frames_of(&self.out.take_all());
        seen
    }
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        encode_field(n.as_bytes(), v.as_bytes(), false, &mut b);
    }
    b
}

const REQUEST: [(&str, &str); 4] = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/a.B/C"),
    (":authority", "x"),
];

fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    frame::write_head(&mut f, block.len(), kind::HEADERS, flags, stream);
    f.extend_from_slice(block);
    f
}

fn request(stream: u32, end_stream: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    headers(stream, flags, &block(&REQUEST))
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    frame::write_head(&mut f, payload.len(), kind::DATA, flags, stream);
    f.extend_from_slice(payload);
    f
}

fn connection_error(seen: &Seen, code: ErrorCode) {
    assert!(
        matches!(seen.result, Some(Err(e)) if e.code == code),
        "{seen:?}"
    );
    assert_eq!(seen.goaway(), Some(code), "{seen:?}");
}

#[test]
fn the_preface_and_first_settings_are_required() {
    let mut out = Outbox::new();
    let mut conn = Connection::new(Role::Server, Limits::default(), &mut out);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert!(conn.recv(&mut buf, &mut out, |_| {}).is_err());
    let mut s = Server::new(Limits::default());
    assert!(s.feed(&request(1, true)).result == Some(Ok(())));
    let mut out = Outbox::new();
    let mut conn = Connection::new(Role::Server, Limits::default(), &mut out);
    let mut bytes = frame::PREFACE.to_vec();
    bytes.extend(request(1, true));
    let mut buf = BytesMut::from(&bytes[..]);
    let result = conn.recv(&mut buf, &mut out, |_| {});
    assert!(matches!(result, Err(e) if e.code == ErrorCode::PROTOCOL_ERROR));
}

#[test]
fn a_request_in_pieces_arrives_whole() {
    let mut s = Server::new(Limits::default());
    let mut bytes = request(1, false);
    bytes.extend(data(1, flag::END_STREAM, b"hello"));
    let mut seen = Vec::new();
    for byte in bytes.chunks(1) {
        // Feed one byte at a time through a buffer that keeps the rest.
        seen.push(byte[0]);
    }
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for b in seen {
        buf.extend_from_slice(&[b]);
        s.conn
            .recv(&mut buf, &mut s.out, |e| {
                events.push(format!("{e:?}").chars().take(14).collect::<String>())
            })
            .expect("valid");
    }
    assert_eq!(events, ["Headers { stre", "Data { stream:"]);
}

/// What one read's bytes gave: DATA as (stream, payload, end), the
/// rest by name.
#[derive(Debug, Default)]
struct Read {
    data: Vec<(u32, Bytes, bool)>,
    other: Vec<String>,
}

impl Server {
    /// Feeds `bytes` in reads of `chunk` bytes through one buffer, as
    /// a socket would; `between(n, conn, out)` runs before read `n`.
    fn reads(
        &mut self,
        bytes: &[u8],
        chunk: usize,
        mut between: impl FnMut(usize, &mut Connection, &mut Outbox),
    ) -> Vec<Read> {
        let mut buf = BytesMut::new();
        let mut reads = Vec::new();
        for (n, piece) in bytes.chunks(chunk).enumerate() {
            between(n, &mut self.conn, &mut self.out);
            buf.extend_from_slice(piece);
            let mut read = Read::default();
            self.conn
                .recv(&mut buf, &mut self.out, |e| match e {
                    Event::Data {
                        stream,
                        data,
                        end_stream,
                    } => read.data.push((stream, data, end_stream)),
                    other => read
                        .other
                        .push(format!("{other:?}").chars().take(14).collect()),
                })
                .expect("valid");
            reads.push(read);
        }
        reads
    }
}

fn large() -> Limits {
    Limits {
        max_frame_size: 1 << 20,
        stream_window: 1 << 20,
        stream_window_max: 1 << 20,
        ..Limits::default()
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_large_data_frame_is_handed_on_as_it_arrives() {
    let mut s = Server::new(large());
    s.feed(&request(1, false));
    let body = payload(100_000);
    let reads = s.reads(&data(1, flag::END_STREAM, &body), 7_001, |_, _, _| {});
    // Every read that brought payload handed it on at once.
    assert!(reads.iter().all(|r| r.data.len() == 1), "{reads:?}");
    let all: Vec<(u32, Bytes, bool)> = reads.into_iter().flat_map(|r| r.data).collect();
    let joined: Vec<u8> = all.iter().flat_map(|d| d.1.to_vec()).collect();
    assert!(joined == body, "the payload arrived changed");
    assert!(all.iter().all(|d| d.0 == 1));
    let ends: Vec<bool> = all.iter().map(|d| d.2).collect();
    assert_eq!(ends.iter().filter(|e| **e).count(), 1);
    assert_eq!(
        ends.last(),
        Some(&true),
        "END_STREAM comes with the last bytes"
    );
}

#[test]
fn a_large_padded_frame_hands_on_its_payload_only() {
    let mut s = Server::new(large());
    s.feed(&request(1, false));
    let body = payload(50_000);
    let mut padded = vec![200u8];
    padded.extend_from_slice(&body);
    padded.extend(std::iter::repeat_n(0u8, 200));
    let mut bytes = data(1, flag::PADDED | flag::END_STREAM, &padded);
    // The frame's last read brings only padding; a PING follows it.
    frame::write_ping(&mut bytes, false, [3; 8]);
    let chunk = HEAD_LEN + 1 + body.len() - 30_000;
    let reads = s.reads(&bytes[..HEAD_LEN + 1 + body.len()], chunk, |_, _, _| {});
    let rest = s.reads(&bytes[HEAD_LEN + 1 + body.len()..], 1 << 20, |_, _, _| {});
    let all: Vec<(u32, Bytes, bool)> = reads.into_iter().flat_map(|r| r.data).collect();
    let joined: Vec<u8> = all.iter().flat_map(|d| d.1.to_vec()).collect();
    assert!(joined == body, "the payload arrived changed");
    assert!(all.iter().all(|d| !d.2), "no end before the padding");
    // The end comes with the padding, as an empty DATA event; the PING
    // after it is answered.
    assert_eq!(rest[0].data.len(), 1);
    assert!(rest[0].data[0].1.is_empty() && rest[0].data[0].2);
    let written = frames_of(&s.out.take_all());
    assert!(written
        .iter()
        .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
}

#[test]
fn a_stream_reset_during_a_large_frame_drops_the_rest_and_its_credit_returns() {
    let limits = Limits {
        connection_window: 200_000,
        ..large()
    };
    let mut s = Server::new(limits);
    s.feed(&request(1, false));
    s.out.take_all();
    let body = payload(150_000);
    let mut bytes = data(1, 0, &body);
    frame::write_ping(&mut bytes, false, [5; 8]);
    let reads = s.reads(&bytes, 10_000, |n, conn, out| {
        if n == 2 {
            conn.reset(1, ErrorCode::CANCEL, out);
        }
    });
    let handed: usize = reads
        .iter()
        .flat_map(|r| r.data.iter())
        .map(|d| d.1.len())
        .sum();
    assert_eq!(handed, 20_000 - HEAD_LEN, "only what came before the reset");
    let written = frames_of(&s.out.take_all());
    // The dropped bytes' credit went back to the connection, and the
    // frames after the DATA were read in step.
    assert!(
        written
            .iter()
            .any(|f| f.0 == kind::WINDOW_UPDATE && f.2 == 0),
        "{written:?}"
    );
    assert!(written
        .iter()
        .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
}

#[test]
fn a_large_frame_on_a_closed_stream_is_one_stream_error() {
    let mut s = Server::new(large());
    s.feed(&request(1, true));
    s.out.take_all();
    let mut bytes = data(1, 0, &payload(60_000));
    frame::write_ping(&mut bytes, false, [9; 8]);
    let reads = s.reads(&bytes, 8_000, |_, _, _| {});
    assert!(reads.iter().all(|r| r.data.is_empty()), "{reads:?}");
    let written = frames_of(&s.out.take_all());
    let resets: Vec<_> = written.iter().filter(|f| f.0 == kind::RST_STREAM).collect();
    assert_eq!(resets.len(), 1, "{written:?}");
    assert!(written
        .iter()
        .any(|f| f.0 == kind::PING && f.1 & flag::ACK != 0));
}

#[test]
fn stream_state_violations_get_the_rfcs_errors() {
    // DATA on an idle stream: connection error.
    let mut s = Server::new(Limits::default());
    connection_error(&s.feed(&data(1, 0, b"x")), ErrorCode::PROTOCOL_ERROR);
    // DATA after END_STREAM: stream error STREAM_CLOSED.
    let mut s = Server::new(Limits::default());
    s.feed(&request(1, true));
    assert_eq!(
        s.feed(&data(1, 0, b"x")).rst(),
        [(1, ErrorCode::STREAM_CLOSED)]
    );
    // HEADERS that would open a stream below the last one opened:
    // connection error PROTOCOL_ERROR (5.1.1).
    let mut s = Server::new(Limits::default());
    s.feed(&request(3, true));
    connection_error(&s.feed(&request(1, true)), ErrorCode::PROTOCOL_ERROR);
    // An even (server) stream id from a client.
    let mut s = Server::new(Limits::default());
    connection_error(&s.feed(&request(2, true)), ErrorCode::PROTOCOL_ERROR);
    // A header block interrupted by another frame.
    let mut s = Server::new(Limits::default());
    let mut bytes = headers(1, 0, &block(&REQUEST));
    bytes.extend(data(1, 0, b"x"));
    connection_error(&s.feed(&bytes), ErrorCode::PROTOCOL_ERROR);
    // RST_STREAM and WINDOW_UPDATE on idle streams.
    let mut s = Server::new(Limits::default());
    let mut rst = Vec::new();
    frame::write_rst_stream(&mut rst, 5, ErrorCode::CANCEL);
    connection_error(&s.feed(&rst), ErrorCode::PROTOCOL_ERROR);
    // PUSH_PROMISE from a client.
    let mut s = Server::new(Limits::default());
    let mut push = Vec::new();
    frame::write_head(&mut push, 4, kind::PUSH_PROMISE, flag::END_HEADERS, 1);
    push.extend_from_slice(&[0, 0, 0, 2]);
    connection_error(&s.feed(&push), ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn malformed_heads_cost_their_stream_and_keep_the_table_in_step() {
    let mut s = Server::new(Limits::default());
    // Stream 1: an upper-case name, inserted into the dynamic table.
    let mut b = block(&REQUEST);
    b.push(0x40);
    b.extend_from_slice(b"\x05X-Bad\x01v");
    let seen = s.feed(&headers(1, flag::END_HEADERS | flag::END_STREAM, &b));
    assert_eq!(seen.rst(), [(1, ErrorCode::PROTOCOL_ERROR)]);
    assert!(seen.events.is_empty());
    // Stream 3 depends on itself; its block inserts too.
    let mut b = vec![0, 0, 0, 3, 15];
    b.extend(block(&REQUEST));
    b.push(0x40);
    b.extend_from_slice(b"\x02ok\x01v");
    let seen = s.feed(&headers(
        3,
        flag::END_HEADERS | flag::END_STREAM | flag::PRIORITY,
        &b,
    ));
    assert_eq!(seen.rst(), [(3, ErrorCode::PROTOCOL_ERROR)]);
    // Stream 5 refers to index 62 ("ok: v", the newest): it decodes.
    let mut b = block(&REQUEST);
    b.push(0xbe);
    let seen = s.feed(&headers(5, flag::END_HEADERS | flag::END_STREAM, &b));
    assert_eq!(seen.events, ["headers 5 Request 5 end=true"]);
    // An invalid block is a connection error.
    connection_error(
        &s.feed(&headers(7, flag::END_HEADERS, &[0x80])),
        ErrorCode::COMPRESSION_ERROR,
    );
}

#[test]
fn flow_control_is_enforced_per_stream_and_connection() {
    let limits = Limits {
        stream_window: 10,
        connection_window: 65_535,
        ..Limits::default()
    };
    let mut s = Server::new(limits);
    s.feed(&request(1, false));
    s.feed(&request(3, false));
    let seen = s.feed(&data(1, 0, b"0123456789x"));
    assert_eq!(seen.rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
    // Stream 3 is untouched and may use its whole window.
    let seen = s.feed(&data(3, 0, b"0123456789"));
    assert!(seen.rst().is_empty());
    assert_eq!(seen.events.len(), 1);
    // Released credit returns once half the window waits.
    s.conn.release(3, 4, &mut s.out);
    assert!(frames_of(&s.out.take_all()).is_empty());
    s.conn.release(3, 6, &mut s.out);
    let frames = frames_of(&s.out.take_all());
    assert_eq!(
        frames,
        [(kind::WINDOW_UPDATE, 0, 3, 10u32.to_be_bytes().to_vec())]
    );
    // Padding counts against the window, and comes back at once.
    let seen = s.feed(&data(3, flag::PADDED, b"\x05abcd\0\0\0\0\0"));
    assert!(seen.rst().is_empty(), "{seen:?}");
    // The connection window: past it is a connection error.
    let mut s = Server::new(Limits {
        stream_window: 1 << 20,
        connection_window: 65_535,
        ..Limits::default()
    });
    s.feed(&request(1, false));
    let chunk = vec![0u8; 16_384];
    for _ in 0..3 {
        assert!(s.feed(&data(1, 0, &chunk)).result == Some(Ok(())));
    }
    connection_error(&s.feed(&data(1, 0, &chunk)), ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn stream_windows_grow_within_the_allowance_in_the_same_window_update() {
    let mut s = Server::new(Limits {
        stream_window: 100,
        stream_window_max: 400,
        ..Limits::default()
    });
    s.feed(&request(1, false));
    let update = |n: u32| [(kind::WINDOW_UPDATE, 0, 1, n.to_be_bytes().to_vec())];
    // Below half the window: nothing goes back, nothing grows.
    s.feed(&data(1, 0, &[0; 100]));
    assert_eq!(s.conn.release_growing(1, 40, 1000, &mut s.out), 0);
    assert!(frames_of(&s.out.take_all()).is_empty());
    // Half the window: the credit goes back, and the window doubles.
    assert_eq!(s.conn.release_growing(1, 10, 1000, &mut s.out), 100);
    assert_eq!(frames_of(&s.out.take_all()), update(150));
    // The peer may now have 200 unreleased (50 are); the allowance
    // caps growth.
    s.feed(&data(1, 0, &[0; 150]));
    assert_eq!(s.conn.release_growing(1, 100, 30, &mut s.out), 30);
    assert_eq!(frames_of(&s.out.take_all()), update(130));
    // The window is 230, 100 of it unreleased: 131 more is too many.
    let seen = s.feed(&data(1, 0, &[0; 131]));
    assert_eq!(seen.rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
    // The maximum caps growth too; plain release never grows.
    let mut s = Server::new(Limits {
        stream_window: 300,
        stream_window_max: 400,
        ..Limits::default()
    });
    s.feed(&request(1, false));
    s.feed(&data(1, 0, &[0; 300]));
    assert_eq!(s.conn.release_growing(1, 150, 1000, &mut s.out), 100);
    assert_eq!(frames_of(&s.out.take_all()), update(250));
    s.feed(&data(1, 0, &[0; 100]));
    s.conn.release(1, 150, &mut s.out);
    assert!(
        frames_of(&s.out.take_all()).is_empty(),
        "half of 400 is 200"
    );
    s.conn.release(1, 50, &mut s.out);
    assert_eq!(frames_of(&s.out.take_all()), update(200));
}

#[test]
fn send_windows_follow_settings_and_window_updates() {
    let mut s = Server::new(Limits::default());
    s.feed(&request(1, false));
    assert_eq!(s.conn.send_capacity(1), 65_535);
    let mut settings = Vec::new();
    frame::write_settings(&mut settings, [(frame::setting::INITIAL_WINDOW_SIZE, 100)]);
    s.feed(&settings);
    assert_eq!(s.conn.send_capacity(1), 100);
    s.conn
        .send_data(1, Bytes::from_static(&[1; 100]), false, &mut s.out)
        .expect("fits");
    assert_eq!(s.conn.send_capacity(1), 0);
    assert!(s
        .conn
        .send_data(1, Bytes::from_static(b"x"), false, &mut s.out)
        .is_err());
    // Shrinking the initial window makes the stream's go negative.
    let mut settings = Vec::new();
    frame::write_settings(&mut settings, [(frame::setting::INITIAL_WINDOW_SIZE, 50)]);
    s.feed(&settings);
    let mut wu = Vec::new();
    frame::write_window_update(&mut wu, 1, 60);
    s.feed(&wu);
    assert_eq!(s.conn.send_capacity(1), 10);
    // A window past 2^31 - 1: stream error, then connection error.
    let mut wu = Vec::new();
    frame::write_window_update(&mut wu, 1, MAX_ID);
    assert_eq!(s.feed(&wu).rst(), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
    let mut wu = Vec::new();
    frame::write_window_update(&mut wu, 0, MAX_ID);
    connection_error(&s.feed(&wu), ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn floods_end_with_enhance_your_calm() {
    let limits = Limits {
        max_resets_per_tick: 10,
        max_control_frames_per_tick: 10,
        max_empty_data_per_tick: 10,
        max_continuations: 4,
        ..Limits::default()
    };
    // Rapid reset: open and reset, over and over.
    let mut s = Server::new(limits);
    let mut bytes = Vec::new();
    for i in 0..11 {
        let id = 2 * i + 1;
        bytes.extend(request(id, false));
        frame::write_rst_stream(&mut bytes, id, ErrorCode::CANCEL);
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
    // The same number spread over ticks is fine.
    let mut s = Server::new(limits);
    for i in 0..30 {
        let id = 2 * i + 1;
        let mut bytes = request(id, false);
        frame::write_rst_stream(&mut bytes, id, ErrorCode::CANCEL);
        assert_eq!(s.feed(&bytes).result, Some(Ok(())));
        s.conn.tick();
    }
    // PING flood (the SETTINGS of the handshake counted too).
    let mut s = Server::new(limits);
    let mut bytes = Vec::new();
    for _ in 0..10 {
        frame::write_ping(&mut bytes, false, [7; 8]);
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
    // WINDOW_UPDATEs that answer our DATA are free; a flood is not.
    let mut s = Server::new(limits);
    s.feed(&request(1, false));
    for _ in 0..20 {
        s.conn
            .send_data(1, Bytes::from_static(b"x"), false, &mut s.out)
            .expect("room");
    }
    let mut bytes = Vec::new();
    for _ in 0..40 {
        frame::write_window_update(&mut bytes, 1, 1);
    }
    assert_eq!(
        s.feed(&bytes).result,
        Some(Ok(())),
        "two per DATA frame sent"
    );
    let mut bytes = Vec::new();
    for _ in 0..10 {
        frame::write_window_update(&mut bytes, 0, 1);
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
    // Empty DATA frames.
    let mut s = Server::new(limits);
    let mut bytes = request(1, false);
    for _ in 0..11 {
        bytes.extend(data(1, 0, b""));
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
    // CONTINUATION flood.
    let mut s = Server::new(limits);
    let mut bytes = headers(1, 0, &block(&REQUEST));
    for _ in 0..5 {
        frame::write_head(&mut bytes, 0, kind::CONTINUATION, 0, 1);
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
}

/// REQUEST's fields, as `open` takes them.
fn request_fields() -> impl Iterator<Item = (&'static [u8], &'static [u8], bool)> {
    REQUEST
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false))
}

/// A WINDOW_UPDATE with an increment of 0, which our writer never makes.
fn zero_window_update(stream: u32) -> Vec<u8> {
    let mut b = Vec::new();
    frame::write_head(&mut b, 4, kind::WINDOW_UPDATE, 0, stream);
    b.extend_from_slice(&[0, 0, 0, 0]);
    b
}

#[test]
fn resets_the_peer_provokes_count_as_its_resets() {
    // "MadeYouReset" (CVE-2025-8671): frames that are stream errors on
    // streams just opened make us reset them, each one a call begun and
    // cancelled, without one RST_STREAM from the peer.
    let limits = Limits {
        max_resets_per_tick: 10,
        ..Limits::default()
    };
    type Provoke = fn(u32) -> Vec<u8>;
    let provokes: [(&str, Provoke); 3] = [
        ("WINDOW_UPDATE of 0", zero_window_update),
        ("PRIORITY of 4 bytes", |id| {
            let mut b = Vec::new();
            frame::write_head(&mut b, 4, kind::PRIORITY, 0, id);
            b.extend_from_slice(&[0, 0, 0, 0]);
            b
        }),
        ("DATA past the content-length", |id| {
            data(id, 0, b"too long")
        }),
    ];
    for (what, provoke) in provokes {
        let mut s = Server::new(limits);
        let mut bytes = Vec::new();
        for i in 0..11 {
            let id = 2 * i + 1;
            if what.starts_with("DATA") {
                bytes.extend(headers(
                    id,
                    flag::END_HEADERS,
                    &block(&[REQUEST.as_slice(), &[("content-length", "1")]].concat()),
                ));
            } else {
                bytes.extend(request(id, false));
            }
            bytes.extend(provoke(id));
        }
        let seen = s.feed(&bytes);
        assert_eq!(seen.rst().len(), 11, "{what}: each stream reset");
        connection_error(&seen, ErrorCode::ENHANCE_YOUR_CALM);
        // Spread over ticks, the same is fine.
        let mut s = Server::new(limits);
        for i in 0..30 {
            let id = 2 * i + 1;
            let mut bytes = request(id, false);
            bytes.extend(provoke(id));
            assert_eq!(s.feed(&bytes).result, Some(Ok(())), "{what}");
            s.conn.tick();
        }
    }
    // Resets that answer frames on streams already closed end nothing:
    // they are not counted.
    let mut s = Server::new(limits);
    let mut bytes = request(1, true);
    bytes.extend(request(3, false));
    frame::write_rst_stream(&mut bytes, 3, ErrorCode::CANCEL);
    assert_eq!(s.feed(&bytes).result, Some(Ok(())));
    s.conn.reset(1, ErrorCode::CANCEL, &mut s.out);
    s.conn.tick();
    let mut bytes = Vec::new();
    for id in [1, 3].repeat(10) {
        bytes.extend(data(id, 0, b"late"));
    }
    let seen = s.feed(&bytes);
    assert_eq!(seen.rst().len(), 21, "ours on 1, then one per late DATA");
    assert_eq!(seen.result, Some(Ok(())));
}

#[test]
fn a_window_update_of_zero_on_an_idle_stream_is_a_connection_error() {
    // RFC 9113 5.1: only HEADERS and PRIORITY may arrive on an idle
    // stream; an RST_STREAM there is forbidden (6.4), so the zero
    // increment cannot be a stream error.
    let mut s = Server::new(Limits::default());
    let seen = s.feed(&zero_window_update(99));
    assert!(seen.rst().is_empty(), "{:?}", seen.frames);
    connection_error(&seen, ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn ping_acknowledgements_are_control_frames() {
    let mut s = Server::new(Limits {
        max_control_frames_per_tick: 10,
        ..Limits::default()
    });
    let mut bytes = Vec::new();
    for _ in 0..10 {
        frame::write_ping(&mut bytes, true, [7; 8]);
    }
    connection_error(&s.feed(&bytes), ErrorCode::ENHANCE_YOUR_CALM);
}

#[test]
fn a_client_counts_the_stream_ids_it_has_left() {
    let mut out = Outbox::new();
    let mut c = Connection::new(Role::Client, Limits::default(), &mut out);
    assert_eq!(
        c.streams_left(),
        (MAX_ID - 1) / 2 + 1,
        "1, 3, ... up to 2^31 - 1"
    );
    c.next_local = MAX_ID - 2;
    assert_eq!(c.streams_left(), 2);
    assert_eq!(c.open(request_fields(), true, &mut out), Ok(MAX_ID - 2));
    assert_eq!(c.open(request_fields(), true, &mut out), Ok(MAX_ID));
    assert_eq!(c.streams_left(), 0);
    assert_eq!(
        c.open(request_fields(), true, &mut out),
        Err(SendError::Refused)
    );
}

#[test]
fn limits_on_streams_and_header_sizes() {
    let mut s = Server::new(Limits {
        max_concurrent_streams: 2,
        max_header_list_size: 200,
        max_header_block: 300,
        ..Limits::default()
    });
    s.feed(&request(1, false));
    s.feed(&request(3, false));
    assert_eq!(
        s.feed(&request(5, false)).rst(),
        [(5, ErrorCode::REFUSED_STREAM)]
    );
    // A list over its limit opens the stream for an answer.
    let long = "v".repeat(150);
    let mut fields = REQUEST.to_vec();
    fields.push(("x-long", &long));
    let mut s = Server::new(Limits {
        max_header_list_size: 200,
        max_header_block: 300,
        ..Limits::default()
    });
    let seen = s.feed(&headers(
        1,
        flag::END_HEADERS | flag::END_STREAM,
        &block(&fields),
    ));
    assert_eq!(seen.events, ["HeadersTooLarge { stream: 1 }"]);
    assert!(s.conn.streams().get(1).is_some());
    // A raw block over its limit ends the connection.
    let longer = "v".repeat(300);
    let mut fields = REQUEST.to_vec();
    fields.push(("x-long", &longer));
    connection_error(
        &s.feed(&headers(3, flag::END_HEADERS, &block(&fields))),
        ErrorCode::ENHANCE_YOUR_CALM,
    );
}

#[test]
fn the_body_of_a_head_refused_for_its_size_is_dropped_not_reset() {
    // A client whose metadata outgrew the limit sends its message as
    // usual: the proxy answers the call (RESOURCE_EXHAUSTED) and drops the
    // DATA, with its credit. That DATA is no mistake of the client's: no
    // RST_STREAM for it, and none of it counts as the client's resets.
    let limits = Limits {
        max_header_list_size: 200,
        max_header_block: 300,
        max_resets_per_tick: 10,
        ..Limits::default()
    };
    let long = "v".repeat(150);
    let mut fields = REQUEST.to_vec();
    fields.push(("x-long", &long));
    let mut s = Server::new(limits);
    let mut bytes = Vec::new();
    for i in 0..20 {
        let id = 2 * i + 1;
        bytes.extend(headers(id, flag::END_HEADERS, &block(&fields)));
        bytes.extend(data(id, 0, b"message"));
        bytes.extend(data(id, flag::END_STREAM, b"more"));
    }
    let seen = s.feed(&bytes);
    assert_eq!(seen.result, Some(Ok(())), "{:?}", seen.frames);
    assert!(seen.rst().is_empty(), "{:?}", seen.rst());
    assert_eq!(
        seen.events.len(),
        20,
        "one HeadersTooLarge each: {:?}",
        seen.events
    );
    for i in 0..20 {
        let stream = s
            .conn
            .streams()
            .get(2 * i + 1)
            .copied()
            .expect("open for its answer");
        assert!(!stream.recv_open, "the client's side ended");
    }
}

#[test]
fn pings_are_answered_and_frames_checked_by_the_codec() {
    let mut s = Server::new(Limits::default());
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, *b"abcdefgh");
    let seen = s.feed(&ping);
    assert_eq!(
        seen.frames,
        [(kind::PING, flag::ACK, 0, b"abcdefgh".to_vec())]
    );
    // An oversized frame.
    let mut big = Vec::new();
    frame::write_head(&mut big, 16_385, kind::DATA, 0, 1);
    big.extend(vec![0; 16_385]);
    connection_error(&s.feed(&big), ErrorCode::FRAME_SIZE_ERROR);
}

#[test]
fn trailers_must_end_the_stream_and_content_length_must_match() {
    let mut s = Server::new(Limits::default());
    s.feed(&request(1, false));
    let trailers = block(&[("grpc-status", "0")]);
    assert_eq!(
        s.feed(&headers(1, flag::END_HEADERS, &trailers)).rst(),
        [(1, ErrorCode::PROTOCOL_ERROR)]
    );
    let mut fields = REQUEST.to_vec();
    fields.push(("content-length", "3"));
    s.feed(&headers(3, flag::END_HEADERS, &block(&fields)));
    assert_eq!(
        s.feed(&data(3, flag::END_STREAM, b"ab")).rst(),
        [(3, ErrorCode::PROTOCOL_ERROR)]
    );
    s.feed(&headers(5, flag::END_HEADERS, &block(&fields)));
    let seen = s.feed(&data(5, flag::END_STREAM, b"abc"));
    assert!(seen.rst().is_empty());
    assert_eq!(seen.events.len(), 1);
}

mod hostile {
    //! Generated frame sequences, as a fuzzer would send them (a
    //! stable-toolchain stand-in for cargo-fuzz): any mix of frame
    //! types, flags, stream ids and payloads, valid heads among them,
    //! split at any byte, never panics the machine, never lets it hold
    //! more streams than it allows, and never makes it write without
    //! bound for what it reads.

    use super::*;
    use proptest::prelude::*;

    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let stream = prop_oneof![Just(0u32), 1u32..8, Just(0x7fff_ffff)];
        let payload = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            Just(block(&REQUEST)),
            Just(block(&[("grpc-status", "0")])),
            any::<u32>().prop_map(|n| n.to_be_bytes().to_vec()),
        ];
        (0u8..12, any::<u8>(), stream, payload).prop_map(|(kind, flags, stream, payload)| {
            let mut f = Vec::new();
            frame::write_head(&mut f, payload.len(), kind, flags, stream);
            f.extend_from_slice(&payload);
            f
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_frames_split_anywhere_never_panic_or_overrun(
            frames in proptest::collection::vec(any_frame(), 1..40),
            cut in any::<usize>(),
            release in any::<bool>(),
        ) {
            let limits = Limits {
                max_concurrent_streams: 3,
                stream_window: 100,
                stream_window_max: 400,
                connection_window: 65_535,
                max_header_list_size: 1024,
                max_header_block: 2048,
                max_continuations: 4,
                max_resets_per_tick: 5,
                max_control_frames_per_tick: 20,
                max_empty_data_per_tick: 5,
                ..Limits::default()
            };
            let mut s = Server::new(limits);
            let bytes: Vec<u8> = frames.concat();
            let cut = if bytes.is_empty() { 0 } else { cut % bytes.len() };
            let mut buf = BytesMut::new();
            let mut written = 0usize;
            for piece in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(piece);
                let mut data = Vec::new();
                let result = s.conn.recv(&mut buf, &mut s.out, |e| {
                    if let Event::Data { stream, data: d, .. } = e {
                        data.push((stream, d.len() as u32));
                    }
                });
                if release {
                    for (stream, n) in data {
                        s.conn.release_growing(stream, n, 1000, &mut s.out);
                    }
                }
                prop_assert!(s.conn.streams().len() <= 3);
                written += s.out.take_all().len();
                if result.is_err() {
                    break;
                }
            }
            // SETTINGS and PING ACKs, resets, WINDOW_UPDATEs and one
            // GOAWAY: bounded by what came in.
            prop_assert!(
                written <= 64 + 2 * bytes.len() + 64 * frames.len(),
                "{written} bytes written for {} read", bytes.len()
            );
        }
    }
}

#[test]
fn a_few_bytes_that_decode_to_a_large_list_leave_no_room_kept() {
    let limits = Limits {
        max_header_list_size: 64 << 10,
        ..Limits::default()
    };
    let mut s = Server::new(limits);
    // A 3,000-byte field added to the HPACK table (literal with
    // incremental indexing, new name), then named 16 times by its index
    // (62) in a block of 16 bytes more than a plain request's.
    let value = vec![b'v'; 3000];
    let mut first = block(&REQUEST);
    first.extend_from_slice(&[0x40, 5]);
    first.extend_from_slice(b"x-big");
    // 3000 as a 7-bit-prefix integer: 127, then 2873 in base 128.
    first.extend_from_slice(&[0x7f, 0xb9, 0x16]);
    first.extend_from_slice(&value);
    let seen = s.feed(&headers(1, flag::END_HEADERS | flag::END_STREAM, &first));
    assert_eq!(seen.result, Some(Ok(())), "{:?}", seen.events);
    let mut repeated = block(&REQUEST);
    repeated.extend_from_slice(&[0x80 | 62; 16]);
    for stream in [3, 5] {
        let seen = s.feed(&headers(
            stream,
            flag::END_HEADERS | flag::END_STREAM,
            &repeated,
        ));
        assert_eq!(
            seen.events,
            [format!("headers {stream} Request 20 end=true")]
        );
    }
    assert!(
        s.conn.heads.list.room() > 48_000,
        "the kept list holds the fields"
    );
    s.conn.shrink();
    assert_eq!(s.conn.heads.list.room(), 0, "and lets them go");
    let seen = s.feed(&headers(7, flag::END_HEADERS | flag::END_STREAM, &repeated));
    assert_eq!(seen.events, ["headers 7 Request 20 end=true"]);
}

#[test]
fn a_second_goaway_never_names_a_later_stream() {
    let mut s = Server::new(Limits::default());
    assert_eq!(s.feed(&request(1, false)).result, Some(Ok(())));
    s.conn.go_away(ErrorCode::NO_ERROR, &mut s.out);
    let first = frames_of(&s.out.take_all());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, kind::GOAWAY);
    assert_eq!(
        first[0].3[..4],
        1u32.to_be_bytes(),
        "the last stream opened"
    );
    // A stream that crossed the GOAWAY is ignored.
    let seen = s.feed(&request(3, false));
    assert_eq!(seen.result, Some(Ok(())));
    assert!(seen.events.is_empty(), "{:?}", seen.events);
    // A drain after an age limit's GOAWAY: the id must not grow.
    s.conn.go_away(ErrorCode::NO_ERROR, &mut s.out);
    let second = frames_of(&s.out.take_all());
    assert_eq!(second[0].3[..4], 1u32.to_be_bytes(), "not stream 3");
    // Nor a connection error's GOAWAY after it.
    let seen = s.feed(&data(0, 0, b"x"));
    assert!(matches!(seen.result, Some(Err(_))), "DATA on stream 0");
    let error = seen
        .frames
        .iter()
        .find(|f| f.0 == kind::GOAWAY)
        .expect("GOAWAY");
    assert_eq!(error.3[..4], 1u32.to_be_bytes(), "not stream 3");
}

#[test]
fn resets_from_a_server_are_no_flood() {
    // A server resets only streams we opened (grpc-go ends a bidi call it
    // finished first with RST_STREAM(NO_ERROR)): at any rate they are our
    // own calls ending, never a stream begun for nothing by the peer.
    let limits = Limits {
        max_resets_per_tick: 10,
        max_control_frames_per_tick: 10,
        ..Limits::default()
    };
    let mut out = Outbox::new();
    let mut c = Connection::new(Role::Client, limits, &mut out);
    let mut hello = Vec::new();
    frame::write_settings(&mut hello, []);
    assert_eq!(
        c.recv(&mut BytesMut::from(&hello[..]), &mut out, |_| {}),
        Ok(())
    );
    let mut resets = Vec::new();
    for _ in 0..30 {
        let id = c.open(request_fields(), true, &mut out).expect("room");
        frame::write_rst_stream(&mut resets, id, ErrorCode::NO_ERROR);
    }
    let mut ended = 0;
    let result = c.recv(&mut BytesMut::from(&resets[..]), &mut out, |e| {
        if matches!(e, Event::Reset { .. }) {
            ended += 1;
        }
    });
    assert_eq!(result, Ok(()));
    assert_eq!(ended, 30);
    // Resets of streams already ended end nothing: past the budget of
    // control frames, a flood.
    let result = c.recv(&mut BytesMut::from(&resets[..]), &mut out, |_| {});
    assert_eq!(
        result.map_err(|e| e.code),
        Err(ErrorCode::ENHANCE_YOUR_CALM)
    );
}

#[test]
fn a_header_table_size_from_the_peer_is_answered_by_a_size_update() {
    // RFC 7541 6.3: after a smaller SETTINGS_HEADER_TABLE_SIZE the next
    // header block starts with a table size update (nghttp2 refuses one
    // without); ours says 0, as its encoder uses no dynamic table.
    let mut out = Outbox::new();
    let mut c = Connection::new(Role::Client, Limits::default(), &mut out);
    let mut settings = Vec::new();
    frame::write_settings(&mut settings, [(frame::setting::HEADER_TABLE_SIZE, 0)]);
    assert_eq!(
        c.recv(&mut BytesMut::from(&settings[..]), &mut out, |_| {}),
        Ok(())
    );
    out.take_all();
    let blocks = |out: &mut Outbox| -> Vec<Vec<u8>> {
        frames_of(&out.take_all())
            .into_iter()
            .filter(|f| f.0 == kind::HEADERS)
            .map(|f| f.3)
            .collect()
    };
    c.open(request_fields(), true, &mut out).expect("room");
    c.open(request_fields(), true, &mut out).expect("room");
    let written = blocks(&mut out);
    assert_eq!(written.len(), 2);
    assert_eq!(
        written[0][0], 0x20,
        "the first block after it: {:?}",
        written[0]
    );
    assert_eq!(
        &written[0][1..],
        &written[1][..],
        "once, then the same block"
    );
    // And a block split over CONTINUATIONs carries it once, in front.
    let mut small = Vec::new();
    frame::write_settings(
        &mut small,
        [
            (frame::setting::HEADER_TABLE_SIZE, 100),
            (frame::setting::MAX_FRAME_SIZE, 16_384),
        ],
    );
    assert_eq!(
        c.recv(&mut BytesMut::from(&small[..]), &mut out, |_| {}),
        Ok(())
    );
    out.take_all();
    let long = "v".repeat(40_000);
    let mut big: Vec<(&str, &str)> = REQUEST.to_vec();
    big.push(("x-long", &long));
    c.open(
        big.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes(), false)),
        true,
        &mut out,
    )
    .expect("room");
    let frames = frames_of(&out.take_all());
    let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(
        kinds,
        [kind::HEADERS, kind::CONTINUATION, kind::CONTINUATION]
    );
    assert!(frames.iter().all(|f| f.3.len() <= 16_384));
    assert_eq!(frames[0].3[0], 0x20);
    assert_eq!(frames[2].1 & flag::END_HEADERS, flag::END_HEADERS);
    let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
    let mut decoder = crate::hpack::Decoder::new(4096);
    let mut names = Vec::new();
    decoder
        .decode(&block, 1 << 20, |f| names.push(f.name.to_vec()))
        .expect("decodes");
    assert_eq!(names.last().map(Vec::as_slice), Some(&b"x-long"[..]));
}

#[test]
fn only_a_goaway_that_lowers_the_last_id_is_heard_and_a_flood_ends() {
    let limits = Limits {
        max_control_frames_per_tick: 10,
        ..Limits::default()
    };
    let mut out = Outbox::new();
    let mut c = Connection::new(Role::Client, limits, &mut out);
    let mut bytes = Vec::new();
    frame::write_settings(&mut bytes, []);
    for last in [7, 7, 9, 3, 5, 3] {
        frame::write_goaway(&mut bytes, last, ErrorCode::NO_ERROR, b"");
    }
    let mut heard = Vec::new();
    let result = c.recv(&mut BytesMut::from(&bytes[..]), &mut out, |e| {
        if let Event::GoAway { last_stream, .. } = e {
            heard.push(last_stream);
        }
    });
    assert_eq!(result, Ok(()));
    assert_eq!(heard, [7, 3]);
    assert!(c.going_away());
    // Past the tick's budget of control frames, a flood.
    let mut flood = Vec::new();
    for _ in 0..10 {
        frame::write_goaway(&mut flood, 3, ErrorCode::NO_ERROR, b"");
    }
    let result = c.recv(&mut BytesMut::from(&flood[..]), &mut out, |_| {});
    assert_eq!(
        result.map_err(|e| e.code),
        Err(ErrorCode::ENHANCE_YOUR_CALM)
    );
}

#[test]
fn informational_heads_count_as_control_frames() {
    let limits = Limits {
        max_control_frames_per_tick: 10,
        ..Limits::default()
    };
    let mut out = Outbox::new();
    let mut c = Connection::new(Role::Client, limits, &mut out);
    let id = c.open(request_fields(), true, &mut out).expect("room");
    let mut bytes = Vec::new();
    frame::write_settings(&mut bytes, []);
    for _ in 0..5 {
        bytes.extend(headers(
            id,
            flag::END_HEADERS,
            &block(&[(":status", "103")]),
        ));
    }
    let result = c.recv(&mut BytesMut::from(&bytes[..]), &mut out, |_| {});
    assert_eq!(result, Ok(()), "a few are fine");
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.extend(headers(
            id,
            flag::END_HEADERS,
            &block(&[(":status", "103")]),
        ));
    }
    let result = c.recv(&mut BytesMut::from(&flood[..]), &mut out, |_| {});
    assert_eq!(
        result.map_err(|e| e.code),
        Err(ErrorCode::ENHANCE_YOUR_CALM)
    );
}
