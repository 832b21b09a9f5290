//! SPEC 10.2 scenarios 4-7 and 9: averaging end to end among averagers in one process.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use averager_core::averager::{AveragerConfig, StepOptions};
use averager_core::tensor::Tensor;
use common::*;
use rand::Rng;
use rand::seq::SliceRandom;

fn config() -> AveragerConfig {
    AveragerConfig { prefix: "mygroup".into(), ..AveragerConfig::default() }
}

/// Scenario 4's tensors for peer `i`.
fn scenario_4_tensors(i: usize, rng: &mut impl Rng) -> Vec<Tensor> {
    let v123: Vec<f32> = match i {
        0 => (0..123).map(|_| randn(rng)).collect(),
        1 => (0..123).map(|_| rng.random::<f32>()).collect(),
        2 => (0..123).map(|_| -rng.random::<f32>()).collect(),
        _ => (0..123).map(|_| randn(rng).powi(3)).collect(),
    };
    let v3: Vec<f32> = match i {
        0 => vec![0.0; 3],
        1 => vec![1.0; 3],
        2 => vec![0.0, 1.0, 2.0],
        _ => vec![0.0, 0.5, 1.0],
    };
    vec![f32s(&[123], v123), f32s(&[3], v3)]
}

async fn allreduce_once(n_clients: usize, n_aux: usize) {
    let mut rng = rng(4 + 10 * n_clients as u64 + n_aux as u64);
    let mut modes: Vec<(bool, bool)> =
        (0..4).map(|i| (i < n_clients, i >= n_clients && i < n_clients + n_aux)).collect();
    modes.shuffle(&mut rng);
    let inputs: Vec<Vec<Tensor>> = (0..4).map(|i| scenario_4_tensors(i, &mut rng)).collect();
    let setup = (0..4)
        .map(|i| {
            let mut c = config();
            c.target_group_size = Some(4);
            c.min_matchmaking_time = Duration::from_secs(15);
            c.client_mode = Some(modes[i].0);
            c.auxiliary = modes[i].1;
            (inputs[i].clone(), c)
        })
        .collect();
    let swarm = swarm(setup).await;
    let results = step_all(&swarm.peers, |_| StepOptions::default()).await;
    let endpoints: HashSet<&str> = swarm.peers.iter().map(|p| p.endpoint()).collect();
    for (i, r) in results.iter().enumerate() {
        let gathered = r.as_ref().unwrap_or_else(|e| panic!("({n_clients}, {n_aux}) peer {i}: {e}"));
        assert_eq!(gathered.endpoints().collect::<HashSet<_>>(), endpoints);
    }
    let senders: Vec<usize> = (0..4).filter(|&i| !modes[i].1).collect();
    let denominator = senders.len().max(1) as f64;
    for i in 0..4 {
        let got = values(&swarm.peers[i]).await;
        if modes[i].1 {
            // AUX tensors never change.
            let unchanged: Vec<Vec<f32>> = inputs[i].iter().map(|t| t.as_f32().unwrap().to_vec()).collect();
            assert_eq!(got, unchanged);
            continue;
        }
        for (t, tensor) in got.iter().enumerate() {
            let mean: Vec<f64> = (0..tensor.len())
                .map(|e| {
                    senders.iter().map(|&s| inputs[s][t].as_f32().unwrap()[e] as f64).sum::<f64>()
                        / denominator
                })
                .collect();
            assert_close(tensor, &mean, 1e-6, &format!("({n_clients}, {n_aux}) peer {i} tensor {t}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_allreduce_once_in_every_mix_of_modes() {
    let mut mixes: Vec<(usize, usize)> = Vec::new();
    for c in 0..3 {
        for a in 0..3 {
            mixes.push((c, a));
        }
    }
    mixes.extend([(0, 4), (1, 3), (0, 3)]);
    for (c, a) in mixes {
        allreduce_once(c, a).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5_allreduce_weighted() {
    let mut rng = rng(5);
    let mut clients = [true, true, false, false];
    clients.shuffle(&mut rng);
    let inputs: Vec<Vec<Tensor>> = (0..4).map(|i| scenario_4_tensors(i, &mut rng)).collect();
    let weights: Vec<f64> = (0..4).map(|_| rng.random_range(0.01..10.01)).collect();
    let setup = (0..4)
        .map(|i| {
            let mut c = config();
            c.target_group_size = Some(4);
            c.client_mode = Some(clients[i]);
            (inputs[i].clone(), c)
        })
        .collect();
    let swarm = swarm(setup).await;
    for r in step_all(&swarm.peers, |i| StepOptions::default().weight(weights[i])).await {
        r.unwrap();
    }
    let total: f64 = weights.iter().sum();
    for i in 0..4 {
        for (t, tensor) in values(&swarm.peers[i]).await.iter().enumerate() {
            let mean: Vec<f64> = (0..tensor.len())
                .map(|e| {
                    (0..4).map(|s| weights[s] * inputs[s][t].as_f32().unwrap()[e] as f64).sum::<f64>() / total
                })
                .collect();
            assert_close(tensor, &mean, 1e-6, &format!("peer {i} tensor {t}"));
        }
    }
}

fn mean_and_std(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let mean: Vec<f64> =
        (0..rows[0].len()).map(|e| rows.iter().map(|r| r[e] as f64).sum::<f64>() / n).collect();
    let std = (0..rows[0].len())
        .map(|e| (rows.iter().map(|r| (r[e] as f64 - mean[e]).powi(2)).sum::<f64>() / n).sqrt())
        .collect();
    (mean, std)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_allreduce_grid_converges_exactly_after_three_rounds() {
    let mut rng = rng(6);
    let inputs: Vec<Vec<f32>> = (0..8).map(|_| (0..3).map(|_| randn(&mut rng)).collect()).collect();
    let setup = (0..8)
        .map(|i| {
            let mut c = config();
            c.target_group_size = Some(2);
            c.initial_group_bits = format!("{:02b}", i / 2);
            (vec![f32s(&[3], inputs[i].clone())], c)
        })
        .collect();
    let swarm = swarm(setup).await;
    let (initial_mean, initial_std) = mean_and_std(&inputs);
    for round in 1..=5 {
        for r in step_all(&swarm.peers, |_| StepOptions::default().timeout(Duration::from_secs(30))).await {
            assert_eq!(r.unwrap().len(), 2, "round {round}");
        }
        let mut rows = Vec::new();
        for p in &swarm.peers {
            rows.push(values(p).await.remove(0));
        }
        let (mean, std) = mean_and_std(&rows);
        assert_close(&mean.iter().map(|&m| m as f32).collect::<Vec<_>>(), &initial_mean, 1e-6, "mean");
        if round <= 3 {
            assert!(
                std.iter().zip(&initial_std).all(|(s, s0)| *s <= s0 + 1e-6),
                "round {round}: std {std:?}"
            );
        }
        if round >= 3 {
            // SPEC 3.9: 8 = 2^3 peers reach the exact mean after 3 rounds.
            assert!(std.iter().all(|s| *s <= 1e-6), "round {round}: std {std:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_7_allgather_returns_every_members_payload() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Meta {
        batch_size: usize,
        foo: String,
    }
    let setup = (0..8)
        .map(|_| {
            let mut c = config();
            c.target_group_size = Some(4);
            c.initial_group_bits = "000".into();
            (vec![f32s(&[2], [1.0, 2.0])], c)
        })
        .collect();
    let swarm = swarm(setup).await;
    let results = step_all(&swarm.peers, |i| {
        StepOptions::default().gather(&Meta { batch_size: 123 + i, foo: "bar".into() })
    })
    .await;
    for r in results {
        let gathered = r.unwrap();
        assert_eq!(gathered.len(), 4);
        for (endpoint, meta) in gathered.decode::<Meta>().unwrap() {
            let i = swarm.peers.iter().position(|p| p.endpoint() == endpoint).unwrap();
            assert_eq!(meta, Some(Meta { batch_size: 123 + i, foo: "bar".into() }));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_group_bits_round_trip() {
    let swarm = swarm(vec![(vec![f32s(&[1], [0.0])], config())]).await;
    swarm.peers[0].set_group_bits("00101011101010").await.unwrap();
    assert_eq!(swarm.peers[0].group_bits().await, "00101011101010");
    assert!(swarm.peers[0].set_group_bits("0012").await.is_err());
    assert_eq!(swarm.peers[0].group_bits().await, "00101011101010");
}
