//! A throw-away PKI in a temporary directory: a CA, a server certificate it issued (for
//! `localhost` and `127.0.0.1`), and a second, unrelated CA.

use std::path::PathBuf;

use averager_transport_grpc::GrpcTlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
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

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let swarm_ca = ca("averager test CA");
        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("valid names");
        leaf.distinguished_name.push(DnType::CommonName, "averager test peer");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("a key");
        let leaf = leaf.signed_by(&leaf_key, &swarm_ca).expect("the CA signs");
        let files = [
            (CA, swarm_ca.pem()),
            (CERT, leaf.pem()),
            (KEY, leaf_key.serialize_pem()),
            (OTHER_CA, ca("another CA").pem()),
            (OTHER_KEY, KeyPair::generate().expect("a key").serialize_pem()),
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
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}
