//! gRPC over TLS: the whole Transport conformance suite, trust failures that must be clear errors
//! (not hangs), PEM files that must be refused at construction, and silent or garbage connections
//! to a TLS server. Mutual TLS (`mutual.rs`): the suite again, the identity a served call sees,
//! and clients without a certificate of the swarm's CA refused.

mod mutual;
mod pki;

use std::sync::Arc;
use std::time::Duration;

use averager_conformance::transport::TransportFactory;
use averager_core::registry::{PluginConfig, Registry};
use averager_core::transport::{AveragingData, AveragingService, CallContext, ServerHandle, Transport};
use averager_core::{Error, Result};
use averager_transport_grpc::{GrpcSettings, GrpcTlsSettings, GrpcTransport};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pki::{CA, CERT, KEY, OTHER_CA, OTHER_KEY, Pki};

/// A bound on waits that end on an event: generous, so a loaded machine does not fail a test.
const PATIENCE: Duration = Duration::from_secs(60);

/// Peers that serve and dial with TLS (mutual TLS with `mutual`), all trusting one throw-away CA
/// (deleted with the factory).
struct TlsPeers {
    pki: Pki,
    mutual: bool,
}

impl TransportFactory for TlsPeers {
    async fn make(&self) -> Arc<dyn Transport> {
        let settings = if self.mutual { self.pki.mutual() } else { self.pki.settings() };
        Arc::new(tls_transport(settings)) as Arc<dyn Transport>
    }
}

averager_conformance::transport_suite!(grpc_tls, TlsPeers { pki: Pki::new(), mutual: false }, lacks: [authenticated]);
averager_conformance::transport_suite!(grpc_mutual_tls, TlsPeers { pki: Pki::new(), mutual: true });

fn tls_transport(tls: GrpcTlsSettings) -> GrpcTransport {
    GrpcTransport::with_settings(GrpcSettings { tls: Some(tls), ..GrpcSettings::default() })
        .expect("valid TLS settings")
}

/// `fut`, bounded by [`PATIENCE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// Echoes `rpc_aggregate_part`, keeping each call's context; refuses the rest.
#[derive(Default)]
struct Echo {
    calls: std::sync::Mutex<Vec<CallContext>>,
}

impl Echo {
    fn calls(&self) -> Vec<CallContext> {
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[async_trait::async_trait]
impl AveragingService for Echo {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: averager_core::transport::JoinRequest,
    ) -> Result<averager_core::transport::MessageStream<averager_core::transport::MessageFromLeader>> {
        Err(Error::Internal("not served".into()))
    }

    async fn rpc_aggregate_part(
        &self,
        call: CallContext,
        requests: averager_core::transport::MessageStream<AveragingData>,
    ) -> Result<averager_core::transport::MessageStream<AveragingData>> {
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(call);
        Ok(requests)
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: averager_core::transport::DownloadRequest,
    ) -> Result<averager_core::transport::MessageStream<averager_core::transport::DownloadData>> {
        Err(Error::Internal("not served".into()))
    }
}

async fn serve(transport: &GrpcTransport) -> ServerHandle {
    transport.serve(Arc::new(Echo::default())).await.expect("serve")
}

/// `client` reaches `endpoint` and gets an echo back.
async fn echo_round_trip(client: &GrpcTransport, endpoint: &str) {
    let client = within("connect", client.connect(endpoint)).await.expect("connect");
    let part = AveragingData { endpoint: "tls".into(), ..AveragingData::default() };
    let replies =
        within("the call", client.rpc_aggregate_part(Box::pin(futures::stream::iter([part.clone()]))))
            .await
            .expect("the call");
    let replies: Vec<_> = within("the replies", replies.collect()).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].as_ref().ok(), Some(&part));
}

/// `connect` fails (not hangs) with `Error::Unreachable` whose reason contains `expected`.
async fn refused(client: &GrpcTransport, endpoint: &str, expected: &[&str]) {
    let error = within("a refused dial", client.connect(endpoint)).await.err().expect("the dial must fail");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let text = error.to_string();
    eprintln!("refused as expected: {text}");
    assert!(expected.iter().any(|e| text.contains(e)), "expected one of {expected:?} in: {text}");
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_gets_a_clear_error() {
    let pki = Pki::new();
    let server = tls_transport(pki.settings());
    let handle = serve(&server).await;
    let stranger = tls_transport(GrpcTlsSettings {
        ca_certificates: Some(pki.path(OTHER_CA)),
        ..GrpcTlsSettings::default()
    });
    refused(&stranger, handle.endpoint(), &["UnknownIssuer"]).await;
    // The server is not hurt by it.
    echo_round_trip(&tls_transport(pki.settings()), handle.endpoint()).await;
}

#[tokio::test]
async fn the_domain_name_override_is_what_the_certificate_must_name() {
    let pki = Pki::new();
    let handle = serve(&tls_transport(pki.settings())).await;
    let named =
        |name: &str| tls_transport(GrpcTlsSettings { domain_name: Some(name.into()), ..pki.settings() });
    echo_round_trip(&named("localhost"), handle.endpoint()).await;
    refused(&named("elsewhere.example"), handle.endpoint(), &["NotValidForName", "not valid for name"]).await;
}

#[tokio::test]
async fn plain_and_tls_peers_refuse_each_other_promptly() {
    let pki = Pki::new();
    let tls_handle = serve(&tls_transport(pki.settings())).await;
    let plain_handle = serve(&GrpcTransport::default()).await;
    // HTTP/2 lets a client start before it hears from the server, so the refusal may come at
    // the first call rather than at connect; either way it comes.
    let attempt = async {
        let client = GrpcTransport::default().connect(tls_handle.endpoint()).await?;
        let part = AveragingData::default();
        let mut replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([part]))).await?;
        match replies.next().await {
            Some(Err(e)) => Err(e),
            other => Ok(other),
        }
    };
    let outcome = within("a plain call to TLS", attempt).await;
    eprintln!("a plain call to a TLS server: {outcome:?}");
    assert!(outcome.is_err(), "a plain client talked to a TLS server: {outcome:?}");
    let error = within("a TLS dial to plain", tls_transport(pki.settings()).connect(plain_handle.endpoint()))
        .await
        .err()
        .expect("a TLS client cannot talk to a plain server");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("TLS handshake"), "{error}");
}

#[tokio::test]
async fn bad_tls_files_are_config_errors_at_construction() {
    let pki = Pki::new();
    let missing = pki.path("no-such-file.pem");
    let not_pem = pki.path("not-pem.txt");
    std::fs::write(&not_pem, "these are not the certificates you are looking for").expect("write");
    let cases: Vec<(&str, GrpcTlsSettings, &str)> = vec![
        (
            "a missing chain",
            GrpcTlsSettings { cert_chain: Some(missing.clone()), ..pki.settings() },
            "cannot read",
        ),
        (
            "a missing key",
            GrpcTlsSettings { private_key: Some(missing.clone()), ..pki.settings() },
            "cannot read",
        ),
        (
            "a missing CA",
            GrpcTlsSettings { ca_certificates: Some(missing.clone()), ..pki.settings() },
            "cannot read",
        ),
        (
            "a chain of text",
            GrpcTlsSettings { cert_chain: Some(not_pem.clone()), ..pki.settings() },
            "no PEM certificate",
        ),
        (
            "a CA of text",
            GrpcTlsSettings { ca_certificates: Some(not_pem.clone()), ..pki.settings() },
            "no PEM certificate",
        ),
        (
            "a key of text",
            GrpcTlsSettings { private_key: Some(not_pem.clone()), ..pki.settings() },
            "no PEM private key",
        ),
        (
            "a certificate as the key",
            GrpcTlsSettings { private_key: Some(pki.path(CERT)), ..pki.settings() },
            "no PEM private key",
        ),
        (
            "a key as the chain",
            GrpcTlsSettings { cert_chain: Some(pki.path(KEY)), ..pki.settings() },
            "no PEM certificate",
        ),
        (
            "a key of another certificate",
            GrpcTlsSettings { private_key: Some(pki.path(OTHER_KEY)), ..pki.settings() },
            "do not make a TLS identity",
        ),
        (
            "a chain without its key",
            GrpcTlsSettings { private_key: None, ..pki.settings() },
            "private_key is not",
        ),
        (
            "a key without its chain",
            GrpcTlsSettings { cert_chain: None, ..pki.settings() },
            "cert_chain is not",
        ),
        ("nothing at all", GrpcTlsSettings::default(), "TLS needs"),
        (
            "a domain that is no name",
            GrpcTlsSettings { domain_name: Some("not a name!".into()), ..pki.settings() },
            "not a server name",
        ),
    ];
    for (case, tls, expected) in cases {
        let settings = GrpcSettings { tls: Some(tls), ..GrpcSettings::default() };
        let Err(error) = GrpcTransport::with_settings(settings.clone()) else {
            panic!("{case}: accepted");
        };
        assert!(matches!(error, Error::Config(_)), "{case}: {error:?}");
        assert!(error.to_string().contains(expected), "{case}: expected {expected:?} in: {error}");
        // Unchecked construction keeps the error for serve and connect.
        let unchecked = GrpcTransport::new(settings);
        assert!(
            matches!(unchecked.serve(Arc::new(Echo::default())).await, Err(Error::Config(_))),
            "{case}: served"
        );
        assert!(
            matches!(unchecked.connect("grpc://127.0.0.1:1").await, Err(Error::Config(_))),
            "{case}: dialled"
        );
    }

    // The registry record checks too.
    let config =
        PluginConfig::new(serde_json::json!({ "tls": { "cert_chain": missing, "private_key": missing } }));
    assert!(matches!(Registry::global().transport("grpc", config).await, Err(Error::Config(_))));

    // Half a TLS identity is fine until the missing half is needed.
    let dial_only =
        tls_transport(GrpcTlsSettings { ca_certificates: Some(pki.path(CA)), ..GrpcTlsSettings::default() });
    let Err(error) = dial_only.serve(Arc::new(Echo::default())).await else {
        panic!("served without a certificate")
    };
    assert!(matches!(error, Error::Config(_)) && error.to_string().contains("cannot serve"), "{error:?}");
    let serve_only = tls_transport(GrpcTlsSettings { ca_certificates: None, ..pki.settings() });
    let handle = serve(&serve_only).await;
    let Err(error) = serve_only.connect(handle.endpoint()).await else { panic!("dialled without a CA") };
    assert!(matches!(error, Error::Config(_)) && error.to_string().contains("cannot dial"), "{error:?}");
}

#[tokio::test]
async fn silent_and_garbage_connections_to_a_tls_server_are_closed_while_it_serves() {
    const SILENT: usize = 50;
    let pki = Pki::new();
    let settings = GrpcSettings {
        tls: Some(pki.settings()),
        first_request_timeout: Duration::from_secs(5),
        ..GrpcSettings::default()
    };
    let server = GrpcTransport::with_settings(settings).expect("valid settings");
    let handle = serve(&server).await;
    let address = handle.endpoint().trim_start_matches("grpc://").to_string();

    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(&address).await.expect("a TCP connection"));
    }
    // Garbage instead of a ClientHello: the handshake fails at once.
    let mut garbage = TcpStream::connect(&address).await.expect("a TCP connection");
    garbage.write_all(&[0x42; 512]).await.expect("the garbage");

    echo_round_trip(&tls_transport(pki.settings()), handle.endpoint()).await;

    let mut sink = Vec::new();
    within("the garbage connection's close", garbage.read_to_end(&mut sink)).await.ok();
    for (i, mut connection) in silent.into_iter().enumerate() {
        let mut sink = Vec::new();
        let read = within("a silent connection's close", connection.read_to_end(&mut sink)).await;
        // Closed by the server: an end (or a reset), and never a TLS ServerHello to nobody's hello.
        assert!(read.is_err() || sink.is_empty(), "silent connection {i} got {} bytes", sink.len());
    }
    echo_round_trip(&tls_transport(pki.settings()), handle.endpoint()).await;
}
