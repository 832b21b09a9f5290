//! A swarm of averagers in one process: memory transport, one MemoryDht.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig, Gathered, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::tensor::Tensor;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use rand::{Rng, SeedableRng};

/// How long a whole scenario may take before it counts as hung.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one step of a two-peer test may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A two-peer group under `prefix` that forms quickly, with parts small enough that every tensor
/// of a few thousand floats is sent in several (so updates arrive, and are written, in pieces).
pub fn pair_config(prefix: &str) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_millis(500),
        part_size_bytes: 4096,
        ..AveragerConfig::default()
    }
}

pub struct Swarm {
    pub peers: Vec<Averager>,
    pub dht: Arc<MemoryDht>,
    pub network: Arc<MemoryNetwork>,
}

/// Starts one averager per `(tensors, config)` pair.
pub async fn swarm(setup: Vec<(Vec<Tensor>, AveragerConfig)>) -> Swarm {
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for (i, (tensors, config)) in setup.into_iter().enumerate() {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let peer = Averager::new(tensors, dht.clone() as Arc<dyn Dht>, transport, config).await.unwrap();
        peers.push(peer);
    }
    Swarm { peers, dht, network }
}

/// Runs one step on every peer at once.
pub async fn step_all(
    peers: &[Averager],
    options: impl Fn(usize) -> StepOptions,
) -> Vec<averager_core::Result<Gathered>> {
    let steps = peers.iter().enumerate().map(|(i, p)| p.step(options(i)));
    tokio::time::timeout(SCENARIO_TIMEOUT, futures::future::join_all(steps)).await.expect("steps hung")
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A standard-normal sample (Box-Muller; the core has no rand_distr).
pub fn randn(rng: &mut impl Rng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

pub fn f32s(shape: &[usize], values: impl IntoIterator<Item = f32>) -> Tensor {
    Tensor::from_f32(shape.to_vec(), values.into_iter().collect()).unwrap()
}

pub async fn values(peer: &Averager) -> Vec<Vec<f32>> {
    peer.tensors().await.iter().map(|t| t.as_f32().unwrap().to_vec()).collect()
}

pub fn assert_close(got: &[f32], want: &[f64], atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= atol + 1e-6 * w.abs(), "{what}[{i}]: {g} vs {w}");
    }
}
