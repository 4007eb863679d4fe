//! The proxy's own answer to a request that is not gRPC (a browser, `curl`
//! without `application/grpc`, a health checker speaking plain HTTP/2): HTTP
//! 415 and one line of text that says why. The text is a response body like
//! any other: it goes as the client's credit allows, and its stream stays
//! open, counted against the client's stream limit, until all of it went.

use bytes::Bytes;

use crate::http2::connection::Connection;
use crate::relay::wire::Wire;

/// The body of the answer.
pub const BODY: &[u8] =
    b"grpc-proxy: not a gRPC request: the content-type must be application/grpc\n";

/// Answers `stream`: the head, and the body unless the request was `HEAD`.
pub fn answer(wire: &mut Wire, stream: u32, head_only: bool) {
    let length = BODY.len().to_string();
    let head: [(&[u8], &[u8], bool); 3] = [
        (b":status", b"415", false),
        (b"content-type", b"text/plain; charset=utf-8", false),
        (b"content-length", length.as_bytes(), false),
    ];
    let sent = wire
        .conn
        .send_headers(stream, head.into_iter(), head_only, &mut wire.out);
    if sent.is_err() || head_only {
        return;
    }
    if wire.not_grpc.len() == wire.not_grpc.capacity() {
        // A stream that ended unseen (not by a reset the relay was told
        // of) would leave its entry behind: drop such entries before the
        // list grows, so that it stays within twice the streams open.
        let conn = &wire.conn;
        wire.not_grpc.retain(|&(id, _)| sending(conn, id));
    }
    wire.not_grpc.push((stream, 0));
    send_or_drop(wire, wire.not_grpc.len() - 1);
}

/// Sends what the client's credit allows of the bodies that wait:
/// `stream`'s, or every stream's (0). The list is in stream order (a
/// client's new streams have ever higher ids), so one is found by halving.
pub fn push(wire: &mut Wire, stream: u32) {
    if stream != 0 {
        if let Ok(i) = wire.not_grpc.binary_search_by_key(&stream, |&(id, _)| id) {
            send_or_drop(wire, i);
        }
        return;
    }
    for i in 0..wire.not_grpc.len() {
        send_more(wire, i);
    }
    let conn = &wire.conn;
    wire.not_grpc.retain(|&(id, _)| sending(conn, id));
}

/// Sends what credit allows of entry `i`'s body, and drops the entry once
/// its stream sends no more (the body went whole, or the stream is gone).
fn send_or_drop(wire: &mut Wire, i: usize) {
    let id = wire.not_grpc[i].0;
    send_more(wire, i);
    if !sending(&wire.conn, id) {
        wire.not_grpc.remove(i);
    }
}

/// Sends what credit allows of the body of entry `i`.
fn send_more(wire: &mut Wire, i: usize) {
    let (id, sent) = wire.not_grpc[i];
    let n = wire.room(id).min(BODY.len() - sent);
    if n == 0 {
        return;
    }
    let chunk = Bytes::from_static(&BODY[sent..sent + n]);
    let end = sent + n == BODY.len();
    if wire.conn.send_data(id, chunk, end, &mut wire.out).is_ok() {
        wire.not_grpc[i].1 += n;
    }
}

/// Forgets `stream`'s body: the client reset it.
pub fn forget(wire: &mut Wire, stream: u32) {
    if let Ok(i) = wire.not_grpc.binary_search_by_key(&stream, |&(id, _)| id) {
        wire.not_grpc.remove(i);
    }
}

fn sending(conn: &Connection, id: u32) -> bool {
    conn.streams().get(id).is_some_and(|s| s.send_open)
}
