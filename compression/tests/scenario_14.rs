//! protocol 10.2 scenario 14 (allreduce_compression): two peers, the first a CLIENT, average two
//! tensors with each pair of per-tensor codecs from {FLOAT16, UNIFORM_8BIT}. The CLIENT's result
//! for a tensor depends only on that tensor's codec, and its error against the exact mean is that
//! codec's.
//!
//! The core has no per-tensor selector yet, so [`PerTensorTest`] stands in for protocol 7.3's
//! PerTensor: it picks a codec by `info.key` and lets it write the message, so the wire names the
//! base codec and the receiver decodes it through the registry.

use std::sync::{Arc, Once};
use std::time::Duration;

use averager_compression::{Float16, Uniform8Bit};
use averager_core::averager::{Averager, AveragerConfig, StepOptions};
use averager_core::compression::{Compression, CompressionInfo, ErrorBound, TensorKey, WireTensor};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::registry::{CodecPlugin, Registry};
use averager_core::tensor::{DType, Tensor, TensorView};
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use averager_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long one combination's step may take before it counts as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Elements per tensor.
const N: usize = 1000;

/// The base codecs by registry name, and the test codec name of each per-tensor pair.
const COMBINATIONS: [(&str, [&str; 2]); 4] = [
    ("test-pertensor-ff", [Float16::NAME, Float16::NAME]),
    ("test-pertensor-fu", [Float16::NAME, Uniform8Bit::NAME]),
    ("test-pertensor-uf", [Uniform8Bit::NAME, Float16::NAME]),
    ("test-pertensor-uu", [Uniform8Bit::NAME, Uniform8Bit::NAME]),
];

/// Chooses a codec by the tensor's index (protocol 7.3 PerTensor, for this test only).
#[derive(Debug)]
struct PerTensorTest {
    name: &'static str,
    codecs: Vec<Arc<dyn Compression>>,
}

impl PerTensorTest {
    fn build(name: &'static str) -> Result<Arc<dyn Compression>> {
        let (_, bases) = COMBINATIONS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::Config(format!("no per-tensor combination {name}")))?;
        let codecs = bases.iter().map(|b| Registry::global().codec(b)).collect::<Result<_>>()?;
        Ok(Arc::new(PerTensorTest { name, codecs }))
    }

    fn select(&self, info: &CompressionInfo) -> Result<&Arc<dyn Compression>> {
        match &info.key {
            TensorKey::Index(i) => self.codecs.get(*i),
            TensorKey::Name(_) => None,
        }
        .ok_or_else(|| Error::codec(self.name, format!("no codec for tensor key {:?}", info.key)))
    }
}

impl Compression for PerTensorTest {
    fn name(&self) -> &str {
        self.name
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        self.codecs.iter().all(|c| c.accepts(dtype, ndim))
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        self.select(info)?.compress(tensor, info)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        Registry::global().decode(message)
    }

    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        self.select(info).map_or(1.0, |c| c.estimate_compression_ratio(info))
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::MeanSquared(f64::INFINITY)
    }
}

fn register_combinations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registry = Registry::global();
        let origin = module_path!();
        let description = "scenario 14: a codec per tensor";
        registry.register_codec(CodecPlugin::new(COMBINATIONS[0].0, description, origin, |_| {
            PerTensorTest::build(COMBINATIONS[0].0)
        }));
        registry.register_codec(CodecPlugin::new(COMBINATIONS[1].0, description, origin, |_| {
            PerTensorTest::build(COMBINATIONS[1].0)
        }));
        registry.register_codec(CodecPlugin::new(COMBINATIONS[2].0, description, origin, |_| {
            PerTensorTest::build(COMBINATIONS[2].0)
        }));
        registry.register_codec(CodecPlugin::new(COMBINATIONS[3].0, description, origin, |_| {
            PerTensorTest::build(COMBINATIONS[3].0)
        }));
    });
}

/// `linspace(start, end, N)^0.5`.
fn sqrt_linspace(start: f64, end: f64) -> Vec<f32> {
    (0..N).map(|i| (start + (end - start) * i as f64 / (N - 1) as f64).sqrt() as f32).collect()
}

/// Standard-normal samples (Box-Muller; no rand_distr in the workspace).
fn randn(rng: &mut impl Rng) -> Vec<f32> {
    (0..N)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// Runs one all-reduce of `inputs` between a CLIENT (peer 0) and a full peer, both using the
/// codec registered as `codec`, and returns the CLIENT's tensors afterwards.
async fn client_result(codec: &str, inputs: &[Vec<Vec<f32>>; 2]) -> Vec<Vec<f32>> {
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for (i, tensors) in inputs.iter().enumerate() {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "scenario14".into(),
            target_group_size: Some(2),
            client_mode: Some(i == 0),
            compression: codec.into(),
            ..AveragerConfig::default()
        };
        let tensors = tensors.iter().map(|v| Tensor::from_f32(vec![N], v.clone()).unwrap()).collect();
        peers.push(Averager::new(tensors, dht.clone() as Arc<dyn Dht>, transport, config).await.unwrap());
    }
    let steps = futures::future::join_all(peers.iter().map(|p| p.step(StepOptions::default())));
    let results = tokio::time::timeout(STEP_TIMEOUT, steps).await.expect("the step hung");
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("{codec}: peer {i}'s step failed: {e}"));
    }
    let client = peers[0].tensors().await.iter().map(|t| t.as_f32().unwrap().to_vec()).collect();
    for p in &peers {
        p.shutdown().await.unwrap();
    }
    client
}

fn mse(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum::<f64>() / want.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_14_allreduce_compression() {
    register_combinations();
    let mut rng = StdRng::seed_from_u64(14);
    let inputs = [
        vec![sqrt_linspace(0.0, 500.0), randn(&mut rng)],
        vec![sqrt_linspace(300.0, 800.0), randn(&mut rng)],
    ];
    let means: Vec<Vec<f64>> = (0..2)
        .map(|t| {
            inputs[0][t]
                .iter()
                .zip(&inputs[1][t])
                .map(|(&a, &b)| (f64::from(a) + f64::from(b)) / 2.0)
                .collect()
        })
        .collect();

    let runs = COMBINATIONS.iter().map(|(name, _)| client_result(name, &inputs));
    let results = futures::future::join_all(runs).await;

    for t in 0..2 {
        for (a, (name_a, bases_a)) in COMBINATIONS.iter().enumerate() {
            let got = &results[a][t];
            let error = mse(got, &means[t]);
            let (low, high) = if bases_a[t] == Float16::NAME { (0.0, 1e-5) } else { (1e-5, 1e-2) };
            assert!(
                error > low && error <= high,
                "{name_a}, tensor {t} ({}): mse {error} outside ({low}, {high}]",
                bases_a[t]
            );
            for (b, (name_b, bases_b)) in COMBINATIONS.iter().enumerate().skip(a + 1) {
                let same_codec = bases_a[t] == bases_b[t];
                assert_eq!(
                    got == &results[b][t],
                    same_codec,
                    "tensor {t}: {name_a} and {name_b} use {} and {}",
                    bases_a[t],
                    bases_b[t]
                );
            }
        }
    }
}
