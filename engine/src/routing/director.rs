//! The director: where a call goes.
//!
//! For every call the proxy asks its director for a [`Route`]: a cluster to
//! forward to, or a status to answer with. It sees a [`Call`]: the full
//! method path, the authority, all request metadata and the peer address,
//! and the verified TLS client identity, as `StreamDirector` does in the
//! original Go proxy.
//!
//! Thread-per-core: a director is built once per worker core from a
//! [`DirectorRecipe`], which is `Send + Clone`; the director itself never
//! leaves its core, so it may hold `Rc`, `Cell` and `RefCell` state and needs
//! no locks. Any `Fn(&Call) -> Route` closure is a director, and any
//! `Fn(CoreId) -> D + Send + Clone` closure is a recipe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::cell::OnceCell;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::grpc::status::Status;
use crate::http2::headers::HeaderList;
use crate::routing::edits::Edits;
use crate::transport::tls::PeerIdentity;

/// A verified bearer token's claims.
pub type Claims = Arc<serde_json::Value>;

/// Names a cluster of upstream endpoints; handed out by
/// [`ProxyBuilder::cluster`](crate::ProxyBuilder::cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub(crate) u32);

impl ClusterId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The worker a director is built for: its index among the workers and the
/// CPU it is pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreId {
    /// Index of the worker, 0-based.
    pub worker: usize,
    /// The CPU the worker is pinned to, when pinning succeeded.
    pub cpu: Option<usize>,
}

/// A call's metadata: an http `HeaderMap` (a call made by hand, as tests
/// and benches do), or the decoded header list of a request, turned into
/// a `HeaderMap` only if a director asks for the whole map.
#[derive(Debug)]
enum Metadata<'a> {
    Map(&'a HeaderMap),
    List(&'a HeaderList, OnceCell<HeaderMap>),
}

/// The values of one metadata key (see [`Call::values`]).
pub(crate) enum Values<'a, 'b> {
    Map(http::header::ValueIter<'a, HeaderValue>),
    List(&'a HeaderList, usize, &'b [u8]),
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(values) => values.next().map(HeaderValue::as_bytes),
            Values::List(list, at, name) => loop {
                let (n, value, _) = list.field(*at)?;
                *at += 1;
                if n.eq_ignore_ascii_case(name) {
                    return Some(value);
                }
            },
        }
    }
}

/// What the director sees of a call.
#[derive(Debug)]
pub struct Call<'a> {
    pub(crate) path: &'a str,
    pub(crate) authority: Option<&'a str>,
    headers: Metadata<'a>,
    pub(crate) peer: SocketAddr,
    pub(crate) identity: Option<&'a PeerIdentity>,
    bearer: Option<&'a Result<Claims, Status>>,
}

impl<'a> Call<'a> {
    /// Makes a call context; the proxy does this for every request, and
    /// tests and benches of directors can too.
    pub fn new(
        path: &'a str,
        authority: Option<&'a str>,
        headers: &'a HeaderMap,
        peer: SocketAddr,
    ) -> Call<'a> {
        Call {
            path,
            authority,
            headers: Metadata::Map(headers),
            peer,
            identity: None,
            bearer: None,
        }
    }

    /// A call of the own frame path, whose metadata is a decoded header
    /// list: reading one key costs a scan and no allocation.
    pub(crate) fn from_list(
        path: &'a str,
        authority: Option<&'a str>,
        list: &'a HeaderList,
        peer: SocketAddr,
    ) -> Call<'a> {
        Call {
            path,
            authority,
            headers: Metadata::List(list, OnceCell::new()),
            peer,
            identity: None,
            bearer: None,
        }
    }

    /// The same call from a client that presented this verified
    /// certificate.
    pub fn with_identity(mut self, identity: Option<&'a PeerIdentity>) -> Call<'a> {
        self.identity = identity;
        self
    }

    /// The full method path, e.g. `/helloworld.Greeter/SayHello`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The service part of the path, e.g. `helloworld.Greeter`; empty when
    /// the path is not of the form `/service/method`.
    pub fn service(&self) -> &'a str {
        self.split().0
    }

    /// The method part of the path, e.g. `SayHello`.
    pub fn method(&self) -> &'a str {
        self.split().1
    }

    fn split(&self) -> (&'a str, &'a str) {
        self.path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or(("", ""))
    }

    /// The `:authority` the client sent, if any.
    pub fn authority(&self) -> Option<&'a str> {
        self.authority
    }

    /// All request metadata (hop-by-hop headers already removed).
    pub fn headers(&self) -> &HeaderMap {
        match &self.headers {
            Metadata::Map(map) => map,
            // `http` holds at most 32,768 entries and panics past them; a
            // client may send more under a raised `max_header_list_size`
            // (an indexed field costs a byte). The map then holds those
            // that fit.
            Metadata::List(list, map) => map.get_or_init(|| {
                let count = list.fields().count();
                let mut map = HeaderMap::try_with_capacity(count).unwrap_or_default();
                for (name, value, sensitive) in list.fields() {
                    let name = HeaderName::from_bytes(name);
                    let value = HeaderValue::from_bytes(value);
                    if let (Ok(name), Ok(mut value)) = (name, value) {
                        value.set_sensitive(sensitive);
                        if map.try_append(name, value).is_err() {
                            break;
                        }
                    }
                }
                map
            }),
        }
    }

    /// The first value of one metadata key, if it is valid text (visible
    /// ASCII, spaces and tabs, as `HeaderValue::to_str` has it).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        match &self.headers {
            Metadata::Map(map) => map.get(name).and_then(|v| v.to_str().ok()),
            Metadata::List(list, _) => {
                let value = list
                    .fields()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(name.as_bytes()))?
                    .1;
                if is_text(value) {
                    std::str::from_utf8(value).ok()
                } else {
                    None
                }
            }
        }
    }

    /// The values of metadata key `name` (lower case), as sent: read off
    /// the decoded list where there is one, without building the map
    /// [`headers`](Self::headers) gives (a call may carry thousands of
    /// fields in a few bytes of HPACK).
    pub(crate) fn values<'b>(&'b self, name: &'b str) -> Values<'a, 'b> {
        match &self.headers {
            Metadata::Map(map) => Values::Map(map.get_all(name).iter()),
            Metadata::List(list, _) => Values::List(list, 0, name.as_bytes()),
        }
    }

    /// Whether the call carries `name` more than once.
    pub(crate) fn repeats(&self, name: &str) -> bool {
        match &self.headers {
            Metadata::Map(map) => map.get_all(name).iter().nth(1).is_some(),
            Metadata::List(list, _) => list
                .fields()
                .filter(|(n, _, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .nth(1)
                .is_some(),
        }
    }

    /// The downstream peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The identity in the client's TLS certificate, when the listener
    /// asks for client certificates and this client presented one that
    /// verified against the client CA; `None` otherwise.
    pub fn identity(&self) -> Option<&'a PeerIdentity> {
        self.identity
    }

    /// The claims of the call's bearer token, verified, when the director
    /// is wrapped in [`WithBearer`](crate::routing::bearer::WithBearer)
    /// and the token is good.
    pub fn claims(&self) -> Option<&'a serde_json::Value> {
        match self.bearer {
            Some(Ok(claims)) => Some(claims),
            _ => None,
        }
    }

    /// Why the call's bearer token was refused (UNAUTHENTICATED: missing
    /// or bad; PERMISSION_DENIED: its claims are not as required), when
    /// the director is wrapped in
    /// [`WithBearer`](crate::routing::bearer::WithBearer).
    pub fn token_refused(&self) -> Option<&'a Status> {
        match self.bearer {
            Some(Err(status)) => Some(status),
            _ => None,
        }
    }

    /// The same call, with the verdict on its bearer token.
    pub(crate) fn with_bearer<'b>(&'b self, verdict: &'b Result<Claims, Status>) -> Call<'b> {
        Call {
            path: self.path,
            authority: self.authority,
            headers: match &self.headers {
                Metadata::Map(map) => Metadata::Map(map),
                Metadata::List(list, _) => Metadata::List(list, OnceCell::new()),
            },
            peer: self.peer,
            identity: self.identity,
            bearer: Some(verdict),
        }
    }
}

/// Whether a value is text: visible ASCII, spaces and tabs. Without a
/// short cut, so that it runs a word at a time over a bearer token.
fn is_text(value: &[u8]) -> bool {
    value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
    })
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Forward the call to an endpoint of this cluster.
    Forward {
        /// The cluster.
        cluster: ClusterId,
        /// A deadline the proxy enforces, on top of the client's
        /// `grpc-timeout` (the shorter wins).
        timeout: Option<Duration>,
        /// What changes in the request and response heads.
        edits: Option<Arc<Edits>>,
    },
    /// Answer the call with this status, without contacting any upstream.
    Reject(Status),
}

impl Route {
    /// Forward to this cluster with no proxy deadline of its own.
    pub fn to(cluster: ClusterId) -> Route {
        Route::Forward {
            cluster,
            timeout: None,
            edits: None,
        }
    }

    /// The same route, with these edits of the heads it forwards (a
    /// rejection forwards nothing and stays as it is).
    pub fn with_edits(self, with: Edits) -> Route {
        match self {
            Route::Forward {
                cluster, timeout, ..
            } => Route::Forward {
                cluster,
                timeout,
                edits: (with != Edits::default()).then(|| Arc::new(with)),
            },
            reject => reject,
        }
    }
}

/// Decides where each call goes. One instance lives on each worker core.
pub trait Director: 'static {
    /// Routes one call. Runs on the per-call path: keep it cheap.
    fn route(&self, call: &Call<'_>) -> Route;

    /// Routes one call and says which of its named routes decided, for
    /// metrics and the access log; `None` for a director without named
    /// routes, or when no route matched.
    #[doc(hidden)]
    fn route_indexed(&self, call: &Call<'_>) -> (Route, Option<usize>) {
        (self.route(call), None)
    }
}

impl<F> Director for F
where
    F: Fn(&Call<'_>) -> Route + 'static,
{
    fn route(&self, call: &Call<'_>) -> Route {
        self(call)
    }
}

/// Builds one [`Director`] per worker core. The recipe crosses threads; the
/// directors it builds do not.
pub trait DirectorRecipe: Send + Clone + 'static {
    /// The director this recipe builds.
    type Director: Director;
    /// Builds the director for one worker.
    fn build(&self, core: CoreId) -> Self::Director;

    /// Whether this is the config file's route table, which a reload
    /// replaces; any other director stays as it is across reloads.
    #[doc(hidden)]
    fn is_route_table(&self) -> bool {
        false
    }

    /// The names of the routes whose index
    /// [`Director::route_indexed`] returns, for metrics.
    #[doc(hidden)]
    fn route_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl<F, D> DirectorRecipe for F
where
    F: Fn(CoreId) -> D + Send + Clone + 'static,
    D: Director,
{
    type Director = D;
    fn build(&self, core: CoreId) -> D {
        self(core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_service_and_method() {
        let headers = HeaderMap::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let call = Call::new("/pkg.Svc/Do", None, &headers, peer);
        assert_eq!((call.service(), call.method()), ("pkg.Svc", "Do"));
        let odd = Call::new("nopath", None, &headers, peer);
        assert_eq!((odd.service(), odd.method()), ("", ""));
    }

    #[test]
    fn more_fields_than_a_header_map_holds_do_not_panic() {
        // Past `http`'s most entries (a client can send that many under a
        // raised `max_header_list_size`: an indexed field costs a byte).
        use crate::http2::headers::{HeaderList, Kind};
        let mut list = HeaderList::new(Kind::Request);
        for _ in 0..40_000 {
            list.push(b"a", b"", false);
        }
        let peer = "127.0.0.1:1".parse().expect("addr");
        let call = Call::from_list("/pkg.Svc/Do", None, &list, peer);
        let map = call.headers();
        assert!(map.len() > 10_000, "as many as fit: {}", map.len());
    }

    #[test]
    fn a_header_list_reads_like_a_header_map() {
        use crate::http2::headers::{HeaderList, Kind};
        let mut list = HeaderList::new(Kind::Request);
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/pkg.Svc/Do"),
            ("authorization", "Bearer t"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("x-bin", "\u{1}"),
        ] {
            list.push(n.as_bytes(), v.as_bytes(), false);
        }
        let peer = "127.0.0.1:1".parse().expect("addr");
        let call = Call::from_list("/pkg.Svc/Do", Some("x"), &list, peer);
        assert_eq!(call.header("Authorization"), Some("Bearer t"));
        assert_eq!(call.header("x-multi"), Some("a"));
        assert_eq!(
            call.header("x-bin"),
            None,
            "not text, as HeaderValue::to_str"
        );
        assert_eq!(call.header("missing"), None);
        let multi: Vec<&[u8]> = call.values("x-multi").collect();
        assert_eq!(multi, [b"a", b"b"]);
        assert_eq!(call.values("missing").count(), 0);
        assert!(
            matches!(&call.headers, Metadata::List(_, map) if map.get().is_none()),
            "values are read off the list: no map is built"
        );
        let map = call.headers();
        assert_eq!(map.get_all("x-multi").iter().count(), 2);
        assert!(map.get(":path").is_none(), "no pseudo-headers");
        // x-bin's control character is valid HTTP/2 but not a valid
        // http::HeaderValue: the map leaves it out.
        assert_eq!(map.len(), 3);
    }
}
