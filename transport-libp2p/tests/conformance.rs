//! The Transport conformance suite over libp2p: each peer on a node of its own, the nodes of a
//! case joined through its first one, and callers dialling peer ids only.

mod common;

use averager_core::Error;
use averager_core::registry::{PluginConfig, Registry};
use averager_core::transport::Transport;
use averager_dht::PeerId;
use averager_transport_libp2p::{Libp2pConfig, Libp2pTransport, endpoint_of};

averager_conformance::transport_suite!(
    libp2p,
    {
        let peers = common::ConformancePeers::default();
        move || {
            let peers = peers.clone();
            async move { peers.make().await }
        }
    },
    unserved_endpoint = endpoint_of(&PeerId::random())
);

#[tokio::test]
async fn malformed_endpoints_are_config_errors() {
    let transport = Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node starts");
    for endpoint in ["libp2p://", "libp2p://nope", "libp2p:///ip4/127.0.0.1/tcp/1", "quic://127.0.0.1:1"] {
        assert!(matches!(transport.connect(endpoint).await, Err(Error::Config(_))), "{endpoint}");
    }
    assert!(matches!(transport.connect(&transport.endpoint()).await, Err(Error::Config(_))));
}

#[tokio::test]
async fn an_addressed_endpoint_reaches_a_peer_that_no_dht_names() {
    let server = Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node starts");
    let client = Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node starts");
    let addr = server.node().listen_addrs().into_iter().next().expect("an address");
    client.connect(&format!("libp2p://{addr}")).await.expect("the address hint is dialled");
    let unknown = Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node starts");
    let Err(error) = client.connect(&unknown.endpoint()).await else {
        panic!("a peer nobody knows the address of was reached");
    };
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn the_registry_builds_libp2p_from_a_config_and_the_identity_file_keeps_the_peer_id() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = dir.path().join("node.key");
    let config =
        PluginConfig::new(serde_json::json!({ "identity": key, "streams": { "connect_timeout": 2.5 } }));
    let first =
        Registry::global().transport("libp2p", config.clone()).await.expect("the libp2p record builds");
    assert_eq!(first.scheme(), "libp2p");
    assert!(first.capabilities().authenticated);
    let served = first
        .serve(std::sync::Arc::new(averager_conformance::hostile::Echo::default()))
        .await
        .expect("serves");
    let endpoint = served.endpoint().to_string();
    drop(served);
    drop(first);
    let again = Registry::global().transport("libp2p", config).await.expect("builds again");
    let served = again
        .serve(std::sync::Arc::new(averager_conformance::hostile::Echo::default()))
        .await
        .expect("serves");
    assert_eq!(served.endpoint(), endpoint, "the identity file did not keep the peer id");
    let bad = PluginConfig::new(serde_json::json!({ "streams": { "max_message_bytes": 0 } }));
    assert!(Registry::global().transport("libp2p", bad).await.is_err());
}
