//! **\[averager\]** `StepOptions::apply_to`: a step's update goes to the caller's own tensors, the
//! averager's stay as the all-reduce read them, and a failing target fails the step.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use averager_core::averager::{AveragerConfig, ResultTarget, StepOptions, StepUpdate};
use averager_core::error::Error;
use averager_core::tensor::Tensor;
use common::*;

/// Two peers of `floats` floats holding `values[i]` each.
async fn pair(floats: usize, values: [f32; 2], config: AveragerConfig) -> Swarm {
    swarm(values.iter().map(|&v| (vec![f32s(&[floats], vec![v; floats])], config.clone())).collect()).await
}

async fn target_values(target: &tokio::sync::Mutex<Vec<Tensor>>) -> Vec<f32> {
    target.lock().await[0].as_f32().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_is_added_to_the_target_and_the_averagers_tensors_keep_their_inputs() {
    let floats = 10_000;
    let swarm = pair(floats, [0.0, 4.0], pair_config("target")).await;
    // The target's values differ from the averager's (as a caller's would after training on
    // while the step ran): it gets `average - local` added to what it holds.
    let target = Arc::new(tokio::sync::Mutex::new(vec![f32s(&[floats], vec![100.0; floats])]));
    let results = step_all(&swarm.peers, |i| {
        let options = StepOptions::default().timeout(STEP_TIMEOUT);
        if i == 0 { options.apply_to(target.clone()) } else { options }
    })
    .await;
    for r in results {
        r.expect("both peers average");
    }
    assert_close(&target_values(&target).await, &vec![102.0; floats], 1e-6, "target");
    assert_close(&values(&swarm.peers[0]).await[0], &vec![0.0; floats], 0.0, "peer 0's own tensors");
    assert_close(&values(&swarm.peers[1]).await[0], &vec![2.0; floats], 1e-6, "peer 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_alpha_reach_the_target() {
    let floats = 5_000;
    let config = AveragerConfig { averaging_alpha: 0.5, ..pair_config("weights") };
    let swarm = pair(floats, [0.0, 8.0], config).await;
    let targets: Vec<_> = [0.0f32, 8.0]
        .iter()
        .map(|&v| Arc::new(tokio::sync::Mutex::new(vec![f32s(&[floats], vec![v; floats])])))
        .collect();
    // Weights 3 and 1: the average is 2; alpha 0.5 moves each peer half of the way there.
    let results = step_all(&swarm.peers, |i| {
        StepOptions::default()
            .timeout(STEP_TIMEOUT)
            .weight([3.0, 1.0][i])
            .apply_to(targets[i].clone() as Arc<dyn ResultTarget>)
    })
    .await;
    for r in results {
        r.expect("both peers average");
    }
    assert_close(&target_values(&targets[0]).await, &vec![1.0; floats], 1e-5, "target 0");
    assert_close(&target_values(&targets[1]).await, &vec![5.0; floats], 1e-5, "target 1");
    for (peer, value) in swarm.peers.iter().zip([0.0, 8.0]) {
        assert_close(&values(peer).await[0], &vec![value; floats], 0.0, "own tensors unchanged");
    }
}

/// A target that refuses every update, counting the calls.
#[derive(Default)]
struct Refuses(AtomicUsize);

#[async_trait]
impl ResultTarget for Refuses {
    async fn apply(&self, update: &StepUpdate<'_>) -> averager_core::Result<()> {
        assert!(!update.parts().is_empty());
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(Error::Tensor("the target has no room for the result".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_fails_the_step_once_without_a_retry() {
    let floats = 2_000;
    let swarm = pair(floats, [0.0, 4.0], pair_config("refuses")).await;
    let refuses = Arc::new(Refuses::default());
    let results = step_all(&swarm.peers, |i| {
        let options = StepOptions::default().timeout(STEP_TIMEOUT);
        if i == 0 { options.apply_to(refuses.clone()) } else { options }
    })
    .await;
    match &results[0] {
        Err(Error::Tensor(msg)) => assert!(msg.contains("no room"), "{msg}"),
        other => panic!("expected the target's error, got {other:?}"),
    }
    assert_eq!(refuses.0.load(Ordering::SeqCst), 1, "called once, not retried");
    // The group averaged: the partner has its result; peer 0's own tensors are untouched.
    results[1].as_ref().expect("the partner averages");
    assert_close(&values(&swarm.peers[1]).await[0], &vec![2.0; floats], 1e-6, "peer 1");
    assert_close(&values(&swarm.peers[0]).await[0], &vec![0.0; floats], 0.0, "peer 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_unlike_the_averagers_tensors_is_refused_whole() {
    let floats = 2_000;
    let swarm = pair(floats, [0.0, 4.0], pair_config("unlike")).await;
    // Two tensors where the averager has one: nothing may be applied to either.
    let target = Arc::new(tokio::sync::Mutex::new(vec![
        f32s(&[floats], vec![1.0; floats]),
        f32s(&[floats], vec![1.0; floats]),
    ]));
    let results = step_all(&swarm.peers, |i| {
        let options = StepOptions::default().timeout(STEP_TIMEOUT);
        if i == 0 { options.apply_to(target.clone()) } else { options }
    })
    .await;
    assert!(matches!(&results[0], Err(Error::Tensor(_))), "{:?}", results[0]);
    assert_close(&target_values(&target).await, &vec![1.0; floats], 0.0, "target untouched");
}
