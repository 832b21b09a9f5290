//! The 8-peer Byzantine scenario, shared by the test (which asserts) and the benchmark (which
//! prints the figures for several seeds).
//!
//! Eight full averagers on the in-process backends form one group of 8 and run one all-reduce.
//! Seven honest peers hold `mu + sigma * N(0, 1)` per coordinate (one vector `mu` the honest peers
//! estimate); the attacker holds such values times [`ATTACK_SCALE`]. The attacker joins with
//! bandwidth 0, so it reduces no span: what is measured is the damage its *contributions* do
//! (a member that returns garbage for the span it reduces is out of reach of any reducer).
//!
//! The criterion: averaging among the 7 honest peers alone gives every honest peer the honest
//! mean, which is itself only an estimate of `mu`, with standard error `sigma_hat / sqrt(7)` per
//! coordinate (`sigma_hat` the honest values' sample standard deviation). That standard error is
//! the yardstick: a reducer passes when the RMS distance from the honest peers' result to the
//! honest mean is at most 2 standard errors (`ratio_to_honest_se`), and when its RMS error
//! against `mu` is at most 2 times the honest mean's RMS error against `mu` (`ratio_to_honest_mu`).

use std::sync::Arc;
use std::time::Duration;

use averager_core::dht::MemoryDht;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport};
use averager_core::{Averager, AveragerConfig, Dht, StepOptions, Tensor, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Peers in the group, the attacker included.
pub(crate) const PEERS: usize = 8;
/// How much larger the attacker's values are.
pub(crate) const ATTACK_SCALE: f64 = 1e6;
/// Elements of the averaged tensor.
pub(crate) const NUMEL: usize = 1024;
/// Spread of the honest values around `mu`.
pub(crate) const SIGMA: f64 = 0.1;

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    /// Largest, over honest peers, RMS distance of the result to the honest mean.
    pub(crate) to_honest_mean: f64,
    /// RMS standard error of the honest mean (`sigma_hat / sqrt(honest)`, RMS over coordinates).
    pub(crate) honest_se: f64,
    /// Largest, over honest peers, RMS error of the result against `mu`.
    pub(crate) to_mu: f64,
    /// RMS error of the honest mean against `mu`.
    pub(crate) honest_mean_to_mu: f64,
}

impl Figures {
    /// `to_honest_mean / honest_se`: at most 2 passes.
    pub(crate) fn ratio_to_honest_se(&self) -> f64 {
        self.to_honest_mean / self.honest_se
    }

    /// `to_mu / honest_mean_to_mu`: at most 2 passes.
    pub(crate) fn ratio_to_honest_mu(&self) -> f64 {
        self.to_mu / self.honest_mean_to_mu
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; `1 - u` keeps the logarithm finite.
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn rms(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
    (sum / n.max(1) as f64).sqrt()
}

/// Runs one all-reduce of 8 peers with `reducer` (and its settings) on every peer, the attacker
/// sending values [`ATTACK_SCALE`] times larger when `attack`; `seed` draws the values.
///
/// # Errors
/// A message when an averager cannot start, a step fails, or the group is not all 8 peers.
pub(crate) async fn run(
    reducer: &str,
    settings: serde_json::Value,
    attack: bool,
    seed: u64,
) -> Result<Figures, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mu: Vec<f64> = (0..NUMEL).map(|_| rng.random_range(-1.0..1.0)).collect();
    let inputs: Vec<Vec<f64>> =
        (0..PEERS).map(|_| mu.iter().map(|m| m + SIGMA * normal(&mut rng)).collect()).collect();
    let attacker = PEERS - 1;
    let honest = &inputs[..attacker];

    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let network = MemoryNetwork::new();
    let mut peers = Vec::new();
    for (i, values) in inputs.iter().enumerate() {
        let scale = if attack && i == attacker { ATTACK_SCALE } else { 1.0 };
        let values: Vec<f32> = values.iter().map(|x| (x * scale) as f32).collect();
        let tensors = vec![Tensor::from_f32(vec![NUMEL], values).map_err(|e| e.to_string())?];
        let config = AveragerConfig {
            prefix: format!("byzantine{seed}"),
            target_group_size: Some(PEERS),
            min_group_size: PEERS,
            // The group closes as soon as all 8 joined; the long window only absorbs a slow start.
            min_matchmaking_time: Duration::from_secs(10),
            request_timeout: Duration::from_secs(2),
            next_chunk_timeout: Some(Duration::from_secs(10)),
            reducer: reducer.to_string(),
            reducer_settings: settings.clone(),
            bandwidth: (i == attacker).then_some(0.0),
            ..AveragerConfig::default()
        };
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        peers.push(Averager::new(tensors, dht.clone(), transport, config).await.map_err(|e| e.to_string())?);
    }
    let steps = futures::future::join_all(peers.iter().map(|p| p.step(StepOptions::default()))).await;
    for (i, step) in steps.into_iter().enumerate() {
        let gathered = step.map_err(|e| format!("peer {i}: step failed: {e}"))?;
        if gathered.len() != PEERS {
            return Err(format!("peer {i} averaged in a group of {}, not {PEERS}", gathered.len()));
        }
    }

    let h = honest.len() as f64;
    let honest_mean: Vec<f64> = (0..NUMEL).map(|j| honest.iter().map(|x| x[j]).sum::<f64>() / h).collect();
    let honest_var: Vec<f64> = (0..NUMEL)
        .map(|j| honest.iter().map(|x| (x[j] - honest_mean[j]).powi(2)).sum::<f64>() / (h - 1.0))
        .collect();
    let honest_se = rms(honest_var.iter().map(|v| (v / h).sqrt()));
    let honest_mean_to_mu = rms(honest_mean.iter().zip(&mu).map(|(a, b)| a - b));
    let (mut to_honest_mean, mut to_mu) = (0.0f64, 0.0f64);
    for peer in &peers[..attacker] {
        let got: Vec<f64> = {
            let tensors = peer.tensors().await;
            tensors[0].as_f32().map_err(|e| e.to_string())?.iter().map(|&x| x as f64).collect()
        };
        to_honest_mean = to_honest_mean.max(rms(got.iter().zip(&honest_mean).map(|(a, b)| a - b)));
        to_mu = to_mu.max(rms(got.iter().zip(&mu).map(|(a, b)| a - b)));
    }
    for peer in &peers {
        peer.shutdown().await.map_err(|e| e.to_string())?;
    }
    Ok(Figures { to_honest_mean, honest_se, to_mu, honest_mean_to_mu })
}

/// The reducers compared, with the settings each runs with (the defaults, untuned).
pub(crate) fn reducers() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("mean", serde_json::Value::Null),
        ("median", serde_json::Value::Null),
        ("trimmed-mean", serde_json::json!({ "trim": 1 })),
        ("centered-clip", serde_json::Value::Null),
    ]
}
