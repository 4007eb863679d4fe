//! The control side of a running proxy: drain, stop, scrape and reload,
//! from any thread, through each worker's mailbox.
//!
//! A reload checks everything on the calling thread first (routes, TLS
//! files); only a valid config is sent, and the call returns once every
//! worker has swapped it in between calls (see
//! [`snapshot`](crate::downstream::snapshot)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Settings};
use crate::control::plan::{cluster_plans, listener_tls, route_table};
use crate::control::worker::Command;
use crate::downstream::snapshot::Plan;
use crate::runtime::mailbox::Postbox;
use crate::telemetry::admin::{self, ConfigInfo};
use crate::telemetry::metrics::Merged;

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReloadError(String);

/// The control side of a running proxy, shareable with other threads (the
/// admin endpoint, signal handlers): reload, scrape, drain. Never on a
/// worker's per-call path.
#[derive(Debug)]
pub struct Controller {
    postboxes: Vec<Postbox<Command>>,
    /// Whether the director is the config's route table (replaced by a
    /// reload) rather than one written in Rust (kept).
    routes_reload: bool,
    /// The clusters at start, by `ClusterId`: a Rust director's ids must
    /// keep meaning the same clusters.
    cluster_names: Vec<String>,
    settings: Settings,
    version: AtomicU64,
    draining: AtomicBool,
    /// The control side only: reloads are rare and never on a worker.
    #[allow(clippy::disallowed_types)]
    info: std::sync::Mutex<ConfigInfo>,
}

impl Controller {
    /// The controller of workers reached through `postboxes`, started with
    /// this config.
    pub(super) fn new(
        postboxes: Vec<Postbox<Command>>,
        routes_reload: bool,
        cluster_names: Vec<String>,
        settings: Settings,
        info: ConfigInfo,
    ) -> Controller {
        Controller {
            postboxes,
            routes_reload,
            cluster_names,
            settings,
            version: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            info: info_lock(info),
        }
    }

    /// The version of the config the workers run.
    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Starts a graceful drain (see [`ProxyHandle::drain`](crate::ProxyHandle::drain)); `/ready` says
    /// 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.postboxes.iter().for_each(|p| p.send(Command::Drain));
    }

    /// Cuts every connection now.
    pub fn stop(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.postboxes.iter().for_each(|p| p.send(Command::Stop));
    }

    /// Whether the proxy is draining (or stopped).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The running config's version and source.
    pub fn config_info(&self) -> ConfigInfo {
        match self.info.lock() {
            Ok(info) => info.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether every worker answers its mailbox within `patience`: a
    /// worker whose runtime is stuck (or that exited) does not.
    pub fn responsive(&self, patience: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Ping(tx.clone()));
        }
        drop(tx);
        let deadline = std::time::Instant::now() + patience;
        (0..self.postboxes.len()).all(|_| rx.recv_deadline(deadline).is_ok())
    }

    /// Every worker's counters, merged; a worker that does not answer
    /// within a second (stuck or gone) is left out.
    pub fn metrics(&self) -> Merged {
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Scrape(tx.clone()));
        }
        drop(tx);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut reports = Vec::with_capacity(self.postboxes.len());
        while reports.len() < self.postboxes.len() {
            match rx.recv_deadline(deadline) {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
        }
        Merged::new(reports)
    }

    /// Applies `config` to calls that start from now on: routes, clusters
    /// and TLS files (re-read). Connections and calls in flight are not
    /// touched; clusters whose endpoints and TLS settings did not change
    /// keep their upstream connections. Returns once every worker uses the
    /// new config, with its version (1 is the config at start).
    ///
    /// Everything is checked first; on error nothing changes. The listener,
    /// cores, driver, limits, admin endpoint and access log need a restart:
    /// changes to them are logged and ignored. A proxy started with a
    /// director written in Rust keeps it, and its clusters must keep their
    /// names and order.
    pub fn reload(&self, config: &Config) -> Result<u64, ReloadError> {
        let clusters = cluster_plans(config).map_err(ReloadError)?;
        let tls = listener_tls(config).map_err(ReloadError)?;
        let routes = if self.routes_reload {
            Some(route_table(config, &clusters).map_err(ReloadError)?)
        } else {
            let names: Vec<&String> = clusters.iter().map(|c| &c.name).collect();
            if names.len() != self.cluster_names.len()
                || names.iter().zip(&self.cluster_names).any(|(a, b)| *a != b)
            {
                return Err(ReloadError(format!(
                    "this proxy's director routes to clusters {:?} by position; a reload must keep them",
                    self.cluster_names
                )));
            }
            None
        };
        if config.settings != self.settings {
            tracing::warn!("changed limits or timeouts take effect only after a restart");
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = Arc::new(Plan {
            routes,
            clusters,
            tls,
            version,
        });
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Reload {
                plan: plan.clone(),
                done: done_tx.clone(),
            });
        }
        drop(done_tx);
        for _ in &self.postboxes {
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(ReloadError(format!(
                    "not every worker took config version {version} (exited or stuck)"
                )));
            }
        }
        let info = ConfigInfo {
            version,
            source: config.source.clone(),
            digest: config.digest.clone(),
            applied_at: std::time::SystemTime::now(),
        };
        match self.info.lock() {
            Ok(mut current) => *current = info,
            Err(poisoned) => *poisoned.into_inner() = info,
        }
        tracing::info!(version, source = %config.source, routes = self.routes_reload, "config reloaded");
        Ok(version)
    }
}

impl admin::Control for Controller {
    fn metrics(&self) -> Merged {
        Controller::metrics(self)
    }

    fn is_draining(&self) -> bool {
        Controller::is_draining(self)
    }

    fn config_info(&self) -> ConfigInfo {
        Controller::config_info(self)
    }
}

/// The lock around the running config's description: the control side
/// only (reloads, `/config`), never a worker.
#[allow(clippy::disallowed_types)]
fn info_lock(info: ConfigInfo) -> std::sync::Mutex<ConfigInfo> {
    std::sync::Mutex::new(info)
}
