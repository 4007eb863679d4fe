//! Test certificates, made with rcgen in a temporary directory.
//!
//! [`Pki::new`] issues a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates for two identities (`alice` and
//! `bob`, each with a SPIFFE URI SAN); a second, untrusted CA issues
//! `mallory`, who claims to be alice. Everything is written as PEM files
//! (and kept as PEM text for tonic).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate and its key, as files and as PEM text.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The PEM certificate file.
    pub cert: PathBuf,
    /// The PEM key file.
    pub key: PathBuf,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A certificate authority that can issue more.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate as a PEM file.
    pub cert: PathBuf,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// The test PKI; the directory goes when it is dropped.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA everyone trusts.
    pub ca: Authority,
    /// A CA nobody trusts.
    pub rogue_ca: Authority,
    /// The proxy's (and the upstreams') server certificate.
    pub server: Issued,
    /// Client `alice`: CN alice, URI SAN spiffe://test/alice.
    pub alice: Issued,
    /// Client `bob`: CN bob, URI SAN spiffe://test/bob.
    pub bob: Issued,
    /// Claims to be alice, issued by the rogue CA.
    pub mallory: Issued,
}

impl Pki {
    /// Issues everything.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = Authority::new(dir.path(), "test-ca");
        let rogue_ca = Authority::new(dir.path(), "rogue-ca");
        let server = ca.issue_server(dir.path(), "server");
        let alice = ca.issue_client(dir.path(), "alice");
        let bob = ca.issue_client(dir.path(), "bob");
        let mallory = rogue_ca.issue_client(dir.path(), "alice");
        Pki {
            dir,
            ca,
            rogue_ca,
            server,
            alice,
            bob,
            mallory,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to a file named `name` in the directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        write(self.dir.path(), name, text)
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM file");
    path
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert_pem = issuer.pem();
        Authority {
            cert: write(dir, &format!("{name}.pem"), &cert_pem),
            cert_pem,
            issuer,
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, written as
    /// `<file>.pem` and `<file>.key`.
    pub fn issue_server(&self, dir: &Path, file: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, file);
        self.issue(dir, file, params)
    }

    /// A client certificate with CN `name`, DNS SAN `<name>.test` and URI
    /// SAN `spiffe://test/<name>`.
    pub fn issue_client(&self, dir: &Path, name: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec![format!("{name}.test")]).expect("client params");
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://test/{name}")
                .try_into()
                .expect("valid URI"),
        ));
        params.distinguished_name.push(DnType::CommonName, name);
        let file = format!(
            "{name}-by-{}",
            self.cert
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        );
        self.issue(dir, &file, params)
    }

    fn issue(&self, dir: &Path, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Issued {
            cert: write(dir, &format!("{file}.pem"), &cert_pem),
            key: write(dir, &format!("{file}.key"), &key_pem),
            cert_pem,
            key_pem,
            der: cert.der().to_vec(),
        }
    }
}
