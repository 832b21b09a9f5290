//! Step control that the end-to-end scenario suite does not cover: shutdown during an all-reduce.
//! protocol 10.2 scenarios 12 and 13 (triggers and cancellation) live in the conformance crate's
//! scenario suite (`averager_conformance::scenarios`), which runs them on every backend.

mod common;

use std::time::Duration;

use averager_core::Error;
use averager_core::averager::{AveragerConfig, Stage, StepOptions};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// protocol 8.3 and 11.12: shutdown cancels a running all-reduce instead of failing.
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
