//! Verified bearer tokens for a director written in Rust: [`WithBearer`]
//! checks each call's token before the director sees the call, which then
//! reads the verified claims with [`Call::claims`], or why the token was
//! refused with [`Call::token_refused`], and decides.
//!
//! ```no_run
//! use grpc_proxy::config::jwt::JwtConfig;
//! use grpc_proxy::routing::bearer::WithBearer;
//! use grpc_proxy::routing::jwt::JwtRule;
//! use grpc_proxy::{Call, CoreId, ProxyBuilder, Route};
//!
//! let mut builder = ProxyBuilder::new("127.0.0.1:50051".parse().unwrap());
//! let users = builder.cluster("users", ["127.0.0.1:50052".parse().unwrap()]);
//! let rule = JwtRule::load(&JwtConfig {
//!     issuer: "https://auth.example.com".into(),
//!     audiences: vec!["users-api".into()],
//!     jwks: "/etc/grpc-proxy/jwks.json".into(),
//!     claims: vec![],
//!     leeway: std::time::Duration::from_secs(30),
//! })
//! .expect("keys");
//! let recipe = move |_core: CoreId| {
//!     move |call: &Call<'_>| match (call.claims(), call.token_refused()) {
//!         (Some(_claims), _) => Route::to(users),
//!         (_, Some(refused)) => Route::Reject(refused.clone()),
//!         _ => unreachable!("WithBearer gives every call a verdict"),
//!     }
//! };
//! let proxy = builder.start(WithBearer::new(rule, recipe)).expect("starts");
//! proxy.wait();
//! ```
//!
//! The keys are those read by [`JwtRule::load`]; a director written in
//! Rust is kept across reloads, so a key rotation needs a new rule (and a
//! restart). Each worker keeps its own [`TokenCache`].

use crate::routing::director::{Call, CoreId, Director, DirectorRecipe, Route};
use crate::routing::jwt::{JwtRule, TokenCache};

/// A director recipe whose directors see each call's verified bearer
/// token.
#[derive(Clone, Debug)]
pub struct WithBearer<R> {
    rule: JwtRule,
    inner: R,
}

impl<R: DirectorRecipe> WithBearer<R> {
    /// Checks tokens with `rule`, then asks `inner`'s directors.
    pub fn new(rule: JwtRule, inner: R) -> WithBearer<R> {
        WithBearer { rule, inner }
    }
}

/// One worker's director of a [`WithBearer`].
pub struct BearerDirector<D> {
    rule: JwtRule,
    tokens: TokenCache,
    inner: D,
}

impl<R: DirectorRecipe> DirectorRecipe for WithBearer<R> {
    type Director = BearerDirector<R::Director>;

    fn build(&self, core: CoreId) -> BearerDirector<R::Director> {
        BearerDirector {
            rule: self.rule.clone(),
            tokens: TokenCache::default(),
            inner: self.inner.build(core),
        }
    }
}

impl<D: Director> Director for BearerDirector<D> {
    fn route(&self, call: &Call<'_>) -> Route {
        let verdict = self.rule.check_call(&self.tokens, call);
        self.inner.route(&call.with_bearer(&verdict))
    }
}
