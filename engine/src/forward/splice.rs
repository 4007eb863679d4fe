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
//!   the client gets DEADLINE_EXCEEDED;
//! - retries: until the upstream's response headers arrive, the request's
//!   head and the DATA forwarded so far (up to `retry_buffer`, within the
//!   connection's and the core's budgets; see [`retry`](super::retry)) are
//!   held; if the upstream refuses the stream
//!   (REFUSED_STREAM, or a GOAWAY whose last stream id is below it: never
//!   processed), the splice ends with a
//!   [`Retry`] for the caller to replay on another connection, once.
//!
//! It also records what the metrics and the access log need: the gRPC
//! status the client got and the payload bytes each way.
//!
//! Flow control is end to end: a chunk is taken from one side only after the
//! other side granted window for it, and the window is released to the
//! sender only once the chunk is handed on. A stream therefore holds at most
//! one chunk plus what h2 buffers within the advertised windows. Payload is
//! never copied: `Bytes` from h2's receive buffer are split and passed on.
//! An empty DATA frame without END_STREAM is never forwarded (h2 counts
//! those against a connection).

//!
//! The parts are beside this file: [`reply`](super::reply) (the client's
//! response and the statuses the proxy makes), [`retry`](super::retry)
//! (what is held for a retry), and `pump.rs` (one chunk across, with flow
//! control).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::Response;

use crate::forward::pump::{pump, Pump, Source};
use crate::forward::reply::{upstream_status, Reply};
use crate::forward::retry::{never_processed, Held, Retry};
use crate::grpc::status::{Code, Status};
use crate::upstream::pool::{StreamSlot, Upstream};

/// How a call ended, for logs and counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream's response went through to its end.
    Complete,
    /// The client reset the stream or went away; the upstream was reset.
    DownstreamGone,
    /// The upstream failed; the client got this status. `reset` when the
    /// upstream reset the stream, rather than losing the connection.
    UpstreamFailed {
        /// The status the client got.
        code: Code,
        /// The upstream reset the stream.
        reset: bool,
    },
    /// The deadline passed; the client got DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// The upstream refused the stream without processing it; see
    /// [`Finished::retry`].
    Refused,
}

/// What a finished splice reports.
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// The gRPC status the client got (CANCELLED when it went away).
    pub code: Code,
    /// Request payload bytes forwarded upstream.
    pub bytes_in: u64,
    /// Response payload bytes forwarded downstream.
    pub bytes_out: u64,
    /// Everything needed to send the call again, when it was refused.
    pub retry: Option<Retry>,
    /// What went wrong upstream, in h2's words, for the log and the
    /// access log (the client got a short status).
    pub error: Option<Box<str>>,
    /// Whether the upstream's response headers arrived.
    pub answered: bool,
}

enum Request {
    Streaming {
        /// `None` once the client's request has ended (only replay left).
        body: Option<RecvStream>,
        chunk: Option<Bytes>,
        /// Held DATA to send first, in reverse order (a retry's replay).
        replay: Vec<Bytes>,
    },
    /// The upstream stopped taking request DATA (it reset the stream, or
    /// answered early). The rest of the client's request is kept, unread:
    /// if the stream was refused, a retry sends it.
    Stopped {
        body: Option<RecvStream>,
        chunk: Option<Bytes>,
    },
    Done,
}

impl Request {
    /// Whether the last poll read the client's request body (and so is
    /// registered to hear of a client reset).
    fn reads_client(&self) -> bool {
        matches!(
            self,
            Request::Streaming { body: Some(_), chunk: None, replay } if replay.is_empty()
        )
    }
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
    down: Reply,
    /// The upstream stream's send side, kept to the end so that it can be
    /// reset explicitly whatever state the call is in.
    up: SendStream<Bytes>,
    request: Request,
    response: ResponseHalf,
    deadline: Option<Pin<Box<monoio::time::Sleep>>>,
    /// How long a request may send nothing at all (see
    /// [`Splice::silent_after`]), and its timer once armed.
    silence: Option<std::time::Duration>,
    silence_timer: Option<Pin<Box<monoio::time::Sleep>>>,
    slot: StreamSlot,
    held: Option<Held>,
    code: Option<Code>,
    bytes_in: u64,
    bytes_out: u64,
}

enum Step {
    Pending,
    Done,
    /// The upstream takes no more request DATA (request half only).
    Stopped,
    Down,
    Up(h2::Error),
    Refused,
}

impl Splice {
    /// Starts splicing `down` (with its request body, `None` if it has
    /// ended) to `up`, sending `replay` first (DATA already taken from the
    /// body). With `held`, the call can be retried if the upstream refuses it.
    pub fn new(
        down: SendResponse<Bytes>,
        request_body: Option<RecvStream>,
        up: Upstream,
        deadline: Option<monoio::time::Instant>,
        mut replay: Vec<Bytes>,
        held: Option<Held>,
    ) -> Splice {
        let request = if up.request_open {
            replay.reverse();
            Request::Streaming {
                body: request_body,
                chunk: None,
                replay,
            }
        } else {
            Request::Done
        };
        Splice {
            down: Reply::Head(down),
            up: up.send,
            request,
            response: ResponseHalf::Head(up.response),
            deadline: deadline.map(|d| Box::pin(monoio::time::sleep_until(d))),
            silence: None,
            silence_timer: None,
            slot: up.slot,
            held,
            code: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Ends the call with DEADLINE_EXCEEDED if, `timeout` after it began,
    /// nothing at all has passed: no request DATA nor end from the client,
    /// no response headers from the upstream (a slowloris request holding
    /// an upstream stream). A call that has seen any of these is never
    /// timed out for being idle.
    pub fn silent_after(mut self, timeout: Option<std::time::Duration>) -> Splice {
        self.silence = timeout;
        self
    }

    /// Whether anything has passed yet, either way.
    fn heard(&self) -> bool {
        self.bytes_in > 0
            || !matches!(self.request, Request::Streaming { chunk: None, .. })
            || !matches!(self.response, ResponseHalf::Head(_))
    }

    /// Whether the request's silence has lasted too long. The timer is
    /// armed only when a poll finds nothing yet (so a unary call, whose
    /// message comes with its headers, never allocates one) and dropped
    /// once something passes.
    fn silence_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.silence else {
            return false;
        };
        if self.heard() {
            self.silence = None;
            self.silence_timer = None;
            return false;
        }
        let timer = self
            .silence_timer
            .get_or_insert_with(|| Box::pin(monoio::time::sleep(timeout)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn finished(&mut self, outcome: Outcome) -> Finished {
        let code = match &outcome {
            Outcome::Complete => self.code.unwrap_or(Code::Unknown),
            Outcome::DownstreamGone => Code::Cancelled,
            Outcome::UpstreamFailed { code, .. } => *code,
            Outcome::DeadlineExceeded => Code::DeadlineExceeded,
            Outcome::Refused => Code::Unavailable,
        };
        Finished {
            outcome,
            code,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            retry: None,
            error: None,
            answered: !matches!(self.response, ResponseHalf::Head(_)),
        }
    }

    /// Takes everything a retry needs; `None` if the call cannot be
    /// retried (nothing held, or the client already has response headers).
    fn take_retry(&mut self) -> Option<Retry> {
        if !matches!(self.down, Reply::Head(_)) {
            return None;
        }
        let held = self.held.take()?;
        let Reply::Head(down) = std::mem::replace(&mut self.down, Reply::Done) else {
            return None;
        };
        let body = match std::mem::replace(&mut self.request, Request::Done) {
            Request::Streaming { body, chunk, .. } | Request::Stopped { body, chunk } => {
                let mut body = body;
                // The part of a chunk in flight not yet passed on still
                // holds client window: release it; the whole chunk is in
                // the held DATA.
                if let (Some(b), Some(c)) = (&mut body, chunk) {
                    let _ = b.flow_control().release_capacity(c.len());
                }
                body
            }
            Request::Done => None,
        };
        let (head, replay, charge) = held.into_replay();
        Some(Retry {
            down,
            body,
            head,
            replay,
            charge,
            refused_on: self.slot.avoid(),
        })
    }

    /// Resets the upstream stream with CANCEL (a no-op if it has closed).
    fn reset_upstream(&mut self) {
        self.up.send_reset(Reason::CANCEL);
        self.request = Request::Done;
    }

    fn poll_request(&mut self, cx: &mut Context<'_>) -> Step {
        let Request::Streaming {
            body,
            chunk,
            replay,
        } = &mut self.request
        else {
            return Step::Done;
        };
        let send = &mut self.up;
        let step = match replay_held(replay, body.is_none(), send, &mut self.bytes_in, cx) {
            Some(step) => step,
            None => match body {
                None => Step::Done,
                Some(body) => {
                    let to = Onward {
                        send,
                        count: &mut self.bytes_in,
                    };
                    stream_request(body, chunk, to, &mut self.held, cx)
                }
            },
        };
        match step {
            Step::Done => self.request = Request::Done,
            Step::Stopped => {
                if let Request::Streaming { body, chunk, .. } =
                    std::mem::replace(&mut self.request, Request::Done)
                {
                    self.request = Request::Stopped { body, chunk };
                }
                return Step::Done;
            }
            _ => {}
        }
        step
    }

    fn poll_response(&mut self, cx: &mut Context<'_>) -> Step {
        loop {
            match &mut self.response {
                ResponseHalf::Head(future) => {
                    let response = match Pin::new(future).poll(cx) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Err(e)) => {
                            if self.held.is_some() && never_processed(&e, &self.slot, &self.up) {
                                return Step::Refused;
                            }
                            return Step::Up(e);
                        }
                        Poll::Ready(Ok(response)) => response,
                    };
                    if let Some(step) = self.start_response(response) {
                        return step;
                    }
                }
                ResponseHalf::Streaming { body, chunk } => {
                    let Reply::Body(send) = &mut self.down else {
                        return Step::Down;
                    };
                    let to = Onward {
                        send,
                        count: &mut self.bytes_out,
                    };
                    let step = stream_response(body, chunk, to, &mut self.code, cx);
                    if let Step::Done = step {
                        self.down = Reply::Done;
                    }
                    return step;
                }
            }
        }
    }

    /// Sends the upstream's response headers on; `None` when its body
    /// follows, else how the call ends.
    fn start_response(&mut self, response: http::Response<RecvStream>) -> Option<Step> {
        // The upstream has the call: no retry from here on.
        self.held = None;
        let (parts, body) = response.into_parts();
        let end = body.is_end_stream();
        if end {
            self.code = Some(
                Code::from_trailers(&parts.headers)
                    .unwrap_or_else(|| Code::from_http_status(parts.status.as_u16())),
            );
        }
        let Reply::Head(respond) = &mut self.down else {
            return Some(Step::Down);
        };
        match respond.send_response(Response::from_parts(parts, ()), end) {
            Err(_) => return Some(Step::Down),
            Ok(_) if end => {
                self.down = Reply::Done;
                return Some(Step::Done);
            }
            Ok(stream) => self.down = Reply::Body(stream),
        }
        self.response = ResponseHalf::Streaming { body, chunk: None };
        None
    }
}

/// Where DATA go on: the other side's stream, and the byte count to add
/// them to.
struct Onward<'a> {
    send: &'a mut SendStream<Bytes>,
    count: &'a mut u64,
}

/// Sends the held DATA of a retry first, last chunk first (`replay` is in
/// reverse order); `None` once they are all sent.
fn replay_held(
    replay: &mut Vec<Bytes>,
    body_ended: bool,
    send: &mut SendStream<Bytes>,
    count: &mut u64,
    cx: &mut Context<'_>,
) -> Option<Step> {
    while !replay.is_empty() {
        let end = replay.len() == 1 && body_ended;
        let Some(data) = replay.last_mut() else { break };
        send.reserve_capacity(data.len());
        match pump(data, Source::Held { end }, send, count, cx) {
            Pump::Sent(_) => {
                replay.pop();
            }
            Pump::Pending => return Some(Step::Pending),
            Pump::Failed => return Some(Step::Stopped),
        }
    }
    None
}

/// Moves the client's request DATA and its end (trailers or END_STREAM)
/// upstream, holding what a retry would need while `held` allows.
fn stream_request(
    body: &mut RecvStream,
    chunk: &mut Option<Bytes>,
    to: Onward<'_>,
    held: &mut Option<Held>,
    cx: &mut Context<'_>,
) -> Step {
    loop {
        if let Some(data) = chunk {
            match pump(data, Source::Stream(body), to.send, to.count, cx) {
                Pump::Sent(true) => return Step::Done,
                Pump::Sent(false) => *chunk = None,
                Pump::Pending => return Step::Pending,
                // The upstream refused more request data (reset, or it
                // answered early): stop forwarding; the response half
                // reports what happened.
                Pump::Failed => return Step::Stopped,
            }
        }
        match body.poll_data(cx) {
            Poll::Pending => return Step::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if data.is_empty() && !body.is_end_stream() {
                    continue;
                }
                if held.as_mut().is_some_and(|h| !h.keep(&data)) {
                    *held = None;
                }
                to.send.reserve_capacity(data.len());
                *chunk = Some(data);
            }
            Poll::Ready(Some(Err(_))) => return Step::Down,
            Poll::Ready(None) => {
                let sent = match body.poll_trailers(cx) {
                    Poll::Pending => return Step::Pending,
                    Poll::Ready(Err(_)) => return Step::Down,
                    Poll::Ready(Ok(Some(trailers))) => {
                        // Request trailers are rare in gRPC; such a call is
                        // not retried.
                        *held = None;
                        to.send.send_trailers(trailers)
                    }
                    Poll::Ready(Ok(None)) => {
                        if let Some(held) = held {
                            held.keep_end();
                        }
                        to.send.send_data(Bytes::new(), true)
                    }
                };
                let _ = sent; // an upstream that stopped listening shows on the response half
                return Step::Done;
            }
        }
    }
}

/// Moves the upstream's response DATA and trailers to the client, noting
/// the gRPC status in `code`.
fn stream_response(
    body: &mut RecvStream,
    chunk: &mut Option<Bytes>,
    to: Onward<'_>,
    code: &mut Option<Code>,
    cx: &mut Context<'_>,
) -> Step {
    loop {
        if let Some(data) = chunk {
            match pump(data, Source::Stream(body), to.send, to.count, cx) {
                Pump::Sent(true) => return Step::Done,
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
                to.send.reserve_capacity(data.len());
                *chunk = Some(data);
            }
            Poll::Ready(Some(Err(e))) => return Step::Up(e),
            Poll::Ready(None) => {
                let sent = match body.poll_trailers(cx) {
                    Poll::Pending => return Step::Pending,
                    Poll::Ready(Err(e)) => return Step::Up(e),
                    Poll::Ready(Ok(Some(trailers))) => {
                        *code = Some(Code::from_trailers(&trailers).unwrap_or(Code::Unknown));
                        to.send.send_trailers(trailers)
                    }
                    Poll::Ready(Ok(None)) => to.send.send_data(Bytes::new(), true),
                };
                if sent.is_err() {
                    return Step::Down;
                }
                return Step::Done;
            }
        }
    }
}

impl Splice {
    /// Whether the deadline, if any, has passed.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    /// Ends the call at its deadline: the upstream is reset, the client
    /// gets DEADLINE_EXCEEDED.
    fn time_out(&mut self) -> Finished {
        self.reset_upstream();
        self.down.fail(&Status::new(
            Code::DeadlineExceeded,
            "deadline exceeded at the proxy",
        ));
        self.finished(Outcome::DeadlineExceeded)
    }

    /// Ends the call for a client that reset it or went away: the upstream
    /// is reset; `cancel_reply` also resets a response under way.
    fn downstream_gone(&mut self, cancel_reply: bool) -> Finished {
        self.reset_upstream();
        if let (true, Reply::Body(s)) = (cancel_reply, &mut self.down) {
            s.send_reset(Reason::CANCEL);
        }
        self.down = Reply::Done;
        self.finished(Outcome::DownstreamGone)
    }

    /// Ends the call once the response half has ended (`step` is not
    /// pending).
    fn end(&mut self, step: Step) -> Finished {
        let outcome = match step {
            Step::Pending | Step::Done | Step::Stopped => Outcome::Complete,
            Step::Down => return self.downstream_gone(false),
            Step::Refused => {
                if let Some(retry) = self.take_retry() {
                    let mut finished = self.finished(Outcome::Refused);
                    finished.retry = Some(retry);
                    return finished;
                }
                self.down.fail(&Status::new(
                    Code::Unavailable,
                    "the upstream refused the stream",
                ));
                Outcome::UpstreamFailed {
                    code: Code::Unavailable,
                    reset: true,
                }
            }
            Step::Up(e) => {
                let status = upstream_status(&e);
                self.down.fail(&status);
                let outcome = Outcome::UpstreamFailed {
                    code: status.code(),
                    reset: e.is_reset() && e.is_remote(),
                };
                let mut finished = self.finished(outcome);
                finished.error = Some(e.to_string().into());
                return finished;
            }
        };
        self.finished(outcome)
    }
}

impl Future for Splice {
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        let this = self.get_mut();
        if this.deadline_passed(cx) {
            return Poll::Ready(this.time_out());
        }
        if let Step::Down = this.poll_request(cx) {
            return Poll::Ready(this.downstream_gone(true));
        }
        // While the request body is being read, its `poll_data` reports a
        // client reset or disconnect. Otherwise (the request has ended,
        // possibly just now in `poll_request` above, or a chunk waits for
        // upstream window, or a replay is being sent) the response side
        // needs its own watch: a client that resets a call whose request is
        // stuck behind a full upstream window must still free it.
        if !this.request.reads_client() && this.down.poll_reset(cx).is_ready() {
            return Poll::Ready(this.downstream_gone(false));
        }
        match this.poll_response(cx) {
            Step::Pending if this.silence_expired(cx) => {
                this.reset_upstream();
                this.down.fail(&Status::new(
                    Code::DeadlineExceeded,
                    "the request sent nothing in time",
                ));
                Poll::Ready(this.finished(Outcome::DeadlineExceeded))
            }
            Step::Pending => Poll::Pending,
            step => Poll::Ready(this.end(step)),
        }
    }
}
