//! The faults the soak's orchestrator injects itself: restarting the flaky
//! upstream, and reloading the proxy's config (SIGHUP and `POST /reload`
//! in turn). The other two faults are clients (see `load`).
//!
//! The config has two clusters, `steady` and `flaky`, one echo upstream
//! each; calls with `x-soak-cluster: flaky` go to `flaky`, every other call
//! to `steady`. Each reload writes the next *variant*: the same clusters and
//! routing under other route names, with a reject route for a method nobody
//! calls, so that every reload really changes the config (the version and
//! the route labels in `/metrics` move) while no call should notice.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The proxy config, variant `n`.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    steady: SocketAddr,
    flaky: SocketAddr,
    n: u32,
) -> String {
    format!(
        r#"# grpc-proxy config written by `bench soak`, variant {n}.
listen = "{listen}"
admin = "{admin}"

[[clusters]]
name = "steady"
endpoints = ["{steady}"]

[[clusters]]
name = "flaky"
endpoints = ["{flaky}"]

[[routes]]
name = "flaky-v{n}"
headers = [{{ name = "x-soak-cluster", value = "flaky" }}]
cluster = "flaky"

[[routes]]
name = "unused-v{n}"
path_prefix = "/soak.Unused{n}/"
reject = {{ code = "UNIMPLEMENTED", message = "variant {n}" }}

[[routes]]
name = "steady-v{n}"
cluster = "steady"
"#
    )
}

/// Writes `text` to `path` whole (a temporary file renamed over it), after
/// checking it is a config the proxy accepts: a reload must never read half
/// a file or a config the soak got wrong.
pub fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    grpc_proxy::Config::parse(text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("the soak's own config is invalid: {e}"))?;
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One HTTP/1.1 request to the admin endpoint: (status, body).
pub fn admin(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from the admin endpoint: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The running config's version, from `GET /config`.
pub fn config_version(admin_addr: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = admin(admin_addr, "GET", "/config")?;
    if status != 200 {
        bail!("GET /config answered {status}");
    }
    let json: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("GET /config is not JSON: {body:?}"))?;
    json["version"]
        .as_u64()
        .context("GET /config has no version")
}

/// Waits until the admin endpoint answers (it starts on its own thread).
pub fn wait_admin(admin_addr: SocketAddr) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match config_version(admin_addr) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("the admin endpoint did not answer within 10 s"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How a reload was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `kill -HUP`.
    Sighup,
    /// `POST /reload` on the admin endpoint.
    Post,
}

/// Asks for a reload and waits (up to 5 s) until `GET /config` shows a
/// version past `before`; the new version, or why not.
pub fn reload(
    proxy: &crate::procs::Running,
    admin_addr: SocketAddr,
    trigger: Trigger,
    before: u64,
) -> anyhow::Result<u64> {
    match trigger {
        Trigger::Sighup => proxy.signal("HUP")?,
        Trigger::Post => {
            let (status, body) = admin(admin_addr, "POST", "/reload")?;
            if status != 200 {
                bail!("POST /reload answered {status}: {}", body.trim());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = config_version(admin_addr)?;
        if v > before {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{trigger:?}: the config version stayed {v} for 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
