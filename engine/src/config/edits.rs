//! Header edits of a route (`request_headers`, `response_headers`): their
//! schema, and header values with variables ([`Template`]).
//!
//! ```toml
//! request_headers = { remove = ["authorization"], set = { "x-user-id" = "${jwt.sub}" }, forward_peer = "x-forwarded-for" }
//! response_headers = { set = { "x-served-by" = "grpc-proxy" } }
//! ```
//!
//! `remove` drops every value of a key; `set` replaces every value of a
//! key with one; `add` appends one. Pseudo-headers, connection-specific
//! headers and the headers the proxy itself reads or writes cannot be
//! edited (`:authority` has its own key, `authority`).

use std::collections::BTreeMap;
use std::str::FromStr;

use http::header::HeaderName;
use serde::Deserialize;

/// Keys no edit may name: HTTP/2 forbids the connection-specific ones,
/// `host` is `:authority`'s (see `authority`), and the proxy itself reads
/// or writes the rest.
const FORBIDDEN: [&str; 12] = [
    "content-type",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "host",
    "content-length",
    "grpc-timeout",
    "grpc-status",
    "grpc-message",
];

/// The variables a header value may use, as `${name}`.
pub const VARIABLES: &str =
    "peer, peer.ip, path, authority, tls.common_name, tls.dns, tls.uri, tls.sha256, jwt.<claim>";

/// A variable of a header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// The client's address, `ip:port`.
    Peer,
    /// The client's IP address.
    PeerIp,
    /// The call's method path.
    Path,
    /// The `:authority` the client sent.
    Authority,
    /// The common name of the client's verified certificate.
    TlsCommonName,
    /// Its first DNS name.
    TlsDns,
    /// Its first URI (a SPIFFE id, for example).
    TlsUri,
    /// Its SHA-256 fingerprint, lower-case hex.
    TlsSha256,
    /// A claim of the route's verified JWT; dots reach into objects
    /// (`realm.roles`).
    Jwt(String),
}

/// A piece of a header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text as written.
    Text(String),
    /// A variable, replaced per call.
    Var(Var),
}

/// A header value that may use variables: `"${tls.uri}"`, `"Hash=${tls.sha256}"`.
/// `$$` is a literal `$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub parts: Vec<Part>,
}

impl Template {
    /// The value when it has no variables.
    pub fn literal(&self) -> Option<String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Var(_) => return None,
            }
        }
        Some(text)
    }

    /// Whether a variable is a JWT claim.
    pub fn uses_jwt(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::Jwt(_))))
    }
}

impl FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                text.push('$');
                rest = after;
                continue;
            }
            let Some((name, after)) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
                return Err(format!(
                    "{s:?}: a '$' starts a variable such as ${{peer.ip}}; write $$ for a '$'"
                ));
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(variable(name).ok_or_else(|| {
                format!("{s:?}: no variable ${{{name}}}; there are {VARIABLES}")
            })?));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let bad = parts.iter().any(|p| match p {
            Part::Text(t) => !t.bytes().all(is_value_byte),
            Part::Var(_) => false,
        });
        if bad {
            return Err(format!(
                "{s:?} is not a valid metadata value (visible ASCII, spaces and tabs)"
            ));
        }
        Ok(Template { parts })
    }
}

/// Whether a byte may be in a header value the proxy writes: visible
/// ASCII, spaces and tabs.
pub fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// Whether a header value may be sent as it is: its bytes are text and it
/// neither starts nor ends with a space or tab (RFC 9113, 8.2.1).
pub fn is_value(v: &str) -> bool {
    v.bytes().all(is_value_byte) && v.trim_matches([' ', '\t']).len() == v.len()
}

/// Whether a value may be an `:authority`: a host and optional port, in
/// the characters RFC 3986 allows there, without user information.
pub fn is_authority(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

fn variable(name: &str) -> Option<Var> {
    Some(match name {
        "peer" => Var::Peer,
        "peer.ip" => Var::PeerIp,
        "path" => Var::Path,
        "authority" => Var::Authority,
        "tls.common_name" => Var::TlsCommonName,
        "tls.dns" => Var::TlsDns,
        "tls.uri" => Var::TlsUri,
        "tls.sha256" => Var::TlsSha256,
        _ => {
            let claim = name.strip_prefix("jwt.")?;
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                return None;
            }
            Var::Jwt(claim.to_owned())
        }
    })
}

/// What a route changes in the heads it forwards, one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEditsConfig {
    /// Keys whose values are dropped.
    pub remove: Vec<HeaderName>,
    /// Keys whose values are replaced by one (dropped, when a variable
    /// has no value for the call).
    pub set: Vec<(HeaderName, Template)>,
    /// Values appended.
    pub add: Vec<(HeaderName, Template)>,
    /// A new `:authority` (requests only).
    pub authority: Option<Template>,
    /// A key the client's IP address is written to, as `X-Forwarded-For`
    /// (requests only).
    pub forward_peer: Option<HeaderName>,
    /// Whether the value the client sent in `forward_peer` is kept, the
    /// client's address appended to it; when not, it is replaced.
    pub trust_forwarded: bool,
}

impl HeaderEditsConfig {
    /// Whether a value uses a JWT claim.
    pub fn uses_jwt(&self) -> bool {
        self.set.iter().chain(&self.add).any(|(_, t)| t.uses_jwt())
            || self.authority.as_ref().is_some_and(Template::uses_jwt)
    }
}

/// `request_headers` or `response_headers` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderEditsFile {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    authority: Option<String>,
    forward_peer: Option<String>,
    trust_forwarded: Option<bool>,
}

impl HeaderEditsFile {
    /// Checks the edits at `at` (`routes[0].request_headers`); `request`
    /// says whether the request-only keys may be there.
    pub(super) fn validate(self, at: &str, request: bool) -> Result<HeaderEditsConfig, String> {
        if !request {
            for (key, given) in [
                ("authority", self.authority.is_some()),
                ("forward_peer", self.forward_peer.is_some()),
                ("trust_forwarded", self.trust_forwarded.is_some()),
            ] {
                if given {
                    return Err(format!("{at}.{key}: only request_headers has it"));
                }
            }
        }
        if self.trust_forwarded.is_some() && self.forward_peer.is_none() {
            return Err(format!("{at}.trust_forwarded: needs forward_peer"));
        }
        let remove = self
            .remove
            .iter()
            .map(|k| key(&format!("{at}.remove"), k))
            .collect::<Result<_, _>>()?;
        let values = |what: &str, map: BTreeMap<String, String>| {
            map.into_iter()
                .map(|(k, v)| {
                    let name = key(&format!("{at}.{what}"), &k)?;
                    let value: Template = v.parse().map_err(|e| format!("{at}.{what}.{k}: {e}"))?;
                    if v.trim_matches([' ', '\t']).len() != v.len() {
                        return Err(format!(
                            "{at}.{what}.{k}: a value cannot start or end with a space or tab"
                        ));
                    }
                    if k.ends_with("-bin") && value.literal().is_none() {
                        return Err(format!(
                            "{at}.{what}.{k}: a -bin value is base64 and cannot use variables"
                        ));
                    }
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let set = values("set", self.set)?;
        let add = values("add", self.add)?;
        let authority = self
            .authority
            .map(|a| {
                let template: Template = a.parse().map_err(|e| format!("{at}.authority: {e}"))?;
                if template.literal().is_some_and(|l| !is_authority(&l)) {
                    return Err(format!(
                        "{at}.authority: {a:?} is not a host and port such as users.internal:443"
                    ));
                }
                Ok(template)
            })
            .transpose()?;
        let forward_peer = self
            .forward_peer
            .map(|k| {
                if k.ends_with("-bin") {
                    return Err(format!(
                        "{at}.forward_peer: a -bin key carries base64, and the peer's address is text"
                    ));
                }
                key(&format!("{at}.forward_peer"), &k)
            })
            .transpose()?;
        Ok(HeaderEditsConfig {
            remove,
            set,
            add,
            authority,
            forward_peer,
            trust_forwarded: self.trust_forwarded.unwrap_or(false),
        })
    }
}

/// A key an edit may name; the error names `at`.
pub fn key(at: &str, k: &str) -> Result<HeaderName, String> {
    if k.starts_with(':') {
        return Err(format!(
            "{at}: {k:?} is a pseudo-header; only :authority can change, with authority"
        ));
    }
    if k.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{at}: {k:?} must be lower case"));
    }
    if FORBIDDEN.contains(&k) {
        return Err(format!("{at}: {k:?} cannot be edited"));
    }
    HeaderName::from_str(k).map_err(|_| format!("{at}: {k:?} is not a valid metadata key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_read_variables_text_and_dollars() {
        let t: Template = "Hash=${tls.sha256};URI=${tls.uri} $$5"
            .parse()
            .expect("valid");
        assert_eq!(
            t.parts,
            vec![
                Part::Text("Hash=".into()),
                Part::Var(Var::TlsSha256),
                Part::Text(";URI=".into()),
                Part::Var(Var::TlsUri),
                Part::Text(" $5".into()),
            ]
        );
        assert_eq!(t.literal(), None);
        let claim: Template = "${jwt.realm.roles}".parse().expect("valid");
        assert_eq!(claim.parts, vec![Part::Var(Var::Jwt("realm.roles".into()))]);
        assert!(claim.uses_jwt());
        assert_eq!(
            "plain $$".parse::<Template>().expect("valid").literal(),
            Some("plain $".into())
        );
        for bad in [
            "${nope}",
            "${jwt.}",
            "${jwt.a..b}",
            "$x",
            "${peer",
            "new\nline",
        ] {
            assert!(bad.parse::<Template>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_that_cannot_be_edited_are_named() {
        let e = |k: &str| key("at", k).expect_err(k);
        assert!(e(":path").contains("pseudo-header"));
        assert!(e("connection").contains("cannot be edited"));
        assert!(e("grpc-status").contains("cannot be edited"));
        assert!(e("content-type").contains("cannot be edited"));
        assert!(is_authority("users.internal:8443") && is_authority("[::1]:50051"));
        assert!(
            !is_authority("")
                && !is_authority("a b")
                && !is_authority("u@h")
                && !is_authority("h/p")
        );
        assert!(is_value("a b") && !is_value(" a") && !is_value("a\t") && !is_value("a\nb"));
        assert!(e("X-Up").contains("lower case"));
        assert!(e("bad key").contains("not a valid"));
        assert_eq!(key("at", "x-user-id").expect("valid"), "x-user-id");
    }
}
