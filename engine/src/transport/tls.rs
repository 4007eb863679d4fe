//! TLS with rustls: configs built from PEM files, and the identity of a
//! verified client certificate.
//!
//! Files are read and checked off the workers (at start-up and on reload),
//! so that every mistake is a [`TlsError`] naming the file: unreadable, no
//! certificate or key in it, a key that does not match the certificate, a
//! CA bundle without a usable CA. What comes out is a [`ServerTls`] or
//! [`ClientTls`] that is `Send`; each worker turns it into its own rustls
//! config ([`ServerTls::for_worker`], [`ClientTls::for_worker`]) with its
//! own session cache, so no handshake takes a lock another core holds.
//!
//! ALPN is `h2` on both legs; TLS 1.2 and 1.3; the `ring` provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClientAuth, ListenerTls, UpstreamTls};

/// Sessions each worker remembers for resumption, per leg.
const SESSION_CACHE: usize = 1024;

/// A TLS file or setting that cannot be used, naming the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn file_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{}: {what}", path.display()))
}

/// ring's provider, with the SHA-256 suites first (AES-128-GCM before
/// AES-256-GCM). ring hashes SHA-256 with the CPU's SHA extensions but
/// SHA-384 in portable code: with AES-256-GCM-SHA384 the transcript and key
/// schedule hashing alone took 9% of a handshake's CPU (perf, `bench e2e
/// --tls`). AES-128-GCM is not a weaker choice in practice.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        matches!(
            s.suite(),
            C::TLS13_AES_256_GCM_SHA384
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    Arc::new(provider)
}

/// TLS 1.3 and 1.2.
fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::ALL_VERSIONS
}

/// The certificate chain in a PEM file, leaf first.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, pem_problem(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_problem(e)))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(path, "no PEM private key in the file")
        }
        e => file_error(path, pem_problem(e)),
    })
}

fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read: {e}"),
        e => format!("not valid PEM: {e}"),
    }
}

/// A root store of every certificate in a PEM bundle.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(TlsError(format!(
            "no system CA certificates could be loaded ({why}); set `ca` to a bundle"
        )));
    }
    Ok(roots)
}

/// Downstream TLS, checked and ready to hand to the workers.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the listener's certificate, key and client CA.
    pub fn load(tls: &ListenerTls) -> Result<ServerTls, TlsError> {
        let certs = load_certs(&tls.cert)?;
        let key = load_key(&tls.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions())
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
        let builder = match (tls.client_auth, &tls.client_ca) {
            (ClientAuth::Off, _) => builder.with_no_client_auth(),
            (auth, Some(ca)) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = match auth {
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_error(ca, format!("unusable as a client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            (_, None) => {
                return Err(TlsError(
                    "tls.client_auth needs tls.client_ca, the CA bundle to verify clients".into(),
                ))
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            file_error(
                &tls.key,
                format!(
                    "does not match the certificate in {} ({e})",
                    tls.cert.display()
                ),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Our suite order, not the client's (many put AES-256 first).
        config.ignore_client_order = true;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// This worker's own config: the same certificates, its own session
    /// cache.
    pub fn for_worker(&self) -> Arc<ServerConfig> {
        let mut config = (*self.config).clone();
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        Arc::new(config)
    }
}

/// Upstream TLS of one cluster, checked and ready to hand to the workers.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

/// What a worker uses to open TLS to a cluster's endpoints.
pub struct Connector {
    /// The worker's rustls client config.
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI and verified in the upstream's certificate.
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Reads a cluster's CA bundle (or the system roots) and client
    /// certificate; `server_name` is what the upstream certificate must
    /// name.
    pub fn load(tls: &UpstreamTls, server_name: &str) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            TlsError(format!(
                "server name {server_name:?} is neither a DNS name nor an IP address"
            ))
        })?;
        let roots = match &tls.ca {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions())
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs(cert)?;
                let der = load_key(key)?;
                builder.with_client_auth_cert(certs, der).map_err(|e| {
                    file_error(
                        key,
                        format!("does not match the certificate in {} ({e})", cert.display()),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// This worker's own connector, with its own session cache.
    pub fn for_worker(&self) -> Connector {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(SESSION_CACHE);
        Connector {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        }
    }
}

/// Who a client is, from the certificate it presented and rustls verified
/// against the listener's client CA. Computed once per connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name (CN), if any.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// URIs among the subject alternative names, e.g. a SPIFFE id.
    pub uris: Vec<String>,
    /// SHA-256 of the certificate (DER), lower-case hex without colons.
    pub sha256: String,
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate. Parts that cannot be read
    /// are left empty; the fingerprint is always there.
    pub fn from_der(der: &[u8]) -> PeerIdentity {
        let mut identity = PeerIdentity {
            sha256: crate::config::digest::sha256_hex(der),
            ..PeerIdentity::default()
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return identity;
        };
        identity.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        identity.dns_names.push((*d).to_owned())
                    }
                    x509_parser::extensions::GeneralName::URI(u) => {
                        identity.uris.push((*u).to_owned())
                    }
                    _ => {}
                }
            }
        }
        identity
    }
}
