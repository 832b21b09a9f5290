//! The stand-in for Kademlia in builds without it: every use is an error that says how to get it.

use std::sync::Arc;

use averager::Dht;

use crate::Result;
use crate::failure::Failure;

/// Whether this binary has a Kademlia DHT.
pub(crate) const AVAILABLE: bool = false;

/// Stands in for a peer's libp2p node, which only exists with Kademlia.
pub(crate) type NodeRef = std::convert::Infallible;

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

    /// Always an error: there is no Kademlia here.
    pub(crate) fn use_identity(&mut self, _path: &std::path::Path) -> Result<()> {
        Err(missing())
    }

    /// Always an error: there is no Kademlia here.
    pub(crate) fn use_nat(&mut self, _relays: &[String], _external_addrs: &[String]) -> Result<()> {
        Err(missing())
    }

    /// Nothing to report.
    pub(crate) fn print_reachability(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Nothing to report.
    pub(crate) fn print_addrs_as_found(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// No addresses.
    pub(crate) fn print_new_addrs(&self) {}

    /// No peer id.
    pub(crate) fn peer_id(&self) -> Option<String> {
        None
    }

    /// No node.
    pub(crate) fn last_node(&self) -> Option<NodeRef> {
        None
    }

    /// No addresses.
    pub(crate) fn first_addrs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Nothing to stop.
    pub(crate) async fn shutdown(self) {}
}
