//! Certificates and TLS configurations: a self-signed identity per served endpoint, and a client
//! verifier that accepts any certificate unless a SHA-256 pin is given.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_core::{Error, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol both sides require.
const ALPN: &[u8] = b"averager/1";

/// The server name every client presents (certificates are not checked against names).
pub(crate) const SERVER_NAME: &str = "localhost";

/// The aws-lc-rs provider: never the process default, which may be ambiguous (see docs/architecture.md).
/// Not ring: rustls deprecates its ring provider, which lacks post-quantum key exchange.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The lowercase hex SHA-256 of a certificate's DER bytes.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The QUIC transport parameters both sides use.
pub(crate) fn transport_config() -> Arc<TransportConfig> {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))))
        .stream_receive_window(VarInt::from_u32(8 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20);
    Arc::new(config)
}

/// A freshly generated self-signed server configuration, and its certificate's fingerprint.
pub(crate) fn server_config() -> Result<(quinn::ServerConfig, String)> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| Error::Internal(format!("generating a self-signed certificate: {e}")))?;
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let fingerprint = fingerprint(cert.as_ref());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Internal(format!("TLS server config: {e}")))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| Error::Internal(format!("TLS server certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| Error::Internal(format!("QUIC server config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok((config, fingerprint))
}

/// Where a [`PinVerifier`] records a mismatching certificate, for the caller's error.
pub(crate) type MismatchSlot = Arc<Mutex<Option<String>>>;

/// Takes the recorded mismatch, if any.
pub(crate) fn take_mismatch(slot: &MismatchSlot) -> Option<String> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// A client configuration that accepts any server certificate, or only one whose SHA-256 is `pin`.
pub(crate) fn client_config(pin: Option<String>) -> Result<(quinn::ClientConfig, MismatchSlot)> {
    let provider = provider();
    let mismatch = MismatchSlot::default();
    let verifier = PinVerifier {
        pin,
        mismatch: mismatch.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Internal(format!("TLS client config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| Error::Internal(format!("QUIC client config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok((config, mismatch))
}

/// Accepts any certificate (self-signed peers), or only the pinned one. The handshake signature is
/// still verified against the presented certificate, so a pin proves the peer holds its key.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<String>,
    mismatch: MismatchSlot,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let got = fingerprint(end_entity.as_ref());
            if got != *pin {
                let reason =
                    format!("certificate pin mismatch: expected sha256 {pin}, the server presented {got}");
                *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
                return Err(rustls::Error::General(reason));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
