//! A route's `jwt` condition as written: who must have signed the bearer
//! token, for whom, and what its claims must say.
//!
//! ```toml
//! jwt = { issuer = "https://auth.example.com", audiences = ["users-api"], jwks = "jwks.json", claims = [{ name = "scope", contains = "users.read" }] }
//! ```
//!
//! The keys (a JWKS file) are read when the config is loaded, and again on
//! every reload; see [`routing::jwt`](crate::routing::jwt) for the checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::duration;

/// The clock skew allowed on `exp` and `nbf` unless `leeway` says.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The bearer token a route asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// The `iss` the token must carry.
    pub issuer: String,
    /// The token's `aud` must name one of these; empty: any audience.
    pub audiences: Vec<String>,
    /// The JWKS file with the issuer's public keys.
    pub jwks: PathBuf,
    /// Conditions on the claims, all of which must hold.
    pub claims: Vec<ClaimMatch>,
    /// The clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// One condition on a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMatch {
    /// The claim; dots reach into objects (`realm.roles`).
    pub name: String,
    /// What it must be.
    pub rule: ClaimRule,
}

/// What a claim must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRule {
    /// One of these values (a string, or a number or boolean written as
    /// text).
    OneOf(Vec<String>),
    /// A list holding this value, or a string of space-separated words
    /// holding it (as OAuth's `scope`).
    Contains(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtFile {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    jwks: Option<String>,
    #[serde(default)]
    claims: Vec<ClaimFile>,
    leeway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimFile {
    name: String,
    value: Option<String>,
    values: Option<Vec<String>>,
    contains: Option<String>,
}

impl JwtFile {
    /// Checks the condition at `at` (`routes[0].jwt`).
    pub(super) fn validate(self, at: &str) -> Result<JwtConfig, String> {
        let issuer = match self.issuer {
            Some(i) if !i.is_empty() => i,
            Some(_) => return Err(format!("{at}.issuer: empty")),
            None => return Err(format!("{at}: needs issuer")),
        };
        let jwks = match self.jwks {
            Some(j) if !j.is_empty() => PathBuf::from(j),
            Some(_) => return Err(format!("{at}.jwks: empty")),
            None => return Err(format!("{at}: needs jwks, the file of the issuer's keys")),
        };
        if self.audiences.iter().any(String::is_empty) {
            return Err(format!("{at}.audiences: an audience is empty"));
        }
        let claims = self
            .claims
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.validate(&format!("{at}.claims[{i}]")))
            .collect::<Result<_, _>>()?;
        let leeway =
            duration(&format!("{at}.leeway"), self.leeway.as_deref())?.unwrap_or(DEFAULT_LEEWAY);
        Ok(JwtConfig {
            issuer,
            audiences: self.audiences,
            jwks,
            claims,
            leeway,
        })
    }
}

impl ClaimFile {
    fn validate(self, at: &str) -> Result<ClaimMatch, String> {
        if self.name.is_empty() || self.name.split('.').any(str::is_empty) {
            return Err(format!("{at}.name: {:?} is not a claim name", self.name));
        }
        let rule = match (self.value, self.values, self.contains) {
            (Some(v), None, None) => ClaimRule::OneOf(vec![v]),
            (None, Some(vs), None) if vs.is_empty() => {
                return Err(format!("{at}.values: the list is empty"))
            }
            (None, Some(vs), None) => ClaimRule::OneOf(vs),
            (None, None, Some(c)) => ClaimRule::Contains(c),
            (None, None, None) => return Err(format!("{at}: needs value, values or contains")),
            _ => return Err(format!("{at}: use only one of value, values, contains")),
        };
        Ok(ClaimMatch {
            name: self.name,
            rule,
        })
    }
}
