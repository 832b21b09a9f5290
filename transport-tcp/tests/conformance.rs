//! The Transport conformance suite over TCP, endpoint parsing, settings and the registry record.

use std::sync::Arc;

use averager_core::Error;
use averager_core::registry::{PluginConfig, Registry};
use averager_core::transport::Transport;
use averager_transport_tcp::{TcpSettings, TcpTransport};

averager_conformance::transport_suite!(tcp, || async {
    Arc::new(TcpTransport::default()) as Arc<dyn Transport>
}, lacks: [authenticated]);

#[tokio::test]
async fn malformed_endpoints_and_settings_are_config_errors() {
    let client = TcpTransport::default();
    for endpoint in ["tcp://127.0.0.1", "tcp://:5", "tcp://127.0.0.1:99999", "quic://127.0.0.1:1", "mem://x"]
    {
        assert!(matches!(client.connect(endpoint).await, Err(Error::Config(_))), "{endpoint}");
    }
    let zero_cap = TcpSettings { max_message_bytes: 0, ..TcpSettings::default() };
    assert!(TcpTransport::with_settings(zero_cap).is_err());
    let zero_wait =
        TcpSettings { first_request_timeout: std::time::Duration::ZERO, ..TcpSettings::default() };
    assert!(TcpTransport::with_settings(zero_wait).is_err());
}

#[tokio::test]
async fn the_served_endpoint_names_the_advertised_host() {
    let settings = TcpSettings { listen: "0.0.0.0:0".parse().expect("an address"), ..TcpSettings::default() };
    let transport = TcpTransport::with_settings(settings).expect("valid settings");
    let handle = transport.serve(echo()).await.expect("serve");
    assert!(handle.endpoint().starts_with("tcp://127.0.0.1:"), "{}", handle.endpoint());
    TcpTransport::default().connect(handle.endpoint()).await.expect("the advertised endpoint connects");

    let settings = TcpSettings { advertise_host: Some("peer.example".into()), ..TcpSettings::default() };
    let transport = TcpTransport::with_settings(settings).expect("valid settings");
    let handle = transport.serve(echo()).await.expect("serve");
    assert!(handle.endpoint().starts_with("tcp://peer.example:"), "{}", handle.endpoint());
}

#[tokio::test]
async fn the_registry_builds_tcp_from_a_config() {
    let config = PluginConfig::new(serde_json::json!({ "listen": "127.0.0.1:0", "connect_timeout": 2.5 }));
    let transport = Registry::global().transport("tcp", config).await.expect("the tcp record builds");
    assert_eq!(transport.scheme(), "tcp");
    let bad = PluginConfig::new(serde_json::json!({ "max_message_bytes": 0 }));
    assert!(Registry::global().transport("tcp", bad).await.is_err());
    let unknown = PluginConfig::new(serde_json::json!({ "pin": "abc" }));
    assert!(Registry::global().transport("tcp", unknown).await.is_err());
}

fn echo() -> Arc<dyn averager_core::transport::AveragingService> {
    Arc::new(averager_conformance::hostile::Echo::default())
}
