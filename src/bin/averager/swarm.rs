//! A swarm of peers in this process, shared by `demo` and `bench`: every peer is a full
//! `Averager` on its own transport and DHT handle, exactly as a networked peer would be.
//!
//! A round steps every peer at once and times each one: matchmaking is step start until the step
//! reaches `Stage::RunningAllreduce` (the group formed and this peer's runner started), the
//! all-reduce is from then until the result.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use averager::{Averager, AveragerConfig, Stage, StepOptions, Tensor};

use crate::Result;
use crate::backends::{DhtKind, Dhts, TransportKind, Transports};
use crate::progress::Progress;
use crate::tensors::{Agreement, AgreementMeter};

/// What a swarm is made of.
#[derive(Debug, Clone)]
pub(crate) struct SwarmSpec {
    /// The transport every peer uses.
    pub(crate) transport: TransportKind,
    /// The DHT every peer uses.
    pub(crate) dht: DhtKind,
    /// The configuration shared by all peers; `initial_group_bits` is replaced per peer.
    pub(crate) config: AveragerConfig,
    /// Each peer's initial group bits.
    pub(crate) bits: Vec<String>,
}

/// Peers running in this process.
pub(crate) struct Swarm {
    peers: Vec<Averager>,
    dhts: Dhts,
}

/// How one peer's step went.
#[derive(Debug, Clone)]
pub(crate) struct PeerRound {
    /// Step start until the group formed; `None` when no group formed.
    pub(crate) matchmaking: Option<Duration>,
    /// Group formed until the result; `None` when the step failed before the all-reduce.
    pub(crate) allreduce: Option<Duration>,
    /// The group's members on success.
    pub(crate) group: Option<Vec<String>>,
    /// Why the step failed.
    pub(crate) error: Option<String>,
}

/// How one round of the whole swarm went.
#[derive(Debug, Clone)]
pub(crate) struct RoundStats {
    /// One entry per peer, in peer order.
    pub(crate) peers: Vec<PeerRound>,
    /// Wall time of the round, first step start to last result.
    pub(crate) wall: Duration,
}

impl RoundStats {
    /// Distinct groups that averaged successfully.
    pub(crate) fn groups(&self) -> usize {
        self.peers.iter().filter_map(|p| p.group.clone()).collect::<BTreeSet<_>>().len()
    }

    /// Peers whose step failed, with the first reason.
    pub(crate) fn failures(&self) -> (usize, Option<&str>) {
        let mut failed = self.peers.iter().filter_map(|p| p.error.as_deref());
        let first = failed.next();
        (usize::from(first.is_some()) + failed.count(), first)
    }

    /// The slowest successful all-reduce: when the last peer had its result.
    pub(crate) fn allreduce(&self) -> Option<Duration> {
        self.peers.iter().filter(|p| p.error.is_none()).filter_map(|p| p.allreduce).max()
    }

    /// The slowest matchmaking among peers that found a group.
    pub(crate) fn matchmaking(&self) -> Option<Duration> {
        self.peers.iter().filter_map(|p| p.matchmaking).max()
    }
}

impl Swarm {
    /// Starts one peer per entry of `spec.bits`, peer `i` holding `values(i)` as one flat f32
    /// tensor. Values are made one peer at a time, so a big swarm does not hold two copies.
    ///
    /// # Errors
    /// When a backend or an averager cannot start (bad codec, port in use, ...).
    pub(crate) async fn start(spec: &SwarmSpec, mut values: impl FnMut(usize) -> Vec<f32>) -> Result<Swarm> {
        let transports = Transports::new(spec.transport)?;
        let mut dhts = Dhts::new(spec.dht, &[])?;
        let progress = Progress::bar("starting peers", spec.bits.len());
        let mut peers = Vec::with_capacity(spec.bits.len());
        for (index, bits) in spec.bits.iter().enumerate() {
            let values = values(index);
            let tensors = vec![Tensor::from_f32(vec![values.len()], values)?];
            let config = AveragerConfig { initial_group_bits: bits.clone(), ..spec.config.clone() };
            let started = match dhts.node().await {
                Ok(dht) => {
                    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                    match transports.build(index, listen, dhts.last_node()) {
                        Ok(transport) => {
                            Averager::new(tensors, dht, transport, config).await.map_err(Into::into)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match started {
                Ok(peer) => peers.push(peer),
                Err(e) => {
                    // Stop what already runs before reporting, so no server outlives the error.
                    Swarm { peers, dhts }.shutdown().await;
                    return Err(e);
                }
            }
            progress.inc();
        }
        progress.finish();
        tracing::debug!(peers = peers.len(), "swarm started");
        Ok(Swarm { peers, dhts })
    }

    /// Steps every peer at once and waits for all of them; each step may take `timeout`.
    pub(crate) async fn round(&self, timeout: Duration, label: &str) -> RoundStats {
        let progress = Progress::bar(label, self.peers.len());
        let start = Instant::now();
        let steps = self.peers.iter().map(|peer| {
            let progress = &progress;
            async move {
                let result = timed_step(peer, timeout).await;
                progress.inc();
                result
            }
        });
        let peers = futures::future::join_all(steps).await;
        progress.finish();
        RoundStats { peers, wall: start.elapsed() }
    }

    /// The spread across peers and their distance to `mean`.
    ///
    /// # Errors
    /// When a peer's tensors are not the f32 tensor of `mean`'s length.
    pub(crate) async fn agreement(&self, mean: &[f64]) -> Result<Agreement> {
        let mut meter = AgreementMeter::new(mean);
        for peer in &self.peers {
            let tensors = peer.tensors().await;
            let Some(tensor) = tensors.first() else {
                return Err("a peer holds no tensor".into());
            };
            meter.add(tensor.as_f32()?)?;
        }
        Ok(meter.finish())
    }

    /// Shuts every peer down, then the DHT nodes; problems are logged, not returned, because
    /// they cannot change the outcome any more.
    pub(crate) async fn shutdown(self) {
        let stops = self.peers.iter().map(Averager::shutdown);
        for (index, stopped) in futures::future::join_all(stops).await.into_iter().enumerate() {
            if let Err(e) = stopped {
                tracing::warn!(peer = index, error = %e, "peer did not shut down cleanly");
            }
        }
        drop(self.peers);
        self.dhts.shutdown().await;
    }
}

/// One peer's step, timed by its stages.
pub(crate) async fn timed_step(peer: &Averager, timeout: Duration) -> PeerRound {
    timed_step_reporting(peer, timeout, |_| ()).await
}

/// [`timed_step`], calling `formed(began_allreduce)` as soon as the group formed (or the step
/// ended without one).
pub(crate) async fn timed_step_reporting(
    peer: &Averager,
    timeout: Duration,
    formed: impl FnOnce(bool),
) -> PeerRound {
    let start = Instant::now();
    let control = match peer.step_background(StepOptions::default().timeout(timeout)).await {
        Ok(control) => control,
        Err(e) => {
            return PeerRound { matchmaking: None, allreduce: None, group: None, error: Some(e.to_string()) };
        }
    };
    // A failed step reaches `Finished` without `RunningAllreduce`; the wait covers both.
    control.wait_for_stage(Stage::RunningAllreduce).await;
    let began = control.began_allreduce();
    formed(began);
    let formed = start.elapsed();
    let result = control.result().await;
    let done = start.elapsed();
    match result {
        Ok(gathered) => PeerRound {
            matchmaking: Some(formed),
            allreduce: Some(done.saturating_sub(formed)),
            group: Some(gathered.endpoints().map(str::to_string).collect()),
            error: None,
        },
        Err(e) => PeerRound {
            matchmaking: began.then_some(formed),
            allreduce: None,
            group: None,
            error: Some(e.to_string()),
        },
    }
}
