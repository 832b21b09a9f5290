//! Starting local swarms for the tests: every node on 127.0.0.1, free ports.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use averager_core::Dht;
use averager_dht::{KadDht, KadSettings};

/// How long a swarm may take to fill its routing tables: generous, for a loaded machine.
pub const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// Starts `n` nodes with `settings`, each joining through every node before it, and returns
/// once every routing table holds all the other nodes.
pub async fn start_swarm(n: usize, settings: KadSettings) -> Vec<Arc<KadDht>> {
    init_logs();
    let mut nodes: Vec<Arc<KadDht>> = Vec::with_capacity(n);
    for _ in 0..n {
        let bootstrap = nodes.iter().flat_map(|node| node.listen_addrs()).collect();
        let node = KadDht::start(KadSettings { bootstrap, ..settings.clone() }).await.expect("a node starts");
        nodes.push(Arc::new(node));
    }
    for (i, node) in nodes.iter().enumerate() {
        node.wait_for_peers(n - 1, JOIN_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("node {i} knows {} of {} peers: {e}", node.known_peers(), n - 1));
    }
    nodes
}

/// [`start_swarm`] as the conformance suite wants it.
pub async fn dyn_swarm(n: usize, settings: KadSettings) -> Vec<Arc<dyn Dht>> {
    init_logs();
    start_swarm(n, settings).await.into_iter().map(|node| node as Arc<dyn Dht>).collect()
}

/// Sends the crate's logs to the test output when `RUST_LOG` asks for them.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
