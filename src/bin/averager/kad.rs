//! Kademlia nodes for the peers of this process (feature `kad`): each peer gets its own node on
//! loopback, and every node after the first joins through the first, or through the
//! `--bootstrap` addresses when there are any.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use averager::Dht;
use averager::kad::{KadDht, KadSettings, Keypair, Libp2pNode, Multiaddr, Reachability};

use crate::Result;
use crate::failure::{Context, Failure};

/// Whether this binary has a Kademlia DHT.
pub(crate) const AVAILABLE: bool = true;

/// A peer's libp2p node, which its DHT and a libp2p transport share.
pub(crate) type NodeRef = Arc<Libp2pNode>;

/// The Kademlia nodes this process started.
pub(crate) struct KadNodes {
    /// Addresses of running nodes elsewhere to join through; empty: join through our first node.
    bootstrap: Vec<Multiaddr>,
    nodes: Vec<Arc<KadDht>>,
    /// The identity of the next node started; a new one each node when `None`.
    identity: Option<Box<Keypair>>,
    /// Relays every node started listens through, and external addresses of the next node.
    relays: Vec<Multiaddr>,
    external_addrs: Vec<Multiaddr>,
    /// The first node's addresses printed so far (`dht address` lines), so each is printed once.
    printed: Arc<Mutex<BTreeSet<String>>>,
}

impl KadNodes {
    /// No nodes yet; later nodes join through `bootstrap` (multiaddrs with `/p2p/<peer id>`).
    ///
    /// # Errors
    /// When a bootstrap address is not a multiaddr.
    pub(crate) fn new(bootstrap: &[String]) -> Result<Self> {
        let bootstrap = bootstrap.iter().map(|a| parse(a, "--bootstrap")).collect::<Result<_>>()?;
        Ok(KadNodes {
            bootstrap,
            nodes: Vec::new(),
            identity: None,
            relays: Vec::new(),
            external_addrs: Vec::new(),
            printed: Arc::default(),
        })
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
        let settings = KadSettings {
            listen: vec![listen],
            bootstrap,
            relays: self.relays.clone(),
            external_addrs: std::mem::take(&mut self.external_addrs),
            ..KadSettings::default()
        };
        let keypair = self.identity.take().map_or_else(Keypair::generate_ed25519, |key| *key);
        let node = Libp2pNode::start(settings, keypair).await.context("starting a Kademlia node")?;
        let node = Arc::new(KadDht::with_node(Arc::new(node)));
        tracing::debug!(peer_id = %node.peer_id(), addrs = ?node.listen_addrs(), "kad node started");
        self.nodes.push(Arc::clone(&node));
        Ok(node)
    }

    /// Loads (or creates, mode 0600) the identity of the next node started.
    ///
    /// # Errors
    /// When the file cannot be read, created or parsed.
    pub(crate) fn use_identity(&mut self, path: &std::path::Path) -> Result<()> {
        self.identity = Some(Box::new(averager::kad::load_or_create_identity(path).context("--identity")?));
        Ok(())
    }

    /// Relays (`--relay`) for the nodes started from now on, and external addresses
    /// (`--external-addr`) of the next one.
    ///
    /// # Errors
    /// When an address is not a multiaddr, or a relay's lacks its `/p2p/<peer id>`.
    pub(crate) fn use_nat(&mut self, relays: &[String], external_addrs: &[String]) -> Result<()> {
        self.relays = relays.iter().map(|a| parse(a, "--relay")).collect::<Result<_>>()?;
        self.external_addrs =
            external_addrs.iter().map(|a| parse(a, "--external-addr")).collect::<Result<_>>()?;
        Ok(())
    }

    /// Prints `dht address <multiaddr>` on stdout for each address of the first node not
    /// printed yet.
    pub(crate) fn print_new_addrs(&self) {
        if let Some(first) = self.nodes.first() {
            say_new_addrs(first.node(), &self.printed);
        }
    }

    /// Prints `dht address` lines for the first node's addresses as it learns them (an
    /// unspecified listen address reports its interfaces one by one, a relay's circuit address
    /// comes with the reservation), until the returned task is aborted.
    pub(crate) fn print_addrs_as_found(&self) -> Option<tokio::task::JoinHandle<()>> {
        let node = Arc::clone(self.nodes.first()?.node());
        let printed = Arc::clone(&self.printed);
        let mut addrs = node.watch_listen_addrs();
        Some(tokio::spawn(async move {
            while addrs.changed().await.is_ok() {
                say_new_addrs(&node, &printed);
            }
        }))
    }

    /// Prints a line on stdout each time the first node's reachability changes
    /// (`reachability direct|hole-punched|relayed|private`) and each time a hole punch connects
    /// it directly to a peer (`hole punched <peer id>`), until the returned task is aborted.
    pub(crate) fn print_reachability(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut reports = self.nodes.first()?.node().watch_nat();
        Some(tokio::spawn(async move {
            let mut shown = Reachability::Unknown;
            let mut punched = std::collections::BTreeSet::new();
            loop {
                let report = reports.borrow_and_update().clone();
                let now = report.reachability();
                if now != shown {
                    crate::out!("reachability {now}");
                    shown = now;
                }
                for peer in report.hole_punched() {
                    if punched.insert(peer) {
                        crate::out!("hole punched {peer}");
                    }
                }
                if reports.changed().await.is_err() {
                    return;
                }
            }
        }))
    }

    /// The first node's peer id.
    pub(crate) fn peer_id(&self) -> Option<String> {
        self.nodes.first().map(|n| n.peer_id().to_string())
    }

    /// The libp2p node of the node started last.
    pub(crate) fn last_node(&self) -> Option<NodeRef> {
        self.nodes.last().map(|dht| Arc::clone(dht.node()))
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

/// Prints the addresses of `node` that are not in `printed`, and adds them.
fn say_new_addrs(node: &Libp2pNode, printed: &Mutex<BTreeSet<String>>) {
    // Held while printing, so two callers cannot print one address twice.
    let mut printed = printed.lock().unwrap_or_else(PoisonError::into_inner);
    for addr in node.listen_addrs().iter().map(ToString::to_string) {
        if !printed.contains(&addr) {
            crate::out!("dht address {addr}");
            printed.insert(addr);
        }
    }
}
