//! Kademlia nodes for the peers of this process (feature `kad`): each peer gets its own node on
//! loopback, and every node after the first joins through the first, or through the
//! `--bootstrap` addresses when there are any.

use std::sync::Arc;

use averager::Dht;
use averager::dht::{KadDht, KadSettings, Multiaddr};

use crate::Result;
use crate::failure::{Context, Failure};

/// Whether this binary has a Kademlia DHT.
pub(crate) const AVAILABLE: bool = true;

/// The Kademlia nodes this process started.
pub(crate) struct KadNodes {
    /// Addresses of running nodes elsewhere to join through; empty: join through our first node.
    bootstrap: Vec<Multiaddr>,
    nodes: Vec<Arc<KadDht>>,
}

impl KadNodes {
    /// No nodes yet; later nodes join through `bootstrap` (multiaddrs with `/p2p/<peer id>`).
    ///
    /// # Errors
    /// When a bootstrap address is not a multiaddr.
    pub(crate) fn new(bootstrap: &[String]) -> Result<Self> {
        let bootstrap = bootstrap.iter().map(|a| parse(a, "--bootstrap")).collect::<Result<_>>()?;
        Ok(KadNodes { bootstrap, nodes: Vec::new() })
    }

    /// Starts one more node listening on `listen` (a multiaddr); it returns once it has joined.
    ///
    /// # Errors
    /// When `listen` is not a multiaddr, or the node cannot listen or reach a bootstrap peer.
    pub(crate) async fn start_node(&mut self, listen: &str) -> Result<Arc<dyn Dht>> {
        let listen = parse(listen, "DHT listen address")?;
        let bootstrap = if self.bootstrap.is_empty() {
            self.nodes.first().map(|first| first.listen_addrs()).unwrap_or_default()
        } else {
            self.bootstrap.clone()
        };
        let settings = KadSettings { listen: vec![listen], bootstrap, ..KadSettings::default() };
        let node = Arc::new(KadDht::start(settings).await.context("starting a Kademlia node")?);
        tracing::debug!(peer_id = %node.peer_id(), addrs = ?node.listen_addrs(), "kad node started");
        self.nodes.push(Arc::clone(&node));
        Ok(node)
    }

    /// The first node's addresses, each with `/p2p/<peer id>`.
    pub(crate) fn first_addrs(&self) -> Vec<String> {
        self.nodes
            .first()
            .map(|n| n.listen_addrs().iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Stops every node.
    pub(crate) async fn shutdown(self) {
        futures::future::join_all(self.nodes.iter().map(|n| n.shutdown())).await;
    }
}

fn parse(text: &str, what: &str) -> Result<Multiaddr> {
    text.parse().map_err(|e| Failure::new(format!("{what} {text:?} is not a multiaddr: {e}")))
}
