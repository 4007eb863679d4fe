//! The declarative director: the config file's routes, tried in order.
//!
//! A route matches when all its conditions hold: exact method path, exact
//! service, path prefix, authority (without case or a default port), metadata rules (present,
//! absent, or one of an allow-list of values) and the client's verified
//! TLS identity (common name, DNS or URI SAN, or certificate fingerprint,
//! each an allow-list; or no certificate at all), and a verified bearer
//! token ([`jwt`](crate::routing::jwt)). The first match decides:
//! forward to a cluster, with the route's header edits, or reject with a
//! status. A call no route matches gets UNIMPLEMENTED, or the status of
//! the first route it matched but for its token (UNAUTHENTICATED or
//! PERMISSION_DENIED); a route without conditions is the default route.
//!
//! Each worker gets its own copy of the table (the recipe is `Clone`), and
//! its own caches of verified tokens ([`RouteDirector`]).
//! Routes with an exact `method` are indexed by it: a call is checked only
//! against the routes of its own method and the routes without one, merged
//! in file order, so the first match is still the first in the file.
//! Matching compares borrowed strings and allocates nothing, except to
//! build a rejection's status.

use std::collections::HashMap;

use crate::config::{ClientMatch, HeaderMatch, HeaderRule, RouteAction, RouteConfig};
use crate::grpc::status::{Code, Status};
use crate::routing::director::{Call, ClusterId, CoreId, Director, DirectorRecipe, Route};
use crate::routing::jwt::{JwtRule, TokenCache};
use crate::routing::route_edits::RouteEdits;

/// The routes of a config file, compiled against the proxy's clusters.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Compiled>,
    /// Positions of the routes with an exact method, by method.
    by_method: HashMap<Box<str>, Vec<usize>>,
    /// Positions of the routes without one, in order.
    others: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Compiled {
    method: Option<Box<str>>,
    service: Option<Box<str>>,
    path_prefix: Option<Box<str>>,
    authority: Option<Box<str>>,
    headers: Vec<HeaderMatch>,
    client: Option<ClientMatch>,
    jwt: Option<JwtRule>,
    edits: RouteEdits,
    route: Route,
    name: Box<str>,
}

impl RouteTable {
    /// Compiles routes; `clusters` maps cluster names to ids. A route naming
    /// an unknown cluster is an error.
    pub fn new(
        routes: &[RouteConfig],
        clusters: &HashMap<String, ClusterId>,
    ) -> Result<RouteTable, String> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let route = match &r.action {
                    RouteAction::Cluster(name) => Route::Forward {
                        cluster: *clusters
                            .get(name)
                            .ok_or_else(|| format!("routes[{i}]: no cluster named {name:?}"))?,
                        timeout: r.timeout,
                        edits: None,
                    },
                    RouteAction::Reject(status) => Route::Reject(status.clone()),
                };
                let jwt = r
                    .jwt
                    .as_ref()
                    .map(JwtRule::load)
                    .transpose()
                    .map_err(|e| format!("routes[{i}].jwt.jwks: {e}"))?;
                let edits =
                    RouteEdits::new(r.request_headers.as_ref(), r.response_headers.as_ref());
                Ok(Compiled {
                    method: r.method.as_deref().map(Into::into),
                    service: r.service.as_deref().map(Into::into),
                    path_prefix: r.path_prefix.as_deref().map(Into::into),
                    authority: r
                        .authority
                        .as_deref()
                        .map(|a| without_default_port(a).to_ascii_lowercase().into()),
                    headers: r.headers.clone(),
                    client: r.client.clone(),
                    jwt,
                    edits,
                    route,
                    name: r
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("routes[{i}]"))
                        .into(),
                })
            })
            .collect::<Result<Vec<Compiled>, String>>()?;
        let mut by_method: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.method {
                Some(m) => by_method.entry(m.clone()).or_default().push(i),
                None => others.push(i),
            }
        }
        Ok(RouteTable {
            routes,
            by_method,
            others,
        })
    }

    /// The positions of the routes a call to `path` is checked against,
    /// in file order.
    fn candidates<'t>(&'t self, path: &str) -> impl Iterator<Item = usize> + 't {
        let indexed: &[usize] = self.by_method.get(path).map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (indexed.iter().peekable(), self.others.iter().peekable());
        std::iter::from_fn(move || {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => None,
            };
            next.copied()
        })
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table is empty (every call is UNIMPLEMENTED).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Compiled {
    fn matches(&self, call: &Call<'_>) -> bool {
        if let Some(m) = &self.method {
            if **m != *call.path() {
                return false;
            }
        }
        if let Some(s) = &self.service {
            if **s != *call.service() {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !call.path().starts_with(&**p) {
                return false;
            }
        }
        if let Some(a) = &self.authority {
            let matches = call
                .authority()
                .is_some_and(|got| without_default_port(got).eq_ignore_ascii_case(a));
            if !matches {
                return false;
            }
        }
        if let Some(c) = &self.client {
            if !client_matches(c, call) {
                return false;
            }
        }
        self.headers.iter().all(|h| {
            let mut values = call.values(h.name.as_str());
            match &h.rule {
                HeaderRule::Present(want) => values.next().is_some() == *want,
                // White space at either end is not part of a value (RFC
                // 9110 5.5): "admin " is "admin", to a route as upstream.
                HeaderRule::OneOf(allowed) => values.any(|v| {
                    let v = v.trim_ascii();
                    allowed.iter().any(|a| a.as_bytes() == v)
                }),
            }
        })
    }
}

fn client_matches(rule: &ClientMatch, call: &Call<'_>) -> bool {
    let Some(id) = call.identity() else {
        return rule.present == Some(false);
    };
    if rule.present == Some(false) {
        return false;
    }
    let any = |allowed: &[String], have: &[String]| {
        allowed.is_empty() || have.iter().any(|h| allowed.contains(h))
    };
    (rule.common_name.is_empty()
        || id
            .common_name
            .as_ref()
            .is_some_and(|cn| rule.common_name.contains(cn)))
        && any(&rule.dns, &id.dns_names)
        && any(&rule.uri, &id.uris)
        && (rule.sha256.is_empty() || rule.sha256.contains(&id.sha256))
}

/// A worker's director of a [`RouteTable`]: the table, shared, and this
/// worker's caches of verified tokens, one per route.
pub struct RouteDirector {
    table: RouteTable,
    tokens: Box<[TokenCache]>,
}

impl RouteDirector {
    /// How many verified tokens this worker keeps for route `i`.
    pub fn cached_tokens(&self, i: usize) -> usize {
        self.tokens.get(i).map_or(0, TokenCache::len)
    }
}

impl Director for RouteDirector {
    fn route(&self, call: &Call<'_>) -> Route {
        self.route_indexed(call).0
    }

    /// The first route, in file order, that matches the call decides. A
    /// route whose other conditions match but whose `jwt` does not hold
    /// passes the call on; if no later route takes it, its status (the
    /// first such) is the answer.
    fn route_indexed(&self, call: &Call<'_>) -> (Route, Option<usize>) {
        let mut refused = None;
        for i in self.table.candidates(call.path()) {
            let r = &self.table.routes[i];
            if !r.matches(call) {
                continue;
            }
            let claims = match &r.jwt {
                None => None,
                Some(jwt) => match jwt.check_call(&self.tokens[i], call) {
                    Ok(claims) => Some(claims),
                    Err(status) => {
                        refused.get_or_insert((status, i));
                        continue;
                    }
                },
            };
            let route = match (&r.route, r.edits.for_call(call, claims.as_deref())) {
                (
                    Route::Forward {
                        cluster, timeout, ..
                    },
                    Some(edits),
                ) => Route::Forward {
                    cluster: *cluster,
                    timeout: *timeout,
                    edits: Some(edits),
                },
                (route, _) => route.clone(),
            };
            return (route, Some(i));
        }
        match refused {
            Some((status, i)) => (Route::Reject(status), Some(i)),
            None => (
                Route::Reject(Status::new(
                    Code::Unimplemented,
                    format!("no route for {}", call.path()),
                )),
                None,
            ),
        }
    }
}

impl RouteTable {
    /// Each route's name (`routes[i]` for one without), in file order.
    pub fn names(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.name.to_string()).collect()
    }
}

impl DirectorRecipe for RouteTable {
    type Director = RouteDirector;
    fn build(&self, _core: CoreId) -> RouteDirector {
        RouteDirector {
            table: self.clone(),
            tokens: self.routes.iter().map(|_| TokenCache::default()).collect(),
        }
    }

    fn is_route_table(&self) -> bool {
        true
    }

    fn route_names(&self) -> Vec<String> {
        self.names()
    }
}

/// An authority without an explicit default port (`:80`, `:443`): host
/// names compare without them, and without case (RFC 3986 6.2.3).
fn without_default_port(authority: &str) -> &str {
    authority
        .strip_suffix(":443")
        .or_else(|| authority.strip_suffix(":80"))
        .unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::{HeaderMap, HeaderValue};
    use std::net::SocketAddr;

    fn table(text: &str) -> RouteDirector {
        let cfg = Config::parse(text, "t").expect("valid config");
        let ids = cfg
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), ClusterId(i as u32)))
            .collect();
        RouteTable::new(&cfg.routes, &ids)
            .expect("compiles")
            .build(CoreId {
                worker: 0,
                cpu: None,
            })
    }

    fn route(
        t: &RouteDirector,
        path: &str,
        authority: Option<&str>,
        headers: &[(&'static str, &'static str)],
    ) -> Route {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, HeaderValue::from_static(v));
        }
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        t.route(&Call::new(path, authority, &map, peer))
    }

    const CLUSTERS: &str = r#"
        [[clusters]]
        name = "a"
        endpoints = ["127.0.0.1:1"]
        [[clusters]]
        name = "b"
        endpoints = ["127.0.0.1:2"]
    "#;

    #[test]
    fn first_match_wins_and_unmatched_is_unimplemented() {
        let t = table(&format!(
            r#"{CLUSTERS}
            [[routes]]
            method = "/pkg.Svc/Special"
            cluster = "b"
            [[routes]]
            service = "pkg.Svc"
            cluster = "a"
            [[routes]]
            path_prefix = "/other."
            authority = "api.example.com"
            cluster = "b"
            "#
        ));
        let (a, b) = (Route::to(ClusterId(0)), Route::to(ClusterId(1)));
        assert_eq!(route(&t, "/pkg.Svc/Special", None, &[]), b);
        assert_eq!(route(&t, "/pkg.Svc/Plain", None, &[]), a);
        assert_eq!(route(&t, "/other.X/Y", Some("api.example.com"), &[]), b);
        // Host names compare without case and without a default port.
        assert_eq!(route(&t, "/other.X/Y", Some("API.Example.com"), &[]), b);
        assert_eq!(route(&t, "/other.X/Y", Some("api.example.com:443"), &[]), b);
        assert_eq!(route(&t, "/other.X/Y", Some("api.example.com:80"), &[]), b);
        assert!(matches!(
            route(&t, "/other.X/Y", Some("api.example.com:8443"), &[]),
            Route::Reject(_)
        ));
        match route(&t, "/other.X/Y", Some("elsewhere"), &[]) {
            Route::Reject(s) => {
                assert_eq!(s.code(), Code::Unimplemented);
                assert!(s.message().contains("/other.X/Y"));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn metadata_rules() {
        let t = table(&format!(
            r#"{CLUSTERS}
            [[routes]]
            headers = [{{ name = "authorization", values = ["Bearer good", "Bearer also"] }}]
            cluster = "a"
            [[routes]]
            headers = [{{ name = "x-tenant", value = "blue" }}, {{ name = "x-debug", present = false }}]
            cluster = "b"
            [[routes]]
            reject = {{ code = "PERMISSION_DENIED", message = "bad token" }}
            "#
        ));
        assert_eq!(
            route(&t, "/p.S/M", None, &[("authorization", "Bearer also")]),
            Route::to(ClusterId(0))
        );
        assert_eq!(
            route(&t, "/p.S/M", None, &[("x-tenant", "blue")]),
            Route::to(ClusterId(1))
        );
        assert_eq!(
            route(
                &t,
                "/p.S/M",
                None,
                &[("x-tenant", "blue"), ("x-debug", "1")]
            ),
            Route::Reject(Status::new(Code::PermissionDenied, "bad token"))
        );
        assert_eq!(
            route(&t, "/p.S/M", None, &[("authorization", "Bearer bad")]),
            Route::Reject(Status::new(Code::PermissionDenied, "bad token"))
        );
        // White space at either end is not part of the value: "blue " is
        // "blue", as an upstream takes it.
        assert_eq!(
            route(&t, "/p.S/M", None, &[("x-tenant", " blue\t")]),
            Route::to(ClusterId(1))
        );
    }

    #[test]
    fn the_method_index_keeps_file_order() {
        let t = table(&format!(
            r#"{CLUSTERS}
            [[routes]]
            path_prefix = "/p.S/"
            headers = [{{ name = "x-first", present = true }}]
            cluster = "b"
            [[routes]]
            method = "/p.S/M"
            cluster = "a"
            [[routes]]
            path_prefix = "/p."
            cluster = "b"
            [[routes]]
            method = "/p.S/Other"
            cluster = "a"
            "#
        ));
        // An unindexed route before the method route still wins.
        assert_eq!(
            route(&t, "/p.S/M", None, &[("x-first", "1")]),
            Route::to(ClusterId(1))
        );
        assert_eq!(route(&t, "/p.S/M", None, &[]), Route::to(ClusterId(0)));
        // An unindexed route before a later method route wins over it.
        assert_eq!(route(&t, "/p.S/Other", None, &[]), Route::to(ClusterId(1)));
        assert_eq!(
            route(&t, "/q.S/M", None, &[]),
            Route::Reject(Status::new(Code::Unimplemented, "no route for /q.S/M"))
        );
    }

    #[test]
    fn route_timeouts_are_kept() {
        let t = table(&format!(
            "{CLUSTERS}\n[[routes]]\ncluster = \"a\"\ntimeout = \"2s\""
        ));
        assert_eq!(
            route(&t, "/p.S/M", None, &[]),
            Route::Forward {
                cluster: ClusterId(0),
                timeout: Some(std::time::Duration::from_secs(2)),
                edits: None,
            }
        );
    }
}
