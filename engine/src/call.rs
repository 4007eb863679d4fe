//! One downstream request, from its headers to the end of its splice.
//!
//! Steps: check it is gRPC (`content-type: application/grpc*`, else HTTP
//! 415 as the gRPC spec asks of servers), drop hop-by-hop headers, ask the
//! director, compute the deadline (the shorter of `grpc-timeout` and the
//! route's timeout), open an upstream stream from the pool, then splice.
//! Each failure is a trailers-only gRPC response: a director rejection with
//! its status, no reachable upstream with UNAVAILABLE, a deadline with
//! DEADLINE_EXCEEDED.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{header::CONTENT_TYPE, Request, Response, StatusCode, Version};
use monoio::time::Instant;

use crate::director::{Call, Route};
use crate::headers::strip_hop_by_hop;
use crate::splice::{Outcome, Splice};
use crate::status::{Code, Status};
use crate::tls::PeerIdentity;
use crate::worker::Worker;

/// Serves one request to its end.
pub async fn handle(
    worker: Rc<Worker>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    identity: Option<Rc<PeerIdentity>>,
) {
    let (mut parts, body) = request.into_parts();
    let is_grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        let _ = respond.send_response(response, true);
        return;
    }
    strip_hop_by_hop(&mut parts.headers);

    // The routes and clusters of the config running now, kept for the
    // whole call even if a reload swaps in others meanwhile.
    let snapshot = worker.snapshot();
    let route = {
        let authority = parts.uri.authority().map(|a| a.as_str());
        let call = Call::new(parts.uri.path(), authority, &parts.headers, peer)
            .with_identity(identity.as_deref());
        snapshot.director.route(&call)
    };
    let (cluster, route_timeout) = match route {
        Route::Forward { cluster, timeout } => (cluster, timeout),
        Route::Reject(status) => {
            let _ = respond.send_response(status.to_trailers_only(), true);
            return;
        }
    };
    let client_timeout = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| crate::timeout::parse(v.as_bytes()));
    let budget = match (client_timeout, route_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let deadline = budget.map(|d| Instant::now() + d);

    if parts.uri.scheme().is_none() {
        // The client sent no :scheme/:authority. h2 sends such a request
        // only when told it came from HTTP/1.1, and then with `:scheme
        // http` and, faithfully, no `:authority`.
        parts.version = Version::HTTP_11;
    }
    let end_of_stream = body.is_end_stream();
    let Some(cluster) = snapshot.clusters.get(cluster.index()) else {
        let status = Status::new(
            Code::Internal,
            "the director chose a cluster that does not exist",
        );
        let _ = respond.send_response(status.to_trailers_only(), true);
        return;
    };
    let open = worker
        .pool
        .open(cluster, Request::from_parts(parts, ()), end_of_stream);
    let opened = match deadline {
        Some(at) => match monoio::time::timeout_at(at, open).await {
            Ok(opened) => opened,
            Err(_) => {
                let status = Status::new(
                    Code::DeadlineExceeded,
                    "deadline exceeded before an upstream was reached",
                );
                let _ = respond.send_response(status.to_trailers_only(), true);
                return;
            }
        },
        None => open.await,
    };
    let upstream = match opened {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(error = %e, "no upstream for call");
            let status = Status::new(Code::Unavailable, e.to_string());
            let _ = respond.send_response(status.to_trailers_only(), true);
            return;
        }
    };
    let outcome = Splice::new(respond, body, upstream, deadline).await;
    if outcome != Outcome::Complete {
        tracing::debug!(?outcome, "call ended early");
    }
}
