//! The Transport conformance suite over QUIC, and the certificate pin.

use std::sync::Arc;

use averager_core::Error;
use averager_core::registry::{PluginConfig, Registry};
use averager_core::transport::{AveragingService, Transport};
use averager_transport_quic::{QuicSettings, QuicTransport};

averager_conformance::transport_suite!(quic, || async {
    Arc::new(QuicTransport::default()) as Arc<dyn Transport>
}, lacks: [authenticated]);

/// A served peer; any service will do for the pin tests, which make no call.
async fn served() -> (QuicTransport, averager_core::transport::ServerHandle) {
    let server = QuicTransport::default();
    let handle = server.serve(Arc::new(Refuse) as Arc<dyn AveragingService>).await.expect("serve");
    (server, handle)
}

struct Refuse;

#[async_trait::async_trait]
impl AveragingService for Refuse {
    async fn rpc_join_group(
        &self,
        _: averager_core::transport::CallContext,
        _: averager_core::transport::JoinRequest,
    ) -> averager_core::Result<
        averager_core::transport::MessageStream<averager_core::transport::MessageFromLeader>,
    > {
        Err(Error::Internal("refused".into()))
    }

    async fn rpc_aggregate_part(
        &self,
        _: averager_core::transport::CallContext,
        _: averager_core::transport::MessageStream<averager_core::transport::AveragingData>,
    ) -> averager_core::Result<averager_core::transport::MessageStream<averager_core::transport::AveragingData>>
    {
        Err(Error::Internal("refused".into()))
    }

    async fn rpc_download_state(
        &self,
        _: averager_core::transport::CallContext,
        _: averager_core::transport::DownloadRequest,
    ) -> averager_core::Result<averager_core::transport::MessageStream<averager_core::transport::DownloadData>>
    {
        Err(Error::Internal("refused".into()))
    }
}

#[tokio::test]
async fn served_endpoint_carries_its_pin_and_the_right_pin_connects() {
    let (_server, handle) = served().await;
    let (address, pin) = handle.endpoint().split_once('#').expect("the served endpoint has a #pin");
    assert!(address.starts_with("quic://127.0.0.1:"), "{address}");
    assert_eq!(pin.len(), 64);
    let client = QuicTransport::default();
    client.connect(handle.endpoint()).await.expect("the right pin connects");
    client.connect(address).await.expect("no pin: any certificate is accepted");
}

#[tokio::test]
async fn a_wrong_pin_is_refused_at_connect() {
    let (_server, handle) = served().await;
    let (address, pin) = handle.endpoint().split_once('#').expect("the served endpoint has a #pin");
    let wrong: String = pin.chars().rev().collect();
    let wrong = if wrong == pin { "0".repeat(64) } else { wrong };
    let client = QuicTransport::default();
    let Err(error) = client.connect(&format!("{address}#{wrong}")).await else {
        panic!("a wrong pin connected");
    };
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("pin mismatch"), "{error}");

    // A wrong pin in the settings applies to endpoints without one.
    let settings = QuicSettings { pin: Some(wrong), ..QuicSettings::default() };
    let client = QuicTransport::with_settings(settings).expect("valid settings");
    let Err(error) = client.connect(address).await else {
        panic!("a wrong settings pin connected");
    };
    assert!(error.to_string().contains("pin mismatch"), "{error}");
}

#[tokio::test]
async fn malformed_pins_and_endpoints_are_config_errors() {
    let client = QuicTransport::default();
    for endpoint in
        ["quic://127.0.0.1:1#abc", "quic://127.0.0.1", "quic://:5", "quic://127.0.0.1:99999", "mem://x"]
    {
        assert!(matches!(client.connect(endpoint).await, Err(Error::Config(_))), "{endpoint}");
    }
    let settings = QuicSettings { max_message_bytes: 0, ..QuicSettings::default() };
    assert!(QuicTransport::with_settings(settings).is_err());
}

#[tokio::test]
async fn the_registry_builds_quic_from_a_config() {
    let config = PluginConfig::new(serde_json::json!({ "listen": "127.0.0.1:0", "connect_timeout": 2.5 }));
    let transport = Registry::global().transport("quic", config).await.expect("the quic record builds");
    assert_eq!(transport.scheme(), "quic");
    let bad = PluginConfig::new(serde_json::json!({ "pin": "not-hex" }));
    assert!(Registry::global().transport("quic", bad).await.is_err());
}
