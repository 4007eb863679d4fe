//! Any bytes, read by one connection machine in pieces of any size, as a
//! server (after a valid client preface, so the fuzzer's bytes reach the
//! frames) or as a client. The consumer behaves as the relay does: it
//! gives back the credit of every DATA byte, answers every request head,
//! and ticks now and then. Nothing panics; a connection error ends it.

#![no_main]

use bytes::{Bytes, BytesMut};
use grpc_proxy::http2::connection::{Connection, Event, Limits, Role};
use grpc_proxy::http2::headers::Kind;
use grpc_proxy::http2::outbox::Outbox;
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let server = control & 1 == 0;
    // Piece sizes from 1 to 64 bytes, or whole.
    let piece = match (control >> 1) & 63 {
        0 => rest.len().max(1),
        n => usize::from(n),
    };
    let limits = Limits {
        max_concurrent_streams: 16,
        stream_window: 1 << 16,
        stream_window_max: 1 << 20,
        connection_window: 1 << 20,
        max_header_list_size: 4 << 10,
        max_header_block: 8 << 10,
        ..Limits::default()
    };
    let mut out = Outbox::new();
    let role = if server { Role::Server } else { Role::Client };
    let mut conn = Connection::new(role, limits, &mut out);
    let mut input = Vec::new();
    if server {
        input.extend_from_slice(PREFACE);
    } else {
        // A stream of ours for the peer's frames to answer.
        let head: [(&[u8], &[u8], bool); 4] = [
            (b":method", b"POST", false),
            (b":scheme", b"http", false),
            (b":path", b"/a.B/C", false),
            (b":authority", b"x", false),
        ];
        let _ = conn.open(head.into_iter(), false, &mut out);
    }
    input.extend_from_slice(rest);
    let mut buf = BytesMut::new();
    for (i, chunk) in input.chunks(piece).enumerate() {
        buf.extend_from_slice(chunk);
        let mut credit = Vec::new();
        let mut answer = Vec::new();
        let result = conn.recv(&mut buf, &mut out, |event| match event {
            Event::Data { stream, data, .. } => credit.push((stream, data.len() as u32)),
            Event::Headers { stream, list, .. } if list.kind() == Kind::Request => {
                answer.push(stream)
            }
            _ => {}
        });
        for (stream, n) in credit {
            conn.release(stream, n, &mut out);
        }
        for stream in answer {
            let head: [(&[u8], &[u8], bool); 1] = [(b":status", b"200", false)];
            let _ = conn.send_headers(stream, head.into_iter(), false, &mut out);
            let _ = conn.send_data(stream, Bytes::from_static(b"reply"), true, &mut out);
        }
        if i % 8 == 7 {
            conn.tick();
        }
        let _ = out.take_all();
        if result.is_err() {
            return;
        }
    }
});
