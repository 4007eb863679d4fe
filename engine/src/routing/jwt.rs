//! Bearer tokens (JWT, RFC 7519) verified on the worker.
//!
//! A route's `jwt` condition holds when the call's `authorization` is
//! `Bearer <token>` and the token:
//! - is signed (RS256/384/512, PS256/384/512, ES256/384 or EdDSA; never
//!   `none`, never HMAC) by a key of the route's JWKS file: the key its
//!   `kid` names, or any key of the algorithm's family when it names none;
//! - has a numeric `exp` (and any `nbf`) within the leeway of now;
//! - has the route's `iss` (a string), and an `aud` naming one of its
//!   audiences when it lists some;
//! - has claims that meet every condition of the route.
//!
//! A missing, repeated, malformed, unsigned, expired or misdirected token
//! is UNAUTHENTICATED; a good token whose claims do not meet the conditions
//! is PERMISSION_DENIED. The route table tries the next route either way
//! and answers with that status if no later route takes the call.
//!
//! Verification is what costs (a signature check), so each worker keeps
//! the tokens it has verified, with their claims, until they expire: a
//! client that sends the same token again pays a hash lookup. Tokens the
//! issuer signed that are refused for good (expired, for another
//! audience) are kept too, so a client that repeats an expired token pays
//! once; bad signatures are not. The cache holds at most
//! [`CACHE_ENTRIES`] tokens, and [`CACHE_BYTES`] of token text, per route
//! and worker; past that, the oldest goes. The JOSE work is the `jsonwebtoken` crate's, on ring.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::jwt::{ClaimMatch, ClaimRule, JwtConfig};
use crate::grpc::status::{Code, Status};
use crate::routing::director::Call;
use crate::telemetry::metrics::{add, TOKENS};

/// The longest bearer token read; a longer one is refused unread.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Verified tokens kept per route and worker.
pub const CACHE_ENTRIES: usize = 4096;

/// The bytes of token text kept per route and worker (their claims take
/// about as much again).
pub const CACHE_BYTES: usize = 4 << 20;

/// The kinds of key a token may be signed with: asymmetric only, and
/// the algorithms of each (never `none`, never HMAC).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

impl Family {
    const ALL: [Family; 3] = [Family::Rsa, Family::Ec, Family::Ed];

    fn of(alg: Algorithm) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.algorithms().contains(&alg))
    }

    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            Family::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            Family::Ec => &[ES256, ES384],
            Family::Ed => &[EdDSA],
        }
    }
}

pub use crate::routing::director::Claims;

/// One route's `jwt` condition, compiled: its keys read, its checks set.
/// Shared by the workers; each keeps its own [`TokenCache`].
#[derive(Clone)]
pub struct JwtRule {
    keys: Arc<Vec<Key>>,
    /// The checks, by key family (`jsonwebtoken` wants every algorithm a
    /// validation allows to be of the key's family).
    validation: Arc<[Validation; 3]>,
    leeway: u64,
    claims: Arc<[ClaimMatch]>,
}

/// The tokens one worker has verified for one route, with their claims:
/// at most [`CACHE_ENTRIES`].
pub struct TokenCache {
    cache: RefCell<Cache>,
    bound: usize,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::bounded(CACHE_ENTRIES)
    }
}

impl TokenCache {
    /// A cache of at most `bound` tokens.
    pub fn bounded(bound: usize) -> TokenCache {
        TokenCache {
            cache: RefCell::default(),
            bound: bound.max(1),
        }
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.cache.borrow().tokens.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for JwtRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRule")
            .field("keys", &self.keys.len())
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// Tokens by their text: until when the verdict holds (a good token's
/// `exp`), and the verdict.
#[derive(Default)]
struct Cache {
    tokens: HashMap<Box<str>, (u64, Result<Claims, Reason>)>,
    order: VecDeque<Box<str>>,
    /// The length of the tokens in `tokens`.
    bytes: usize,
    /// The last [`FORGED`] tokens refused before a signature was found
    /// good, by a keyed hash of their text, with why: anyone can make
    /// them, so they are kept apart from `tokens`, where they would push
    /// good tokens out; but a client that repeats one (an indexed header
    /// costs it a few bytes a call) pays one check, not one per call.
    forged: HashMap<u64, Reason>,
    forged_order: VecDeque<u64>,
    keyed: std::hash::RandomState,
}

/// How many refused unsigned (or badly signed) tokens a core remembers.
const FORGED: usize = 256;

impl JwtRule {
    /// Reads the JWKS file and sets the checks; the error is one line.
    pub fn load(config: &JwtConfig) -> Result<JwtRule, String> {
        let path = config.jwks.display();
        let text = std::fs::read_to_string(&config.jwks).map_err(|e| format!("{path}: {e}"))?;
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| format!("{path}: not a JWKS: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue; // an encryption key never verifies a signature
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => {
                    return Err(format!(
                        "{path}: keys[{i}] is a shared secret (oct); only public keys verify tokens"
                    ))
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{path}: keys[{i}]: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            });
        }
        if keys.is_empty() {
            return Err(format!("{path}: has no signing keys"));
        }
        let validation = Family::ALL.map(|family| {
            let mut v = Validation::new(family.algorithms()[0]);
            v.algorithms = family.algorithms().to_vec();
            v.leeway = config.leeway.as_secs();
            v.set_issuer(&[&config.issuer]);
            // jsonwebtoken lets a token without `aud` pass an audience
            // check unless `aud` is required.
            if config.audiences.is_empty() {
                v.set_required_spec_claims(&["exp", "iss"]);
            } else {
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
            }
            v.validate_nbf = true;
            if config.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audiences);
            }
            v
        });
        Ok(JwtRule {
            keys: Arc::new(keys),
            validation: Arc::new(validation),
            leeway: config.leeway.as_secs(),
            claims: config.claims.clone().into(),
        })
    }

    /// The claims of the call's bearer token, if it is good and they meet
    /// the conditions; else the status to answer with. A call with more
    /// than one `authorization` is refused: an upstream could read the
    /// other one.
    pub fn check_call(&self, cache: &TokenCache, call: &Call<'_>) -> Result<Claims, Status> {
        if call.repeats("authorization") {
            return Err(Reason::Repeated.refuse());
        }
        self.check(cache, call.header("authorization"))
    }

    /// The claims of the token in this `authorization` value, if it is
    /// good and they meet the conditions; else the status to answer with.
    pub fn check(&self, cache: &TokenCache, authorization: Option<&str>) -> Result<Claims, Status> {
        let claims = self
            .verified(cache, authorization)
            .map_err(Reason::refuse)?;
        if self.claims.iter().all(|c| claim_holds(&claims, c)) {
            Ok(claims)
        } else {
            Err(Reason::Claims.refuse())
        }
    }

    fn verified(&self, cache: &TokenCache, authorization: Option<&str>) -> Result<Claims, Reason> {
        let bound = cache.bound;
        let cache = &cache.cache;
        let header = authorization.ok_or(Reason::Missing)?;
        let token = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| header[7..].trim())
            .ok_or(Reason::Missing)?;
        if token.len() > MAX_TOKEN {
            return Err(Reason::TooLarge);
        }
        let now = now();
        {
            let mut cache = cache.borrow_mut();
            if let Some((until, verdict)) = cache.tokens.get(token) {
                if now <= until.saturating_add(self.leeway) {
                    TOKENS.with(|t| add(&t.cache_hits, 1));
                    return verdict.clone();
                }
                cache.forget(token);
            }
        }
        let forged = {
            use std::hash::BuildHasher;
            let cache = cache.borrow();
            let hash = cache.keyed.hash_one(token);
            if let Some(&reason) = cache.forged.get(&hash) {
                TOKENS.with(|t| add(&t.cache_hits, 1));
                return Err(reason);
            }
            hash
        };
        TOKENS.with(|t| add(&t.checks, 1));
        let (verdict, keep) = match self.verify(token) {
            Ok(claims) => {
                // exp is a number (see `strict`), perhaps with a fraction.
                let expires = claims.get("exp").and_then(Value::as_f64).map(|e| e as u64);
                (Ok(claims), expires)
            }
            // A token its issuer signed stays refused (expired, for
            // another audience, ...) for as long as the keys stay: kept,
            // so that a client that repeats it pays one check. Bad
            // signatures are not kept (anyone can make them, and they
            // would push good tokens out), nor tokens not valid yet.
            Err(Refused { reason, signed }) => {
                if !signed {
                    cache.borrow_mut().forged(forged, reason);
                }
                let keep = signed && reason != Reason::NotYetValid;
                (Err(reason), keep.then_some(u64::MAX))
            }
        };
        let Some(until) = keep else {
            return verdict;
        };
        let mut cache = cache.borrow_mut();
        while !cache.tokens.is_empty()
            && (cache.tokens.len() >= bound || cache.bytes + token.len() > CACHE_BYTES)
        {
            cache.evict();
        }
        if cache.order.len() >= 2 * bound {
            // Tokens dropped as expired leave their place in the order.
            let Cache { tokens, order, .. } = &mut *cache;
            order.retain(|k| tokens.contains_key(k));
        }
        let key: Box<str> = token.into();
        cache.order.push_back(key.clone());
        cache.bytes += key.len();
        cache.tokens.insert(key, (until, verdict.clone()));
        verdict
    }

    fn verify(&self, token: &str) -> Result<Claims, Refused> {
        use jsonwebtoken::errors::ErrorKind;
        let unsigned = |reason| Refused {
            reason,
            signed: false,
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| unsigned(Reason::Malformed))?;
        let family = Family::of(header.alg).ok_or_else(|| unsigned(Reason::Algorithm))?;
        let validation =
            &self.validation[Family::ALL.iter().position(|f| *f == family).unwrap_or(0)];
        let candidates = self.keys.iter().filter(|k| {
            k.family == family
                && header
                    .kid
                    .as_ref()
                    .is_none_or(|kid| k.kid.as_ref() == Some(kid))
        });
        let mut last = unsigned(Reason::NoKey);
        for key in candidates {
            let e = match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => return strict(data.claims).map(Arc::new),
                Err(e) => e,
            };
            // The signature is checked first: any other error is from a
            // token this key signed.
            let reason = match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    last = unsigned(Reason::BadSignature);
                    continue;
                }
                ErrorKind::ExpiredSignature => Reason::Expired,
                ErrorKind::ImmatureSignature => Reason::NotYetValid,
                ErrorKind::InvalidIssuer => Reason::Issuer,
                ErrorKind::InvalidAudience => Reason::Audience,
                ErrorKind::MissingRequiredClaim(_) => Reason::LacksClaims,
                _ => Reason::Malformed,
            };
            return Err(Refused {
                reason,
                signed: true,
            });
        }
        Err(last)
    }
}

/// Why a token was refused, and whether a key of the issuer signed it.
struct Refused {
    reason: Reason,
    signed: bool,
}

/// Why a call's bearer token was refused: its status, and its label in
/// `grpc_proxy_jwt_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Missing,
    Repeated,
    TooLarge,
    Malformed,
    Algorithm,
    NoKey,
    BadSignature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    LacksClaims,
    Claims,
}

impl Reason {
    /// The metric's label.
    fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Repeated => "repeated",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::NoKey => "no_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::LacksClaims => "lacks_claims",
            Reason::Claims => "claims",
        }
    }

    /// The status's message.
    fn message(self) -> &'static str {
        match self {
            Reason::Missing => "missing bearer token",
            Reason::Repeated => "more than one authorization header",
            Reason::TooLarge => "bearer token too large",
            Reason::Malformed => "malformed token",
            Reason::Algorithm => "token algorithm not allowed",
            Reason::NoKey => "no key for the token",
            Reason::BadSignature => "bad token signature",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid",
            Reason::Issuer => "token from another issuer",
            Reason::Audience => "token for another audience",
            Reason::LacksClaims => "token lacks exp, iss or aud",
            Reason::Claims => "the token's claims do not allow this call",
        }
    }

    /// Counts the refusal and gives its status: PERMISSION_DENIED for a
    /// good token whose claims do not allow the call, UNAUTHENTICATED
    /// otherwise.
    fn refuse(self) -> Status {
        TOKENS.with(|t| t.refused(self.label()));
        let code = match self {
            Reason::Claims => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        };
        Status::new(code, self.message())
    }
}

/// What jsonwebtoken lets pass and a proxy should not: an `iss` that is a
/// list (it checks only that the lists overlap), an `nbf` or `exp` that is
/// not a number (it skips the check).
fn strict(claims: Value) -> Result<Value, Refused> {
    let number = |name| claims.get(name).is_none_or(Value::is_number);
    if claims.get("iss").is_some_and(Value::is_string) && number("nbf") && number("exp") {
        Ok(claims)
    } else {
        Err(Refused {
            reason: Reason::Malformed,
            signed: true,
        })
    }
}

impl Cache {
    /// Drops the oldest token (and any the order still names that were
    /// dropped as expired).
    fn evict(&mut self) {
        while let Some(oldest) = self.order.pop_front() {
            if self.forget(&oldest) {
                return;
            }
        }
    }

    /// Remembers a refused token that was not signed (see `forged`).
    fn forged(&mut self, hash: u64, reason: Reason) {
        if self.forged.insert(hash, reason).is_some() {
            return;
        }
        self.forged_order.push_back(hash);
        if self.forged_order.len() > FORGED {
            if let Some(oldest) = self.forged_order.pop_front() {
                self.forged.remove(&oldest);
            }
        }
    }

    /// Drops a token; whether it was there.
    fn forget(&mut self, token: &str) -> bool {
        let found = self.tokens.remove(token).is_some();
        if found {
            self.bytes -= token.len();
        }
        found
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A claim by its dotted name.
pub fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A claim as header text: a string as it is, a number or boolean
/// written out, a list of those joined by commas.
pub fn claim_text(claims: &Value, name: &str) -> Option<String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match claim(claims, name)? {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        v => scalar(v),
    }
}

fn claim_holds(claims: &Value, rule: &ClaimMatch) -> bool {
    let Some(value) = claim(claims, &rule.name) else {
        return false;
    };
    let is = |v: &Value, want: &str| match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    };
    match &rule.rule {
        ClaimRule::OneOf(wanted) => wanted.iter().any(|w| is(value, w)),
        ClaimRule::Contains(want) => match value {
            Value::Array(items) => items.iter().any(|v| is(v, want)),
            Value::String(s) => s.split(' ').any(|word| word == want),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_conditions() {
        let claims = json!({
            "sub": "alice",
            "scope": "users.read users.write",
            "roles": ["admin", "dev"],
            "realm": { "tier": 3, "beta": true },
        });
        let rule = |name: &str, rule: ClaimRule| ClaimMatch {
            name: name.into(),
            rule,
        };
        let one = |v: &str| ClaimRule::OneOf(vec![v.into()]);
        let has = |v: &str| ClaimRule::Contains(v.into());
        assert!(claim_holds(&claims, &rule("sub", one("alice"))));
        assert!(!claim_holds(&claims, &rule("sub", one("bob"))));
        assert!(claim_holds(&claims, &rule("scope", has("users.write"))));
        assert!(!claim_holds(&claims, &rule("scope", has("users"))));
        assert!(claim_holds(&claims, &rule("roles", has("dev"))));
        assert!(claim_holds(&claims, &rule("realm.tier", one("3"))));
        assert!(claim_holds(&claims, &rule("realm.beta", one("true"))));
        assert!(!claim_holds(&claims, &rule("missing", one("x"))));
        assert_eq!(claim_text(&claims, "roles").as_deref(), Some("admin,dev"));
        assert_eq!(claim_text(&claims, "realm.tier").as_deref(), Some("3"));
        assert_eq!(claim_text(&claims, "realm"), None);
    }

    /// A rule with one fresh P-256 key, and a way to sign with it.
    fn rule() -> (JwtRule, impl Fn(&Value) -> String, tempfile::TempDir) {
        use base64::Engine as _;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as P256};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&P256, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&P256, pkcs8.as_ref(), &rng).expect("pair");
        let point = pair.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&point[1..33]), "y": b64(&point[33..]) }] });
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write");
        let config = JwtConfig {
            issuer: "iss".into(),
            audiences: vec![],
            jwks: path,
            claims: vec![],
            leeway: std::time::Duration::from_secs(30),
        };
        let rule = JwtRule::load(&config).expect("loads");
        let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let sign = move |claims: &Value| {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.kid = Some("k".into());
            jsonwebtoken::encode(&header, claims, &key).expect("signs")
        };
        (rule, sign, dir)
    }

    #[test]
    fn a_flood_of_distinct_tokens_keeps_the_cache_bounded() {
        let (rule, sign, _dir) = rule();
        let cache = TokenCache::bounded(64);
        let exp = now() + 600;
        let first = format!(
            "Bearer {}",
            sign(&json!({ "iss": "iss", "exp": exp, "sub": "first" }))
        );
        assert!(rule.check(&cache, Some(&first)).is_ok());
        for i in 0..500 {
            let token = sign(&json!({ "iss": "iss", "exp": exp, "sub": i }));
            let claims = rule
                .check(&cache, Some(&format!("Bearer {token}")))
                .expect("valid");
            assert_eq!(claims["sub"], i);
            assert!(cache.len() <= 64, "{} tokens kept", cache.len());
            assert!(cache.cache.borrow().order.len() <= 128);
        }
        assert_eq!(cache.len(), 64);
        // The first went long ago; it verifies again and comes back.
        assert!(rule.check(&cache, Some(&first)).is_ok());
        // Bad tokens are not kept.
        let before = cache.len();
        let expired = sign(&json!({ "iss": "iss", "exp": now() - 600 }));
        assert!(rule
            .check(&cache, Some(&format!("Bearer {expired}")))
            .is_err());
        assert_eq!(cache.len(), before);
    }

    #[test]
    fn a_forged_token_is_checked_once_and_pushes_no_good_token_out() {
        let (rule, sign, _dir) = rule();
        let (_other, forge, _other_dir) = super::tests::rule();
        let cache = TokenCache::bounded(64);
        let exp = now() + 600;
        let good = format!("Bearer {}", sign(&json!({ "iss": "iss", "exp": exp })));
        let checks = || TOKENS.with(|t| t.checks.get());
        assert!(rule.check(&cache, Some(&good)).is_ok());
        let forged = format!("Bearer {}", forge(&json!({ "iss": "iss", "exp": exp })));
        let before = checks();
        for _ in 0..10 {
            assert!(rule.check(&cache, Some(&forged)).is_err());
        }
        assert_eq!(checks() - before, 1, "one signature check for ten calls");
        for i in 0..(2 * FORGED) {
            let other = format!(
                "Bearer {}",
                forge(&json!({ "iss": "iss", "exp": exp, "n": i }))
            );
            assert!(rule.check(&cache, Some(&other)).is_err());
        }
        assert!(cache.cache.borrow().forged.len() <= FORGED);
        let before = checks();
        assert!(rule.check(&cache, Some(&good)).is_ok());
        assert_eq!(checks(), before, "the good token is still kept");
    }

    #[test]
    fn the_cache_drops_the_oldest() {
        let mut cache = Cache::default();
        for i in 0..3 {
            let key: Box<str> = format!("t{i}").into();
            cache.order.push_back(key.clone());
            cache.bytes += key.len();
            cache.tokens.insert(key, (0, Ok(Arc::new(Value::Null))));
        }
        cache.forget("t0"); // expired meanwhile
        cache.evict();
        assert!(!cache.tokens.contains_key("t1"));
        assert!(cache.tokens.contains_key("t2"));
        assert_eq!(cache.bytes, 2);
    }
}
