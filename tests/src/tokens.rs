//! Bearer tokens for the JWT tests: an issuer whose keys (RS256, ES256,
//! EdDSA) are made here, its JWKS file, and tokens it signs with
//! `jsonwebtoken`, an implementation the proxy shares only the crate with
//! (the keys, the JWKS and the claims are all the test's).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// The `iss` of the tokens this issuer signs by default.
pub const ISSUER: &str = "https://auth.test";

/// One signing key and its public half as a JWK.
pub struct SigningKey {
    /// The `kid` it is published under.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key, as a JWK.
    pub jwk: Value,
    /// The public key's bytes (DER of an RSA key; the point of the
    /// others): what an attacker would try as an HMAC secret.
    pub public: Vec<u8>,
}

impl SigningKey {
    /// A new RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> SigningKey {
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        let public = key.to_public_key();
        let b64 = |b: Vec<u8>| URL_SAFE_NO_PAD.encode(b);
        let public_der = {
            use rsa::pkcs1::EncodeRsaPublicKey;
            public
                .to_pkcs1_der()
                .expect("public DER")
                .as_bytes()
                .to_vec()
        };
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be()),
            }),
            public: public_der,
        }
    }

    /// A new P-256 key for ES256.
    pub fn ec(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("P-256 pair");
        let point = pair.public_key().as_ref().to_vec();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
            public: point,
        }
    }

    /// A new Ed25519 key for EdDSA.
    pub fn ed(kid: &str) -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 pair");
        let public = pair.public_key().as_ref().to_vec();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "kid": kid, "alg": "EdDSA", "crv": "Ed25519", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&public),
            }),
            public,
        }
    }

    /// Signs `claims` with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("token signs")
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims of a good token: this issuer, audience `api`, an hour to live.
pub fn claims(sub: &str) -> Value {
    json!({ "iss": ISSUER, "aud": "api", "sub": sub, "exp": now() + 3600, "iat": now() })
}

/// Writes a JWKS file of `keys`' public halves to `path`.
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.to_string()).expect("JWKS written");
    std::fs::rename(&tmp, path).expect("JWKS in place");
}

/// A JWKS file in a fresh directory.
pub fn jwks_file(dir: &tempfile::TempDir, keys: &[&SigningKey]) -> PathBuf {
    let path = dir.path().join("jwks.json");
    write_jwks(&path, keys);
    path
}

/// A token with a header and claims as given, signed with HMAC-SHA256
/// under `secret`: what a forger who knows only public keys can make.
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("HS256")
}

/// An unsigned token (`alg: none`).
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}
