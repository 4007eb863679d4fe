//! What calls see of the configuration, swapped whole by a reload.
//!
//! A [`Plan`] is made on the control thread from a validated config (routes
//! compiled, TLS files read); it is `Send` and goes to every worker. Each
//! worker builds its own [`Snapshot`] from it: a director, the clusters, the
//! TLS acceptor. A call takes the current snapshot (an `Rc` clone) when it
//! starts and keeps it to its end, so a reload never changes a call in
//! flight, and calls started after it see the new routes. A cluster whose
//! endpoints and TLS settings did not change is carried over with its
//! connections.

use std::rc::Rc;

use crate::routing::director::{CoreId, Director, DirectorRecipe};
use crate::telemetry::metrics::{CallStats, RouteRegistry};

use crate::routing::routes::RouteTable;
use crate::transport::tls::ServerTls;
use crate::upstream::cluster::{Cluster, ClusterPlan};

/// A configuration for the workers to swap in; `Send`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// New routes; `None` keeps the running director (a director written
    /// in Rust is not reloaded).
    pub routes: Option<RouteTable>,
    /// The clusters, indexed by `ClusterId`.
    pub clusters: Vec<ClusterPlan>,
    /// Downstream TLS; `None`: cleartext.
    pub tls: Option<ServerTls>,
    /// Counts reloads, from 1 at start.
    pub version: u64,
}

/// One worker's view of a [`Plan`].
pub struct Snapshot {
    pub(crate) director: Rc<dyn Director>,
    pub(crate) clusters: Vec<Rc<Cluster>>,
    pub(crate) tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Each named route, by the index the director returns.
    pub(crate) routes: Vec<RouteSlot>,
    /// Calls no named route decided: unmatched, or routed by a Rust
    /// director.
    pub(crate) other: RouteSlot,
}

/// A route's name and this core's statistics of it.
#[derive(Clone)]
pub struct RouteSlot {
    /// The name, for metrics and the access log.
    pub name: Rc<str>,
    /// The calls it decided.
    pub stats: Rc<CallStats>,
}

impl RouteSlot {
    fn new(name: &str, registry: &RouteRegistry) -> RouteSlot {
        RouteSlot {
            name: Rc::from(name),
            stats: registry.get(name),
        }
    }
}

/// The label of calls that no named route decided.
fn other_label(table: bool) -> &'static str {
    if table {
        "(unmatched)"
    } else {
        "(director)"
    }
}

impl Snapshot {
    /// The first snapshot of a worker, with the director of `recipe`.
    pub fn first<R: DirectorRecipe>(
        plan: &Plan,
        recipe: &R,
        core: CoreId,
        registry: &RouteRegistry,
    ) -> Snapshot {
        Snapshot {
            director: Rc::new(recipe.build(core)),
            clusters: plan.clusters.iter().map(Cluster::new).collect(),
            tls: plan.tls.as_ref().map(ServerTls::for_worker),
            routes: recipe
                .route_names()
                .iter()
                .map(|n| RouteSlot::new(n, registry))
                .collect(),
            other: RouteSlot::new(other_label(recipe.is_route_table()), registry),
        }
    }

    /// The snapshot after `self` once `plan` is applied: unchanged
    /// clusters are kept with their connections.
    pub fn next(&self, plan: &Plan, core: CoreId, registry: &RouteRegistry) -> Snapshot {
        let (director, routes): (Rc<dyn Director>, _) = match &plan.routes {
            Some(routes) => (
                Rc::new(routes.build(core)),
                routes
                    .names()
                    .iter()
                    .map(|n| RouteSlot::new(n, registry))
                    .collect(),
            ),
            None => (self.director.clone(), self.routes.clone()),
        };
        let clusters = plan
            .clusters
            .iter()
            .map(|p| {
                self.clusters
                    .iter()
                    .find_map(|c| c.reuse(p))
                    .or_else(|| self.clusters.iter().find_map(|c| c.renew(p)))
                    .unwrap_or_else(|| Cluster::new(p))
            })
            .collect();
        Snapshot {
            director,
            clusters,
            tls: plan.tls.as_ref().map(ServerTls::for_worker),
            routes,
            other: self.other.clone(),
        }
    }

    /// The route a call the director routed with this index counts under.
    pub(crate) fn route(&self, index: Option<usize>) -> &RouteSlot {
        index
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.other)
    }
}
