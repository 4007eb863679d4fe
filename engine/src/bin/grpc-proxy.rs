//! `grpc-proxy`: the command-line proxy.
//!
//! Either flags (`--listen`, `--upstream`) or a config file (`--config`);
//! flags given with a file override its listener, cores and driver. Every
//! start-up problem is one line on stderr and exit code 2; SIGTERM or SIGINT
//! drains (GOAWAY, in-flight calls finish up to the drain timeout) and exits
//! 0; a second signal during the drain stops at once with exit code 1.
//! SIGHUP reloads: the config file (or the flags' TLS files) is read again
//! and, if valid, applied to new calls without dropping any connection; if
//! not, the error is logged and the running config stays.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) it says READY=1 once
//! every worker listens, RELOADING=1 and READY=1 around a reload, and
//! STOPPING=1 when it drains; with `WATCHDOG_USEC` it pings the watchdog
//! while every worker answers its mailbox.
//!
//! `grpc-proxy check --config FILE` (as `nginx -t` and `haproxy -c`) runs
//! the checks a start and a reload run (the file, the hosts it names, every
//! certificate and key, the route table, the access log's file) without
//! serving: a one-line summary and exit code 0, or the problem in one line
//! and exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use grpc_proxy::config::{
    parse_duration, resolve, ClientAuth, ClusterConfig, Config, ListenerTls, RouteAction,
    RouteConfig,
};
use grpc_proxy::control::systemd::{watchdog_interval, Notifier, Watchdog};
use grpc_proxy::runtime::cores::{CoreSelection, CpuList};
use grpc_proxy::{Driver, ProxyBuilder};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A thread-per-core gRPC pass-through proxy.
///
/// Proxies every gRPC call (unary and streaming) to upstream servers without
/// decoding messages. With --upstream, every call goes to those endpoints;
/// with --config, routes in the file decide per call (method, service,
/// authority, metadata) and may reject calls with a gRPC status.
#[derive(Parser, Debug, Clone)]
#[command(name = "grpc-proxy", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on, e.g. 0.0.0.0:50051 (overrides the config file).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Upstream endpoint (host:port) for every call; repeat for round robin
    /// over several. Not with --config.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    upstream: Vec<String>,

    /// TOML config file with clusters, routes and limits (see
    /// grpc-proxy.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Number of worker cores (default: every available core).
    #[arg(long, value_name = "N", conflicts_with = "cpu_set")]
    cores: Option<usize>,

    /// Exact CPUs for the workers, e.g. 0,2,4 or 0-3.
    #[arg(long, value_name = "LIST")]
    cpu_set: Option<CpuList>,

    /// monoio driver: auto (legacy, which measured faster; see the README's
    /// "Drivers"), io_uring, or legacy.
    #[arg(long, value_name = "DRIVER")]
    driver: Option<Driver>,

    /// Serve TLS with this PEM certificate chain (with --tls-key);
    /// overrides the config file's [tls].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates that chain to a CA in this PEM bundle.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Serve the admin endpoint (/metrics, /ready, /live, /config, POST
    /// /reload) on this address, e.g. 127.0.0.1:9901 (overrides the file).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Write an access log line (JSON) per call to this file, or "-" for
    /// stdout (overrides the file).
    #[arg(long, value_name = "FILE")]
    access_log: Option<String>,

    /// How long in-flight calls may run after SIGTERM, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,

    /// Log filter (tracing EnvFilter syntax), e.g. info or grpc_proxy=debug;
    /// RUST_LOG is used when this is not given.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// What else the binary does than serve.
#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Checks a config file without serving (as nginx -t): the file, the
    /// hosts it names, every certificate and key, the routes, the access
    /// log's file. Prints a one-line summary and exits 0, or prints the
    /// problem and exits 2.
    Check {
        /// The TOML config file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match grpc_proxy::config::flags::parse::<Cli>("grpc-proxy") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(Command::Check { config }) = &cli.command {
        return match check(config) {
            Ok(summary) => {
                println!("grpc-proxy: {}: ok: {summary}", config.display());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("grpc-proxy: {message}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(message) = init_logging(cli.log.as_deref()) {
        eprintln!("grpc-proxy: {message}");
        return ExitCode::from(2);
    }
    grpc_proxy::runtime::heap::keep_freed_memory();
    // Handlers first: a SIGTERM that arrives as soon as the proxy serves
    // must drain it, not kill it, and a SIGHUP while the config loads
    // (names resolve) must not end it either.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("grpc-proxy: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match load(&cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("grpc-proxy: {message}");
            return ExitCode::from(2);
        }
    };
    // Asked to stop while the config loaded: nothing serves yet. A SIGHUP
    // then may name an edit made after the file was read: it reloads
    // once the proxy serves.
    let pending: Vec<i32> = signals.pending().collect();
    if pending.iter().any(|&s| s != SIGHUP) {
        eprintln!("grpc-proxy: stopped before serving");
        return ExitCode::SUCCESS;
    }
    let hup_pending = pending.contains(&SIGHUP);
    // One descriptor per client connection: take what the hard limit
    // allows, as nginx and HAProxy do; the workers' connection limits are
    // derived from it.
    match grpc_proxy::runtime::fds::raise_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(
                before,
                after,
                "file descriptor limit raised to the hard limit"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let started =
        ProxyBuilder::from_config(&config).and_then(|(builder, routes)| builder.start(routes));
    let mut proxy = match started {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("grpc-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // systemd (Type=notify): ready once every worker listens, the
    // watchdog while every worker answers.
    let notifier = Notifier::from_env().map(std::sync::Arc::new);
    let serving = format!("serving on {}", proxy.local_addr());
    let _watchdog = match (&notifier, watchdog_interval()) {
        (Some(n), Some(every)) => Some(Watchdog::start(n.clone(), proxy.controller(), every)),
        _ => None,
    };
    // What SIGHUP and the admin endpoint's POST /reload both do, one at a
    // time: two that overlap would each read the file, and the one that
    // read it first could apply its older version last.
    // Set once the drain begins: no reload starts after it, and one under
    // way says nothing to systemd after its STOPPING=1. Held only around
    // those words (never through a reload, which may wait), by the
    // control side only, never on a worker.
    #[allow(clippy::disallowed_types)]
    let stopping = std::sync::Arc::new(std::sync::Mutex::new(false));
    let reload: grpc_proxy::telemetry::admin::ReloadFn = {
        let (control, cli) = (proxy.controller(), cli.clone());
        let (notifier, serving) = (notifier.clone(), serving.clone());
        let stopping = stopping.clone();
        let started = restart_only(&config);
        // The control side only: never on a worker.
        #[allow(clippy::disallowed_types)]
        let one_at_a_time = std::sync::Mutex::new(());
        std::sync::Arc::new(move || {
            let _turn = one_at_a_time
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            {
                let stopping = stopping
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stopping {
                    return Err("the proxy is draining".into());
                }
                if let Some(n) = &notifier {
                    n.reloading();
                }
            }
            let result = load(&cli).and_then(|next| {
                let changed: Vec<&str> = restart_only(&next)
                    .iter()
                    .zip(&started)
                    .filter(|(now, then)| now != then)
                    .map(|((name, _), _)| *name)
                    .collect();
                if !changed.is_empty() {
                    tracing::warn!(
                        changed = changed.join(", "),
                        "these settings take effect only after a restart"
                    );
                }
                control.reload(&next).map_err(|e| e.to_string())
            });
            let stopping = stopping
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &notifier {
                Some(n) if !*stopping => match &result {
                    Ok(_) => n.ready(&serving),
                    Err(e) => n.ready(&format!("{serving}; reload refused: {e}")),
                },
                _ => {}
            }
            result
        })
    };
    if let Some(addr) = config.admin {
        if let Err(e) = proxy.serve_admin(addr, Some(reload.clone())) {
            eprintln!("grpc-proxy: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(n) = &notifier {
        n.ready(&serving);
    }
    // Reload on SIGHUP; drain on the first SIGTERM or SIGINT, and a second
    // one stops at once. Reloads run on a thread of their own: one may
    // wait (name lookups, a reload from the admin endpoint, the workers),
    // and a SIGTERM meanwhile must start the drain at once. SIGHUPs that
    // come while one runs make one more, which reads the file as it is
    // then: a burst of them costs two reloads, not a thread each.
    let (hup, hups_rx) = crossbeam_channel::bounded::<()>(1);
    let reloader = reload.clone();
    std::thread::spawn(move || {
        for () in hups_rx {
            // A reload that panics (a bug) must not leave later SIGHUPs
            // unheard.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reloader())) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reload refused; the running config stays")
                }
                Err(_) => tracing::error!("reload failed (a panic); the running config stays"),
            }
        }
    });
    let hups = std::iter::once(SIGHUP).filter(|_| hup_pending);
    for signal in hups.chain(signals.forever()) {
        if signal == SIGHUP {
            let _ = hup.try_send(());
            continue;
        }
        tracing::info!(signal, drain_timeout = ?config.settings.drain_timeout, "draining");
        break;
    }
    drop(hup);
    {
        let mut stopping = stopping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopping = true;
        if let Some(n) = &notifier {
            n.stopping();
        }
    }
    proxy.drain();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let handle = signals.handle();
    let waiter = std::thread::spawn(move || {
        proxy.wait();
        let _ = done_tx.send(());
        handle.close();
    });
    let second = signals.forever().find(|s| *s != SIGHUP);
    if second.is_some() && done_rx.try_recv().is_err() {
        tracing::warn!("second signal: exiting without waiting for in-flight calls");
        return ExitCode::from(1);
    }
    let _ = waiter.join();
    tracing::info!("drained; bye");
    ExitCode::SUCCESS
}

/// The checks of a start, without serving: the summary of a good file,
/// or what is wrong with it.
fn check(path: &Path) -> Result<String, String> {
    let config = routed(Config::from_file(path).map_err(|e| e.to_string())?, path)?;
    let Some(listen) = config.listen else {
        return Err(format!(
            "{}: no listen address: set `listen` in the file",
            path.display()
        ));
    };
    // Certificates and keys (listener and clusters) and the route table,
    // as a start and a reload load them.
    ProxyBuilder::from_config(&config).map_err(|e| e.to_string())?;
    if let Some(grpc_proxy::config::AccessLogTarget::File(log)) = &config.access_log {
        check_log_file(log)?;
    }
    let endpoints: usize = config.clusters.iter().map(|c| c.endpoints.len()).sum();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut summary = format!(
        "listens on {listen}{}, {}, {} ({})",
        if config.tls.is_some() { " (TLS)" } else { "" },
        plural(config.routes.len(), "route", "routes"),
        plural(config.clusters.len(), "cluster", "clusters"),
        plural(endpoints, "endpoint", "endpoints"),
    );
    if let Some(admin) = config.admin {
        summary.push_str(&format!(", admin on {admin}"));
    }
    Ok(summary)
}

/// The access log's file can be written: its folder exists, and the file,
/// if it does, opens for appending. Nothing is created.
fn check_log_file(log: &Path) -> Result<(), String> {
    let folder = match log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "access_log: {}: the folder {} does not exist",
            log.display(),
            folder.display()
        ));
    }
    if log.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .map_err(|e| format!("access_log: {}: {e}", log.display()))?;
    }
    Ok(())
}

/// The settings a reload cannot change, by name, as text to compare.
fn restart_only(config: &grpc_proxy::Config) -> [(&'static str, String); 5] {
    [
        ("listen", format!("{:?}", config.listen)),
        ("cores", format!("{:?}", config.cores)),
        ("driver", format!("{:?}", config.driver)),
        ("admin", format!("{:?}", config.admin)),
        ("access_log", format!("{:?}", config.access_log)),
    ]
}

fn init_logging(filter: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|e| format!("invalid --log filter {f:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: log files and collectors get text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// A config file with routes: one without would have every call refused,
/// which is a file cut short (a reload read it half written, say) far
/// more often than what its author meant; refusing every call is a
/// route too (`reject`).
fn routed(config: Config, path: &Path) -> Result<Config, String> {
    if config.routes.is_empty() {
        return Err(format!(
            "{}: no [[routes]]: every call would be refused (a `reject` route says so on purpose)",
            path.display()
        ));
    }
    Ok(config)
}

/// The config to run: the file's, or one built from flags, with flag
/// overrides applied.
fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => routed(Config::from_file(path).map_err(|e| e.to_string())?, path)?,
        None => from_flags(&cli.upstream)?,
    };
    if let Some(listen) = cli.listen {
        config.listen = Some(listen);
    }
    if config.listen.is_none() {
        return Err(
            "no listen address: pass --listen ADDR or set `listen` in the config file".into(),
        );
    }
    if let Some(n) = cli.cores {
        config.cores = CoreSelection::from_parts(Some(n), None).map_err(|e| format!("--{e}"))?;
    }
    if let Some(set) = &cli.cpu_set {
        config.cores = CoreSelection::Set(set.0.clone());
    }
    if let Some(driver) = cli.driver {
        config.driver = driver;
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        config.tls = Some(ListenerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_auth: match cli.tls_client_ca {
                Some(_) => ClientAuth::Required,
                None => ClientAuth::Off,
            },
            client_ca: cli.tls_client_ca.clone(),
        });
    }
    if let Some(addr) = cli.admin {
        config.admin = Some(addr);
    }
    match cli.access_log.as_deref() {
        None => {}
        Some("-") => config.access_log = Some(grpc_proxy::config::AccessLogTarget::Stdout),
        Some("") => return Err("--access-log: empty; use - for stdout or a file path".into()),
        Some(path) => {
            config.access_log = Some(grpc_proxy::config::AccessLogTarget::File(path.into()))
        }
    }
    if let Some(d) = cli.drain_timeout {
        config.settings.drain_timeout = d;
    }
    Ok(config)
}

/// The config of `--upstream` alone: one cluster, one route to it.
fn from_flags(upstreams: &[String]) -> Result<Config, String> {
    if upstreams.is_empty() {
        return Err("no upstream: pass --upstream ADDR (or --config FILE); see --help".into());
    }
    let mut names = Vec::new();
    for u in upstreams {
        let addrs = resolve(u, None).map_err(|e| format!("--upstream: {e}"))?;
        names.push((u.clone(), addrs));
    }
    Ok(Config {
        clusters: vec![ClusterConfig {
            name: "default".into(),
            endpoints: grpc_proxy::config::endpoints_of(&names),
            names,
            tls: None,
            balance: Default::default(),
            health_check: None,
            outlier: Default::default(),
            limits: Default::default(),
            keepalive: None,
        }],
        routes: vec![RouteConfig {
            name: Some("default".into()),
            method: None,
            service: None,
            path_prefix: None,
            authority: None,
            headers: Vec::new(),
            client: None,
            action: RouteAction::Cluster("default".into()),
            timeout: None,
            jwt: None,
            request_headers: None,
            response_headers: None,
        }],
        source: "command-line flags".into(),
        ..Config::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("grpc-proxy").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_parses() {
        let cli = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--upstream",
            "127.0.0.1:3",
            "--cpu-set",
            "0-1",
            "--driver",
            "legacy",
            "--drain-timeout",
            "5s",
            "--log",
            "debug",
        ])
        .expect("valid flags");
        assert_eq!(cli.cpu_set, Some(CpuList(vec![0, 1])));
        assert_eq!(cli.upstream.len(), 2);
        let config = load(&cli).expect("valid config");
        assert_eq!(config.cores, CoreSelection::Set(vec![0, 1]));
        assert_eq!(config.driver, Driver::Legacy);
        assert_eq!(config.settings.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.clusters[0].endpoints.len(), 2);
    }

    #[test]
    fn conflicts_and_bad_values_are_refused() {
        assert!(parse(&["--cores", "1", "--cpu-set", "0"]).is_err());
        assert!(parse(&["--config", "x.toml", "--upstream", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--driver", "fast"]).is_err());
        assert!(parse(&["--drain-timeout", "soon"]).is_err());
        assert!(parse(&["--cpu-set", "1,1"]).is_err());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-client-ca", "ca.pem"]).is_err());
        let no_upstream = parse(&["--listen", "127.0.0.1:1"]).expect("parses");
        assert!(load(&no_upstream).unwrap_err().contains("no upstream"));
        let no_listen = parse(&["--upstream", "127.0.0.1:1"]).expect("parses");
        assert!(load(&no_listen).unwrap_err().contains("no listen address"));
    }
}
