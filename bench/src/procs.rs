//! The processes under test: the echo upstream and each proxy, started as
//! their own processes pinned to their own CPUs, so that a proxy's CPU time
//! and memory are its alone. CPU time, RSS and open descriptors come from
//! `/proc`.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A proxy (or none) between the load and the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The load talks to the upstream.
    Direct,
    /// grpc-proxy with this many worker cores.
    GrpcProxy(usize),
    /// HAProxy, `mode http`, `proto h2` both sides, one thread.
    Haproxy,
    /// nginx `grpc_pass`, one worker.
    Nginx,
}

impl Target {
    /// The name in tables and JSON.
    pub fn name(self) -> String {
        match self {
            Target::Direct => "direct".into(),
            Target::GrpcProxy(1) => "grpc-proxy".into(),
            Target::GrpcProxy(n) => format!("grpc-proxy x{n}"),
            Target::Haproxy => "haproxy".into(),
            Target::Nginx => "nginx".into(),
        }
    }
}

/// A running process we measure.
pub struct Running {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    _dir: Option<TempDir>,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.cpu_time().map(CpuTime::total)
    }

    /// CPU seconds used so far, in user space and in the kernel.
    pub fn cpu_time(&self) -> anyhow::Result<CpuTime> {
        cpu_time(self.pid())
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmHWM")
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmRSS")
    }

    /// Open file descriptors now.
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        Ok(fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Sends a signal by name (`HUP`, `TERM`), with kill(1): no unsafe code.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// The process's own temporary directory (config, log), if it has one.
    pub fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|d| d.0.as_path())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc status"))
}

/// A process's CPU seconds, in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    /// User space.
    pub user: f64,
    /// The kernel, on the process's behalf (its system calls, and the
    /// network stack's work done in them).
    pub system: f64,
}

impl CpuTime {
    /// User and kernel together.
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        let field = fields.get(i).context("malformed stat")?;
        Ok(field.parse::<u64>()? as f64 / clock_ticks_per_second())
    };
    Ok(CpuTime {
        user: ticks(11)?,
        system: ticks(12)?,
    })
}

/// What some CPUs did since boot (`/proc/stat`), in seconds, summed over
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpusTime {
    /// Running anything: user, nice, system, irq and softirq time.
    pub busy: f64,
    /// Time the hypervisor gave these CPUs to others ("steal").
    pub steal: f64,
}

/// What these CPUs did since boot, summed.
pub fn cpus_time(cpus: &[usize]) -> anyhow::Result<CpusTime> {
    let stat = fs::read_to_string("/proc/stat")?;
    let (busy, steal) = ticks_in(&stat, cpus)?;
    let hz = clock_ticks_per_second();
    Ok(CpusTime {
        busy: busy as f64 / hz,
        steal: steal as f64 / hz,
    })
}

/// The busy and steal ticks of these CPUs in a `/proc/stat` text.
fn ticks_in(stat: &str, cpus: &[usize]) -> anyhow::Result<(u64, u64)> {
    let (mut busy, mut steal) = (0, 0);
    for cpu in cpus {
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))
            .with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
        // cpuN user nice system idle iowait irq softirq steal ...
        let figures: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .collect();
        let at = |i: usize| figures.get(i).copied().unwrap_or(0);
        busy += at(0) + at(1) + at(2) + at(5) + at(6);
        steal += at(7);
    }
    Ok((busy, steal))
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux we run on; read it from
    // getconf to be sure without unsafe code.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `grpc-proxy-bench-<name>-<our pid>` in the system's temporary
    /// directory.
    pub fn new(name: &str) -> anyhow::Result<TempDir> {
        let dir =
            std::env::temp_dir().join(format!("grpc-proxy-bench-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A CA and a `localhost` certificate for the proxies' TLS listeners.
pub struct TlsFiles {
    _dir: TempDir,
    /// The CA the load generator trusts.
    pub ca: PathBuf,
    /// The server certificate (ECDSA P-256).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Certificate and key in one file, for HAProxy.
    pub bundle: PathBuf,
}

impl TlsFiles {
    /// Issues the certificates into a temporary directory.
    pub fn generate() -> anyhow::Result<TlsFiles> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = TempDir::new("tls")?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.0.join(name);
            fs::write(&path, text)?;
            Ok(path)
        };
        Ok(TlsFiles {
            ca: write("ca.pem", &ca.pem())?,
            cert: write("server.pem", &cert.pem())?,
            key: write("server.key", &key.serialize_pem())?,
            bundle: write(
                "server.bundle.pem",
                &format!("{}{}", cert.pem(), key.serialize_pem()),
            )?,
            _dir: dir,
        })
    }
}

/// A free loopback port (bound and released; the process we start takes it).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    wait_listening_for(addr, child, what, Duration::from_secs(10))
}

fn wait_listening_for(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start-up ({status})");
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on {addr} within {limit:?}")
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `grpc-loadtest serve` on these CPUs.
pub fn upstream(bin_dir: &Path, cpus: &[usize]) -> anyhow::Result<Running> {
    upstream_at(bin_dir, cpus, free_port()?)
}

/// Starts `grpc-loadtest serve` on these CPUs and this address (again, for
/// a restart on the same port).
pub fn upstream_at(bin_dir: &Path, cpus: &[usize], addr: SocketAddr) -> anyhow::Result<Running> {
    let mut child = Command::new(bin_dir.join("grpc-loadtest"))
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--cpu-set",
            &cpu_list(cpus),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start grpc-loadtest serve")?;
    wait_listening(addr, &mut child, "the echo upstream")?;
    Ok(Running {
        child,
        addr,
        _dir: None,
    })
}

/// Starts grpc-proxy (one worker per CPU in `cpus`) with this config file
/// text, which must listen on `listen`. The file is `grpc-proxy.toml` in the
/// process's own directory ([`Running::dir`]), where a reload reads it
/// again; the proxy's log (level `warn`) goes to `grpc-proxy.log` beside it.
pub fn grpc_proxy_with_config(
    bin_dir: &Path,
    cpus: &[usize],
    config: &str,
    listen: SocketAddr,
) -> anyhow::Result<Running> {
    let dir = TempDir::new("soak")?;
    let path = dir.0.join("grpc-proxy.toml");
    fs::write(&path, config)?;
    let log = fs::File::create(dir.0.join("grpc-proxy.log"))?;
    let mut child = Command::new(bin_dir.join("grpc-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--cpu-set", &cpu_list(cpus), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start grpc-proxy")?;
    wait_listening(listen, &mut child, "grpc-proxy")?;
    Ok(Running {
        child,
        addr: listen,
        _dir: Some(dir),
    })
}

/// Starts grpc-proxy (one worker, on `cpus`) in front of `upstream` under
/// valgrind's callgrind, which writes its counts to `out` (numbered dumps
/// `out.1`, `out.2`, ... on each `callgrind_control -d`), with function
/// names in full in every dump.
pub fn grpc_proxy_under_callgrind(
    bin_dir: &Path,
    cpus: &[usize],
    upstream: SocketAddr,
    out: &Path,
) -> anyhow::Result<Running> {
    let addr = free_port()?;
    let mut child = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--compress-strings=no",
            "--compress-pos=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin_dir.join("grpc-proxy"))
        .args(["--listen", &addr.to_string(), "--upstream"])
        .arg(upstream.to_string())
        .args(["--cpu-set", &cpu_list(cpus), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start valgrind")?;
    // Valgrind translates the program as it first runs: start-up is slow.
    wait_listening_for(
        addr,
        &mut child,
        "grpc-proxy under callgrind",
        Duration::from_secs(120),
    )?;
    Ok(Running {
        child,
        addr,
        _dir: None,
    })
}

/// Whether a program is on the PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts a proxy in front of `upstream`; `None` for direct.
pub fn proxy(
    target: Target,
    bin_dir: &Path,
    cpus: &[usize],
    upstream: SocketAddr,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<Option<Running>> {
    let addr = free_port()?;
    let (mut child, dir) = match target {
        Target::Direct => return Ok(None),
        Target::GrpcProxy(_) => (
            Command::new(bin_dir.join("grpc-proxy"))
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--upstream",
                    &upstream.to_string(),
                ])
                .args(["--cpu-set", &cpu_list(cpus), "--log", "warn"])
                .args(tls.map_or_else(Vec::new, |t| {
                    vec![
                        "--tls-cert".into(),
                        t.cert.clone().into_os_string(),
                        "--tls-key".into(),
                        t.key.clone().into_os_string(),
                    ]
                }))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start grpc-proxy")?,
            None,
        ),
        Target::Haproxy => {
            let dir = TempDir::new("haproxy")?;
            let cfg = dir.0.join("haproxy.cfg");
            fs::write(&cfg, haproxy_config(addr, upstream, cpus[0], tls))?;
            let child = Command::new("taskset")
                .args(["-c", &cpu_list(cpus), "haproxy", "-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start haproxy")?;
            (child, Some(dir))
        }
        Target::Nginx => {
            let dir = TempDir::new("nginx")?;
            let cfg = dir.0.join("nginx.conf");
            fs::write(&cfg, nginx_config(addr, upstream, cpus[0], &dir.0, tls))?;
            let child = Command::new("taskset")
                .args(["-c", &cpu_list(cpus), "nginx", "-c"])
                .arg(&cfg)
                .args(["-p"])
                .arg(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start nginx")?;
            (child, Some(dir))
        }
    };
    wait_listening(addr, &mut child, &target.name())?;
    Ok(Some(Running {
        child,
        addr,
        _dir: dir,
    }))
}

fn haproxy_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    cpu: usize,
    tls: Option<&TlsFiles>,
) -> String {
    let bind = match tls {
        Some(t) => format!("ssl crt {} alpn h2", t.bundle.display()),
        None => "proto h2".into(),
    };
    format!(
        "global
    nbthread 1
    cpu-map auto:1/1 {cpu}
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind {listen} {bind}
    default_backend be
backend be
    server s1 {upstream} proto h2
"
    )
}

fn nginx_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    cpu: usize,
    dir: &Path,
    tls: Option<&TlsFiles>,
) -> String {
    let listen_tls = match tls {
        Some(t) => format!(
            " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {}",
            t.cert.display(),
            t.key.display()
        ),
        None => String::new(),
    };
    let mask: String = (0..=cpu)
        .rev()
        .map(|c| if c == cpu { '1' } else { '0' })
        .collect();
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
user root;
worker_processes 1;
worker_cpu_affinity {mask};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 9000; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 1024;
    client_max_body_size 0;
    upstream echo {{
        server {upstream};
        keepalive 256;
        keepalive_requests 100000000;
    }}
    server {{
        listen {listen} http2{listen_tls};
        location / {{
            grpc_pass grpc://echo;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_is_user_nice_system_irq_softirq_and_steal_the_eighth_figure() {
        let stat = "cpu  10 0 5 100 1 0 2 9 0 0\ncpu0 5 1 2 50 7 3 1 4 0 0\ncpu1 5 0 3 50 0 0 1 5 0 0\nintr 1\n";
        // Idle (50) and iowait (7) are not busy.
        assert_eq!(super::ticks_in(stat, &[0]).expect("cpu0"), (12, 4));
        assert_eq!(super::ticks_in(stat, &[0, 1]).expect("both"), (21, 9));
        assert!(super::ticks_in(stat, &[2]).is_err());
    }
}
