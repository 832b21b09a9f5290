//! The simulated peers: full `Averager`s on one in-process network and DHT, each behind a
//! fault-injecting transport, so a peer can be slowed (`--delay`) or killed mid all-reduce
//! (`--fail`), and peers can leave and join (`--churn`) between rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use averager::memory::{
    Fault, FaultPlan, FaultyTransport, MemoryDht, MemoryNetwork, MemorySettings, MemoryTransport,
};
use averager::{Averager, AveragerConfig, Dht, Tensor, Transport};
use rand::Rng;
use rand::rngs::StdRng;

use crate::Result;
use crate::swarm::{PeerRound, RoundStats, timed_step_reporting};

/// One simulated peer.
pub(super) struct SimPeer {
    averager: Averager,
    faults: FaultPlan,
}

/// Every peer of the simulation, and what new ones are made from.
pub(super) struct Population {
    peers: Vec<SimPeer>,
    dht: Arc<dyn Dht>,
    network: Arc<MemoryNetwork>,
    config: AveragerConfig,
    delay: Option<Duration>,
    /// Peers started so far (names are never reused, so a newcomer is never mistaken for a
    /// departed peer).
    started: usize,
}

/// What a round of churn did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Churn {
    /// Peers that left (churn) or died (failures) since the last round, and were replaced.
    pub(super) left: usize,
    /// Newcomers that downloaded a state from a peer.
    pub(super) loaded: usize,
    /// Newcomers that found no state and start from their own random values.
    pub(super) unloaded: usize,
}

impl Population {
    /// Starts one peer per entry of `bits`, peer `i` holding `values(i)`.
    ///
    /// # Errors
    /// When an averager cannot start (bad configuration).
    pub(super) async fn start(
        config: AveragerConfig,
        delay: Option<Duration>,
        bits: &[String],
        mut values: impl FnMut(usize) -> Vec<f32>,
    ) -> Result<Population> {
        let mut population = Population {
            peers: Vec::with_capacity(bits.len()),
            dht: Arc::new(MemoryDht::new()),
            network: MemoryNetwork::new(),
            config,
            delay,
            started: 0,
        };
        for (i, bits) in bits.iter().enumerate() {
            let peer = population.new_peer(bits, values(i)).await?;
            population.peers.push(peer);
        }
        Ok(population)
    }

    async fn new_peer(&mut self, bits: &str, values: Vec<f32>) -> Result<SimPeer> {
        let settings = MemorySettings { name: Some(format!("sim{}", self.started)), ..Default::default() };
        self.started += 1;
        let memory: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(self.network.clone(), settings));
        let (transport, faults) = FaultyTransport::new(memory);
        if let Some(delay) = self.delay {
            // Requests only: one delay per hop, not one each way.
            faults.add(Fault::Delay(delay).client_side());
        }
        let config = AveragerConfig { initial_group_bits: bits.to_string(), ..self.config.clone() };
        let tensors = vec![Tensor::from_f32(vec![values.len()], values)?];
        let averager = Averager::new(tensors, self.dht.clone(), Arc::new(transport), config).await?;
        Ok(SimPeer { averager, faults })
    }

    /// Number of peers.
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Steps every peer at once; the peers at `doomed` indices are killed (their transport stops
    /// answering, as if the process died) the moment their all-reduce starts.
    pub(super) async fn round(&self, timeout: Duration, doomed: &[bool]) -> RoundStats {
        let start = Instant::now();
        let steps = self.peers.iter().enumerate().map(|(i, peer)| {
            let kill = doomed.get(i).copied().unwrap_or(false);
            timed_step_reporting(&peer.averager, timeout, move |began| {
                if kill && began {
                    peer.faults.kill();
                }
            })
        });
        let peers: Vec<PeerRound> = futures::future::join_all(steps).await;
        RoundStats { peers, wall: start.elapsed() }
    }

    /// Every peer's values (the first tensor), in peer order.
    ///
    /// # Errors
    /// When a peer's tensor is not f32.
    pub(super) async fn values(&self) -> Result<Vec<Vec<f32>>> {
        let mut all = Vec::with_capacity(self.peers.len());
        for peer in &self.peers {
            let tensors = peer.averager.tensors().await;
            let Some(tensor) = tensors.first() else { return Err("a peer holds no tensor".into()) };
            all.push(tensor.as_f32()?.to_vec());
        }
        Ok(all)
    }

    /// Replaces every killed peer and, on top, `leave` random live peers, by newcomers in random
    /// buckets of `bits` bits that download the state of a live peer (a newcomer that finds none
    /// keeps `fresh()` values). Departed peers are shut down first, so nobody downloads from them.
    pub(super) async fn churn(
        &mut self,
        leave: usize,
        bits: usize,
        rng: &mut StdRng,
        timeout: Duration,
        mut fresh: impl FnMut(&mut StdRng) -> Vec<f32>,
    ) -> Result<Churn> {
        let mut leaving: Vec<SimPeer> = Vec::new();
        let mut kept = Vec::with_capacity(self.peers.len());
        for peer in std::mem::take(&mut self.peers) {
            if peer.faults.is_killed() { leaving.push(peer) } else { kept.push(peer) }
        }
        for _ in 0..leave.min(kept.len().saturating_sub(1)) {
            let i = rng.random_range(0..kept.len());
            leaving.push(kept.swap_remove(i));
        }
        self.peers = kept;
        let left = leaving.len();
        let stops = leaving.iter().map(|p| p.averager.shutdown());
        for stopped in futures::future::join_all(stops).await {
            if let Err(e) = stopped {
                tracing::debug!(error = %e, "a departing peer did not shut down cleanly");
            }
        }
        drop(leaving);

        let mut newcomers = Vec::with_capacity(left);
        for _ in 0..left {
            let bucket = if bits == 0 {
                String::new()
            } else {
                format!("{:0width$b}", rng.random_range(0..1usize << bits), width = bits)
            };
            newcomers.push(self.new_peer(&bucket, fresh(rng)).await?);
        }
        let loads = newcomers.iter().map(|p| p.averager.load_state_from_peers(Some(timeout)));
        let mut churn = Churn { left, ..Churn::default() };
        for (peer, loaded) in newcomers.iter().zip(futures::future::join_all(loads).await) {
            match loaded {
                Ok(Some(state)) => {
                    let mut tensors = peer.averager.tensors().await;
                    let fits = state.tensors.len() == tensors.len()
                        && state.tensors.iter().zip(tensors.iter()).all(|(a, b)| a.shape() == b.shape());
                    if fits {
                        tensors.clone_from_slice(&state.tensors);
                        churn.loaded += 1;
                    } else {
                        churn.unloaded += 1;
                    }
                }
                Ok(_) => churn.unloaded += 1,
                Err(e) => {
                    tracing::debug!(error = %e, "a newcomer could not load a state");
                    churn.unloaded += 1;
                }
            }
        }
        self.peers.extend(newcomers);
        Ok(churn)
    }

    /// Shuts every peer down; problems are logged, they cannot change the outcome any more.
    pub(super) async fn shutdown(self) {
        let stops = self.peers.iter().map(|p| p.averager.shutdown());
        for stopped in futures::future::join_all(stops).await {
            if let Err(e) = stopped {
                tracing::debug!(error = %e, "peer did not shut down cleanly");
            }
        }
    }
}
