//! The task that owns a node's swarm: it runs every command of the [`KadDht`](crate::KadDht)
//! handle and every network event, one at a time, so the store needs no lock and a check
//! followed by a write (a store's merge) cannot interleave with anything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use averager_core::dht::{DhtDictionary, DhtEntry};
use averager_core::time::dht_now;
use averager_core::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use libp2p::kad::{self, GetRecordOk, PeerRecord, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tokio::sync::{mpsc, oneshot, watch};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::error;
use crate::reachability::NatReport;
use crate::rebootstrap::Rebootstrap;
use crate::record;
use crate::store::{Offer, StoreLimits, offer_entry};

mod nat;

/// How often expired entries of keys nobody touches are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A request from the handle.
pub(crate) enum Command {
    /// Stores one entry: merge locally, then send the one-entry delta to the closest peers.
    Store { key: RecordKey, subkey: Bytes, entry: DhtEntry, reply: oneshot::Sender<Result<bool>> },
    /// Reads a key, from the network (`latest`) or from the local replica when it has entries.
    Get { key: RecordKey, latest: bool, reply: oneshot::Sender<Result<DhtDictionary>> },
    /// Looks a peer up (a Kademlia walk towards its id), for the addresses of a substream's dial;
    /// forgets first that the peer was unreachable.
    FindPeer { peer: PeerId, reply: oneshot::Sender<Vec<Multiaddr>> },
}

/// What the handle reads without asking the task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The addresses the node listens on, without `/p2p`.
    pub(crate) listen_addrs: watch::Sender<Vec<Multiaddr>>,
    /// How many peers the routing table holds.
    pub(crate) peers: watch::Sender<usize>,
    /// What the node knows of its own reachability.
    pub(crate) nat: watch::Sender<NatReport>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            listen_addrs: watch::Sender::new(Vec::new()),
            peers: watch::Sender::new(0),
            nat: watch::Sender::new(NatReport::default()),
        }
    }

    pub(crate) fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.borrow().clone()
    }

    fn edit_listen_addrs(&self, edit: impl FnOnce(&mut Vec<Multiaddr>)) {
        self.listen_addrs.send_modify(edit);
    }
}

/// A read under way: the union of the answers so far.
struct PendingGet {
    merged: DhtDictionary,
    /// How many peers answered with a record, for the logs.
    answers: usize,
    reply: oneshot::Sender<Result<DhtDictionary>>,
}

/// The swarm and everything in flight on it.
pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    limits: StoreLimits,
    puts: HashMap<QueryId, oneshot::Sender<Result<bool>>>,
    gets: HashMap<QueryId, PendingGet>,
    finds: HashMap<QueryId, (PeerId, oneshot::Sender<Vec<Multiaddr>>)>,
    /// Listeners that have reported an address, and listeners that failed, with why.
    listening: HashSet<libp2p::core::transport::ListenerId>,
    listen_failures: Vec<String>,
    /// While joining: whether any connection has been established, the bootstrap dials, and
    /// why those that failed did.
    connected: bool,
    join_dials: HashSet<ConnectionId>,
    failed_dials: HashMap<ConnectionId, String>,
    /// The lookups repeated after joining (see [`Rebootstrap`]).
    rebootstrap: Rebootstrap,
    /// The relays this node listens through, and their listeners (see [`nat`]).
    relays: nat::RelayListeners,
}

impl Driver {
    pub(crate) fn new(swarm: Swarm<Behaviour>, shared: Arc<Shared>, limits: StoreLimits) -> Self {
        Driver {
            swarm,
            shared,
            limits,
            puts: HashMap::new(),
            gets: HashMap::new(),
            finds: HashMap::new(),
            listening: HashSet::new(),
            listen_failures: Vec::new(),
            connected: false,
            join_dials: HashSet::new(),
            failed_dials: HashMap::new(),
            rebootstrap: Rebootstrap::default(),
            relays: nat::RelayListeners::default(),
        }
    }

    /// Starts listening on `addrs` and returns once each listener has an address.
    ///
    /// # Errors
    /// [`Error::Config`] when an address cannot be listened on; [`Error::Timeout`] when a
    /// listener reports no address within `limit`.
    pub(crate) async fn listen(&mut self, addrs: &[Multiaddr], limit: Duration) -> Result<()> {
        let mut ids = Vec::new();
        for addr in addrs {
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::Config(format!("kad: cannot listen on {addr}: {e}")))?;
            ids.push(id);
        }
        self.drive_until(limit, "kad listeners to report their addresses", |d| {
            if !d.listen_failures.is_empty() {
                return Some(Err(Error::Config(format!("kad: {}", d.listen_failures.join("; ")))));
            }
            ids.iter().all(|id| d.listening.contains(id)).then_some(Ok(()))
        })
        .await
    }

    /// Dials the bootstrap peers and returns once one of them is connected.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when every dial failed, or none connected within `limit`.
    pub(crate) async fn join(&mut self, bootstrap: &[Multiaddr], limit: Duration) -> Result<()> {
        if bootstrap.is_empty() {
            return Ok(());
        }
        // One dial per peer with all its addresses: a second dial to a peer already being
        // dialled would be refused.
        let mut by_peer: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        let mut anonymous = Vec::new();
        for addr in bootstrap {
            match split_peer_id(addr) {
                Some((peer, _)) if peer == *self.swarm.local_peer_id() => {}
                Some((peer, transport_addr)) => match by_peer.iter_mut().find(|(p, _)| *p == peer) {
                    Some((_, addrs)) => addrs.push(transport_addr),
                    None => by_peer.push((peer, vec![transport_addr])),
                },
                None => anonymous.push(addr.clone()),
            }
        }
        let mut all_dials = Vec::new();
        for (peer, addrs) in by_peer {
            for addr in &addrs {
                // Known up front, so the first query need not wait for identify.
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            all_dials.push(DialOpts::peer_id(peer).addresses(addrs).build());
        }
        all_dials.extend(anonymous.into_iter().map(|addr| DialOpts::unknown_peer_id().address(addr).build()));
        for opts in all_dials {
            let id = opts.connection_id();
            self.join_dials.insert(id);
            if let Err(e) = self.swarm.dial(opts) {
                self.failed_dials.insert(id, e.to_string());
            }
        }
        if self.join_dials.is_empty() {
            // Only this node itself was named: it starts the swarm.
            return Ok(());
        }
        let unreachable = |reason: String| Error::Unreachable {
            endpoint: bootstrap.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            reason,
        };
        let joined = self
            .drive_until(limit, "a connection to a bootstrap peer", |d| {
                if d.connected {
                    return Some(Ok(()));
                }
                (d.failed_dials.len() == d.join_dials.len()).then(|| {
                    Err(unreachable(d.failed_dials.values().cloned().collect::<Vec<_>>().join("; ")))
                })
            })
            .await;
        self.join_dials.clear();
        self.failed_dials.clear();
        match joined {
            Err(Error::Timeout { after, .. }) => {
                return Err(unreachable(format!("no connection within {after:?}")));
            }
            other => other?,
        }
        // Kademlia also bootstraps by itself as peers enter the table; asking now saves its delay.
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        // The bootstrap node may not know yet the peers joining at the same moment as this one.
        self.rebootstrap.start();
        Ok(())
    }

    /// Handles swarm events until `done` gives an answer or `limit` passes.
    async fn drive_until<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Self) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(answer) = done(self) {
                return answer;
            }
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.on_swarm_event(event),
                Err(_) => return Err(Error::timeout(what, limit)),
            }
        }
    }

    /// Runs until `stop` fires or the handle is dropped.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut relisten = tokio::time::interval(nat::RELAY_RETRY);
        relisten.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = sweep.tick() => self.swarm.behaviour_mut().kad.store_mut().sweep(dht_now()),
                _ = relisten.tick() => self.relisten_relays(),
                () = self.rebootstrap.due() => {
                    if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                        tracing::debug!(error = %e, "no repeated bootstrap lookup: no known peer");
                    }
                }
            }
        }
        // Pending callers get "shut down" rather than waiting out their timeouts.
        for (_, reply) in self.puts.drain() {
            let _ = reply.send(Err(error::stopped()));
        }
        for (_, pending) in self.gets.drain() {
            let _ = pending.reply.send(Err(error::stopped()));
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "kad node stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Store { key, subkey, entry, reply } => self.store(key, subkey, entry, reply),
            Command::Get { key, latest, reply } => self.get(key, latest, reply),
            Command::FindPeer { peer, reply } => {
                // The walk must be free to dial the peer at the addresses it learns on the way (a
                // relayed one, say): the memory of a failed dial would refuse it at once.
                self.swarm.behaviour_mut().unreachable.forget(&peer);
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.finds.insert(id, (peer, reply));
            }
        }
    }

    fn store(
        &mut self,
        key: RecordKey,
        subkey: Bytes,
        entry: DhtEntry,
        reply: oneshot::Sender<Result<bool>>,
    ) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let delta = record::encode([(&subkey, &entry)]);
        match kad.store_mut().offer(&key, subkey, entry, None, dht_now()) {
            Offer::Stored => {}
            Offer::Stale | Offer::KeyFull => {
                let _ = reply.send(Ok(false));
                return;
            }
            refusal => {
                let _ = reply.send(Err(error::refused(refusal, &self.limits)));
                return;
            }
        }
        // Only the new entry travels: replicas merge it into what they hold, so it never erases
        // entries this node has not seen. Sending the whole merged dictionary instead would
        // also bring a lagging replica up to date, but costs O(dictionary) per store: n writers
        // of one key cost O(n^2) (1000 subkeys under one key took 60 s instead of 9 s in the
        // conformance suite). Reads take the union of all replicas, and Kademlia's periodic
        // replication re-sends whole dictionaries, so a lagging replica loses nothing.
        // `Quorum::All` keeps the query open until every closest peer has answered, so the
        // store returns once the replicas hold the entry.
        match kad.put_record(Record::new(key, delta), Quorum::All) {
            Ok(id) => {
                self.puts.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Dht(format!("the local store refused the record: {e}"))));
            }
        }
    }

    fn get(&mut self, key: RecordKey, latest: bool, reply: oneshot::Sender<Result<DhtDictionary>>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let local = kad.store_mut().live(&key, dht_now());
        if !latest && !local.is_empty() {
            let _ = reply.send(Ok(local));
            return;
        }
        let id = kad.get_record(key);
        self.gets.insert(id, PendingGet { merged: local, answers: 0, reply });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Unreachable(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => nat::on_relay(event),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                nat::on_relay_client(&self.shared, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => nat::on_autonat(&self.shared, event),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => nat::on_dcutr(&self.shared, event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::NewListenAddr { listener_id, address } => {
                tracing::debug!(%address, "kad node listening");
                self.listening.insert(listener_id);
                self.shared.edit_listen_addrs(|addrs| addrs.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                nat::on_address_gone(&self.shared, &address);
                self.shared.edit_listen_addrs(|addrs| addrs.retain(|a| *a != address));
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason, .. } => {
                self.relays.closed(listener_id);
                if let Err(e) = reason {
                    tracing::warn!(error = %e, "a kad listener failed");
                    self.listen_failures.push(format!("a listener failed: {e}"));
                }
                for address in &addresses {
                    nat::on_address_gone(&self.shared, address);
                }
                self.shared.edit_listen_addrs(|addrs| addrs.retain(|a| !addresses.contains(a)));
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "a kad listener reported an error");
            }
            SwarmEvent::ConnectionEstablished { .. } => self.connected = true,
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!(?peer_id, error = %error, "kad dial failed");
                if let (Some(peer), DialError::Transport(_)) = (peer_id, &error) {
                    // Every address of the peer failed. Kademlia would keep it in the table
                    // with its last address, so every later query would dial it again and wait
                    // for that dial (seconds, for QUIC). A live peer that was only unreachable
                    // for a moment comes back as soon as it talks to this node again.
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                    tracing::debug!(%peer, "removed an unreachable peer from the routing table");
                }
                if self.join_dials.contains(&connection_id) {
                    self.failed_dials.insert(connection_id, error.to_string());
                }
            }
            _ => {}
        }
        let peers = self.swarm.behaviour_mut().kad.kbuckets().map(|bucket| bucket.num_entries()).sum();
        self.shared.peers.send_if_modified(|held| std::mem::replace(held, peers) != peers);
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                if let Err(e) = store.merge(&record.key, &record.value, Some(source), dht_now()) {
                    tracing::warn!(peer = %source, error = %e, "ignored a record a peer asked to store");
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: QueryResult::PutRecord(result), .. } => {
                let Some(reply) = self.puts.remove(&id) else { return };
                // The entry is in the local store whatever the replicas said; a peer that did
                // not take it will get it from a read's answer or from replication.
                match result {
                    Ok(_) => tracing::debug!(?id, "kad store reached every replica asked"),
                    Err(e) => tracing::debug!(?id, error = %e, "kad store finished"),
                }
                let _ = reply.send(Ok(true));
            }
            kad::Event::OutboundQueryProgressed {
                id, result: QueryResult::GetRecord(result), step, ..
            } => {
                let finished = step.last || result.is_err();
                if let Some(pending) = self.gets.get_mut(&id) {
                    match result {
                        Ok(GetRecordOk::FoundRecord(PeerRecord { peer: Some(peer), record })) => {
                            pending.answers += 1;
                            absorb(&mut pending.merged, peer, &record, &self.limits);
                        }
                        // The local replica's record; its entries were taken when the read began.
                        Ok(GetRecordOk::FoundRecord(PeerRecord { peer: None, .. })) => {}
                        Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(kad::GetRecordError::Timeout { .. }) => {
                            tracing::debug!(
                                ?id,
                                "kad read timed out; answering with the replicas that replied"
                            );
                        }
                        Err(e) => tracing::debug!(?id, error = %e, "kad read finished"),
                    }
                }
                if finished && let Some(pending) = self.gets.remove(&id) {
                    tracing::debug!(
                        ?id,
                        answers = pending.answers,
                        entries = pending.merged.len(),
                        "kad read done"
                    );
                    let now = dht_now();
                    let mut merged = pending.merged;
                    merged.retain(|_, entry| entry.expiration > now);
                    let _ = pending.reply.send(Ok(merged));
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(result),
                step,
                ..
            } => {
                let Some((peer, reply)) = self.finds.remove(&id) else { return };
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let addrs: Vec<Multiaddr> =
                    peers.into_iter().filter(|p| p.peer_id == peer).flat_map(|p| p.addrs).collect();
                if addrs.is_empty() && !step.last {
                    self.finds.insert(id, (peer, reply));
                } else {
                    let _ = reply.send(addrs);
                }
            }
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } => {
                tracing::debug!(%peer, "a peer entered the routing table");
            }
            _ => {}
        }
    }
}

/// Merges a replica's answer into a read's union, by the same rule as the store.
fn absorb(merged: &mut DhtDictionary, peer: PeerId, record: &Record, limits: &StoreLimits) {
    match record::decode(&record.value, &limits.record) {
        Ok(entries) => {
            let now = dht_now();
            for (subkey, entry) in entries {
                if let Err(why) = crate::signed::verify(&record.key, &subkey, &entry) {
                    tracing::warn!(%peer, "ignored an entry a peer returned: {why}");
                    continue;
                }
                offer_entry(merged, subkey, entry, limits.record.max_subkeys_per_key, now);
            }
        }
        Err(e) => tracing::warn!(%peer, error = %e, "ignored a record a peer returned"),
    }
}

/// Splits `/.../p2p/<peer id>` into the peer id and the address before it.
pub(crate) fn split_peer_id(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut transport = addr.clone();
    match transport.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, transport)),
        _ => None,
    }
}
