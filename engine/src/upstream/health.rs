//! Active health checks: `grpc.health.v1.Health/Check` per endpoint.
//!
//! Each worker checks the endpoints of its own clusters (the check itself
//! is a [`Probe`]'s: see `relay::probe`), so that no health state crosses
//! threads; the price is one check per endpoint per core per interval. An endpoint that fails `unhealthy_threshold` checks in a row
//! takes no calls until it passes `healthy_threshold` in a row. A check
//! passes when the upstream answers `status: SERVING` with gRPC status OK
//! within the timeout; anything else (connect failure, UNIMPLEMENTED, a
//! reset, NOT_SERVING, slowness) fails it.
//!
//! A cluster's checks run from when a worker first builds it until a reload
//! replaces it (its task holds only a weak reference) or the worker stops.

use std::future::Future;
use std::rc::{Rc, Weak};

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::HealthCheck;
use crate::runtime::wake::Latch;
use crate::upstream::cluster::Cluster;
use crate::upstream::endpoint::Endpoint;

/// How one check of one endpoint is made (see `relay::probe`).
pub trait Probe: Clone + 'static {
    /// Whether `endpoint` of `cluster` passes `check` now (within its
    /// timeout).
    fn probe(
        &self,
        cluster: &Rc<Cluster>,
        endpoint: &Rc<Endpoint>,
        check: &HealthCheck,
    ) -> impl Future<Output = bool>;
}

/// Starts checking, with `prober` until `stop`, the clusters of `next`
/// that have checks and were not in `previous`.
pub fn watch_new<P: Probe>(
    prober: &P,
    stop: &Rc<Latch>,
    next: &[Rc<Cluster>],
    previous: &[Rc<Cluster>],
) {
    for cluster in next {
        let known = previous.iter().any(|c| Rc::ptr_eq(c, cluster));
        if cluster.health_check().is_some() && !known {
            monoio::spawn(watch(prober.clone(), stop.clone(), Rc::downgrade(cluster)));
        }
    }
}

async fn watch<P: Probe>(prober: P, stop: Rc<Latch>, cluster: Weak<Cluster>) {
    loop {
        let interval = {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let Some(check) = cluster.health_check().cloned() else {
                return;
            };
            for endpoint in cluster.endpoints() {
                let passed = monoio::select! {
                    passed = prober.probe(&cluster, endpoint, &check) => passed,
                    _ = stop.wait() => return,
                };
                match endpoint.health_result(passed, &check) {
                    Some(true) => {
                        tracing::info!(cluster = cluster.name(), upstream = %endpoint.addr(), "upstream endpoint healthy again")
                    }
                    Some(false) => {
                        tracing::warn!(cluster = cluster.name(), upstream = %endpoint.addr(), "upstream endpoint unhealthy: taking it out")
                    }
                    None => {}
                }
            }
            check.interval
        };
        monoio::select! {
            _ = monoio::time::sleep(interval) => {}
            _ = stop.wait() => return,
        }
    }
}

/// The most of a health response read: a `HealthCheckResponse` is a few
/// bytes; an upstream that sends more fails the check rather than making
/// the probe buffer it.
pub const MAX_RESPONSE: usize = 4096;

/// The path of the check.
pub const PATH: &str = "/grpc.health.v1.Health/Check";

/// A gRPC frame of `HealthCheckRequest { service }`.
pub fn request_message(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// Whether a gRPC frame of `HealthCheckResponse` says `SERVING` (1).
pub fn serving(frame: &[u8]) -> bool {
    let Some(message) = frame.get(5..) else {
        return false;
    };
    let mut rest = message;
    let mut status = 0u64;
    while let Some((&tag, after)) = rest.split_first() {
        let Some((value, after)) = varint(after) else {
            return false;
        };
        match tag {
            0x08 => status = value, // field 1, varint
            _ if tag & 7 == 0 => {}
            _ if tag & 7 == 2 => {
                let Some(skip) = after.get(value as usize..) else {
                    return false;
                };
                rest = skip;
                continue;
            }
            _ => return false,
        }
        rest = after;
    }
    status == 1
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert!(!serving(&[0, 0, 0, 0, 0]), "UNKNOWN by default");
        assert!(!serving(&[0, 0]), "truncated");
    }
}
