//! A forger on the network: entries in another peer's name, signed by the forger or not signed,
//! are refused by every honest node on store and never returned by a read, even when the
//! forger's own replica holds them.

use std::sync::Arc;
use std::time::Duration;

use averager_core::Dht;
use averager_core::dht::DhtEntry;
use averager_core::time::dht_now;
use bytes::Bytes;
use libp2p::identity::Keypair;
use tokio::sync::oneshot;

use crate::driver::Command;
use crate::node::Libp2pNode;
use crate::settings::KadSettings;
use crate::{KadDht, record, signed};

const JOIN_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn swarm(n: usize) -> Vec<Arc<Libp2pNode>> {
    let mut nodes: Vec<Arc<Libp2pNode>> = Vec::new();
    for _ in 0..n {
        let bootstrap = nodes.iter().flat_map(|node| node.listen_addrs()).collect();
        let node = Libp2pNode::start(KadSettings::joining(bootstrap), Keypair::generate_ed25519()).await;
        nodes.push(Arc::new(node.expect("a node starts")));
    }
    for node in &nodes {
        node.wait_for_peers(n - 1, JOIN_LIMIT).await.expect("the swarm joins");
    }
    nodes
}

/// Stores `entry` as is through `node`'s task, skipping the handle's signing: a hostile node.
async fn store_raw(node: &Libp2pNode, key: &str, subkey: &[u8], entry: DhtEntry) {
    let (reply, answer) = oneshot::channel();
    let command =
        Command::Store { key: record::record_key(key), subkey: Bytes::copy_from_slice(subkey), entry, reply };
    let _ = node.call("store", key, command, Duration::from_secs(30), answer).await;
}

#[tokio::test]
async fn forged_and_unsigned_entries_are_refused_on_store_and_never_read() {
    let nodes = swarm(3).await;
    let (owner, forger, reader) = (&nodes[0], &nodes[1], &nodes[2]);
    let subkey = format!("libp2p://{}", owner.peer_id()).into_bytes();
    let key = "run.0b";
    let expiration = dht_now() + 120.0;

    let owner_dht = KadDht::with_node(Arc::clone(owner));
    assert!(owner_dht.store(key, &subkey, Bytes::from_static(&[0xc3]), expiration).await.expect("stores"));

    // Through the public API, another peer cannot even try.
    let forger_dht = KadDht::with_node(Arc::clone(forger));
    let refused = forger_dht.store(key, &subkey, Bytes::from_static(&[0xc2]), expiration + 1.0).await;
    assert!(refused.is_err(), "a store in another's name was accepted: {refused:?}");

    // A hostile node bypasses it: a withdrawal signed with its own key, then an unsigned one,
    // both later than the owner's entry, so the merging rule alone would let them win.
    let withdrawal = DhtEntry { value: Bytes::from_static(&[0xc2]), expiration: expiration + 1.0 };
    let record_key = record::record_key(key);
    store_raw(forger, key, &subkey, signed::forge(forger.keypair(), &record_key, &subkey, &withdrawal)).await;
    let unsigned = DhtEntry { value: Bytes::from_static(&[0xc2]), expiration: expiration + 2.0 };
    store_raw(forger, key, &subkey, unsigned).await;

    for (who, node) in [("the reader", reader), ("the owner", owner)] {
        let read = KadDht::with_node(Arc::clone(node)).get(key, true).await.expect("reads");
        let entry = read.get(subkey.as_slice()).expect("the owner's declaration is there");
        assert_eq!(entry.value.as_ref(), [0xc3], "{who} read a forged withdrawal");
        assert_eq!(entry.expiration, expiration, "{who} read a forged entry");
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn declarations_of_two_peers_read_back_through_the_core() {
    use averager_core::records::{declare, declared_peers};
    let nodes = swarm(3).await;
    let dhts: Vec<KadDht> = nodes.iter().map(|n| KadDht::with_node(Arc::clone(n))).collect();
    let expiration = dht_now() + 60.0;
    for (dht, node) in dhts.iter().zip(&nodes) {
        let endpoint = format!("libp2p://{}", node.peer_id());
        assert!(declare(dht, "run.0b", &endpoint, expiration).await.expect("declares"));
    }
    for dht in &dhts {
        let peers = declared_peers(dht, "run.0b", true).await.expect("reads");
        assert_eq!(peers.len(), 3, "{peers:?}");
    }
}
