//! SPEC 10.2 scenarios 12 and 13: step control (triggers and cancellation).

mod common;

use std::time::Duration;

use averager_core::Error;
use averager_core::averager::{AveragerConfig, Stage, StepOptions};
use averager_core::time::dht_now;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_12_averaging_trigger() {
    let setup = (0..4)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "mygroup".into(),
                target_group_size: Some(4),
                min_matchmaking_time: Duration::from_millis(500),
                request_timeout: Duration::from_millis(300),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[4], [i as f32; 4])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    let scheduled = dht_now() + 0.5;
    let mut controls = Vec::new();
    for (i, peer) in swarm.peers.iter().enumerate() {
        let options = StepOptions::default().scheduled_time(scheduled).require_trigger(i == 1 || i == 2);
        controls.push(peer.step_background(options).await.unwrap());
    }
    // Poll the stages instead of sleeping 0.6 s.
    for (i, c) in controls.iter().enumerate() {
        let stage = if i == 1 || i == 2 { Stage::AwaitingTrigger } else { Stage::RunningAllreduce };
        tokio::time::timeout(WAIT, c.wait_for_stage(stage)).await.expect("stage not reached");
    }
    assert!(controls.iter().all(|c| !c.is_done()), "nobody finishes while two peers await their trigger");
    assert_eq!(controls[0].stage(), Stage::RunningAllreduce);
    assert_eq!(controls[3].stage(), Stage::RunningAllreduce);
    assert_eq!(controls[1].stage(), Stage::AwaitingTrigger);
    assert_eq!(controls[2].stage(), Stage::AwaitingTrigger);

    controls[1].allow_allreduce();
    controls[2].allow_allreduce();
    for c in &controls {
        tokio::time::timeout(WAIT, c.wait_for_stage(Stage::Finished)).await.expect("step did not finish");
        assert!(c.is_done());
        assert_eq!(c.result().await.unwrap().len(), 4);
    }
    // Triggering again only logs.
    controls[1].allow_allreduce();
    for peer in &swarm.peers {
        assert_eq!(values(peer).await[0], vec![1.5; 4]);
    }
}

async fn averaging_cancel(target: Option<usize>) {
    let setup = (0..4)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "mygroup".into(),
                target_group_size: target,
                min_matchmaking_time: Duration::from_secs(1),
                request_timeout: Duration::from_millis(500),
                client_mode: Some(i == 0 || i == 2),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[4], [i as f32; 4])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    let mut controls = Vec::new();
    for peer in &swarm.peers {
        controls.push(peer.step_background(StepOptions::default().require_trigger(true)).await.unwrap());
    }
    controls[0].cancel();
    controls[1].cancel();
    controls[2].allow_allreduce();
    controls[3].allow_allreduce();
    for (i, c) in controls.iter().enumerate() {
        let result = tokio::time::timeout(SCENARIO_TIMEOUT, c.result()).await.expect("step hung");
        if i < 2 {
            assert!(c.cancelled(), "peer {i} reports cancelled");
            assert!(matches!(result, Err(Error::Cancelled(_))), "peer {i}: {result:?}");
        } else {
            let gathered = result.unwrap_or_else(|e| panic!("({target:?}) peer {i}: {e}"));
            if target == Some(2) {
                assert_eq!(gathered.len(), 2);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_13_averaging_cancel_without_a_target() {
    averaging_cancel(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_13_averaging_cancel_with_target_two() {
    averaging_cancel(Some(2)).await;
}

/// SPEC 8.3 and 11.12: shutdown cancels a running all-reduce instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_running_all_reduce() {
    let setup = (0..2)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "mygroup".into(),
                target_group_size: Some(2),
                min_matchmaking_time: Duration::from_millis(500),
                request_timeout: Duration::from_millis(300),
                shutdown_timeout: Duration::from_secs(5),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[4], [i as f32; 4])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    let running = swarm.peers[0].step_background(StepOptions::default()).await.unwrap();
    let waiting = swarm.peers[1].step_background(StepOptions::default().require_trigger(true)).await.unwrap();
    // Peer 0 runs its all-reduce and waits for peer 1, which waits for a trigger that never comes.
    tokio::time::timeout(WAIT, running.wait_for_stage(Stage::RunningAllreduce)).await.unwrap();
    tokio::time::timeout(WAIT, waiting.wait_for_stage(Stage::AwaitingTrigger)).await.unwrap();
    let started = tokio::time::Instant::now();
    swarm.peers[0].shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let result = tokio::time::timeout(WAIT, running.result()).await.expect("the step outlived shutdown");
    assert!(matches!(result, Err(Error::Cancelled(_))), "{result:?}");
    assert_eq!(values(&swarm.peers[0]).await[0], vec![0.0; 4], "tensors are back and unchanged");
    // New steps are refused after shutdown.
    assert!(swarm.peers[0].step_background(StepOptions::default()).await.is_err());
    waiting.cancel();
}
