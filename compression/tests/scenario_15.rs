//! protocol 10.2 scenario 15 (adaptive_compression), the averaging part: hivemind runs it through a
//! training-state layer that this port does not have, so the tensors and their roles are given
//! directly (`AveragerConfig.tensor_infos`).
//!
//! The averaging codec is RoleAdaptive {parameter: FLOAT16, gradient: SizeAdaptive(1000, FLOAT16,
//! UNIFORM_8BIT), optimizer: NONE, default: NONE} with `part_size_bytes = 5000`, so parts hold at
//! most 5000 (8-bit), 2500 (FLOAT16) or 1250 (NONE) float32 values; state tensors are compressed
//! once each, whole, with SizeAdaptive(500, NONE, FLOAT16).

use std::sync::Arc;
use std::time::Duration;

use averager_compression::SizeAdaptive;
use averager_core::averager::{Averager, AveragerConfig, CodecSpec, StepOptions, TensorSettings};
use averager_core::compression::{Compression, CompressionInfo, NoCompression, TensorRole};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::plan::{PartitionPlan, TensorLayout};
use averager_core::registry::Registry;
use averager_core::tensor::Tensor;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long the averaging step may take before it counts as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// protocol 10.2 scenario 15's part budget.
const PART_SIZE_BYTES: usize = 5000;

/// The averaged tensors: role, element count, the codec the selector must choose, and the most
/// float32 values one of its parts may hold.
const TENSORS: [(TensorRole, usize, &str, usize); 6] = [
    (TensorRole::Parameter, 6000, "float16", 2500),
    (TensorRole::Gradient, 12000, "uniform8", 5000),
    (TensorRole::Gradient, 999, "float16", 2500),
    (TensorRole::Optimizer, 3000, "none", 1250),
    (TensorRole::Unspecified, 3000, "none", 1250),
    (TensorRole::Activation, 100, "none", 1250),
];

fn averaging_codec() -> CodecSpec {
    CodecSpec::Configured {
        name: "role-adaptive".into(),
        settings: serde_json::json!({
            "parameter": "float16",
            "gradient": {
                "name": "size-adaptive",
                "settings": { "threshold": 1000, "less": "float16", "greater_equal": "uniform8" }
            },
            "optimizer": "none",
            "default": "none"
        }),
    }
}

fn build(spec: &CodecSpec) -> Arc<dyn Compression> {
    Registry::global().build_codec(spec.name(), &spec.settings()).unwrap()
}

fn infos(tensors: &[Tensor]) -> Vec<CompressionInfo> {
    tensors
        .iter()
        .zip(TENSORS)
        .enumerate()
        .map(|(i, (t, (role, ..)))| CompressionInfo::for_tensor(i, &t.view()).with_role(role))
        .collect()
}

/// Standard-normal samples (Box-Muller; no rand_distr in the workspace).
fn randn(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn peer_tensors(rng: &mut impl Rng) -> Vec<Tensor> {
    TENSORS.iter().map(|&(_, n, ..)| Tensor::from_f32(vec![n], randn(rng, n)).unwrap()).collect()
}

#[test]
fn parts_hold_5000_2500_or_1250_values_by_the_chosen_codec() {
    let codec = build(&averaging_codec());
    let tensors = peer_tensors(&mut StdRng::seed_from_u64(15));
    let infos = infos(&tensors);
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .zip(&infos)
        .map(|(t, info)| TensorLayout {
            numel: t.numel(),
            bytes_per_value: t.dtype().size_bytes() as f64 * codec.estimate_compression_ratio(info),
        })
        .collect();
    let plan = PartitionPlan::new(&layouts, &[1.0, 1.0], PART_SIZE_BYTES).unwrap();
    for (i, &(role, numel, chosen, max_values)) in TENSORS.iter().enumerate() {
        let parts: Vec<_> = plan.parts().iter().filter(|p| p.tensor == i).collect();
        assert_eq!(parts.len(), numel.div_ceil(max_values), "tensor {i} ({role:?}, {numel})");
        for p in &parts {
            assert_eq!(p.part_size, max_values, "tensor {i} ({role:?}, {numel})");
            assert!(p.range.len() <= max_values);
            let part = tensors[i].flat_view(p.range.clone()).unwrap();
            let wire = codec.compress(&part, &infos[i].for_part(p.part_index, p.part_size)).unwrap();
            assert_eq!(wire.codec, chosen, "tensor {i} ({role:?}, {numel}), part {}", p.part_index);
            // Within the byte budget, up to the 8-bit codebook's fixed 1032 bytes.
            assert!(wire.buffer.len() <= PART_SIZE_BYTES + 1032, "{} bytes", wire.buffer.len());
        }
    }
}

fn mse(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum::<f64>() / want.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn averaging_uses_each_tensors_codec() {
    let mut rng = StdRng::seed_from_u64(1515);
    let inputs = [peer_tensors(&mut rng), peer_tensors(&mut rng)];
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for (i, tensors) in inputs.iter().enumerate() {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "scenario15".into(),
            target_group_size: Some(2),
            part_size_bytes: PART_SIZE_BYTES,
            compression: averaging_codec(),
            tensor_infos: TENSORS.iter().map(|&(role, ..)| TensorSettings { role, name: None }).collect(),
            ..AveragerConfig::default()
        };
        peers.push(
            Averager::new(tensors.clone(), dht.clone() as Arc<dyn Dht>, transport, config).await.unwrap(),
        );
    }
    let steps = futures::future::join_all(peers.iter().map(|p| p.step(StepOptions::default())));
    for (i, r) in
        tokio::time::timeout(STEP_TIMEOUT, steps).await.expect("the step hung").into_iter().enumerate()
    {
        r.unwrap_or_else(|e| panic!("peer {i}'s step failed: {e}"));
    }

    for (p, peer) in peers.iter().enumerate() {
        let results = peer.tensors().await;
        for (i, &(role, numel, chosen, _)) in TENSORS.iter().enumerate() {
            let mean: Vec<f64> = (0..numel)
                .map(|k| {
                    let x = |peer: usize| f64::from(inputs[peer][i].as_f32().unwrap()[k]);
                    (x(0) + x(1)) / 2.0
                })
                .collect();
            let got = results[i].as_f32().unwrap();
            let error = mse(got, &mean);
            let what = format!("peer {p}, tensor {i} ({role:?}, {numel} values, {chosen})");
            match chosen {
                "none" => {
                    for (k, (&g, &w)) in got.iter().zip(&mean).enumerate() {
                        assert!((f64::from(g) - w).abs() <= 1e-6 + 1e-6 * w.abs(), "{what}[{k}]: {g} vs {w}");
                    }
                }
                // Scenario 14's ranges: f16 rounding stays below 1e-5, 8-bit bins above it.
                "float16" => assert!(error > 0.0 && error <= 1e-5, "{what}: mse {error}"),
                _ => assert!(error > 1e-5 && error <= 1e-2, "{what}: mse {error}"),
            }
        }
    }
    for peer in &peers {
        peer.shutdown().await.unwrap();
    }
}

#[test]
fn state_tensors_are_compressed_whole_by_size() {
    let state = Registry::global()
        .build_codec(
            SizeAdaptive::NAME,
            &CodecSpec::Configured {
                name: SizeAdaptive::NAME.into(),
                settings: serde_json::json!({ "threshold": 500, "less": "none", "greater_equal": "float16" }),
            }
            .settings(),
        )
        .unwrap();
    let mut rng = StdRng::seed_from_u64(150);
    for (numel, chosen) in [(1, "none"), (499, "none"), (500, "float16"), (6000, "float16")] {
        let t = Tensor::from_f32(vec![numel], randn(&mut rng, numel)).unwrap();
        let info = CompressionInfo::for_tensor(0, &t.view());
        assert_eq!(info.part_size, None);
        let wire = state.compress(&t.view(), &info).unwrap();
        assert_eq!(wire.codec, chosen, "{numel} values");
        let back = Registry::global().decode(&wire).unwrap();
        if chosen == NoCompression::NAME {
            assert_eq!(back, t);
        } else {
            assert_eq!(back.shape(), t.shape());
        }
    }
}
