//! Units in the config file: sizes (`64KiB`), durations (`250ms`),
//! endpoint addresses (`host:port`), and the helpers that parse a field of
//! each kind and name the field in the error.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Parses a size such as `4096`, `64KiB`, `16MiB`, `1GiB` (also `KB`, `MB`,
/// `GB` as powers of ten, and `B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (expected e.g. 4096, 64KiB, 1MiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The longest duration a setting takes: far past any timeout, and far
/// from the end of the clock's range, which a deadline computed from a
/// longer one could pass (a panic on the worker that computes it).
const DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration such as `250ms`, `5s`, `2m` (at most 10 years).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}; expected e.g. 250ms, 5s, 2m)"))?;
    if d > DURATION_MAX {
        return Err(format!("duration {text:?} is longer than 10 years"));
    }
    Ok(d)
}

/// Resolves `host:port` to one or more socket addresses: an address as it
/// is; a name from `hosts` (a hosts-style file, re-read on every call) if
/// it names it, else from the system's resolver. The addresses come
/// sorted and once each: resolvers rotate their answers, and the same
/// set in another order is no change of endpoints.
pub fn resolve(endpoint: &str, hosts: Option<&std::path::Path>) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = SocketAddr::from_str(endpoint) {
        return Ok(vec![addr]);
    }
    let named = match hosts {
        Some(path) => from_hosts_file(path, endpoint)?,
        None => None,
    };
    let mut addrs: Vec<SocketAddr> = match named {
        Some(addrs) => addrs,
        None => endpoint
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve endpoint {endpoint:?}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("endpoint {endpoint:?} resolves to no address"));
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Whether `endpoint` is a name to resolve, not an address.
pub fn is_name(endpoint: &str) -> bool {
    SocketAddr::from_str(endpoint).is_err()
}

/// The addresses a hosts-style file (`address name [name...]` per line,
/// `#` comments) gives the host of `endpoint`, with its port; `None` if it
/// does not name it.
fn from_hosts_file(
    path: &std::path::Path,
    endpoint: &str,
) -> Result<Option<Vec<SocketAddr>>, String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("endpoint {endpoint:?} has no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?}: {port:?} is not a port"))?;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("hosts file {}: {e}", path.display()))?;
    let mut addrs = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next() else {
            continue;
        };
        if words.any(|name| name.eq_ignore_ascii_case(host)) {
            let ip: std::net::IpAddr = ip.parse().map_err(|_| {
                format!("hosts file {}: {ip:?} is not an IP address", path.display())
            })?;
            addrs.push(SocketAddr::new(ip, port));
        }
    }
    Ok((!addrs.is_empty()).then_some(addrs))
}

/// A size as written in the file: a number of bytes, or a string such as
/// `64KiB` or `1MiB`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// A size field, checked to lie within `min..=max`.
pub(super) fn size<T: TryFrom<u64>>(
    field: &str,
    v: &SizeValue,
    min: u64,
    max: u64,
) -> Result<T, String> {
    let n = match v {
        SizeValue::Bytes(n) => *n,
        SizeValue::Text(t) => parse_size(t).map_err(|e| format!("{field}: {e}"))?,
    };
    if n < min || n > max {
        return Err(format!("{field}: {n} is out of range ({min} to {max})"));
    }
    T::try_from(n).map_err(|_| format!("{field}: {n} is too large for this machine"))
}

/// A duration field, if it was given.
pub(super) fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, String> {
    text.map(|t| parse_duration(t).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

/// A required duration field.
pub(super) fn parse_field(field: &str, text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("{field}: {e}"))
}

/// Overwrites a default with a value that was given.
pub(super) fn set<T>(into: &mut T, given: Option<T>) {
    if let Some(v) = given {
        *into = v;
    }
}

/// The host part of `host:port` (an IPv6 address without its brackets).
pub(super) fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_addresses_in_another_order_resolve_the_same() {
        let dir = std::env::temp_dir().join(format!("grpc-proxy-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "10.0.0.2 svc\n10.0.0.1 svc\n10.0.0.2 svc\n").expect("write");
        let a = resolve("svc:80", Some(&hosts)).expect("resolves");
        std::fs::write(&hosts, "10.0.0.1 svc\n10.0.0.2 svc\n").expect("write");
        let b = resolve("svc:80", Some(&hosts)).expect("resolves");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2, "once each: {a:?}");
    }

    #[test]
    fn durations_past_ten_years_are_refused() {
        assert_eq!(parse_duration("3650days"), Ok(DURATION_MAX));
        let e = parse_duration("10000000000000000000s").expect_err("too long");
        assert!(e.contains("longer than 10 years"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("KiB").is_err());
    }
}
