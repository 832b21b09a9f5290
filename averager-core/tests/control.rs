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

/// `step_background_after`: the round loop waits for `ready` (the control stays idle and can be
/// cancelled meanwhile), and a step whose `ready` resolves averages as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waits_for_its_ready_future() {
    let setup = (0..2)
        .map(|i| {
            let config = AveragerConfig {
                prefix: "after".into(),
                target_group_size: Some(2),
                min_matchmaking_time: Duration::from_millis(500),
                request_timeout: Duration::from_millis(300),
                ..AveragerConfig::default()
            };
            (vec![f32s(&[2], [2.0 * i as f32; 2])], config)
        })
        .collect();
    let swarm = swarm(setup).await;
    // Never ready: it stays idle until cancelled, and the cancel ends it at once.
    let never =
        swarm.peers[0].step_background_after(StepOptions::default(), std::future::pending()).await.unwrap();
    assert_eq!(never.stage(), Stage::Idle);
    assert!(never.cancel());
    let result = tokio::time::timeout(WAIT, never.result()).await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled(_))), "{result:?}");
    // Ready once peer 1's step has begun: both average.
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let first = swarm.peers[0]
        .step_background_after(StepOptions::default(), async move {
            let _ = ready.await;
        })
        .await
        .unwrap();
    let second = swarm.peers[1].step_background(StepOptions::default()).await.unwrap();
    assert_eq!(first.stage(), Stage::Idle);
    go.send(()).unwrap();
    for control in [first, second] {
        tokio::time::timeout(WAIT, control.result()).await.unwrap().unwrap();
    }
    assert_eq!(values(&swarm.peers[0]).await[0], vec![1.0; 2]);
}
