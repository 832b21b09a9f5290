//! A peer that speaks the node's Kademlia protocol but sends garbage: the node ignores what is
//! malformed, holds the peer to its share of the store, and keeps serving everyone else.

mod common;

use std::collections::HashSet;

use averager_core::Dht;
use averager_core::time::dht_now;
use averager_dht::{KadDht, KadSettings};
use bytes::Bytes;
use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, QueryId, Quorum, Record, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, identify, noise, tcp, yamux};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// A plain Kademlia peer on the node's protocol, with a store that keeps whatever it is given.
#[derive(NetworkBehaviour)]
struct Hostile {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

fn hostile_swarm() -> Swarm<Hostile> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut config = kad::Config::new(StreamProtocol::new("/averager/kad/1.0.0"));
            config.set_max_packet_size(1 << 20);
            let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), config);
            kad.set_mode(Some(kad::Mode::Server));
            let identify =
                identify::Behaviour::new(identify::Config::new("/averager/id/1.0.0".into(), key.public()));
            Hostile { kad, identify }
        })
        .expect("behaviour")
        .build()
}

fn record_key(key: &str) -> RecordKey {
    RecordKey::new(&Sha256::digest(key.as_bytes()))
}

/// A record value in the node's format, from raw parts (so it can be wrong in any way).
fn value(version: u8, entries: &[(&str, &[u8], f64)]) -> Vec<u8> {
    let entries: Vec<(ByteBuf, ByteBuf, f64)> = entries
        .iter()
        .map(|(subkey, value, exp)| (ByteBuf::from(subkey.as_bytes()), ByteBuf::from(value.to_vec()), *exp))
        .collect();
    rmp_serde::to_vec(&(version, entries)).expect("encodes")
}

/// Awaits `work` while the hostile peer answers whatever the node asks it.
async fn answering<T>(swarm: &mut Swarm<Hostile>, work: impl std::future::Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = swarm.select_next_some() => {}
        }
    }
}

/// Drives the hostile swarm until every query in `pending` has finished.
async fn finish_queries(swarm: &mut Swarm<Hostile>, mut pending: HashSet<QueryId>) {
    let deadline = tokio::time::Instant::now() + common::JOIN_LIMIT;
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await.expect("puts finish");
        if let SwarmEvent::Behaviour(HostileEvent::Kad(kad::Event::OutboundQueryProgressed {
            id, step, ..
        })) = event
            && step.last
        {
            pending.remove(&id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_excess_records_from_a_peer_are_ignored() {
    common::init_logs();
    let settings = KadSettings {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        max_records_per_peer: 2,
        max_subkeys_per_key: 8,
        ..KadSettings::default()
    };
    let node = KadDht::start(settings).await.expect("node");
    let mut hostile = hostile_swarm();
    hostile.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")).expect("listen");
    let node_addr = node.listen_addrs()[0].clone();
    hostile.behaviour_mut().kad.add_address(&node.peer_id(), node_addr.clone());
    hostile.dial(node_addr).expect("dial");

    // Let identify run until the node has the hostile peer in its routing table, so the node's
    // reads will ask it too.
    let deadline = tokio::time::Instant::now() + common::JOIN_LIMIT;
    while node.known_peers() < 1 {
        let _ = tokio::time::timeout_at(deadline, hostile.select_next_some())
            .await
            .expect("the node learns the peer");
    }

    let exp = dht_now() + 120.0;
    let victim = "victim";
    let honest =
        answering(&mut hostile, node.store(victim, b"honest", Bytes::from_static(b"\xc3"), exp)).await;
    assert!(honest.expect("honest store"));

    let too_many: Vec<(String, &[u8], f64)> = (0..9).map(|i| (format!("s{i}"), &b"v"[..], exp)).collect();
    let too_many: Vec<(&str, &[u8], f64)> = too_many.iter().map(|(s, v, e)| (s.as_str(), *v, *e)).collect();
    let garbage: Vec<Vec<u8>> = vec![
        b"\xde\xad\xbe\xef".to_vec(),
        value(2, &[("evil", b"v", exp)]),
        value(1, &[("evil", b"v", f64::NAN)]),
        value(1, &[("evil", b"v", f64::INFINITY)]),
        value(1, &too_many),
        value(1, &[("evil", &vec![0u8; 70 << 10], exp)]),
        // Over the node's record limit (and its message cap): refused before it is decoded.
        vec![0x90; 400 << 10],
    ];
    let node_id = node.peer_id();
    let put = |swarm: &mut Swarm<Hostile>, key: RecordKey, value: Vec<u8>| {
        swarm.behaviour_mut().kad.put_record_to(
            Record::new(key, value),
            std::iter::once(node_id),
            Quorum::One,
        )
    };
    let mut pending = HashSet::new();
    for bad in &garbage {
        pending.insert(put(&mut hostile, record_key(victim), bad.clone()));
    }
    // Valid records for five new keys: the node takes only its per-peer share of two.
    let flood: Vec<String> = (0..5).map(|i| format!("flood.{i}")).collect();
    for key in &flood {
        pending.insert(put(&mut hostile, record_key(key), value(1, &[("flooder", b"v", exp)])));
    }
    // One valid entry for the victim key merges in beside the honest one.
    pending.insert(put(&mut hostile, record_key(victim), value(1, &[("remote", b"ok", exp)])));
    finish_queries(&mut hostile, pending).await;

    // The hostile peer also answers reads of the victim key with garbage from its own store.
    hostile
        .behaviour_mut()
        .kad
        .store_mut()
        .put(Record::new(record_key(victim), value(1, &[("evil", b"v", f64::NAN)])))
        .expect("the hostile store keeps anything");

    let dict = answering(&mut hostile, node.get(victim, true)).await.expect("get");
    let subkeys: Vec<&[u8]> = dict.keys().map(|k| k.as_ref()).collect();
    assert_eq!(subkeys, vec![&b"honest"[..], &b"remote"[..]], "only well-formed entries survive");
    let mut held = 0;
    for key in &flood {
        if !answering(&mut hostile, node.get(key, false)).await.expect("get").is_empty() {
            held += 1;
        }
    }
    assert_eq!(held, 2, "the node took {held} keys from one peer, over its share of 2");
    let after =
        answering(&mut hostile, node.store("after", b"s", Bytes::from_static(b"v"), dht_now() + 60.0));
    assert!(after.await.expect("a store after all that"));
}
