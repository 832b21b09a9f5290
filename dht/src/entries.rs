//! The node's DHT entries ([`Libp2pNode::store_entry`], [`Libp2pNode::get_entries`]), which
//! [`KadDht`](crate::KadDht) offers as its [`Dht`](averager_core::Dht), and the one record the
//! node publishes by itself: its relayed addresses.
//!
//! A node reachable only through relays is first heard of with its private addresses; its
//! relayed (`/p2p-circuit`) addresses reach others through identify and Kademlia a moment later,
//! and only from peers connected to it. So it also declares them under a key of its own, signed
//! (the subkey is its endpoint, see [`crate::signed`]: nobody else can publish or withdraw
//! addresses in its name). A peer that cannot dial it otherwise reads them there.

use std::sync::Arc;
use std::time::Duration;

use averager_core::dht::{DhtDictionary, DhtEntry};
use averager_core::time::{DhtTime, dht_now};
use averager_core::{Error, Result};
use bytes::Bytes;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::driver::Command;
use crate::node::{Libp2pNode, REPLY_GRACE};
use crate::{record, signed};

/// How many query timeouts a store may take: Kademlia runs it as two queries (find the closest
/// peers, then send them the record), each with its own timeout.
const STORE_PHASES: u32 = 2;

/// How long a declaration of relayed addresses lives; it is renewed every half of that.
pub const RELAYED_ADDRS_TTL: Duration = Duration::from_secs(600);

/// The most relayed addresses declared or read per peer, and the longest one read.
const MAX_RELAYED_ADDRS: usize = 8;
const MAX_ADDR_BYTES: usize = 512;

impl Libp2pNode {
    /// Stores one DHT entry (signed when its subkey names a peer): merges it into the local
    /// replica, which decides the answer by protocol 2.3's rule, then sends it to the
    /// `replication` peers closest to the key.
    pub(crate) async fn store_entry(
        &self,
        key: &str,
        subkey: &[u8],
        value: Bytes,
        expiration: DhtTime,
    ) -> Result<bool> {
        if !expiration.is_finite() {
            return Err(Error::Dht(format!("expiration {expiration} of {key:?} is not finite")));
        }
        let max = self.settings().max_value_bytes;
        // A signed entry carries its signature in the value.
        let overhead = if signed::named_peer(subkey).is_some() { signed::SIGNED_OVERHEAD } else { 0 };
        if value.len() + overhead > max {
            return Err(Error::Dht(format!(
                "value of {} bytes under {key:?} exceeds the limit of {} bytes{}",
                value.len(),
                max - overhead.min(max),
                if overhead > 0 { " (a signed entry's)" } else { "" }
            )));
        }
        if expiration <= dht_now() {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        let record_key = record::record_key(key);
        let entry = signed::sign(self.keypair(), &record_key, subkey, DhtEntry { value, expiration })
            .map_err(|why| Error::Dht(format!("refused to store under {key:?}: {why}")))?;
        let command =
            Command::Store { key: record_key, subkey: Bytes::copy_from_slice(subkey), entry, reply };
        let limit = self.settings().query_timeout * STORE_PHASES + REPLY_GRACE;
        self.call("store", key, command, limit, answer).await
    }

    /// Reads a key: with `latest`, the union of the closest peers' answers and the local
    /// replica's; without it, the local replica when it holds entries of the key, else the
    /// network. Signatures were checked on the way in and are stripped here.
    pub(crate) async fn get_entries(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Get { key: record::record_key(key), latest, reply };
        let limit = self.settings().query_timeout + REPLY_GRACE;
        let entries = self.call("get", key, command, limit, answer).await?;
        Ok(entries
            .into_iter()
            .map(|(subkey, entry)| (subkey.clone(), signed::strip(&subkey, entry)))
            .collect())
    }

    /// Declares this node's relayed addresses in the DHT for [`RELAYED_ADDRS_TTL`]; false (and
    /// nothing stored) when it has none, or the store was refused as stale.
    ///
    /// # Errors
    /// The DHT's error.
    pub async fn publish_relayed_addrs(&self) -> Result<bool> {
        let peer = self.peer_id();
        let circuits: Vec<Multiaddr> =
            self.listen_addrs().into_iter().filter(is_circuit).take(MAX_RELAYED_ADDRS).collect();
        if circuits.is_empty() {
            return Ok(false);
        }
        let expiration = dht_now() + RELAYED_ADDRS_TTL.as_secs_f64();
        self.store_entry(&relayed_key(&peer), &endpoint_subkey(&peer), encode(&circuits), expiration).await
    }

    /// Keeps [`Libp2pNode::publish_relayed_addrs`] current: at once, whenever the listen
    /// addresses change, and every half [`RELAYED_ADDRS_TTL`], until the task is aborted or the
    /// node stops. A node with no relays publishes nothing.
    pub fn spawn_relayed_addrs_publisher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut addrs = node.watch_listen_addrs();
            let mut renew = tokio::time::interval(RELAYED_ADDRS_TTL / 2);
            loop {
                tokio::select! {
                    _ = renew.tick() => {}
                    changed = addrs.changed() => if changed.is_err() { return },
                }
                if let Err(e) = node.publish_relayed_addrs().await {
                    tracing::debug!(error = %e, "cannot declare the relayed addresses yet");
                }
            }
        })
    }

    /// The relayed addresses `peer` declared (see the module docs); empty when it declared none
    /// or the read failed.
    pub async fn relayed_addrs_of(&self, peer: PeerId) -> Vec<Multiaddr> {
        let entries = match self.get_entries(&relayed_key(&peer), true).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot read the peer's relayed addresses");
                return Vec::new();
            }
        };
        let subkey = endpoint_subkey(&peer);
        entries.get(subkey.as_slice()).map(|entry| decode(&entry.value, peer)).unwrap_or_default()
    }
}

fn relayed_key(peer: &PeerId) -> String {
    format!("averager/relayed-addrs/{peer}")
}

/// The peer's endpoint as the subkey: entries under it must carry the peer's signature.
fn endpoint_subkey(peer: &PeerId) -> Vec<u8> {
    format!("libp2p://{peer}").into_bytes()
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// One address per line.
fn encode(addrs: &[Multiaddr]) -> Bytes {
    Bytes::from(addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
}

/// The circuit addresses of `peer` in a declared value: at most [`MAX_RELAYED_ADDRS`], each
/// ending in `/p2p/<peer>`; anything else is skipped (the value came from the network, though
/// signed by the peer).
fn decode(value: &[u8], peer: PeerId) -> Vec<Multiaddr> {
    let Ok(text) = std::str::from_utf8(value) else { return Vec::new() };
    text.lines()
        .filter(|line| line.len() <= MAX_ADDR_BYTES)
        .filter_map(|line| line.parse::<Multiaddr>().ok())
        .filter(is_circuit)
        .filter_map(|addr| match addr.iter().last() {
            Some(Protocol::P2p(id)) if id == peer => Some(addr),
            Some(Protocol::P2p(_)) => None,
            _ => Some(addr.with(Protocol::P2p(peer))),
        })
        .take(MAX_RELAYED_ADDRS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_addresses_come_back_as_circuits_to_their_peer_only() {
        let (peer, relay, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}").parse().unwrap();
        let bare: Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
        assert_eq!(decode(&encode(std::slice::from_ref(&circuit)), peer), vec![circuit.clone()]);
        let mut value = encode(std::slice::from_ref(&bare)).to_vec();
        // Another peer's circuit, a direct address, garbage, an oversized line: all skipped.
        value.extend_from_slice(
            format!("\n/ip4/10.0.0.3/tcp/1/p2p/{relay}/p2p-circuit/p2p/{other}").as_bytes(),
        );
        value.extend_from_slice(b"\n/ip4/10.0.0.4/tcp/1\nnot an address\n");
        value.extend_from_slice(&vec![b'/'; MAX_ADDR_BYTES + 1]);
        assert_eq!(decode(&value, peer), vec![bare.with(Protocol::P2p(peer))]);
        assert!(decode(&[0xff, 0xfe], peer).is_empty());
        let many: Vec<Multiaddr> = (0..20).map(|_| circuit.clone()).collect();
        assert_eq!(decode(&encode(&many), peer).len(), MAX_RELAYED_ADDRS);
    }

    #[tokio::test]
    async fn a_peer_reads_the_relayed_addresses_another_declared_and_nobody_forges_them() {
        let nodes = crate::signed_tests::swarm(3).await;
        let (owner, forger, reader) = (&nodes[0], &nodes[1], &nodes[2]);
        let peer = owner.peer_id();
        let relay = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}").parse().unwrap();
        let expiration = dht_now() + 120.0;
        let (key, subkey) = (relayed_key(&peer), endpoint_subkey(&peer));
        let value = encode(std::slice::from_ref(&circuit));
        assert!(owner.store_entry(&key, &subkey, value, expiration).await.expect("stores"));
        assert_eq!(reader.relayed_addrs_of(peer).await, vec![circuit.clone()]);

        let elsewhere: Multiaddr =
            format!("/ip4/10.9.9.9/tcp/1/p2p/{relay}/p2p-circuit/p2p/{peer}").parse().unwrap();
        let forged = forger.store_entry(&key, &subkey, encode(&[elsewhere]), expiration + 1.0).await;
        assert!(forged.is_err(), "addresses declared in another's name were accepted: {forged:?}");
        assert_eq!(reader.relayed_addrs_of(peer).await, vec![circuit]);
        // A node with no relays has nothing to declare.
        assert!(!reader.publish_relayed_addrs().await.expect("no store needed"));
        assert!(owner.relayed_addrs_of(reader.peer_id()).await.is_empty());
        for node in &nodes {
            node.shutdown().await;
        }
    }
}
