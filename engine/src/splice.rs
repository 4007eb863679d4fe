//! The splice: one call's frames, pumped between downstream and upstream.
//!
//! Key type: [`Splice`], a hand-written future that owns both ends of one
//! call and moves, on every wake-up:
//! - request DATA and trailers (or END_STREAM) downstream -> upstream;
//! - response headers, DATA and trailers upstream -> downstream, keeping a
//!   trailers-only response trailers-only;
//! - resets both ways: a downstream RST_STREAM or disconnect resets the
//!   upstream stream with CANCEL at once; an upstream reset or disconnect
//!   ends the downstream stream with the status the gRPC spec maps it to;
//! - the deadline: when it passes, the upstream stream is reset (CANCEL) and
//!   the client gets DEADLINE_EXCEEDED.
//!
//! Flow control is end to end: a chunk is taken from one side only after the
//! other side granted window for it, and the window is released to the
//! sender only once the chunk is handed on. A stream therefore holds at most
//! one chunk plus what h2 buffers within the advertised windows. Payload is
//! never copied: `Bytes` from h2's receive buffer are split and passed on.
//! An empty DATA frame without END_STREAM is never forwarded (h2 counts
//! those against a connection).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::Response;

use crate::pool::{StreamSlot, Upstream};
use crate::status::{Code, Status};

/// The downstream response, in the state it has reached.
pub enum Downstream {
    /// Nothing sent yet.
    Head(SendResponse<Bytes>),
    /// Headers sent; DATA and trailers may follow.
    Body(SendStream<Bytes>),
    /// Ended (trailers or reset sent).
    Done,
}

impl Downstream {
    /// Ends the response with `status`: trailers-only if nothing was sent
    /// yet, trailers otherwise.
    pub fn fail(&mut self, status: &Status) {
        match std::mem::replace(self, Downstream::Done) {
            Downstream::Head(mut respond) => {
                let _ = respond.send_response(status.to_trailers_only(), true);
            }
            Downstream::Body(mut stream) => {
                let _ = stream.send_trailers(status.to_header_map());
            }
            Downstream::Done => {}
        }
    }

    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let polled = match self {
            Downstream::Head(respond) => respond.poll_reset(cx),
            Downstream::Body(stream) => stream.poll_reset(cx),
            Downstream::Done => return Poll::Pending,
        };
        polled.map(|_| ())
    }
}

/// How a call ended, for logs and counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream's response went through to its end.
    Complete,
    /// The client reset the stream or went away; the upstream was reset.
    DownstreamGone,
    /// The upstream failed; the client got this status.
    UpstreamFailed(Code),
    /// The deadline passed; the client got DEADLINE_EXCEEDED.
    DeadlineExceeded,
}

enum Request {
    Streaming {
        body: RecvStream,
        chunk: Option<Bytes>,
    },
    Done,
}

enum ResponseHalf {
    Head(h2::client::ResponseFuture),
    Streaming {
        body: RecvStream,
        chunk: Option<Bytes>,
    },
}

/// One call in flight; completes when the response has ended one way or
/// another.
pub struct Splice {
    down: Downstream,
    /// The upstream stream's send side, kept to the end so that it can be
    /// reset explicitly whatever state the call is in.
    up: SendStream<Bytes>,
    request: Request,
    response: ResponseHalf,
    deadline: Option<Pin<Box<monoio::time::Sleep>>>,
    _slot: StreamSlot,
}

enum Step {
    Pending,
    Done,
    Down,
    Up(h2::Error),
}

impl Splice {
    /// Starts splicing `down` (with its request body) to `up`.
    pub fn new(
        down: SendResponse<Bytes>,
        request_body: RecvStream,
        up: Upstream,
        deadline: Option<monoio::time::Instant>,
    ) -> Splice {
        let request = if up.request_open {
            Request::Streaming {
                body: request_body,
                chunk: None,
            }
        } else {
            Request::Done
        };
        Splice {
            down: Downstream::Head(down),
            up: up.send,
            request,
            response: ResponseHalf::Head(up.response),
            deadline: deadline.map(|d| Box::pin(monoio::time::sleep_until(d))),
            _slot: up.slot,
        }
    }

    /// Resets the upstream stream with CANCEL (a no-op if it has closed).
    fn reset_upstream(&mut self) {
        self.up.send_reset(Reason::CANCEL);
        self.request = Request::Done;
    }

    fn poll_request(&mut self, cx: &mut Context<'_>) -> Step {
        let send = &mut self.up;
        let Request::Streaming { body, chunk } = &mut self.request else {
            return Step::Done;
        };
        loop {
            if let Some(data) = chunk {
                match pump(data, body, send, cx) {
                    Pump::Sent(true) => {
                        self.request = Request::Done;
                        return Step::Done;
                    }
                    Pump::Sent(false) => *chunk = None,
                    Pump::Pending => return Step::Pending,
                    // The upstream refused more request data (reset, or it
                    // answered early): stop forwarding; the response half
                    // reports what happened.
                    Pump::Failed => {
                        self.request = Request::Done;
                        return Step::Done;
                    }
                }
            }
            match body.poll_data(cx) {
                Poll::Pending => return Step::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    if data.is_empty() && !body.is_end_stream() {
                        continue;
                    }
                    send.reserve_capacity(data.len());
                    *chunk = Some(data);
                }
                Poll::Ready(Some(Err(_))) => return Step::Down,
                Poll::Ready(None) => {
                    let sent = match body.poll_trailers(cx) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Err(_)) => return Step::Down,
                        Poll::Ready(Ok(Some(trailers))) => send.send_trailers(trailers),
                        Poll::Ready(Ok(None)) => send.send_data(Bytes::new(), true),
                    };
                    let _ = sent; // an upstream that stopped listening shows on the response half
                    self.request = Request::Done;
                    return Step::Done;
                }
            }
        }
    }

    fn poll_response(&mut self, cx: &mut Context<'_>) -> Step {
        loop {
            match &mut self.response {
                ResponseHalf::Head(future) => {
                    let response = match Pin::new(future).poll(cx) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Err(e)) => return Step::Up(e),
                        Poll::Ready(Ok(response)) => response,
                    };
                    let (parts, body) = response.into_parts();
                    let end = body.is_end_stream();
                    let Downstream::Head(respond) = &mut self.down else {
                        return Step::Down;
                    };
                    match respond.send_response(Response::from_parts(parts, ()), end) {
                        Err(_) => return Step::Down,
                        Ok(_) if end => {
                            self.down = Downstream::Done;
                            return Step::Done;
                        }
                        Ok(stream) => self.down = Downstream::Body(stream),
                    }
                    self.response = ResponseHalf::Streaming { body, chunk: None };
                }
                ResponseHalf::Streaming { body, chunk } => {
                    let Downstream::Body(send) = &mut self.down else {
                        return Step::Down;
                    };
                    if let Some(data) = chunk {
                        match pump(data, body, send, cx) {
                            Pump::Sent(true) => {
                                self.down = Downstream::Done;
                                return Step::Done;
                            }
                            Pump::Sent(false) => *chunk = None,
                            Pump::Pending => return Step::Pending,
                            Pump::Failed => return Step::Down,
                        }
                    }
                    match body.poll_data(cx) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Some(Ok(data))) => {
                            if data.is_empty() && !body.is_end_stream() {
                                continue;
                            }
                            send.reserve_capacity(data.len());
                            *chunk = Some(data);
                        }
                        Poll::Ready(Some(Err(e))) => return Step::Up(e),
                        Poll::Ready(None) => {
                            let sent = match body.poll_trailers(cx) {
                                Poll::Pending => return Step::Pending,
                                Poll::Ready(Err(e)) => return Step::Up(e),
                                Poll::Ready(Ok(Some(trailers))) => send.send_trailers(trailers),
                                Poll::Ready(Ok(None)) => send.send_data(Bytes::new(), true),
                            };
                            if sent.is_err() {
                                return Step::Down;
                            }
                            self.down = Downstream::Done;
                            return Step::Done;
                        }
                    }
                }
            }
        }
    }
}

enum Pump {
    /// The chunk went out; `true` when it carried END_STREAM.
    Sent(bool),
    Pending,
    Failed,
}

/// Sends `data` on `send` as the peer's window allows, releasing the same
/// amount of window on `from`. Splits without copying.
fn pump(
    data: &mut Bytes,
    from: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Pump {
    loop {
        let room = send.capacity();
        if room == 0 {
            if data.is_empty() {
                // Only an empty final frame is ever kept; it needs no window.
                let end = from.is_end_stream();
                return match send.send_data(Bytes::new(), end) {
                    Ok(()) => Pump::Sent(end),
                    Err(_) => Pump::Failed,
                };
            }
            match send.poll_capacity(cx) {
                Poll::Pending => return Pump::Pending,
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(_))) => return Pump::Failed,
                Poll::Ready(None) => return Pump::Failed,
            }
        }
        let n = room.min(data.len());
        let piece = data.split_to(n);
        let end = data.is_empty() && from.is_end_stream();
        if send.send_data(piece, end).is_err() {
            return Pump::Failed;
        }
        let _ = from.flow_control().release_capacity(n);
        if data.is_empty() {
            return Pump::Sent(end);
        }
    }
}

impl Future for Splice {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                this.reset_upstream();
                this.down.fail(&Status::new(
                    Code::DeadlineExceeded,
                    "deadline exceeded at the proxy",
                ));
                return Poll::Ready(Outcome::DeadlineExceeded);
            }
        }
        match this.poll_request(cx) {
            Step::Down => {
                this.reset_upstream();
                if let Downstream::Body(s) = &mut this.down {
                    s.send_reset(Reason::CANCEL);
                }
                this.down = Downstream::Done;
                return Poll::Ready(Outcome::DownstreamGone);
            }
            Step::Pending | Step::Done | Step::Up(_) => {}
        }
        // While the request body is open, its `poll_data` reports a client
        // reset or disconnect; once it has ended (possibly just now, in
        // `poll_request` above), the response side needs its own watch.
        // Checked after `poll_request` so that the poll which ends the
        // request also registers for the reset.
        if matches!(this.request, Request::Done) && this.down.poll_reset(cx).is_ready() {
            this.reset_upstream();
            this.down = Downstream::Done;
            return Poll::Ready(Outcome::DownstreamGone);
        }
        let step = this.poll_response(cx);
        Poll::Ready(match step {
            Step::Pending => return Poll::Pending,
            Step::Done => Outcome::Complete,
            Step::Down => {
                this.reset_upstream();
                this.down = Downstream::Done;
                Outcome::DownstreamGone
            }
            Step::Up(e) => {
                let status = upstream_status(&e);
                this.down.fail(&status);
                Outcome::UpstreamFailed(status.code())
            }
        })
    }
}

/// The status a client gets when its upstream stream or connection failed.
pub fn upstream_status(e: &h2::Error) -> Status {
    if e.is_io() || e.is_go_away() {
        return Status::new(Code::Unavailable, format!("upstream connection lost: {e}"));
    }
    match e.reason() {
        Some(reason) if e.is_reset() => Status::new(
            Code::from_reason(reason),
            format!("upstream reset the stream: {reason}"),
        ),
        _ => Status::new(Code::Internal, format!("upstream error: {e}")),
    }
}
