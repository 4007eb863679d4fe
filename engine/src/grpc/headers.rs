//! Which request headers cross the proxy.
//!
//! HTTP/2 forbids connection-specific headers, so a map of headers drops
//! them before it is sent on: `connection`,
//! `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`, and `te`
//! unless it is exactly `trailers`. Everything else (`content-type`,
//! `grpc-*`, custom and `-bin` metadata) passes unchanged and uncopied: the
//! downstream header map itself is moved into the upstream request.

use http::header::{HeaderMap, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Removes hop-by-hop headers in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Each `remove` is one hash probe; a gRPC request normally has none of
    // these, so the common case is five misses and no allocation.
    headers.remove(CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if let Some(te) = headers.get(TE) {
        if te != "trailers" {
            headers.remove(TE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_only_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close"),
            ("keep-alive", "1"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "1S"),
            ("x-custom", "v"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h.insert("x-trace-bin", HeaderValue::from_static("AAEC"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-type",
                "grpc-timeout",
                "te",
                "x-custom",
                "x-trace-bin"
            ]
        );
    }

    #[test]
    fn te_other_than_trailers_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }
}
