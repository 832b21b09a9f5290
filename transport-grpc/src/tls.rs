//! Optional TLS: [`GrpcTlsSettings`] (PEM files), the rustls configurations built from them, and
//! the connector that dials with TLS. With [`GrpcTlsSettings::mutual`], both sides present
//! certificates and the server verifies the client's against the same CA certificates.
//!
//! tonic's own `ServerTlsConfig` and `ClientTlsConfig` build their rustls configurations from the
//! process-wide default crypto provider: with both ring and aws-lc-rs linked into one binary
//! (libp2p brings aws-lc-rs, other crates ring), rustls cannot pick one and panics, and a process
//! that installed another default would silently use it. So this crate drives tokio-rustls
//! itself, with the aws-lc-rs provider passed explicitly to every configuration, and hands tonic
//! streams that are already encrypted. (aws-lc-rs rather than ring: rustls deprecates its ring
//! provider, which lacks post-quantum key exchange; aws-lc-rs offers X25519MLKEM768 first.)

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use averager_core::{Error, Result};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The ALPN protocol both sides offer: gRPC runs on HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// TLS for a [`GrpcTransport`](crate::GrpcTransport): PEM files, read when the transport is
/// built (a missing or malformed file is an `Error::Config` then, never later).
///
/// A peer that serves needs `cert_chain` and `private_key`; a peer that dials needs
/// `ca_certificates`. Every peer of a swarm both serves and dials, so it usually sets all three,
/// with certificates issued by the swarm's CA.
///
/// **Mutual TLS** (`mutual: true`, all three files required): the server accepts only clients
/// whose certificate chain leads to `ca_certificates`, and the client presents `cert_chain` when
/// it dials. Served calls then carry the client's proven identity in
/// `CallContext::authenticated_peer`: the `grpc://host:port` URI subject alternative name of its
/// certificate (the endpoint the peer serves at, spelled as it advertises it), or, for a
/// certificate that names no such URI or several, `sha256:` and the hex SHA-256 of the
/// certificate (which matches no endpoint). Every peer's certificate should therefore carry its
/// endpoint as a URI name beside its DNS or IP names, and both the server and the client
/// extended key usages (or none).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcTlsSettings {
    /// PEM file with this peer's certificate chain, leaf first: what it serves with.
    pub cert_chain: Option<PathBuf>,
    /// PEM file with the private key of the chain's leaf (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<PathBuf>,
    /// PEM file with the CA certificates a dialed server's chain must lead to.
    pub ca_certificates: Option<PathBuf>,
    /// The name a dialed server's certificate must be valid for, instead of the endpoint's host
    /// (an IP address, for endpoints such as `grpc://10.0.0.7:5000`, unless overridden here).
    pub domain_name: Option<String>,
    /// Mutual TLS: require and verify client certificates, and present this peer's own when
    /// dialing (see the type's docs). Default `false`: only servers prove who they are.
    pub mutual: bool,
}

/// The rustls configurations built from [`GrpcTlsSettings`].
#[derive(Debug)]
pub(crate) struct Tls {
    /// What the server side accepts with; `None` without a certificate and key.
    pub(crate) server: Option<Arc<ServerConfig>>,
    /// How the client side dials; `None` without CA certificates.
    pub(crate) client: Option<TlsConnector>,
    /// Whether the server requires client certificates, so served calls are authenticated.
    pub(crate) mutual: bool,
}

impl Tls {
    /// Reads the files `settings` name and builds the configurations.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and the file: a file that cannot be read or holds no
    /// PEM item of the kind expected, a key that does not match the certificate, a certificate
    /// or a domain name that rustls refuses, settings that give neither side anything, or
    /// `mutual` without all three files.
    pub(crate) fn load(settings: &GrpcTlsSettings) -> Result<Tls> {
        let identity = match (&settings.cert_chain, &settings.private_key) {
            (Some(chain), Some(key)) => Some(Identity::load(chain, key)?),
            (None, None) => None,
            (Some(_), None) => return Err(config("cert_chain is set but private_key is not")),
            (None, Some(_)) => return Err(config("private_key is set but cert_chain is not")),
        };
        let roots = settings.ca_certificates.as_deref().map(roots).transpose()?;
        let client_roots = match (settings.mutual, &identity, &roots) {
            (false, _, _) => None,
            (true, Some(_), Some(roots)) => Some(roots.clone()),
            (true, _, _) => {
                return Err(config("mutual needs cert_chain, private_key and ca_certificates all set"));
            }
        };
        let server = identity.as_ref().map(|identity| server_config(identity, client_roots)).transpose()?;
        let domain = match &settings.domain_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| config(&format!("domain_name {name:?} is not a server name: {e}")))?,
            ),
            None => None,
        };
        let presented = if settings.mutual { identity.as_ref() } else { None };
        let client = match roots {
            Some(roots) => Some(TlsConnector { config: client_config(roots, presented)?, domain }),
            None if domain.is_some() => return Err(config("domain_name is set but ca_certificates is not")),
            None => None,
        };
        if server.is_none() && client.is_none() {
            return Err(config(
                "TLS needs cert_chain and private_key (to serve) or ca_certificates (to dial), or both",
            ));
        }
        Ok(Tls { server, client, mutual: settings.mutual })
    }
}

fn config(reason: &str) -> Error {
    Error::Config(format!("grpc tls: {reason}"))
}

/// The aws-lc-rs provider, never the process default (see the module docs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| config(&format!("{setting} {}: cannot read it: {e}", path.display())))
}

fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(setting, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config(&format!("{setting} {}: not a PEM certificate file: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(config(&format!("{setting} {}: holds no PEM certificate", path.display())));
    }
    Ok(certificates)
}

/// This peer's certificate chain and key, with the files they came from (for errors).
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: String,
}

impl Identity {
    fn load(chain_path: &Path, key_path: &Path) -> Result<Identity> {
        let chain = certificates("cert_chain", chain_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read("private_key", key_path)?).map_err(|e| {
            config(&format!("private_key {}: holds no PEM private key: {e}", key_path.display()))
        })?;
        let files = format!("private_key {} and cert_chain {}", key_path.display(), chain_path.display());
        Ok(Identity { chain, key, files })
    }

    fn refused(&self, e: &rustls::Error) -> Error {
        config(&format!("{} do not make a TLS identity: {e}", self.files))
    }
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("ca_certificates", path)? {
        roots.add(certificate).map_err(|e| {
            config(&format!("ca_certificates {}: a certificate rustls refuses: {e}", path.display()))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The server's configuration; with `client_roots`, it requires client certificates that lead
/// to them.
fn server_config(identity: &Identity, client_roots: Option<Arc<RootCertStore>>) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config(&format!("the aws-lc-rs provider offers no TLS version: {e}")))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| config(&format!("ca_certificates cannot verify clients: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| identity.refused(&e))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(server))
}

/// The client's configuration; with `presented`, it offers that certificate when asked.
fn client_config(roots: Arc<RootCertStore>, presented: Option<&Identity>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config(&format!("the aws-lc-rs provider offers no TLS version: {e}")))?
        .with_root_certificates(roots);
    let mut client = match presented {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| identity.refused(&e))?,
    };
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(client))
}

/// Dials TCP and runs the TLS handshake, for tonic's `connect_with_connector`: tonic's HTTP/2
/// then runs over the encrypted stream.
#[derive(Debug, Clone)]
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
    domain: Option<ServerName<'static>>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let domain = self.domain.clone();
        Box::pin(async move {
            let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidInput, reason);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri} has no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri} has no port")))?;
            let name = match domain {
                Some(name) => name,
                None => ServerName::try_from(host.clone())
                    .map_err(|e| invalid(format!("{host} is not a TLS server name: {e}")))?,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                io::Error::new(e.kind(), format!("the TLS handshake with {host}:{port} failed: {e}"))
            })?;
            Ok(TokioIo::new(tls))
        })
    }
}
