//! [`Libp2pNode`]: one libp2p swarm (one identity, one set of listening ports) that the Kademlia
//! DHT and other protocols (the averager's libp2p transport) share, so a peer needs one port.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_core::{Error, Result};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::driver::{Command, Driver, Shared};
use crate::error;
use crate::reachability::NatReport;
use crate::record::RecordLimits;
use crate::settings::KadSettings;
use crate::store::{MergingStore, StoreLimits};
use crate::streams::{Inbound, OpenError, Streams};

/// Commands queued for the node's task before callers wait for room.
const COMMAND_QUEUE: usize = 1024;

/// Time a reply may take beyond its query's timeouts: the task may be busy with other work when
/// the query ends.
pub(crate) const REPLY_GRACE: Duration = Duration::from_secs(5);

/// How long [`Libp2pNode::shutdown`] waits for the node's task to end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// A running libp2p node: TCP and QUIC listeners, noise, yamux, identify, Kademlia over the
/// merging store (see the crate docs), and raw substreams for other protocols ([`Streams`]).
///
/// [`Libp2pNode::start`] spawns the node's task on the current tokio runtime; the handle talks to
/// it. [`Libp2pNode::shutdown`] stops it, and so does dropping the last handle. Share it as an
/// `Arc<Libp2pNode>`: [`KadDht::with_node`](crate::KadDht::with_node) and the libp2p transport
/// each take one.
pub struct Libp2pNode {
    keypair: Keypair,
    peer_id: PeerId,
    settings: KadSettings,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    streams: Streams,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Libp2pNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pNode")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.shared.listen_addrs())
            .field("known_peers", &self.known_peers())
            .finish()
    }
}

impl Libp2pNode {
    /// Starts a node with identity `keypair`: listens on `settings.listen`, then joins the swarm
    /// through `settings.bootstrap` (if any) and returns once connected to one of those peers.
    ///
    /// Must be called inside a tokio runtime, which runs the node's task.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings or an address that cannot be listened on or
    /// dialled; [`Error::Unreachable`] when no bootstrap peer could be reached within
    /// `query_timeout`; [`Error::Timeout`] when a listener reports no address within it.
    pub async fn start(settings: KadSettings, keypair: Keypair) -> Result<Libp2pNode> {
        settings.validate()?;
        let peer_id = keypair.public().to_peer_id();
        let limits = store_limits(&settings);
        let (streams, stream_behaviour) = Streams::new();
        let swarm = crate::behaviour::build_swarm(
            keypair.clone(),
            &settings,
            MergingStore::new(limits),
            stream_behaviour,
        )?;
        let shared = Arc::new(Shared::new());
        let mut driver = Driver::new(swarm, Arc::clone(&shared), limits);
        driver.listen(&settings.listen, settings.query_timeout).await?;
        driver.join(&settings.bootstrap, settings.query_timeout).await?;
        driver.add_external_addrs(&settings.external_addrs);
        if !settings.relays.is_empty() {
            // Not fatal: the relay client keeps asking while the listener lives, and the node
            // is useful (it can dial out) meanwhile.
            if let Err(e) = driver.listen_through_relays(&settings.relays, settings.query_timeout).await {
                tracing::warn!(error = %e, "not reachable through every relay yet");
            }
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(
            driver.run(command_rx, stop_rx).instrument(tracing::debug_span!("libp2p", peer = %peer_id)),
        );
        tracing::info!(%peer_id, addrs = ?shared.listen_addrs(), "libp2p node started");
        Ok(Libp2pNode {
            keypair,
            peer_id,
            settings,
            shared,
            commands,
            streams,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's identity key (for signing what it publishes).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The settings the node was started with.
    pub fn settings(&self) -> &KadSettings {
        &self.settings
    }

    /// The addresses this node listens on, each ending in `/p2p/<peer id>`: what another node
    /// passes as [`KadSettings::bootstrap`] to join through this one.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared
            .listen_addrs()
            .into_iter()
            .map(|addr| addr.with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect()
    }

    /// Follows [`Libp2pNode::listen_addrs`] (without the `/p2p` suffix): the receiver sees every
    /// change until the node stops. A node listening on an unspecified address (`0.0.0.0`)
    /// learns its interfaces' addresses one by one, some after [`Libp2pNode::start`] returns, and
    /// relayed addresses come when a relay grants a reservation.
    pub fn watch_listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.shared.listen_addrs.subscribe()
    }

    /// How many peers the Kademlia routing table holds now.
    pub fn known_peers(&self) -> usize {
        *self.shared.peers.borrow()
    }

    /// Waits until the routing table holds at least `peers` peers.
    ///
    /// # Errors
    /// [`Error::Timeout`] when it does not within `limit`; [`Error::Dht`] when the node stops.
    pub async fn wait_for_peers(&self, peers: usize, limit: Duration) -> Result<()> {
        let mut known = self.shared.peers.subscribe();
        match tokio::time::timeout(limit, known.wait_for(|n| *n >= peers)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(error::stopped()),
            Err(_) => Err(Error::timeout(format!("{peers} peers in the kad routing table"), limit)),
        }
    }

    /// How other peers can reach this node, as far as it knows now (see [`NatReport`]).
    pub fn nat_report(&self) -> NatReport {
        self.shared.nat.borrow().clone()
    }

    /// Follows [`Libp2pNode::nat_report`]: the receiver sees every change (relay reservations,
    /// AutoNAT's verdicts, hole punches) until the node stops.
    pub fn watch_nat(&self) -> watch::Receiver<NatReport> {
        self.shared.nat.subscribe()
    }

    /// Takes every inbound substream of `protocol` (see [`Streams::accept`]).
    ///
    /// # Errors
    /// [`Error::Config`] when the protocol is accepted already.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<mpsc::Receiver<Inbound>> {
        self.streams.accept(protocol)
    }

    /// Opens a substream to `peer` on `protocol`. Without a connection, dials the peer at
    /// `addresses` and the addresses the node knows (identify, the routing table); then at the
    /// addresses a DHT lookup finds; then at the relayed addresses the peer declared; then
    /// through this node's relays (see [`Libp2pNode::connect`]).
    /// Callers bound the wait.
    ///
    /// # Errors
    /// An [`OpenError`] saying which step failed.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        addresses: Vec<Multiaddr>,
    ) -> std::result::Result<Stream, OpenError> {
        self.reach(peer, addresses, |addrs| self.streams.open(peer, protocol.clone(), addrs)).await
    }

    /// Makes sure a connection to `peer` exists, dialling it as [`Libp2pNode::open_stream`] would.
    ///
    /// The last resort, dialling through this node's relays, reaches a peer behind a NAT that
    /// holds a reservation on the same relay even when nothing has told this node its relayed
    /// address: Kademlia first hears of such a peer with its private addresses, fails to dial
    /// them, and forgets it, and a lookup lists only peers it could contact. Callers bound the
    /// wait.
    ///
    /// # Errors
    /// An [`OpenError`] saying which step failed.
    pub async fn connect(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    ) -> std::result::Result<(), OpenError> {
        self.reach(peer, addresses, |addrs| self.streams.connect(peer, addrs)).await
    }

    /// Runs `attempt` with `addresses`; when it cannot dial, again with the addresses a lookup
    /// finds (if it finds new ones), then at the relayed addresses the peer declared in the DHT
    /// (see [`Libp2pNode::relayed_addrs_of`]), then with circuit addresses through this node's
    /// relays.
    async fn reach<T, F, Fut>(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        attempt: F,
    ) -> std::result::Result<T, OpenError>
    where
        F: Fn(Vec<Multiaddr>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OpenError>>,
    {
        let mut failed = match attempt(addresses.clone()).await {
            Err(e) if e.is_dial_failure() => e,
            done => return done,
        };
        let found = self.find_peer(peer).await;
        tracing::debug!(%peer, tried = ?addresses, ?found, error = %failed, "a dial failed; a lookup found");
        if found.iter().any(|addr| !addresses.contains(addr)) {
            match attempt(found).await {
                Err(e) if e.is_dial_failure() => failed = e,
                done => return done,
            }
        }
        let declared = self.relayed_addrs_of(peer).await;
        if !declared.is_empty() {
            tracing::info!(%peer, ?declared, error = %failed, "dialling the peer at the relayed addresses it declared");
            match attempt(declared).await {
                Err(e) if e.is_dial_failure() => failed = e,
                done => return done,
            }
        }
        let relayed = circuits_to(peer, &self.settings.relays);
        if relayed.is_empty() {
            return Err(failed);
        }
        tracing::info!(%peer, ?relayed, error = %failed, "dialling the peer through this node's relays");
        attempt(relayed).await
    }

    /// The addresses of `peer` a Kademlia lookup finds (empty when it finds none, or the node
    /// stopped), within the query timeout. A lookup forgets that the peer could not be dialled
    /// lately, so the walk may reach it at an address learned on the way.
    pub async fn find_peer(&self, peer: PeerId) -> Vec<Multiaddr> {
        let (reply, answer) = oneshot::channel();
        let limit = self.settings.query_timeout + REPLY_GRACE;
        let lookup = async {
            self.commands.send(Command::FindPeer { peer, reply }).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(limit, lookup).await.ok().flatten().unwrap_or_default()
    }

    /// Stops the node: closes its connections and listeners and waits (at most ten seconds)
    /// for its task to end. Calls made afterwards fail; a second call does nothing.
    pub async fn shutdown(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            match tokio::time::timeout(SHUTDOWN_LIMIT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the libp2p node's task failed"),
                Err(_) => tracing::warn!("the libp2p node's task did not stop within {SHUTDOWN_LIMIT:?}"),
            }
        }
    }

    /// Sends `command` to the task and waits for its reply, at most `limit`.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        key: &str,
        command: Command,
        limit: Duration,
        reply: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        let round_trip = async {
            self.commands.send(command).await.map_err(|_| error::stopped())?;
            reply.await.map_err(|_| error::stopped())?
        };
        tokio::time::timeout(limit, round_trip).await.map_err(|_| error::timed_out(what, key, limit))?
    }
}

impl Drop for Libp2pNode {
    fn drop(&mut self) {
        // The task ends at its next turn; it must not outlive the handle that could stop it.
        if let Some(stop) = self.stop.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
    }
}

/// `<relay>/p2p-circuit/p2p/<peer>` for each relay (given as `.../p2p/<relay id>`) but the peer
/// itself.
fn circuits_to(peer: PeerId, relays: &[Multiaddr]) -> Vec<Multiaddr> {
    relays
        .iter()
        .filter(|relay| !matches!(relay.iter().last(), Some(Protocol::P2p(id)) if id == peer))
        .map(|relay| relay.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(peer)))
        .collect()
}

fn store_limits(settings: &KadSettings) -> StoreLimits {
    StoreLimits {
        record: RecordLimits {
            max_value_bytes: settings.max_value_bytes,
            max_record_bytes: settings.max_record_bytes,
            max_subkeys_per_key: settings.max_subkeys_per_key,
        },
        max_records: settings.max_records,
        max_records_per_peer: settings.max_records_per_peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuits_go_through_every_relay_but_the_peer_itself() {
        let (peer, relay) = (PeerId::random(), PeerId::random());
        let relays: Vec<Multiaddr> = vec![
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}").parse().unwrap(),
            format!("/ip4/10.0.0.2/tcp/4001/p2p/{peer}").parse().unwrap(),
        ];
        let circuits = circuits_to(peer, &relays);
        let expected: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}").parse().unwrap();
        assert_eq!(circuits, vec![expected]);
        assert!(circuits_to(peer, &[]).is_empty());
    }
}
