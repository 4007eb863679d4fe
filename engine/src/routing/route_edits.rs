//! A config route's header edits, filled in per call: the values of
//! `request_headers` and `response_headers` may use variables (the peer,
//! the verified TLS identity, claims of the verified JWT); edits without
//! any are made once, when the route table is compiled.

use std::sync::Arc;

use http::header::HeaderValue;
use serde_json::Value;

use crate::config::edits::{is_authority, is_value, HeaderEditsConfig, Part, Template, Var};
use crate::routing::director::Call;
use crate::routing::edits::{Edits, HeaderEdits};
use crate::routing::jwt::claim_text;

/// A config route's edits: made once when they have no variables, else
/// per call.
#[derive(Clone, Debug)]
pub enum RouteEdits {
    /// The route edits nothing.
    None,
    /// The same edits for every call.
    Fixed(Arc<Edits>),
    /// Edits with variables.
    PerCall(Arc<[HeaderEditsConfig; 2]>),
}

impl RouteEdits {
    /// Compiles a route's `request_headers` and `response_headers`.
    pub fn new(
        request: Option<&HeaderEditsConfig>,
        response: Option<&HeaderEditsConfig>,
    ) -> RouteEdits {
        let (request, response) = (request.cloned(), response.cloned());
        if request.is_none() && response.is_none() {
            return RouteEdits::None;
        }
        let both = [request.unwrap_or_default(), response.unwrap_or_default()];
        let fixed = both.iter().all(|e| {
            e.forward_peer.is_none()
                && e.set
                    .iter()
                    .chain(&e.add)
                    .all(|(_, t)| t.literal().is_some())
                && e.authority.as_ref().is_none_or(|t| t.literal().is_some())
        });
        if fixed {
            let none = Vars::default();
            let [req, resp] = &both;
            return RouteEdits::Fixed(Arc::new(Edits {
                request: render(req, &none, None),
                response: render(resp, &none, None),
            }));
        }
        RouteEdits::PerCall(Arc::new(both))
    }

    /// The edits for one call, whose verified token has `claims`.
    pub fn for_call(&self, call: &Call<'_>, claims: Option<&Value>) -> Option<Arc<Edits>> {
        match self {
            RouteEdits::None => None,
            RouteEdits::Fixed(edits) => Some(edits.clone()),
            RouteEdits::PerCall(both) => {
                let vars = Vars { call: Some(call) };
                let [req, resp] = &**both;
                Some(Arc::new(Edits {
                    request: render(req, &vars, claims),
                    response: render(resp, &vars, claims),
                }))
            }
        }
    }
}

/// Where variables come from; none at all for edits without any.
#[derive(Default)]
struct Vars<'c, 'a> {
    call: Option<&'c Call<'a>>,
}

impl Vars<'_, '_> {
    fn fill(&self, template: &Template, claims: Option<&Value>) -> Option<HeaderValue> {
        let mut text = String::new();
        for part in &template.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Var(var) => text.push_str(&self.get(var, claims)?),
            }
        }
        // A variable's value is trimmed: a field value cannot start or
        // end with a space or tab; one that ends up empty is left out.
        let text = text.trim_matches([' ', '\t']);
        if !is_value(text) || (text.is_empty() && template.literal().is_none()) {
            return None;
        }
        HeaderValue::from_str(text).ok()
    }

    fn get(&self, var: &Var, claims: Option<&Value>) -> Option<String> {
        let call = self.call?;
        let id = || call.identity();
        match var {
            Var::Peer => Some(call.peer().to_string()),
            Var::PeerIp => Some(call.peer().ip().to_string()),
            Var::Path => Some(call.path().to_owned()),
            Var::Authority => call.authority().map(str::to_owned),
            Var::TlsCommonName => id()?.common_name.clone(),
            Var::TlsDns => id()?.dns_names.first().cloned(),
            Var::TlsUri => id()?.uris.first().cloned(),
            Var::TlsSha256 => Some(id()?.sha256.clone()),
            Var::Jwt(name) => claim_text(claims?, name),
        }
    }
}

/// One head's edits for a call: a value whose variables have no value
/// for it is left out (what `set` removes stays removed).
fn render(config: &HeaderEditsConfig, vars: &Vars<'_, '_>, claims: Option<&Value>) -> HeaderEdits {
    let mut edits = HeaderEdits {
        remove: config.remove.clone(),
        add: Vec::with_capacity(config.set.len() + config.add.len() + 1),
        authority: None,
    };
    for (name, _) in &config.set {
        if !edits.remove.contains(name) {
            edits.remove.push(name.clone());
        }
    }
    for (name, template) in config.set.iter().chain(&config.add) {
        if let Some(value) = vars.fill(template, claims) {
            edits.add.push((name.clone(), value));
        }
    }
    // An authority made from a variable that is not a host and port is
    // left as the client sent it.
    edits.authority = config
        .authority
        .as_ref()
        .and_then(|t| vars.fill(t, claims))
        .filter(|a| a.to_str().is_ok_and(is_authority));
    if let (Some(name), Some(call)) = (&config.forward_peer, vars.call) {
        let ip = call.peer().ip().to_string();
        let sent = config
            .trust_forwarded
            .then(|| call.header(name.as_str()))
            .flatten()
            .filter(|v| !v.trim().is_empty());
        let value = match sent {
            Some(sent) => format!("{sent}, {ip}"),
            None => ip,
        };
        if !edits.remove.contains(name) {
            edits.remove.push(name.clone());
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            edits.add.push((name.clone(), value));
        }
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn variables_are_filled_per_call_and_missing_ones_leave_the_value_out() {
        let config = HeaderEditsConfig {
            remove: vec![],
            set: vec![
                (
                    "x-peer".parse().expect("name"),
                    "${peer.ip}".parse().expect("t"),
                ),
                (
                    "x-cert".parse().expect("name"),
                    "URI=${tls.uri}".parse().expect("t"),
                ),
            ],
            add: vec![(
                "x-sub".parse().expect("name"),
                "${jwt.sub}".parse().expect("t"),
            )],
            authority: None,
            forward_peer: Some("x-forwarded-for".parse().expect("name")),
            trust_forwarded: true,
        };
        let edits = RouteEdits::new(Some(&config), None);
        assert!(matches!(edits, RouteEdits::PerCall(_)));
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().expect("value"));
        let peer = "192.0.2.7:4000".parse().expect("addr");
        let call = Call::new("/p.S/M", None, &headers, peer);
        let claims = serde_json::json!({ "sub": "alice" });
        let made = edits.for_call(&call, Some(&claims)).expect("edits");
        let added: Vec<_> = made
            .request
            .added()
            .map(|(n, v, _)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            added,
            [
                ("x-peer".to_owned(), "192.0.2.7".to_owned()),
                ("x-sub".to_owned(), "alice".to_owned()),
                (
                    "x-forwarded-for".to_owned(),
                    "10.0.0.1, 192.0.2.7".to_owned()
                ),
            ],
            "no certificate: x-cert is left out"
        );
        assert!(
            !made.request.keeps(b"x-cert"),
            "set removes the client's value even so"
        );
        assert!(!made.request.keeps(b"x-forwarded-for"));
    }

    #[test]
    fn edits_without_variables_are_made_once() {
        let config = HeaderEditsConfig {
            set: vec![("x-a".parse().expect("name"), "1".parse().expect("t"))],
            ..HeaderEditsConfig::default()
        };
        let RouteEdits::Fixed(edits) = RouteEdits::new(None, Some(&config)) else {
            panic!("expected fixed edits");
        };
        assert!(edits.request.is_empty());
        assert_eq!(edits.response.added().count(), 1);
    }
}
