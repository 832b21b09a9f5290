//! Kademlia-specific behaviour beyond the conformance suite: joining late, nodes leaving,
//! bootstrap failures, shutdown, the registry, and peers that send garbage.

mod common;

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use averager_core::dht::DhtDictionary;
use averager_core::registry::{PluginConfig, Registry};
use averager_core::time::dht_now;
use averager_core::{Dht, Error};
use averager_dht::{KadDht, KadSettings, Multiaddr};
use bytes::Bytes;
use libp2p::multiaddr::Protocol;

use common::{JOIN_LIMIT, start_swarm};

/// Settings whose nodes listen on TCP only, so a dial to a node that is gone fails at once
/// (QUIC would wait out its handshake timeout).
fn tcp_only() -> KadSettings {
    KadSettings {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        ..KadSettings::default()
    }
}

fn subkeys(dict: &DhtDictionary) -> BTreeSet<Vec<u8>> {
    dict.keys().map(|k| k.to_vec()).collect()
}

/// Declarations written into a three-node swarm are all found by a fourth node that joins
/// afterwards, through a node that wrote none of them, with `latest` and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_late_finds_earlier_declarations() {
    let nodes = start_swarm(3, KadSettings::default()).await;
    let exp = dht_now() + 60.0;
    let keys: Vec<String> = (0..4).map(|i| format!("late.{i}.{:x}", rand_u64())).collect();
    for (i, key) in keys.iter().enumerate() {
        for (writer, node) in nodes.iter().enumerate().take(2) {
            let subkey = format!("peer {writer}");
            let stored = node.store(key, subkey.as_bytes(), Bytes::from(format!("v{i}")), exp).await;
            assert!(stored.expect("store"), "{key} through node {writer}");
        }
    }

    let late =
        KadDht::start(KadSettings::joining(nodes[2].listen_addrs())).await.expect("the late node starts");
    late.wait_for_peers(3, JOIN_LIMIT).await.expect("the late node learns the swarm");
    let expected: BTreeSet<Vec<u8>> = [b"peer 0".to_vec(), b"peer 1".to_vec()].into();
    for key in &keys {
        for latest in [true, false] {
            let dict = late.get(key, latest).await.expect("get");
            assert_eq!(subkeys(&dict), expected, "{key}, latest = {latest}");
            assert!(dict.values().all(|e| e.expiration == exp));
        }
    }
    late.shutdown().await;
}

/// With each record on three of five nodes, a node that stored records and then shuts down
/// takes nothing with it: every other node still reads every record. Over TCP and QUIC, so each
/// survivor's first dial to the departed node waits out QUIC's handshake timeout (about 5 s);
/// later reads must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outlive_the_node_that_stored_them() {
    let settings =
        KadSettings { replication: NonZeroUsize::new(3).expect("3 > 0"), ..KadSettings::default() };
    let nodes = start_swarm(5, settings).await;
    let exp = dht_now() + 600.0;
    let keys: Vec<String> = (0..6).map(|i| format!("leave.{i}.{:x}", rand_u64())).collect();
    for key in &keys {
        assert!(nodes[0].store(key, b"leaver", Bytes::from_static(b"\xc3"), exp).await.expect("store"));
        assert!(nodes[1].store(key, b"stayer", Bytes::from_static(b"\xc2"), exp).await.expect("store"));
    }
    nodes[0].shutdown().await;
    assert!(matches!(nodes[0].get(&keys[0], true).await, Err(Error::Dht(_))), "a stopped node refuses calls");

    let expected: BTreeSet<Vec<u8>> = [b"leaver".to_vec(), b"stayer".to_vec()].into();
    for reader in &nodes[1..] {
        let mut slow = Vec::new();
        for key in &keys {
            let started = std::time::Instant::now();
            let dict = reader.get(key, true).await.expect("get");
            assert_eq!(subkeys(&dict), expected, "{key} read through {}", reader.peer_id());
            if started.elapsed() > Duration::from_secs(3) {
                slow.push(started.elapsed());
            }
        }
        // The first read that dials the departed node may wait for that dial to fail; once it has
        // failed, the reader stops dialling it. (Reads take milliseconds otherwise; the bound is
        // loose for a loaded machine.)
        assert!(slow.len() <= 1, "reads through {} waited {slow:?}", reader.peer_id());
    }
    // The swarm still takes writes, and the departed node is no longer waited for.
    assert!(nodes[2].store(&keys[0], b"after", Bytes::new(), exp).await.expect("store after the departure"));
    assert_eq!(nodes[4].get(&keys[0], true).await.expect("get").len(), 3);
}

/// Listen addresses end in the node's `/p2p/<peer id>`, on TCP and QUIC by default.
#[tokio::test]
async fn listen_addresses_name_the_node_on_tcp_and_quic() {
    let node = KadDht::start(KadSettings::default()).await.expect("start");
    let addrs = node.listen_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for addr in &addrs {
        assert_eq!(addr.iter().last(), Some(Protocol::P2p(node.peer_id())), "{addr}");
        assert!(addr.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback())), "{addr}");
    }
    assert!(addrs.iter().any(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(port) if port != 0))));
    assert!(addrs.iter().any(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1))));
    assert_eq!(node.known_peers(), 0);
    node.shutdown().await;
    node.shutdown().await; // a second shutdown does nothing
}

/// Two nodes joined over QUIC alone still share records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_quic_alone() {
    let quic = KadSettings {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("a multiaddr")],
        ..KadSettings::default()
    };
    let nodes = start_swarm(2, quic).await;
    let exp = dht_now() + 30.0;
    assert!(nodes[0].store("over-quic", b"s", Bytes::from_static(b"v"), exp).await.expect("store"));
    let dict = nodes[1].get("over-quic", true).await.expect("get");
    assert_eq!(dict[b"s".as_slice()].value, Bytes::from_static(b"v"));
}

/// A node whose bootstrap peers cannot be reached fails to start with `Error::Unreachable`.
#[tokio::test]
async fn unreachable_bootstrap_peers_fail_the_start() {
    match KadDht::start(KadSettings::joining(vec![closed_tcp_addr()])).await {
        Err(Error::Unreachable { .. }) => {}
        other => panic!("expected Error::Unreachable, got {other:?}"),
    }
}

/// One reachable bootstrap peer among dead ones is enough to join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_bootstrap_peer_is_enough() {
    let live = KadDht::start(tcp_only()).await.expect("start");
    let mut bootstrap = vec![closed_tcp_addr(), closed_tcp_addr()];
    bootstrap.extend(live.listen_addrs());
    let joined =
        KadDht::start(KadSettings { bootstrap, ..tcp_only() }).await.expect("joins through the live peer");
    joined.wait_for_peers(1, JOIN_LIMIT).await.expect("the live peer enters the table");
    live.wait_for_peers(1, JOIN_LIMIT).await.expect("and the joined node enters the live peer's");
}

/// Invalid settings are a configuration error, before anything listens.
#[tokio::test]
async fn invalid_settings_fail_the_start() {
    let bad = KadSettings { max_record_bytes: 10, ..KadSettings::default() };
    assert!(matches!(KadDht::start(bad).await, Err(Error::Config(_))));
    let deaf = KadSettings { listen: Vec::new(), ..KadSettings::default() };
    assert!(matches!(KadDht::start(deaf).await, Err(Error::Config(_))));
    let unsupported = KadSettings {
        listen: vec!["/dns4/example.invalid/tcp/1".parse().expect("a multiaddr")],
        ..KadSettings::default()
    };
    assert!(matches!(KadDht::start(unsupported).await, Err(Error::Config(_))));
}

/// Dropping a node stops it: its port stops accepting, so joining through it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_node_stops_it() {
    let node = KadDht::start(tcp_only()).await.expect("start");
    let addrs = node.listen_addrs();
    drop(node);
    // The node's task ends at its next turn, on another thread: poll, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match KadDht::start(KadSettings { bootstrap: addrs.clone(), ..tcp_only() }).await {
            Err(Error::Unreachable { .. }) => break,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(joined) => {
                drop(joined);
                assert!(tokio::time::Instant::now() < deadline, "the dropped node still accepts peers");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The registry builds `kad` nodes from JSON settings, including whom to join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_joined_nodes() {
    let first = Registry::global()
        .dht(KadDht::NAME, PluginConfig::new(serde_json::json!({"listen": ["/ip4/127.0.0.1/tcp/0"]})))
        .await
        .expect("the first node");
    assert_eq!(first.name(), "kad");
    let entry = Registry::global().dhts().into_iter().find(|p| p.name == "kad").expect("registered");
    assert!(entry.origin.starts_with("averager_dht"), "{entry:?}");

    // The registry hands out `dyn Dht`; start a typed node to learn an address to join.
    let anchor = KadDht::start(tcp_only()).await.expect("anchor");
    let config = serde_json::json!({
        "listen": ["/ip4/127.0.0.1/tcp/0"],
        "bootstrap": anchor.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_subkeys_per_key": 7,
    });
    let joined = Registry::global().dht(KadDht::NAME, PluginConfig::new(config)).await.expect("joined node");
    assert_eq!(joined.capabilities().max_subkeys_per_key, 7);
    assert!(!joined.client_mode());
    anchor.wait_for_peers(1, JOIN_LIMIT).await.expect("the anchor learns the joined node");
    let exp = dht_now() + 30.0;
    assert!(joined.store("via-registry", b"s", Bytes::from_static(b"v"), exp).await.expect("store"));
    assert_eq!(anchor.get("via-registry", true).await.expect("get").len(), 1);

    let bad = PluginConfig::new(serde_json::json!({"listen": "not a list"}));
    assert!(matches!(Registry::global().dht(KadDht::NAME, bad).await, Err(Error::Config(_))));
    drop(first);
}

/// A TCP address nobody listens on: a port just released by a listener of our own.
fn closed_tcp_addr() -> Multiaddr {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("a multiaddr")
}

fn rand_u64() -> u64 {
    rand::random()
}
