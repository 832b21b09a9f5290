//! [`KadDht`]: a running DHT node and the [`Dht`] it offers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use averager_core::dht::{DhtCapabilities, DhtDictionary, DhtEntry};
use averager_core::time::{DhtTime, dht_now};
use averager_core::{Dht, Error, Result};
use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::driver::{Command, Driver, Shared};
use crate::error;
use crate::record::{self, RecordLimits};
use crate::settings::KadSettings;
use crate::store::{MergingStore, StoreLimits};

/// Commands queued for the node's task before callers wait for room.
const COMMAND_QUEUE: usize = 1024;

/// Time a reply may take beyond its query's timeouts: the task may be busy with other work when
/// the query ends.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// How many query timeouts a store may take: Kademlia runs it as two queries (find the closest
/// peers, then send them the record), each with its own timeout.
const STORE_PHASES: u32 = 2;

/// How long [`KadDht::shutdown`] waits for the node's task to end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// A DHT node on libp2p Kademlia, holding protocol 2.3 dictionaries (see the crate docs).
///
/// [`KadDht::start`] spawns the node's task on the current tokio runtime; the handle talks to it.
/// [`KadDht::shutdown`] stops it, and so does dropping the handle. Share one node between tasks
/// as an `Arc<KadDht>` (or an `Arc<dyn Dht>`).
pub struct KadDht {
    peer_id: PeerId,
    settings: KadSettings,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KadDht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KadDht")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.shared.listen_addrs())
            .field("known_peers", &self.known_peers())
            .finish()
    }
}

impl KadDht {
    /// The registry name of this backend.
    pub const NAME: &'static str = "kad";

    /// Starts a node with a new identity: listens on `settings.listen`, then joins the swarm
    /// through `settings.bootstrap` (if any) and returns once connected to one of those peers.
    ///
    /// Must be called inside a tokio runtime, which runs the node's task.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings or an address that cannot be listened on or
    /// dialled; [`Error::Unreachable`] when no bootstrap peer could be reached within
    /// `query_timeout`; [`Error::Timeout`] when a listener reports no address within it.
    pub async fn start(settings: KadSettings) -> Result<KadDht> {
        settings.validate()?;
        let keypair = Keypair::generate_ed25519();
        let peer_id = keypair.public().to_peer_id();
        let limits = store_limits(&settings);
        let swarm = crate::behaviour::build_swarm(keypair, &settings, MergingStore::new(limits))?;
        let shared = Arc::new(Shared::new());
        let mut driver = Driver::new(swarm, Arc::clone(&shared), limits);
        driver.listen(&settings.listen, settings.query_timeout).await?;
        driver.join(&settings.bootstrap, settings.query_timeout).await?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(
            driver.run(command_rx, stop_rx).instrument(tracing::debug_span!("kad", peer = %peer_id)),
        );
        tracing::info!(%peer_id, addrs = ?shared.listen_addrs(), "kad node started");
        Ok(KadDht {
            peer_id,
            settings,
            shared,
            commands,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
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

    /// How many peers the node's routing table holds now.
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

    /// Stops the node: closes its connections and listeners and waits (at most ten seconds)
    /// for its task to end. Calls made afterwards fail with [`Error::Dht`]; a second call
    /// does nothing.
    pub async fn shutdown(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            match tokio::time::timeout(SHUTDOWN_LIMIT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the kad node's task failed"),
                Err(_) => tracing::warn!("the kad node's task did not stop within {SHUTDOWN_LIMIT:?}"),
            }
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        key: &str,
        command: Command,
        phases: u32,
        reply: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        let limit = self.settings.query_timeout * phases + REPLY_GRACE;
        let round_trip = async {
            self.commands.send(command).await.map_err(|_| error::stopped())?;
            reply.await.map_err(|_| error::stopped())?
        };
        tokio::time::timeout(limit, round_trip).await.map_err(|_| error::timed_out(what, key, limit))?
    }
}

impl Drop for KadDht {
    fn drop(&mut self) {
        // The task ends at its next turn; it must not outlive the handle that could stop it.
        if let Some(stop) = self.stop.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
    }
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

#[async_trait]
impl Dht for KadDht {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> DhtCapabilities {
        DhtCapabilities {
            max_value_bytes: self.settings.max_value_bytes,
            max_subkeys_per_key: self.settings.max_subkeys_per_key,
        }
    }

    /// Merges the entry into the local replica (which decides the answer, by protocol 2.3's rule),
    /// then sends it to the `replication` peers closest to the key and returns once they have
    /// answered (or the query timed out).
    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        if !expiration.is_finite() {
            return Err(Error::Dht(format!("expiration {expiration} of {key:?} is not finite")));
        }
        if value.len() > self.settings.max_value_bytes {
            return Err(Error::Dht(format!(
                "value of {} bytes under {key:?} exceeds the limit of {} bytes",
                value.len(),
                self.settings.max_value_bytes
            )));
        }
        if expiration <= dht_now() {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        let entry = DhtEntry { value, expiration };
        let command = Command::Store {
            key: record::record_key(key),
            subkey: Bytes::copy_from_slice(subkey),
            entry,
            reply,
        };
        self.call("store", key, command, STORE_PHASES, answer).await
    }

    /// With `latest`, asks the `replication` peers closest to the key and returns the union of
    /// their answers and the local replica's; without it, answers from the local replica when it
    /// holds entries of the key, and asks the network otherwise.
    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Get { key: record::record_key(key), latest, reply };
        self.call("get", key, command, 1, answer).await
    }
}
