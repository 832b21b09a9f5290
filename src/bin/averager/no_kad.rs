//! The stand-in for Kademlia in builds without it: every use is an error that says how to get it.

use std::sync::Arc;

use averager::Dht;

use crate::Result;
use crate::failure::Failure;

/// Whether this binary has a Kademlia DHT.
pub(crate) const AVAILABLE: bool = false;

fn missing() -> Failure {
    Failure::new(
        "this binary has no Kademlia DHT (feature `kad` with the averager-dht KadDht); use --dht memory",
    )
}

/// Would hold one Kademlia node per peer.
#[derive(Debug)]
pub(crate) struct KadNodes;

impl KadNodes {
    /// Always an error: there is no Kademlia here.
    pub(crate) fn new(_bootstrap: &[String]) -> Result<Self> {
        Err(missing())
    }

    /// Unreachable in practice (no `KadNodes` can be made); an error all the same.
    pub(crate) async fn start_node(&mut self, _listen: &str) -> Result<Arc<dyn Dht>> {
        Err(missing())
    }

    /// No addresses.
    pub(crate) fn first_addrs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Nothing to stop.
    pub(crate) async fn shutdown(self) {}
}
