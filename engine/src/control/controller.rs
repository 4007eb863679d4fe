//! The control side of a running proxy: drain, stop, scrape and reload,
//! from any thread, through each worker's mailbox.
//!
//! A reload checks everything on the calling thread first (routes, TLS
//! files); only a valid config is sent, and the call returns once every
//! worker has swapped it in between calls (see
//! [`snapshot`](crate::downstream::snapshot)). Resolving endpoint names
//! again ([`Controller::refresh_endpoints`], every `dns_refresh`, see
//! [`discovery`](crate::control::discovery)) sends the running plan with
//! new endpoints the same way.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{endpoints_of, Config, Settings};
use crate::control::discovery;
use crate::control::plan::{cluster_plans, listener_tls, route_table};
use crate::control::worker::Command;
use crate::downstream::snapshot::Plan;
use crate::runtime::mailbox::Postbox;
use crate::telemetry::admin::{self, ConfigInfo};
use crate::telemetry::metrics::{CoreReport, DnsReport, Merged};

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
    /// The plan the workers run and the names behind its endpoints; held
    /// by a reload and a refresh from start to end, so they never cross.
    #[allow(clippy::disallowed_types)]
    running: std::sync::Mutex<Running>,
    /// Each worker's last report, for a scrape it does not answer in time.
    #[allow(clippy::disallowed_types)]
    reports: std::sync::Mutex<Vec<Option<CoreReport>>>,
    dns_failures: AtomicU64,
    dns_failing: AtomicU64,
    dns_updates: AtomicU64,
    /// What the workers tell it without a message.
    signals: Signals,
    /// Itself, for the DNS thread it starts (see
    /// [`watch_names`](Self::watch_names)).
    this: std::sync::OnceLock<std::sync::Weak<Controller>>,
    /// Whether the DNS thread runs.
    resolving: AtomicBool,
}

/// What the workers run, and what its endpoints came from.
#[derive(Debug)]
pub(super) struct Running {
    /// The last plan sent.
    pub plan: Arc<Plan>,
    /// Each cluster's endpoints as written and their last answers, by
    /// `ClusterId`.
    pub names: Vec<Vec<(String, Vec<SocketAddr>)>>,
    /// Where names are looked up before the system's resolver.
    pub hosts_file: Option<PathBuf>,
    /// Names whose last resolution failed.
    pub failing: HashSet<String>,
}

/// What the workers tell the controller without a message.
#[derive(Clone, Debug, Default)]
pub(super) struct Signals {
    /// Set by a worker whose upstream connect failed.
    pub connect_failed: Arc<AtomicBool>,
    /// Workers whose thread ended in a panic.
    pub lost: Arc<AtomicUsize>,
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
        running: Running,
        signals: Signals,
    ) -> Controller {
        Controller {
            postboxes,
            routes_reload,
            cluster_names,
            settings,
            version: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            info: info_lock(info),
            running: running_lock(running),
            reports: reports_lock(),
            dns_failures: AtomicU64::new(0),
            dns_failing: AtomicU64::new(0),
            dns_updates: AtomicU64::new(0),
            signals,
            this: std::sync::OnceLock::new(),
            resolving: AtomicBool::new(false),
        }
    }

    /// Starts resolving endpoint names again in the background, once
    /// there is a name to resolve and `dns_refresh` is set: at start, or
    /// at the first reload that brings a name.
    pub(super) fn watch_names(self: &Arc<Controller>) {
        let _ = self.this.set(Arc::downgrade(self));
        self.start_resolving();
    }

    fn start_resolving(&self) {
        let Some(every) = self.settings.dns_refresh else {
            return;
        };
        let Some(this) = self.this.get() else {
            return;
        };
        if self.has_names() && !self.resolving.swap(true, Ordering::Relaxed) {
            discovery::start(this.clone(), every);
        }
    }

    /// Whether an upstream connect failed since the last call (and clears
    /// it): a name's endpoints may have moved.
    pub(super) fn take_connect_failed(&self) -> bool {
        self.signals.connect_failed.swap(false, Ordering::Relaxed)
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

    /// Every worker's counters, merged. A worker that does not answer
    /// within a second (stuck or gone) is counted as of its last answer:
    /// left out, its counts would drop from the merged series without a
    /// `core` label, which Prometheus takes for a reset and counts again.
    pub fn metrics(&self) -> Merged {
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Scrape(tx.clone()));
        }
        drop(tx);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut last = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.resize(self.postboxes.len(), None);
        let mut answered = 0;
        while answered < self.postboxes.len() {
            match rx.recv_deadline(deadline) {
                Ok(report) => {
                    answered += 1;
                    if let Some(slot) = last.get_mut(report.core) {
                        *slot = Some(report);
                    }
                }
                Err(_) => break,
            }
        }
        let reports = last.iter().flatten().cloned().collect();
        drop(last);
        let mut merged = Merged::new(reports);
        merged.dns = DnsReport {
            failures: self.dns_failures.load(Ordering::Relaxed),
            failing: self.dns_failing.load(Ordering::Relaxed),
            updates: self.dns_updates.load(Ordering::Relaxed),
        };
        merged
    }

    /// Applies `config` to calls that start from now on: routes, clusters
    /// and TLS files (re-read). Connections and calls in flight are not
    /// touched; clusters whose endpoints and TLS settings did not change
    /// keep their upstream connections. Returns once every worker uses the
    /// new config (or 10 s have passed: a worker that has not confirmed it
    /// by then is logged, and takes it when it runs again), with its
    /// version (1 is the config at start).
    ///
    /// Everything is checked first; on error nothing changes. The listener,
    /// cores, driver, limits, admin endpoint and access log need a restart:
    /// changes to them are ignored (the binary names them in a warning). A proxy started with a
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
        let mut running = self.lock_running();
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = Arc::new(Plan {
            routes,
            clusters,
            tls,
            version,
        });
        // Sent to every worker: those that take it run it from now on, so
        // it is the running config, even if one has not said so in time.
        let unconfirmed = self.apply(&plan);
        *running = Running {
            plan,
            names: config.clusters.iter().map(|c| c.names.clone()).collect(),
            hosts_file: config.hosts_file.clone(),
            failing: HashSet::new(),
        };
        self.dns_failing.store(0, Ordering::Relaxed);
        // Under the same lock, so that two reloads at once leave the
        // version and digest of the later one.
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
        drop(running);
        self.start_resolving();
        if let Err(e) = unconfirmed {
            tracing::error!(version, error = %e, "config reloaded, but a worker did not confirm it");
        } else {
            tracing::info!(version, source = %config.source, routes = self.routes_reload, "config reloaded");
        }
        Ok(version)
    }
}

impl Controller {
    /// Sends `plan` to every worker; returns once each runs it, or with
    /// an error if one did not say so within 10 s (it has exited, or is
    /// stuck and takes the plan when it runs again).
    fn apply(&self, plan: &Arc<Plan>) -> Result<(), ReloadError> {
        let version = plan.version;
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
        Ok(())
    }

    #[allow(clippy::disallowed_types)]
    fn lock_running(&self) -> std::sync::MutexGuard<'_, Running> {
        match self.running.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether any endpoint is a name to resolve again.
    pub fn has_names(&self) -> bool {
        self.lock_running()
            .names
            .iter()
            .flatten()
            .any(|(name, _)| crate::config::is_name(name))
    }

    /// Resolves every endpoint name again; where the answers changed, the
    /// workers get the running plan with the new endpoints (added ones
    /// take calls, removed ones take no new calls and their connections
    /// close as their calls end). A name that fails to resolve keeps its
    /// last answer, and says so in the log and the metrics. Returns whether
    /// the endpoints changed.
    pub fn refresh_endpoints(&self) -> bool {
        let mut running = self.lock_running();
        let hosts = running.hosts_file.clone();
        let mut names = running.names.clone();
        let mut answered = false;
        for (name, addrs) in names.iter_mut().flatten() {
            if !crate::config::is_name(name) {
                continue;
            }
            match crate::config::resolve(name, hosts.as_deref()) {
                Ok(now) => {
                    if running.failing.remove(name.as_str()) {
                        tracing::info!(endpoint = %name, "endpoint name resolves again");
                    }
                    if now != *addrs {
                        *addrs = now;
                        answered = true;
                    }
                }
                Err(error) => {
                    self.dns_failures.fetch_add(1, Ordering::Relaxed);
                    if running.failing.insert(name.clone()) {
                        tracing::warn!(endpoint = %name, %error, kept = ?addrs, "endpoint name does not resolve; keeping its last answer");
                    }
                }
            }
        }
        self.dns_failing
            .store(running.failing.len() as u64, Ordering::Relaxed);
        if !answered {
            running.names = names;
            return false;
        }
        let mut clusters = running.plan.clusters.clone();
        let mut changed = false;
        for (cluster, its_names) in clusters.iter_mut().zip(&names) {
            let endpoints = endpoints_of(its_names);
            if endpoints != cluster.endpoints {
                let added: Vec<_> = endpoints
                    .iter()
                    .filter(|a| !cluster.endpoints.contains(a))
                    .collect();
                let removed: Vec<_> = cluster
                    .endpoints
                    .iter()
                    .filter(|a| !endpoints.contains(a))
                    .collect();
                tracing::info!(cluster = %cluster.name, ?added, ?removed, "cluster endpoints changed (DNS)");
                cluster.endpoints = endpoints;
                changed = true;
            }
        }
        running.names = names;
        if !changed {
            return false;
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = Arc::new(Plan {
            routes: None,
            clusters,
            tls: running.plan.tls.clone(),
            version,
        });
        // As for a reload: the workers that take it run it.
        if let Err(e) = self.apply(&plan) {
            tracing::error!(error = %e, "new endpoints sent, but a worker did not confirm them");
        }
        running.plan = plan;
        self.dns_updates.fetch_add(1, Ordering::Relaxed);
        true
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

    fn workers_lost(&self) -> usize {
        self.signals.lost.load(Ordering::Relaxed)
    }
}

impl discovery::Names for Controller {
    fn is_draining(&self) -> bool {
        Controller::is_draining(self)
    }

    fn take_connect_failed(&self) -> bool {
        Controller::take_connect_failed(self)
    }

    fn refresh_endpoints(&self) {
        Controller::refresh_endpoints(self);
    }
}

/// The lock around what the workers run: the control side only.
#[allow(clippy::disallowed_types)]
fn running_lock(running: Running) -> std::sync::Mutex<Running> {
    std::sync::Mutex::new(running)
}

/// The lock around the workers' last reports: the control side only
/// (scrapes), never a worker.
#[allow(clippy::disallowed_types)]
fn reports_lock() -> std::sync::Mutex<Vec<Option<CoreReport>>> {
    std::sync::Mutex::new(Vec::new())
}

/// The lock around the running config's description: the control side
/// only (reloads, `/config`), never a worker.
#[allow(clippy::disallowed_types)]
fn info_lock(info: ConfigInfo) -> std::sync::Mutex<ConfigInfo> {
    std::sync::Mutex::new(info)
}
