//! A throw-away PKI in a temporary directory: a CA, a peer certificate it issued (for
//! `localhost` and `127.0.0.1`, good for serving and dialing), a second peer certificate that
//! also names an endpoint, and a second, unrelated CA with a certificate of its own.

use std::path::PathBuf;

use averager_transport_grpc::GrpcTlsSettings;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// The files, deleted with the value.
pub(crate) struct Pki {
    dir: TempDir,
}

/// The swarm's CA.
pub(crate) const CA: &str = "ca.pem";
/// The server's certificate chain (its leaf).
pub(crate) const CERT: &str = "cert.pem";
/// The server's private key.
pub(crate) const KEY: &str = "key.pem";
/// Another CA, which issued nothing here.
pub(crate) const OTHER_CA: &str = "other-ca.pem";
/// A private key that belongs to no certificate here.
pub(crate) const OTHER_KEY: &str = "other-key.pem";
/// A peer certificate of the swarm's CA that names [`PEER_ENDPOINT`] as a URI.
pub(crate) const PEER_CERT: &str = "peer-cert.pem";
/// Its private key.
pub(crate) const PEER_KEY: &str = "peer-key.pem";
/// The endpoint [`PEER_CERT`] names.
pub(crate) const PEER_ENDPOINT: &str = "grpc://127.0.0.1:7001";
/// A peer certificate the other CA issued.
pub(crate) const STRANGER_CERT: &str = "stranger-cert.pem";
/// Its private key.
pub(crate) const STRANGER_KEY: &str = "stranger-key.pem";

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let swarm_ca = ca("averager test CA");
        let other_ca = ca("another CA");
        let (cert, key) = peer(&swarm_ca, None);
        let (peer_cert, peer_key) = peer(&swarm_ca, Some(PEER_ENDPOINT));
        let (stranger_cert, stranger_key) = peer(&other_ca, Some(PEER_ENDPOINT));
        let files = [
            (CA, swarm_ca.pem()),
            (CERT, cert),
            (KEY, key),
            (OTHER_CA, other_ca.pem()),
            (OTHER_KEY, KeyPair::generate().expect("a key").serialize_pem()),
            (PEER_CERT, peer_cert),
            (PEER_KEY, peer_key),
            (STRANGER_CERT, stranger_cert),
            (STRANGER_KEY, stranger_key),
        ];
        for (name, pem) in files {
            std::fs::write(dir.path().join(name), pem).expect("writing a PEM file");
        }
        Pki { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A peer that serves with the CA's certificate and trusts the CA.
    pub(crate) fn settings(&self) -> GrpcTlsSettings {
        GrpcTlsSettings {
            cert_chain: Some(self.path(CERT)),
            private_key: Some(self.path(KEY)),
            ca_certificates: Some(self.path(CA)),
            domain_name: None,
            mutual: false,
        }
    }

    /// [`settings`](Self::settings) with mutual TLS.
    pub(crate) fn mutual(&self) -> GrpcTlsSettings {
        GrpcTlsSettings { mutual: true, ..self.settings() }
    }

    /// Mutual TLS with the certificate and key `cert` and `key`, trusting the swarm's CA.
    pub(crate) fn mutual_as(&self, cert: &str, key: &str) -> GrpcTlsSettings {
        GrpcTlsSettings {
            cert_chain: Some(self.path(cert)),
            private_key: Some(self.path(key)),
            ..self.mutual()
        }
    }
}

/// A peer certificate (PEM) and its key (PEM), issued by `issuer` for `localhost` and
/// `127.0.0.1`, for serving and dialing, naming `endpoint` as a URI when given.
fn peer(issuer: &CertifiedIssuer<'static, KeyPair>, endpoint: Option<&str>) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("valid names");
    if let Some(endpoint) = endpoint {
        let uri = Ia5String::try_from(endpoint).expect("an ASCII endpoint");
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.distinguished_name.push(DnType::CommonName, "averager test peer");
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("a key");
    let certificate = params.signed_by(&key, issuer).expect("the CA signs");
    (certificate.pem(), key.serialize_pem())
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}
