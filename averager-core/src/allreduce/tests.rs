//! The all-reduce end to end over the memory transport: protocol 10.3 scenario 20 and the hostile
//! senders of protocol 4.5.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::*;
use crate::compression::{CompressionInfo, NoCompression};
use crate::matchmaking::PeerMode;
use crate::reduce::MeanReducer;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};

/// Peers on one memory network, each serving a router.
pub(super) struct Swarm {
    pub(super) transports: Vec<Arc<dyn Transport>>,
    pub(super) routers: Vec<Arc<RoundRouter>>,
    pub(super) endpoints: Vec<String>,
    _servers: Vec<crate::transport::ServerHandle>,
}

impl Swarm {
    pub(super) async fn new(n: usize) -> Swarm {
        Self::with_wait(n, Duration::from_secs(10)).await
    }

    pub(super) async fn with_wait(n: usize, wait: Duration) -> Swarm {
        let network = MemoryNetwork::new();
        let (mut transports, mut routers, mut endpoints, mut servers) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
            let transport: Arc<dyn Transport> =
                Arc::new(MemoryTransport::with_settings(network.clone(), settings));
            let router = Arc::new(RoundRouter::new(wait));
            let server = transport.serve(router.clone()).await.unwrap();
            endpoints.push(server.endpoint().to_string());
            servers.push(server);
            transports.push(transport);
            routers.push(router);
        }
        Swarm { transports, routers, endpoints, _servers: servers }
    }

    pub(super) fn group(&self, modes: &[PeerMode], me: usize) -> AllReduceGroup {
        let members = self
            .endpoints
            .iter()
            .zip(modes)
            .map(|(e, &mode)| GroupMember { endpoint: e.clone(), mode, bandwidth: None })
            .collect();
        AllReduceGroup { group_id: Bytes::from_static(b"group-of-the-test-00"), members, me }
    }
}

pub(super) fn settings(part_size_bytes: usize, weight: f64) -> AllReduceSettings {
    AllReduceSettings {
        part_size_bytes,
        min_vector_size: 0,
        sender_timeout: None,
        reducer_timeout: None,
        weight,
    }
}

pub(super) fn infos(tensors: &[Tensor]) -> Vec<CompressionInfo> {
    tensors.iter().enumerate().map(|(i, t)| CompressionInfo::for_tensor(i, &t.view())).collect()
}

/// Scenario 20's tensors for peer `i`: `[randn(3, 128), rand(32), scalar i]`.
fn scenario_20_tensors(i: usize, rng: &mut impl Rng) -> Vec<Tensor> {
    let normal = |rng: &mut dyn rand::RngCore| {
        // Box-Muller: the core has no rand_distr.
        let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    vec![
        Tensor::from_f32(vec![3, 128], (0..384).map(|_| normal(rng)).collect()).unwrap(),
        Tensor::from_f32(vec![32], (0..32).map(|_| rng.random()).collect()).unwrap(),
        Tensor::from_f32(vec![], vec![i as f32]).unwrap(),
    ]
}

/// Runs one all-reduce on every peer, applies the deltas, and returns every peer's tensors.
async fn run_case(
    modes: &[PeerMode],
    weights: &[f64],
    shares: &[f64],
    part_size_bytes: usize,
) -> (Vec<Vec<Tensor>>, Vec<Vec<Tensor>>) {
    let swarm = Swarm::new(modes.len()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let inputs: Vec<Vec<Tensor>> = (0..modes.len()).map(|i| scenario_20_tensors(i, &mut rng)).collect();
    let mut runners = Vec::new();
    for i in 0..modes.len() {
        let runner = AllReduceRound::with_shares(
            AllReduceInputs {
                group: swarm.group(modes, i),
                tensors: Arc::new(inputs[i].clone().into()),
                infos: infos(&inputs[i]),
                codec: Arc::new(NoCompression),
                reducer: Arc::new(MeanReducer),
                transport: swarm.transports[i].clone(),
                registry: Registry::global(),
                settings: settings(part_size_bytes, weights[i]),
            },
            shares.to_vec(),
        )
        .unwrap();
        swarm.routers[i].register(runner.span());
        runners.push(runner);
    }
    let outcomes = futures::future::join_all(runners.into_iter().map(|r| r.run())).await;
    let mut outputs = inputs.clone();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.unwrap();
        assert!(outcome.failed_reducers.is_empty(), "peer {i}: {:?}", outcome.failed_reducers);
        outcome.deltas.apply(&outcome.plan, &mut outputs[i], 1.0).unwrap();
    }
    (inputs, outputs)
}

fn weighted_mean(inputs: &[Vec<Tensor>], modes: &[PeerMode], weights: &[f64]) -> Vec<Vec<f64>> {
    let senders: Vec<usize> = (0..modes.len()).filter(|&i| modes[i] != PeerMode::Aux).collect();
    let total: f64 = senders.iter().map(|&i| weights[i]).sum();
    (0..inputs[0].len())
        .map(|t| {
            let n = inputs[0][t].numel();
            (0..n)
                .map(|e| {
                    let sum: f64 =
                        senders.iter().map(|&i| weights[i] * inputs[i][t].as_f32().unwrap()[e] as f64).sum();
                    sum / total
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_20_allreduce_protocol() {
    use PeerMode::{Aux as A, Client as C, Node as N};
    // modes / weights / shares / part_size_bytes, as listed in protocol 10.3.
    type Case<'a> = (&'a [PeerMode], &'a [f64], &'a [f64], usize);
    let cases: Vec<Case<'_>> = vec![
        (&[N, N, N, N], &[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0], 1 << 20),
        (&[N, N, N, N], &[0.1, 0.2, 0.3, 0.4], &[1.0, 1.0, 1.0, 1.0], 1 << 20),
        (&[N, N, N, N], &[1.0, 1.0, 1.0, 1.0], &[1.0, 2.0, 3.0, 0.0], 1 << 20),
        (&[N, N, N, C], &[1.0, 1.0, 1.0, 1.0], &[1.0, 2.0, 3.0, 0.0], 1 << 20),
        (&[N, N, N, A], &[1.0, 1.0, 1.0, 0.0], &[1.0, 2.0, 3.0, 4.0], 1 << 20),
        (&[N, N, N, N], &[0.15, 0.0, 0.35, 0.45], &[1.0, 1.0, 1.0, 1.0], 1 << 20),
        (&[N, A, N, C], &[0.15, 0.0, 0.35, 0.45], &[150.0, 200.0, 67.0, 0.0], 1 << 20),
        (&[N, A, N, C], &[0.15, 0.0, 0.35, 0.45], &[150.0, 200.0, 67.0, 0.0], 256),
        (&[N, A, N, C], &[0.15, 0.0, 0.35, 0.45], &[150.0, 200.0, 67.0, 0.0], 19),
        (&[A, A, A, A], &[0.0, 0.0, 0.0, 0.0], &[1.0, 2.0, 3.0, 4.0], 1 << 20),
    ];
    for (modes, weights, shares, part_size) in cases {
        let (inputs, outputs) =
            tokio::time::timeout(Duration::from_secs(60), run_case(modes, weights, shares, part_size))
                .await
                .expect("all-reduce hung");
        let any_sender = modes.iter().any(|m| *m != PeerMode::Aux);
        let mean = if any_sender { Some(weighted_mean(&inputs, modes, weights)) } else { None };
        for i in 0..modes.len() {
            for (t, out) in outputs[i].iter().enumerate() {
                let got = out.as_f32().unwrap();
                match (&mean, modes[i]) {
                    (Some(mean), mode) if mode != PeerMode::Aux => {
                        for (e, (&g, &m)) in got.iter().zip(&mean[t]).enumerate() {
                            assert!(
                                (g as f64 - m).abs() <= 1e-6 + 1e-6 * m.abs(),
                                "{modes:?} {weights:?} {shares:?} {part_size}: peer {i} tensor {t}[{e}] = {g}, mean {m}"
                            );
                        }
                    }
                    _ => assert_eq!(out, &inputs[i][t], "AUX peer {i} changed"),
                }
            }
        }
    }
}
