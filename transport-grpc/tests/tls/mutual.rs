//! Mutual TLS: the identity a served call sees, clients refused for the certificate they lack,
//! and settings that cannot work.

use std::sync::Arc;

use averager_core::transport::{AveragingData, Transport};
use averager_core::{Error, Result};
use averager_transport_grpc::{GrpcSettings, GrpcTlsSettings, GrpcTransport};
use futures::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::pki::{CA, CERT, KEY, PEER_CERT, PEER_ENDPOINT, PEER_KEY, Pki, STRANGER_CERT, STRANGER_KEY};
use crate::{Echo, echo_round_trip, tls_transport, within};

/// A mutual-TLS server echoing with an [`Echo`] the test can read.
async fn mutual_server(pki: &Pki) -> (Arc<Echo>, averager_core::transport::ServerHandle) {
    let server = tls_transport(pki.mutual());
    assert!(server.capabilities().authenticated, "a mutual-TLS transport authenticates");
    let echo = Arc::new(Echo::default());
    let handle = within("serve", server.serve(echo.clone())).await.expect("serve");
    (echo, handle)
}

/// One echo call from `client` to `endpoint`: the error that refused it, wherever it came (at the
/// dial, at the call, or as the first reply: with TLS 1.3 the client finishes its handshake before
/// the server has checked the client's certificate, so the refusal may reach it late).
async fn refusal(client: &GrpcTransport, endpoint: &str) -> Error {
    let attempt = async {
        let client = client.connect(endpoint).await?;
        let part = AveragingData { endpoint: "mutual".into(), ..AveragingData::default() };
        let mut replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([part]))).await?;
        match replies.next().await {
            Some(Err(e)) => Err(e),
            other => Ok(other),
        }
    };
    let outcome: Result<_> = within("a refused call", attempt).await;
    let error = outcome.expect_err("the server must refuse the call");
    eprintln!("refused as expected: {error}");
    error
}

/// The SHA-256 identity of the first certificate in the PEM file at `path`.
fn fingerprint(path: &std::path::Path) -> String {
    let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    let hex: String = Sha256::digest(der.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[tokio::test]
async fn a_mutual_tls_call_carries_the_identity_the_client_certificate_proves() {
    let pki = Pki::new();
    let (echo, handle) = mutual_server(&pki).await;

    // A certificate that names its endpoint as a URI: the endpoint.
    echo_round_trip(&tls_transport(pki.mutual_as(PEER_CERT, PEER_KEY)), handle.endpoint()).await;
    // One that does not: its fingerprint, which no endpoint equals.
    echo_round_trip(&tls_transport(pki.mutual_as(CERT, KEY)), handle.endpoint()).await;

    let calls = echo.calls();
    let identities: Vec<_> = calls.iter().map(|c| c.authenticated_peer.clone()).collect();
    assert_eq!(identities, [Some(PEER_ENDPOINT.to_string()), Some(fingerprint(&pki.path(CERT)))]);
    assert!(calls.iter().all(|c| c.remote_address.as_deref().is_some_and(|a| a.starts_with("127.0.0.1:"))));

    // One-sided TLS authenticates nobody, and says so.
    let one_sided = tls_transport(pki.settings());
    assert!(!one_sided.capabilities().authenticated);
    let echo = Arc::new(Echo::default());
    let handle = within("serve", one_sided.serve(echo.clone())).await.expect("serve");
    echo_round_trip(&tls_transport(pki.mutual_as(PEER_CERT, PEER_KEY)), handle.endpoint()).await;
    assert_eq!(echo.calls().len(), 1);
    assert_eq!(echo.calls()[0].authenticated_peer, None, "a server that asked for no certificate");
    assert!(echo.calls()[0].remote_address.is_some());
}

#[tokio::test]
async fn clients_without_a_certificate_of_the_swarm_ca_are_refused() {
    let pki = Pki::new();
    let (echo, handle) = mutual_server(&pki).await;

    let no_certificate =
        GrpcTlsSettings { ca_certificates: Some(pki.path(CA)), ..GrpcTlsSettings::default() };
    let cases = [
        ("a client with no certificate at all", no_certificate),
        ("a client that has one but does not present it", pki.settings()),
        ("a client whose certificate another CA issued", pki.mutual_as(STRANGER_CERT, STRANGER_KEY)),
    ];
    for (case, settings) in cases {
        let error = refusal(&tls_transport(settings), handle.endpoint()).await;
        assert!(
            matches!(error, Error::Unreachable { .. } | Error::Transport(_) | Error::Cancelled(_)),
            "{case}: {error:?}"
        );
    }
    assert!(echo.calls().is_empty(), "a refused client reached the handler: {:?}", echo.calls());

    // The server is not hurt by them.
    echo_round_trip(&tls_transport(pki.mutual_as(PEER_CERT, PEER_KEY)), handle.endpoint()).await;
    assert_eq!(echo.calls().len(), 1);
}

#[tokio::test]
async fn mutual_tls_without_all_three_files_or_with_bad_ones_is_a_config_error() {
    let pki = Pki::new();
    let missing = pki.path("no-such-file.pem");
    let cases: Vec<(&str, GrpcTlsSettings, &str)> = vec![
        ("no CA", GrpcTlsSettings { ca_certificates: None, ..pki.mutual() }, "mutual needs"),
        (
            "no certificate",
            GrpcTlsSettings { cert_chain: None, private_key: None, ..pki.mutual() },
            "mutual needs",
        ),
        (
            "only a CA",
            GrpcTlsSettings {
                ca_certificates: Some(pki.path(CA)),
                mutual: true,
                ..GrpcTlsSettings::default()
            },
            "mutual needs",
        ),
        (
            "a missing CA",
            GrpcTlsSettings { ca_certificates: Some(missing.clone()), ..pki.mutual() },
            "cannot read",
        ),
        (
            "a key as the CA",
            GrpcTlsSettings { ca_certificates: Some(pki.path(KEY)), ..pki.mutual() },
            "no PEM",
        ),
        (
            "a missing chain",
            GrpcTlsSettings { cert_chain: Some(missing.clone()), ..pki.mutual() },
            "cannot read",
        ),
        (
            "a key of another certificate",
            GrpcTlsSettings { private_key: Some(pki.path(PEER_KEY)), ..pki.mutual() },
            "do not make a TLS identity",
        ),
    ];
    for (case, tls, expected) in cases {
        let settings = GrpcSettings { tls: Some(tls), ..GrpcSettings::default() };
        let Err(error) = GrpcTransport::with_settings(settings.clone()) else {
            panic!("{case}: accepted");
        };
        assert!(matches!(error, Error::Config(_)), "{case}: {error:?}");
        assert!(error.to_string().contains(expected), "{case}: expected {expected:?} in: {error}");
        let unchecked = GrpcTransport::new(settings);
        assert!(!unchecked.capabilities().authenticated, "{case}: claims to authenticate");
        assert!(matches!(unchecked.serve(Arc::new(Echo::default())).await, Err(Error::Config(_))), "{case}");
    }

    // The registry record reads `mutual` too.
    let config = averager_core::registry::PluginConfig::new(serde_json::json!({
        "tls": { "ca_certificates": pki.path(CA), "mutual": true }
    }));
    let registry = averager_core::registry::Registry::global();
    assert!(matches!(registry.transport("grpc", config).await, Err(Error::Config(_))));
}
