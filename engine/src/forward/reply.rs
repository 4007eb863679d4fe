//! What the client gets: the downstream response in the state it has
//! reached, the trailers-only answers the proxy makes, and the status an
//! upstream failure becomes.

use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;

use crate::grpc::status::{Code, Status};

/// Answers a request that got nothing yet with a trailers-only `status`.
pub fn answer(respond: &mut SendResponse<Bytes>, status: &Status) {
    let _ = respond.send_response(status.to_trailers_only(), true);
}

/// The downstream response, in the state it has reached.
pub enum Reply {
    /// Nothing sent yet.
    Head(SendResponse<Bytes>),
    /// Headers sent; DATA and trailers may follow.
    Body(SendStream<Bytes>),
    /// Ended (trailers or reset sent).
    Done,
}

impl Reply {
    /// Ends the response with `status`: trailers-only if nothing was sent
    /// yet, trailers otherwise.
    pub fn fail(&mut self, status: &Status) {
        match std::mem::replace(self, Reply::Done) {
            Reply::Head(mut respond) => answer(&mut respond, status),
            Reply::Body(mut stream) => {
                let _ = stream.send_trailers(status.to_header_map());
            }
            Reply::Done => {}
        }
    }

    pub(super) fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let polled = match self {
            Reply::Head(respond) => respond.poll_reset(cx),
            Reply::Body(stream) => stream.poll_reset(cx),
            Reply::Done => return Poll::Pending,
        };
        polled.map(|_| ())
    }
}

/// The status a client gets when its upstream stream or connection failed:
/// a short message naming the kind of failure; h2's own words (which may
/// carry OS errors) are for the log and the access log.
pub fn upstream_status(e: &h2::Error) -> Status {
    if e.is_io() || e.is_go_away() {
        return Status::new(Code::Unavailable, "upstream connection lost");
    }
    match e.reason() {
        Some(reason) if e.is_reset() => {
            Status::new(Code::from_reason(reason), "upstream reset the stream")
        }
        _ => Status::new(Code::Internal, "upstream protocol error"),
    }
}
