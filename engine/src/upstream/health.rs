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
//! Each endpoint is checked by a task of its own, on its own schedule, so
//! that a check that hangs until its timeout delays no other endpoint's.
//! The task runs from when a worker first builds the endpoint's cluster
//! until a reload or a DNS change leaves the endpoint out, or the worker
//! stops; a cluster renewed with the endpoint keeps its task.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::time::Duration;

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

/// Checks, with `prober` until `stop`, the endpoints of the clusters of
/// `next` that have checks, and stops checking the endpoints of
/// `previous` that `next` no longer has. An endpoint a renewed cluster
/// kept (a DNS change, a reload that changed only endpoints) keeps its
/// schedule and the check under way, now on behalf of the new cluster:
/// calls under way may hold the old one for long, and it must not check
/// its endpoints as well.
pub fn watch_new<P: Probe>(
    prober: &P,
    stop: &Rc<Latch>,
    next: &[Rc<Cluster>],
    previous: &[Rc<Cluster>],
) {
    let kept: std::collections::HashSet<*const Endpoint> = next
        .iter()
        .flat_map(|c| c.endpoints())
        .map(Rc::as_ptr)
        .collect();
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        for endpoint in previous.iter().flat_map(|c| c.endpoints()) {
            let at = Rc::as_ptr(endpoint);
            if let (false, Some(checker)) = (kept.contains(&at), watched.get(&at)) {
                *checker.borrow_mut() = Weak::new();
            }
        }
        for cluster in next {
            let Some(check) = cluster.health_check() else {
                continue;
            };
            // Each endpoint on its own schedule, so that one whose checks
            // hang until their timeout delays no other's; the first checks
            // spread over an interval, so that they do not all connect at
            // once.
            let endpoints = cluster.endpoints();
            let step = check.interval / endpoints.len().max(1) as u32;
            for (i, endpoint) in endpoints.iter().enumerate() {
                let at = Rc::as_ptr(endpoint);
                if let Some(checker) = watched.get(&at) {
                    *checker.borrow_mut() = Rc::downgrade(cluster);
                    continue;
                }
                let checker = Rc::new(RefCell::new(Rc::downgrade(cluster)));
                watched.insert(at, checker.clone());
                monoio::spawn(watch(
                    prober.clone(),
                    stop.clone(),
                    endpoint.clone(),
                    checker,
                    step * i as u32,
                ));
            }
        }
    });
}

/// The cluster an endpoint's checks are made for, which a renewal
/// changes (none, once no cluster has it).
type Checker = Rc<RefCell<Weak<Cluster>>>;

thread_local! {
    /// The endpoints a task checks on this worker's thread, with their
    /// [`Checker`]. A task holds its endpoint, so that no other takes its
    /// address while it is here.
    static WATCHED: RefCell<HashMap<*const Endpoint, Checker>> = RefCell::new(HashMap::new());
}

/// Checks `endpoint` for the cluster `checker` names, the first time
/// after `first`, until `stop` or until no cluster has it.
async fn watch<P: Probe>(
    prober: P,
    stop: Rc<Latch>,
    endpoint: Rc<Endpoint>,
    checker: Checker,
    first: Duration,
) {
    let mut wait = first;
    loop {
        monoio::select! {
            _ = monoio::time::sleep(wait) => {}
            _ = stop.wait() => return,
        }
        let cluster = checker.borrow().upgrade();
        let Some((cluster, check)) = cluster.and_then(|c| {
            let check = c.health_check().cloned()?;
            Some((c, check))
        }) else {
            WATCHED.with(|w| w.borrow_mut().remove(&Rc::as_ptr(&endpoint)));
            return;
        };
        let passed = monoio::select! {
            passed = prober.probe(&cluster, &endpoint, &check) => passed,
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
        wait = check.interval;
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
    use crate::upstream::cluster::ClusterPlan;
    use std::cell::RefCell;

    /// Passes every check at once, but hangs those of the endpoint on
    /// port `hang`; records which cluster checked which endpoint's port.
    #[derive(Clone, Default)]
    struct Counting {
        seen: Rc<RefCell<Vec<(*const Cluster, u16)>>>,
        hang: Option<u16>,
    }

    impl Counting {
        fn count(&self, cluster: &Rc<Cluster>) -> usize {
            let seen = self.seen.borrow();
            seen.iter()
                .filter(|(c, _)| *c == Rc::as_ptr(cluster))
                .count()
        }

        fn of_port(&self, port: u16) -> usize {
            self.seen
                .borrow()
                .iter()
                .filter(|(_, p)| *p == port)
                .count()
        }
    }

    impl Probe for Counting {
        async fn probe(
            &self,
            cluster: &Rc<Cluster>,
            endpoint: &Rc<Endpoint>,
            _: &HealthCheck,
        ) -> bool {
            let port = endpoint.addr().port();
            self.seen.borrow_mut().push((Rc::as_ptr(cluster), port));
            if self.hang == Some(port) {
                std::future::pending::<()>().await;
            }
            true
        }
    }

    fn plan(ports: &[u16]) -> ClusterPlan {
        let addrs = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
        let mut plan = ClusterPlan::new("c", addrs, None);
        plan.health_check = Some(HealthCheck {
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            service: String::new(),
        });
        plan
    }

    fn on_runtime(test: impl std::future::Future<Output = ()>) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let limit = Duration::from_secs(10);
            monoio::time::timeout(limit, test)
                .await
                .expect("within 10 s");
        });
    }

    async fn until(done: impl Fn() -> bool) {
        while !done() {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_renewed_clusters_checks_replace_the_old_ones_that_calls_still_hold() {
        on_runtime(async {
            let probe = Counting::default();
            let stop = Rc::new(Latch::default());
            let old = Cluster::new(&plan(&[1]));
            watch_new(&probe, &stop, std::slice::from_ref(&old), &[]);
            until(|| probe.count(&old) >= 2).await;
            // DNS adds an endpoint; a long call still holds `old`.
            let new = old.renew(&plan(&[1, 2])).expect("renewed");
            watch_new(
                &probe,
                &stop,
                std::slice::from_ref(&new),
                std::slice::from_ref(&old),
            );
            let before = probe.count(&old);
            until(|| probe.count(&new) >= 10).await;
            let after = probe.count(&old);
            assert!(
                after <= before + 1,
                "the old cluster checked {} times more",
                after - before
            );
            stop.set();
        });
    }

    #[test]
    fn a_renewal_keeps_a_check_under_way_and_ends_those_of_endpoints_left_out() {
        on_runtime(async {
            let probe = Counting {
                hang: Some(1),
                ..Counting::default()
            };
            let stop = Rc::new(Latch::default());
            let old = Cluster::new(&plan(&[1, 2, 3]));
            watch_new(&probe, &stop, std::slice::from_ref(&old), &[]);
            until(|| probe.of_port(2) >= 2 && probe.of_port(3) >= 2).await;
            // DNS drops port 3 and adds port 4.
            let new = old.renew(&plan(&[1, 2, 4])).expect("renewed");
            watch_new(
                &probe,
                &stop,
                std::slice::from_ref(&new),
                std::slice::from_ref(&old),
            );
            let dropped = probe.of_port(3);
            until(|| probe.of_port(4) >= 5).await;
            assert_eq!(
                probe.of_port(1),
                1,
                "the hanging check goes on, not started again"
            );
            assert!(
                probe.of_port(3) <= dropped + 1,
                "port 3 is no longer checked"
            );
            stop.set();
        });
    }

    #[test]
    fn an_endpoint_whose_checks_hang_delays_no_others() {
        on_runtime(async {
            let probe = Counting {
                hang: Some(1),
                ..Counting::default()
            };
            let stop = Rc::new(Latch::default());
            let cluster = Cluster::new(&plan(&[1, 2]));
            watch_new(&probe, &stop, std::slice::from_ref(&cluster), &[]);
            until(|| probe.of_port(2) >= 3).await;
            assert_eq!(probe.of_port(1), 1, "the hanging check is still under way");
            stop.set();
        });
    }

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
