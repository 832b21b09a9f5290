//! Many averagers in one process: protocol 10.2 scenarios 8 and 9, and 64 peers converging to the
//! exact global mean in 3 rounds (protocol 3.9).

mod common;

use std::time::Duration;

use averager_core::Error;
use averager_core::averager::{AveragerConfig, StepOptions};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_peers_reach_the_exact_mean_after_three_rounds() {
    let mut rng = rng(64);
    let inputs: Vec<Vec<f32>> = (0..64).map(|_| (0..16).map(|_| randn(&mut rng)).collect()).collect();
    let mean: Vec<f64> = (0..16).map(|e| inputs.iter().map(|v| v[e] as f64).sum::<f64>() / 64.0).collect();
    let setup = (0..64)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "sixtyfour".into(),
                target_group_size: Some(4),
                // Exactly 4 peers in each of the 16 buckets.
                initial_group_bits: format!("{:04b}", i / 4),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[16], inputs[i].clone())], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    for round in 1..=3 {
        for r in step_all(&swarm.peers, |_| StepOptions::default().timeout(Duration::from_secs(60))).await {
            assert_eq!(r.unwrap().len(), 4, "round {round}: groups are full");
        }
    }
    for (i, peer) in swarm.peers.iter().enumerate() {
        assert_close(&values(peer).await[0], &mean, 1e-5, &format!("peer {i} after 3 rounds"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_too_few_peers_fail_with_no_group() {
    let setup = ["000", "001", "010", "011"]
        .iter()
        .map(|bits| {
            let config = AveragerConfig {
                prefix: "mygroup".into(),
                target_group_size: Some(2),
                initial_group_bits: bits.to_string(),
                min_matchmaking_time: Duration::from_secs(1),
                request_timeout: Duration::from_millis(500),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[3], [0.0; 3])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    for r in step_all(&swarm.peers, |_| StepOptions::default().timeout(Duration::from_secs(2))).await {
        assert!(matches!(r, Err(Error::NoGroup(_))), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_9_overcrowded_sixteen_peers_pair_up_every_round() {
    let setup = (0..16)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "mygroup".into(),
                target_group_size: Some(2),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[3], [i as f32; 3])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    for round in 1..=5 {
        let results =
            step_all(&swarm.peers, |_| StepOptions::default().timeout(Duration::from_secs(5))).await;
        let paired = results.iter().filter(|r| r.as_ref().is_ok_and(|g| g.len() == 2)).count();
        assert!(paired >= 15, "round {round}: only {paired} of 16 peers averaged in pairs");
    }
}
