//! A raw QUIC caller that writes the wire format by hand (README, "Framing"), so a test can send
//! what an honest `QuicTransport` never would.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, ReadExactError, RecvStream, SendStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The method byte of `rpc_join_group`.
pub(crate) const JOIN: u8 = 1;
/// The method byte of `rpc_aggregate_part`.
pub(crate) const AGGREGATE: u8 = 2;
/// The method byte of `rpc_download_state`.
pub(crate) const DOWNLOAD: u8 = 3;
/// The length value that starts an error frame in replies.
const ERROR_MARKER: u32 = u32::MAX;
/// Error frame kind: a failure, with UTF-8 text.
pub(crate) const ERROR_REMOTE: u8 = 1;
/// Error frame kind: a message over the cap, with `size` and `limit` as u64 LE.
pub(crate) const ERROR_TOO_LARGE: u8 = 2;

/// How a raw call ended, as the caller saw it.
#[derive(Debug)]
pub(crate) enum End {
    /// `messages` message frames, then an error frame.
    Error { messages: usize, kind: u8, payload: Vec<u8> },
    /// Message frames (any number), then a clean finish.
    Finished,
    /// The stream was reset or the connection lost.
    Broken(String),
}

impl End {
    /// The text of an `ERROR_REMOTE` error frame before any message; panics on any other end.
    pub(crate) fn remote_text(&self) -> String {
        match self {
            End::Error { messages: 0, kind: ERROR_REMOTE, payload } => {
                String::from_utf8_lossy(payload).into_owned()
            }
            other => panic!("expected an error frame with text, got {other:?}"),
        }
    }

    /// `(size, limit)` of an `ERROR_TOO_LARGE` error frame before any message; panics on any other
    /// end.
    pub(crate) fn too_large(&self) -> (u64, u64) {
        match self {
            End::Error { messages: 0, kind: ERROR_TOO_LARGE, payload } if payload.len() == 16 => {
                let word = |at: usize| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&payload[at..at + 8]);
                    u64::from_le_bytes(bytes)
                };
                (word(0), word(8))
            }
            other => panic!("expected a too-large error frame, got {other:?}"),
        }
    }
}

/// A connection to the server of `endpoint` (`quic://host:port#pin`), trusting any certificate.
pub(crate) async fn connect(endpoint: &str) -> (Endpoint, Connection) {
    let authority = endpoint.trim_start_matches("quic://").split('#').next().expect("an authority");
    let addr: SocketAddr = authority.parse().expect("a socket address");
    let client = Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("a client socket");
    let connection = client
        .connect_with(client_config(), addr, "localhost")
        .expect("a valid dial")
        .await
        .expect("the QUIC handshake");
    (client, connection)
}

/// Opens a stream, writes `bytes` and finishes the send side when `finish`.
pub(crate) async fn call(connection: &Connection, bytes: &[u8], finish: bool) -> (SendStream, RecvStream) {
    let (mut send, recv) = connection.open_bi().await.expect("a stream");
    send.write_all(bytes).await.expect("the write");
    if finish {
        send.finish().expect("the finish");
    }
    (send, recv)
}

/// A method byte, then one frame header announcing `len` bytes, then `body`.
pub(crate) fn framed(method: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![method];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Reads the server's frames until the stream ends.
pub(crate) async fn read_end(recv: &mut RecvStream) -> End {
    let mut messages = 0;
    loop {
        let mut header = [0u8; 4];
        match recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return End::Finished,
            Err(e) => return End::Broken(e.to_string()),
        }
        let len = u32::from_le_bytes(header);
        if len == ERROR_MARKER {
            let mut head = [0u8; 5];
            if let Err(e) = recv.read_exact(&mut head).await {
                return End::Broken(e.to_string());
            }
            let size = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let mut payload = vec![0u8; size.min(4096) as usize];
            if let Err(e) = recv.read_exact(&mut payload).await {
                return End::Broken(e.to_string());
            }
            return End::Error { messages, kind: head[0], payload };
        }
        // The server under test honours its cap, so its lengths can be trusted here.
        let mut body = vec![0u8; len as usize];
        if let Err(e) = recv.read_exact(&mut body).await {
            return End::Broken(e.to_string());
        }
        messages += 1;
    }
}

fn client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = AcceptAny(provider.signature_verification_algorithms);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"averager/1".to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("a QUIC client config")))
}

/// Trusts any certificate (the hostile caller does not care who the server is), still checking
/// handshake signatures so rustls is satisfied.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
