//! Local libp2p nodes for the tests: every node on 127.0.0.1, free ports.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_core::{Dht, Transport};
use averager_dht::{KadDht, KadSettings, Keypair, Libp2pNode};
use averager_transport_libp2p::{Libp2pTransport, StreamSettings};

/// How long a swarm may take to fill its routing tables: generous, for a loaded machine.
pub const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// Starts a node on loopback joining through `bootstrap` (if any).
pub async fn node(bootstrap: Option<&Libp2pNode>) -> Arc<Libp2pNode> {
    let bootstrap = bootstrap.map(|b| b.listen_addrs()).unwrap_or_default();
    let settings = KadSettings::joining(bootstrap);
    Arc::new(Libp2pNode::start(settings, Keypair::generate_ed25519()).await.expect("a node starts"))
}

/// Starts `n` nodes, each joining through every node before it, and returns once every routing
/// table holds all the other nodes.
pub async fn swarm(n: usize) -> Vec<Arc<Libp2pNode>> {
    init_logs();
    let mut nodes: Vec<Arc<Libp2pNode>> = Vec::with_capacity(n);
    for _ in 0..n {
        let bootstrap = nodes.iter().flat_map(|node| node.listen_addrs()).collect();
        let settings = KadSettings::joining(bootstrap);
        let node = Libp2pNode::start(settings, Keypair::generate_ed25519()).await.expect("a node starts");
        nodes.push(Arc::new(node));
    }
    for (i, node) in nodes.iter().enumerate() {
        node.wait_for_peers(n - 1, JOIN_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("node {i} knows {} of {} peers: {e}", node.known_peers(), n - 1));
    }
    nodes
}

/// A transport per conformance peer: each on a node of its own that joins through the case's
/// first node, so a peer id is all a caller needs to reach a server.
#[derive(Clone, Default)]
pub struct ConformancePeers {
    seed: Arc<tokio::sync::OnceCell<Arc<Libp2pNode>>>,
    made: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConformancePeers {
    /// A transport for one more peer, once the case's first node knows it (a caller finds a peer
    /// id's address through that node), with a connect timeout generous for a loaded machine.
    pub async fn make(&self) -> Arc<dyn Transport> {
        init_logs();
        let seed = self.seed.get_or_init(|| node(None)).await;
        let node = node(Some(seed)).await;
        let made = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        seed.wait_for_peers(made, JOIN_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("the seed knows {} of {made} peers: {e}", seed.known_peers()));
        let settings =
            StreamSettings { connect_timeout: Duration::from_secs(30), ..StreamSettings::default() };
        Arc::new(Libp2pTransport::on_node(node, settings).expect("valid settings")) as Arc<dyn Transport>
    }
}

/// The nodes of one scenario, started by [`SharedNodes::dhts`] and handed out, one per peer, by
/// [`SharedNodes::transport`]: each peer's DHT and transport share one node, as in production.
#[derive(Clone, Default)]
pub struct SharedNodes {
    nodes: Arc<Mutex<Vec<Arc<Libp2pNode>>>>,
}

impl SharedNodes {
    /// `n` DHT handles on `n` fresh nodes of one swarm.
    pub async fn dhts(&self, n: usize) -> Vec<Arc<dyn Dht>> {
        let nodes = swarm(n).await;
        *self.nodes.lock().unwrap_or_else(PoisonError::into_inner) = nodes.clone();
        nodes.into_iter().map(|node| Arc::new(KadDht::with_node(node)) as Arc<dyn Dht>).collect()
    }

    /// The transport of peer `i`, on the node under DHT handle `i`.
    pub fn transport(&self, i: usize) -> Arc<dyn Transport> {
        let node = self.nodes.lock().unwrap_or_else(PoisonError::into_inner)[i].clone();
        Arc::new(Libp2pTransport::on_node(node, StreamSettings::default()).expect("valid settings"))
    }
}

/// Sends the crate's logs to the test output when `RUST_LOG` asks for them.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
