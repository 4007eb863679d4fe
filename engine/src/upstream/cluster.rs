//! One cluster on one core: its endpoints, their TLS, and the balancing
//! policy that picks one for each call.
//!
//! Key types: [`ClusterPlan`] (what a worker builds a cluster from; `Send`)
//! and [`Cluster`] (shared by config snapshots, so a reload that leaves a
//! cluster alone keeps its connections). Balancing is per core, without
//! shared state: round robin, or least request (of two endpoints picked at
//! random, the one with fewer calls in flight). Endpoints that failed their
//! health checks, or were ejected after failing calls in a row, are
//! skipped while any other is up; when none is, all are tried (a down
//! cluster should not also be an idle one). Among those, an endpoint
//! waiting out its reconnect back-off without a connection is skipped
//! while another can take the call.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::config::{Balance, CallLimits, HealthCheck, Keepalive, Outlier, UpstreamTls};
use crate::telemetry::metrics::{add, cluster_report, CallStats, ClusterReport};
use crate::transport::tls::{ClientTls, Connector};
use crate::upstream::endpoint::Endpoint;
use crate::upstream::error::UpstreamError;

/// What a worker builds one cluster from; `Send`.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// The cluster's name.
    pub name: String,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Upstream TLS, loaded.
    pub tls: Option<ClientTls>,
    /// Upstream TLS as configured: a reload that changes it starts the
    /// cluster afresh.
    pub tls_config: Option<UpstreamTls>,
    /// Balancing policy.
    pub balance: Balance,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection.
    pub outlier: Outlier,
    /// Limits on its calls, per core.
    pub limits: CallLimits,
    /// HTTP/2 PINGs on its connections.
    pub keepalive: Option<Keepalive>,
}

impl ClusterPlan {
    /// A plain cluster: round robin, no health checks, default ejection.
    pub fn new(name: &str, endpoints: Vec<SocketAddr>, tls: Option<ClientTls>) -> ClusterPlan {
        ClusterPlan {
            name: name.to_owned(),
            endpoints,
            tls,
            tls_config: None,
            balance: Balance::default(),
            health_check: None,
            outlier: Outlier::default(),
            limits: CallLimits::default(),
            keepalive: None,
        }
    }
}

/// The endpoints of one cluster on this worker, with their connections.
pub struct Cluster {
    name: Box<str>,
    pub(super) endpoints: Vec<Rc<Endpoint>>,
    next: Cell<usize>,
    tls_config: Option<UpstreamTls>,
    /// Tells clusters' TLS settings apart (0: cleartext), so that
    /// connections are shared only by clusters that reach an endpoint
    /// the same way.
    tls_tag: u64,
    /// Used by new connections; a reload swaps in freshly read files.
    pub(super) tls: RefCell<Option<Rc<Connector>>>,
    balance: Balance,
    health_check: Option<HealthCheck>,
    pub(super) outlier: Outlier,
    /// Limits on its calls; a reload changes them in place.
    pub(super) limits: Cell<CallLimits>,
    /// Calls waiting for an upstream stream now.
    pub(super) pending: Cell<usize>,
    /// Calls refused at a limit.
    pub(super) overloaded: Cell<u64>,
    pub(super) keepalive: Option<Keepalive>,
    /// State of the random choices of least-request (xorshift).
    rng: Cell<u64>,
    /// Calls through this cluster on this core (shared with the cluster
    /// it renews, see [`Cluster::renew`]).
    pub(crate) stats: Rc<CallStats>,
    pub(super) connect_failures: Cell<u64>,
    resets: Cell<u64>,
    /// GOAWAYs of endpoints a renewal left out: the counter never goes
    /// down.
    goaways_gone: Cell<u64>,
}

impl Cluster {
    /// A cluster with no connections yet.
    pub fn new(plan: &ClusterPlan) -> Rc<Cluster> {
        Rc::new(Cluster {
            name: plan.name.as_str().into(),
            endpoints: plan
                .endpoints
                .iter()
                .map(|&addr| Rc::new(Endpoint::new(addr)))
                .collect(),
            next: Cell::new(0),
            tls_config: plan.tls_config.clone(),
            tls_tag: plan.tls_config.as_ref().map_or(0, |tls| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                tls.hash(&mut h);
                h.finish() | 1
            }),
            tls: RefCell::new(plan.tls.as_ref().map(|t| Rc::new(t.for_worker()))),
            balance: plan.balance,
            health_check: plan.health_check.clone(),
            outlier: plan.outlier.clone(),
            limits: Cell::new(plan.limits),
            pending: Cell::new(0),
            overloaded: Cell::new(0),
            keepalive: plan.keepalive,
            rng: Cell::new(seed()),
            stats: Rc::default(),
            connect_failures: Cell::new(0),
            resets: Cell::new(0),
            goaways_gone: Cell::new(0),
        })
    }

    /// Whether `plan` describes this cluster but for its endpoints (and its
    /// TLS files and limits, which are taken anew in place).
    fn same_but_endpoints(&self, plan: &ClusterPlan) -> bool {
        *self.name == *plan.name
            && self.tls_config == plan.tls_config
            && self.balance == plan.balance
            && self.health_check == plan.health_check
            && self.outlier == plan.outlier
            && self.keepalive == plan.keepalive
    }

    /// The cluster `plan` makes of this one when only its endpoints
    /// changed (DNS, or a reload): the endpoints it keeps keep their state
    /// (health, ejection, back-off, connections and streams), new ones
    /// start afresh, and its counters carry on. `None` if more changed.
    pub fn renew(self: &Rc<Cluster>, plan: &ClusterPlan) -> Option<Rc<Cluster>> {
        if !self.same_but_endpoints(plan) {
            return None;
        }
        let fresh = Cluster::new(plan);
        let mut renewed = Rc::try_unwrap(fresh).ok()?;
        renewed.endpoints = plan
            .endpoints
            .iter()
            .map(|&addr| {
                self.endpoints
                    .iter()
                    .find(|e| e.addr() == addr)
                    .cloned()
                    .unwrap_or_else(|| Rc::new(Endpoint::new(addr)))
            })
            .collect();
        renewed.stats = self.stats.clone();
        renewed.overloaded.set(self.overloaded.get());
        renewed.connect_failures.set(self.connect_failures.get());
        renewed.resets.set(self.resets.get());
        let gone: u64 = self
            .endpoints
            .iter()
            .filter(|e| !renewed.endpoints.iter().any(|kept| Rc::ptr_eq(e, kept)))
            .map(|e| e.goaways.get())
            .sum();
        renewed.goaways_gone.set(self.goaways_gone.get() + gone);
        Some(Rc::new(renewed))
    }

    /// This cluster, kept with its connections, if `plan` names it with the
    /// same endpoints and TLS settings; its TLS files are taken anew.
    pub fn reuse(self: &Rc<Cluster>, plan: &ClusterPlan) -> Option<Rc<Cluster>> {
        let same = self.same_but_endpoints(plan)
            && self.endpoints.len() == plan.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&plan.endpoints)
                .all(|(e, a)| e.addr() == *a);
        if !same {
            return None;
        }
        *self.tls.borrow_mut() = plan.tls.as_ref().map(|t| Rc::new(t.for_worker()));
        self.limits.set(plan.limits);
        Some(self.clone())
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's endpoints.
    pub fn endpoints(&self) -> &[Rc<Endpoint>] {
        &self.endpoints
    }

    /// Its active health checks, if on.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }

    /// Records how a call on `endpoint` ended: `reset` when the upstream
    /// reset it, `failed` when the endpoint is to blame (reset or lost
    /// connection), for passive ejection.
    pub fn call_result(&self, endpoint: &Endpoint, failed: bool, reset: bool) {
        if reset {
            add(&self.resets, 1);
        }
        endpoint.call_result(failed, &self.outlier);
    }

    /// Whether the cluster takes one more call now: at its
    /// `max_pending_calls` (calls waiting for an upstream stream) or
    /// `max_active_calls` (streams open) it refuses, and counts it.
    pub fn admit(&self) -> Result<(), UpstreamError> {
        let limits = self.limits.get();
        let refuse = |what, limit| {
            add(&self.overloaded, 1);
            Err(UpstreamError::Overloaded {
                cluster: self.name().into(),
                what,
                limit,
            })
        };
        if self.pending.get() >= limits.max_pending {
            return refuse("pending", limits.max_pending);
        }
        if let Some(max) = limits.max_active {
            let active: usize = self.endpoints.iter().map(|e| e.active.get()).sum();
            if active >= max {
                return refuse("active", max);
            }
        }
        Ok(())
    }

    /// One more call waits for an upstream stream (`true`), or one fewer.
    pub fn pending(&self, more: bool) {
        let n = self.pending.get();
        self.pending
            .set(if more { n + 1 } else { n.saturating_sub(1) });
    }

    /// How new connections to its endpoints speak TLS, if they do, and
    /// what tells its TLS settings from other clusters' (0: cleartext).
    pub fn tls(&self) -> (Option<Rc<Connector>>, u64) {
        (self.tls.borrow().clone(), self.tls_tag)
    }

    /// Keepalive PINGs on its upstream connections, if on.
    pub fn keepalive(&self) -> Option<Keepalive> {
        self.keepalive
    }

    /// Counters and connection figures for a scrape.
    pub fn report(&self) -> ClusterReport {
        let mut r = cluster_report(&self.stats);
        r.connect_failures = self.connect_failures.get();
        r.resets = self.resets.get();
        r.overloaded = self.overloaded.get();
        r.pending = self.pending.get() as u64;
        r.endpoints = self.endpoints.len() as u64;
        r.goaways = self.goaways_gone.get();
        for e in &self.endpoints {
            r.connections += e.connections() as u64;
            r.streams += e.active.get() as u64;
            r.endpoints_up += u64::from(e.is_up());
            r.goaways += e.goaways.get();
        }
        r
    }

    /// The endpoint a new call should use: the balancing policy's choice
    /// among the endpoints that are up and `reachable` (to the worker:
    /// not waiting out a reconnect back-off without a connection to
    /// use); failing that, among those up; failing that, among those
    /// reachable, then all (a down cluster should not also be an idle
    /// one).
    pub(crate) fn pick(&self, reachable: impl Fn(&Endpoint) -> bool) -> &Rc<Endpoint> {
        let ready = |e: &Endpoint| e.is_up() && reachable(e);
        let up = |e: &Endpoint| e.is_up();
        let all = |_: &Endpoint| true;
        let tiers: [&dyn Fn(&Endpoint) -> bool; 3] = [&ready, &up, &reachable];
        let fit = tiers
            .into_iter()
            .find(|fit| self.endpoints.iter().any(|e| fit(e)))
            .unwrap_or(&all);
        &self.endpoints[self.first_choice(fit)]
    }

    /// The balancing policy's choice among the endpoints that `fit` (at
    /// least one does). Round robin takes those that fit in turn, so
    /// that the one after an endpoint left out does not take its turns
    /// as well.
    fn first_choice(&self, fit: &dyn Fn(&Endpoint) -> bool) -> usize {
        let n = self.endpoints.len();
        let fits = |i: &usize| fit(&self.endpoints[*i]);
        let count = (0..n).filter(fits).count();
        // The k-th endpoint that fits.
        let nth = |k: usize| (0..n).filter(fits).nth(k).unwrap_or(0);
        match self.balance {
            Balance::RoundRobin => {
                let turn = self.next.get();
                self.next.set(turn.wrapping_add(1));
                if count == n {
                    turn % n
                } else {
                    nth(turn % count.max(1))
                }
            }
            Balance::LeastRequest => {
                if count <= 1 {
                    return nth(0);
                }
                let a = self.random(count);
                let b = (a + 1 + self.random(count - 1)) % count;
                let (a, b) = (nth(a), nth(b));
                if self.endpoints[b].active.get() < self.endpoints[a].active.get() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// A random number below `n` (xorshift64*; per core, no locks).
    fn random(&self, n: usize) -> usize {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// A seed for a cluster's random choices.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cluster(balance: Balance) -> Rc<Cluster> {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let mut plan = ClusterPlan::new(
            "c",
            addrs.iter().map(|a| a.parse().expect("addr")).collect(),
            None,
        );
        plan.balance = balance;
        Cluster::new(&plan)
    }

    #[test]
    fn goaways_of_endpoints_a_renewal_leaves_out_stay_counted() {
        let c = cluster(Balance::RoundRobin);
        c.endpoints[0].went_away();
        c.endpoints[2].went_away();
        c.endpoints[2].went_away();
        assert_eq!(c.report().goaways, 3);
        let mut plan = ClusterPlan::new("c", vec!["127.0.0.1:2".parse().expect("addr")], None);
        plan.balance = Balance::RoundRobin;
        let renewed = c.renew(&plan).expect("renewed");
        renewed.endpoints[0].went_away();
        assert_eq!(renewed.report().goaways, 4, "the counter never goes down");
    }

    #[test]
    fn endpoints_waiting_to_reconnect_are_picked_only_when_no_other_is_up() {
        for balance in [Balance::RoundRobin, Balance::LeastRequest] {
            let c = cluster(balance);
            let refused = UpstreamError::NoSettings {
                addr: c.endpoints[1].addr(),
                timeout: Duration::from_secs(1),
            };
            let minute = Duration::from_secs(60);
            c.endpoints[1].connect_failed(&refused, minute, minute);
            let reachable = |e: &Endpoint| !e.waiting_to_reconnect();
            let mut seen = [0; 4];
            for _ in 0..30 {
                seen[usize::from(c.pick(reachable).addr().port())] += 1;
            }
            assert_eq!(seen[2], 0, "{balance:?}");
            if balance == Balance::RoundRobin {
                assert_eq!(seen, [0, 15, 0, 15], "the other two take turns");
            }
            // The other two down: the one waiting is all that is up.
            for e in [0, 2] {
                let check = HealthCheck {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                    healthy_threshold: 1,
                    unhealthy_threshold: 1,
                    service: String::new(),
                };
                c.endpoints[e].health_result(false, &check);
            }
            for _ in 0..10 {
                assert_eq!(c.pick(reachable).addr().port(), 2, "{balance:?}");
            }
        }
    }
}
