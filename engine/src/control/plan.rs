//! From a validated config to what the workers get: TLS files read,
//! clusters planned, routes compiled against the clusters. Runs on the
//! control side, at start and on every reload; every problem is one line.

use std::collections::HashMap;

use crate::config::Config;
use crate::routing::director::ClusterId;
use crate::routing::routes::RouteTable;
use crate::transport::tls::{ClientTls, ServerTls};
use crate::upstream::cluster::ClusterPlan;

/// The config's clusters, with their TLS files read.
pub(super) fn cluster_plans(config: &Config) -> Result<Vec<ClusterPlan>, String> {
    config
        .clusters
        .iter()
        .map(|c| {
            let tls = c
                .tls
                .as_ref()
                .map(|t| ClientTls::load(t, &t.server_name))
                .transpose()
                .map_err(|e| format!("cluster {:?}: {e}", c.name))?;
            Ok(ClusterPlan {
                name: c.name.clone(),
                endpoints: c.endpoints.clone(),
                tls,
                tls_config: c.tls.clone(),
                balance: c.balance,
                health_check: c.health_check.clone(),
                outlier: c.outlier.clone(),
                limits: c.limits,
                keepalive: c.keepalive,
            })
        })
        .collect()
}

/// The listener's TLS, with its files read.
pub(super) fn listener_tls(config: &Config) -> Result<Option<ServerTls>, String> {
    config
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()
        .map_err(|e| format!("listener: {e}"))
}

/// The config's routes, compiled against `clusters`.
pub(super) fn route_table(config: &Config, clusters: &[ClusterPlan]) -> Result<RouteTable, String> {
    let ids: HashMap<String, ClusterId> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), ClusterId(i as u32)))
        .collect();
    RouteTable::new(&config.routes, &ids)
}
