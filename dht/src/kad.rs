//! [`KadDht`]: the [`Dht`] a [`Libp2pNode`] offers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::dht::{DhtCapabilities, DhtDictionary};
use averager_core::time::DhtTime;
use averager_core::{Dht, Result};
use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

use crate::node::Libp2pNode;
use crate::settings::KadSettings;

/// A DHT on libp2p Kademlia, holding protocol 2.3 dictionaries (see the crate docs): a handle onto a
/// [`Libp2pNode`].
///
/// [`KadDht::start`] starts a node of its own with a new identity; [`KadDht::with_node`] uses a
/// node that other protocols share. [`KadDht::shutdown`] stops the node, and so does dropping
/// the last handle onto it. Share one DHT between tasks as an `Arc<KadDht>` (or an `Arc<dyn Dht>`).
#[derive(Debug, Clone)]
pub struct KadDht {
    node: Arc<Libp2pNode>,
}

impl KadDht {
    /// The registry name of this backend.
    pub const NAME: &'static str = "kad";

    /// Starts a node with a new identity (see [`Libp2pNode::start`]) and returns its DHT.
    ///
    /// # Errors
    /// As [`Libp2pNode::start`].
    pub async fn start(settings: KadSettings) -> Result<KadDht> {
        let node = Libp2pNode::start(settings, Keypair::generate_ed25519()).await?;
        Ok(KadDht::with_node(Arc::new(node)))
    }

    /// The DHT of a running `node`.
    pub fn with_node(node: Arc<Libp2pNode>) -> KadDht {
        KadDht { node }
    }

    /// The node under this DHT.
    pub fn node(&self) -> &Arc<Libp2pNode> {
        &self.node
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The settings the node was started with.
    pub fn settings(&self) -> &KadSettings {
        self.node.settings()
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`: what another node
    /// passes as [`KadSettings::bootstrap`] to join through this one.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.node.listen_addrs()
    }

    /// How many peers the node's routing table holds now.
    pub fn known_peers(&self) -> usize {
        self.node.known_peers()
    }

    /// Waits until the routing table holds at least `peers` peers.
    ///
    /// # Errors
    /// [`Error::Timeout`](averager_core::Error::Timeout) when it does not within `limit`;
    /// [`Error::Dht`](averager_core::Error::Dht) when the node stops.
    pub async fn wait_for_peers(&self, peers: usize, limit: Duration) -> Result<()> {
        self.node.wait_for_peers(peers, limit).await
    }

    /// Stops the node (for every protocol sharing it): closes its connections and listeners and
    /// waits (at most ten seconds) for its task to end. Calls made afterwards fail with
    /// [`Error::Dht`](averager_core::Error::Dht); a second call does nothing.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}

#[async_trait]
impl Dht for KadDht {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> DhtCapabilities {
        DhtCapabilities {
            max_value_bytes: self.settings().max_value_bytes,
            max_subkeys_per_key: self.settings().max_subkeys_per_key,
        }
    }

    /// Merges the entry into the local replica (which decides the answer, by protocol 2.3's rule),
    /// then sends it to the `replication` peers closest to the key and returns once they have
    /// answered (or the query timed out).
    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        self.node.store_entry(key, subkey, value, expiration).await
    }

    /// With `latest`, asks the `replication` peers closest to the key and returns the union of
    /// their answers and the local replica's; without it, answers from the local replica when it
    /// holds entries of the key, and asks the network otherwise.
    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        self.node.get_entries(key, latest).await
    }
}
