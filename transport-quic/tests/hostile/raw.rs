//! A raw QUIC caller that writes the wire format by hand (README, "Framing"), so a test can send
//! what an honest `QuicTransport` never would: the conformance crate's hostile suite runs over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use averager_conformance::hostile::{CAP, Echo, HostileTarget, RawCaller, RawStream};
use averager_core::transport::frame::FrameRead;
use averager_core::transport::{Rpc, ServerHandle, Transport};
use averager_core::{Error, Result};
use averager_transport_quic::{QuicSettings, QuicTransport};
use prost::bytes::BytesMut;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The method byte of an RPC (README, "Framing").
pub(crate) fn method(rpc: Rpc) -> u8 {
    match rpc {
        Rpc::JoinGroup => 1,
        Rpc::AggregatePart => 2,
        Rpc::DownloadState => 3,
    }
}

/// QUIC servers for the hostile suite.
pub(crate) struct Quic;

/// A served [`Echo`].
pub(crate) struct Served {
    pub(crate) handle: ServerHandle,
    _transport: QuicTransport,
}

impl HostileTarget for Quic {
    type Served = Served;
    type Caller = Caller;

    async fn serve(&self, service: Arc<Echo>, first_request_timeout: Duration) -> Served {
        let settings =
            QuicSettings { first_request_timeout, max_message_bytes: CAP, ..QuicSettings::default() };
        let transport = QuicTransport::with_settings(settings).expect("valid settings");
        let handle = transport.serve(service).await.expect("serve");
        Served { handle, _transport: transport }
    }

    fn endpoint(&self, served: &Served) -> String {
        served.handle.endpoint().to_string()
    }

    async fn caller(&self, served: &Served) -> Caller {
        connect(served.handle.endpoint()).await
    }

    async fn client(&self) -> Arc<dyn Transport> {
        Arc::new(QuicTransport::default())
    }
}

/// One connection to the server, trusting any certificate.
pub(crate) struct Caller {
    _endpoint: Endpoint,
    pub(crate) connection: Connection,
}

impl RawCaller for Caller {
    type Stream = Call;

    async fn open(&self, rpc: Rpc) -> Call {
        let mut call = self.stream().await;
        call.send.write_all(&[method(rpc)]).await.expect("the method byte");
        call
    }
}

impl Caller {
    /// A new stream, with nothing written on it.
    pub(crate) async fn stream(&self) -> Call {
        let (send, recv) = self.connection.open_bi().await.expect("a stream");
        Call { send, recv }
    }
}

/// One raw call's stream.
pub(crate) struct Call {
    pub(crate) send: SendStream,
    recv: RecvStream,
}

impl FrameRead for Call {
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        match self.recv.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                Ok(chunk.bytes.len())
            }
            Ok(None) => Ok(0),
            Err(e) => Err(Error::Transport(format!("reading from {peer}: {e}"))),
        }
    }
}

impl RawStream for Call {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send.write_all(bytes).await.map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// A connection to the server of `endpoint` (`quic://host:port#pin`), trusting any certificate.
pub(crate) async fn connect(endpoint: &str) -> Caller {
    let authority = endpoint.trim_start_matches("quic://").split('#').next().expect("an authority");
    let addr: SocketAddr = authority.parse().expect("a socket address");
    let client = Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("a client socket");
    let connection = client
        .connect_with(client_config(), addr, "localhost")
        .expect("a valid dial")
        .await
        .expect("the QUIC handshake");
    Caller { _endpoint: client, connection }
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
