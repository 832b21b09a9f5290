//! **\[averager\]** `StepOptions::lend_inputs`: a step averages tensors lent from outside the
//! averager in place, leaves the averager's own alone, and falls back to them when the lender
//! declines.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use async_trait::async_trait;
use averager_core::averager::{AveragerConfig, InputLender, LentTensors, Stage, StepOptions};
use averager_core::error::Error;
use averager_core::tensor::{Tensor, TensorSliceMut, TensorView};
use common::*;

/// Tensors lent from a test's own memory; they return to `returned` when the averager drops them.
struct Lent {
    tensors: Vec<Tensor>,
    returned: Arc<watch::Sender<Option<Vec<Tensor>>>>,
}

impl LentTensors for Lent {
    fn count(&self) -> usize {
        self.tensors.len()
    }

    fn view(&self, index: usize) -> Option<TensorView<'_>> {
        self.tensors.get(index).map(Tensor::view)
    }

    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
        self.tensors.get_mut(index).map(Tensor::as_slice_mut)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.returned.send_replace(Some(std::mem::take(&mut self.tensors)));
    }
}

/// Lends `tensors` once (then declines), counting the calls.
struct Lender {
    tensors: Mutex<Option<Vec<Tensor>>>,
    returned: Arc<watch::Sender<Option<Vec<Tensor>>>>,
    calls: AtomicUsize,
}

impl Lender {
    fn new(tensors: Option<Vec<Tensor>>) -> Arc<Self> {
        Arc::new(Lender {
            tensors: Mutex::new(tensors),
            returned: Arc::new(watch::channel(None).0),
            calls: AtomicUsize::new(0),
        })
    }

    /// The lent tensors, once the averager has dropped them (after a failed round, a transport
    /// may let go of its last part a moment after the step ends).
    async fn returned(&self) -> Vec<Tensor> {
        let mut rx = self.returned.subscribe();
        let back = tokio::time::timeout(SCENARIO_TIMEOUT, rx.wait_for(Option::is_some)).await;
        back.expect("the lent tensors came back").expect("the sender lives").clone().unwrap()
    }
}

#[async_trait]
impl InputLender for Lender {
    async fn lend(&self) -> averager_core::Result<Option<Box<dyn LentTensors>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let tensors = self.tensors.lock().unwrap().take();
        Ok(tensors.map(|tensors| {
            Box::new(Lent { tensors, returned: Arc::clone(&self.returned) }) as Box<dyn LentTensors>
        }))
    }
}

/// A float32 tensor (sent straight from the lent memory) and a float64 one (encoded).
fn mixed(floats: usize, value: f32) -> Vec<Tensor> {
    vec![
        f32s(&[floats], vec![value; floats]),
        Tensor::from_f64(vec![floats / 2], vec![f64::from(value) * 10.0; floats / 2]).unwrap(),
    ]
}

/// A peer's own float32 tensor.
async fn own_f32(peer: &averager_core::Averager) -> Vec<f32> {
    peer.tensors().await[0].as_f32().unwrap().to_vec()
}

fn f64_values(tensor: &Tensor) -> Vec<f32> {
    tensor.as_f64().unwrap().iter().map(|&v| v as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lent_tensors_are_averaged_in_place_and_the_averagers_own_are_left_alone() {
    let floats = 10_000;
    let swarm =
        swarm(vec![(mixed(floats, 0.0), pair_config("lent")), (mixed(floats, 4.0), pair_config("lent"))])
            .await;
    // Both peers lend values other than their own tensors', as the Python binding's user
    // buffers would hold.
    let lenders = [Lender::new(Some(mixed(floats, 10.0))), Lender::new(Some(mixed(floats, 20.0)))];
    let results = step_all(&swarm.peers, |i| {
        StepOptions::default().timeout(STEP_TIMEOUT).lend_inputs(lenders[i].clone() as Arc<dyn InputLender>)
    })
    .await;
    for r in results {
        r.expect("both peers average");
    }
    for (i, (lender, own)) in lenders.iter().zip([0.0f32, 4.0]).enumerate() {
        assert_eq!(lender.calls.load(Ordering::SeqCst), 1);
        let back = lender.returned().await;
        assert_close(back[0].as_f32().unwrap(), &vec![15.0; floats], 1e-5, "lent f32");
        assert_close(&f64_values(&back[1]), &vec![150.0; floats / 2], 1e-5, "lent f64");
        let mine = swarm.peers[i].tensors().await.to_vec();
        assert_close(mine[0].as_f32().unwrap(), &vec![f64::from(own); floats], 0.0, "own f32 unchanged");
        assert_close(
            &f64_values(&mine[1]),
            &vec![f64::from(own) * 10.0; floats / 2],
            0.0,
            "own f64 unchanged",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpha_and_weights_apply_to_lent_tensors() {
    let floats = 5_000;
    let config = AveragerConfig { averaging_alpha: 0.5, ..pair_config("lent-alpha") };
    let swarm = swarm(vec![(mixed(floats, 0.0), config.clone()), (mixed(floats, 8.0), config)]).await;
    let lenders = [Lender::new(Some(mixed(floats, 0.0))), Lender::new(Some(mixed(floats, 8.0)))];
    // Weights 3 and 1: the average is 2 (20 in the f64 tensor); alpha 0.5 goes half of the way.
    let results = step_all(&swarm.peers, |i| {
        StepOptions::default()
            .timeout(STEP_TIMEOUT)
            .weight([3.0, 1.0][i])
            .lend_inputs(lenders[i].clone() as Arc<dyn InputLender>)
    })
    .await;
    for r in results {
        r.expect("both peers average");
    }
    for (lender, (f, d)) in lenders.iter().zip([(1.0, 10.0), (5.0, 50.0)]) {
        let back = lender.returned().await;
        assert_close(back[0].as_f32().unwrap(), &vec![f; floats], 1e-5, "lent f32");
        assert_close(&f64_values(&back[1]), &vec![d; floats / 2], 1e-5, "lent f64");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_that_declines_leaves_the_step_on_the_averagers_own_tensors() {
    let floats = 2_000;
    let swarm = swarm(vec![
        (mixed(floats, 0.0), pair_config("declines")),
        (mixed(floats, 4.0), pair_config("declines")),
    ])
    .await;
    let declines = Lender::new(None);
    let results = step_all(&swarm.peers, |i| {
        let options = StepOptions::default().timeout(STEP_TIMEOUT);
        if i == 0 { options.lend_inputs(declines.clone()) } else { options }
    })
    .await;
    for r in results {
        r.expect("both peers average");
    }
    assert_eq!(declines.calls.load(Ordering::SeqCst), 1);
    for peer in &swarm.peers {
        assert_close(&own_f32(peer).await, &vec![2.0; floats], 1e-6, "own tensors averaged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lent_tensors_unlike_the_averagers_fail_the_step_untouched() {
    let floats = 2_000;
    let swarm =
        swarm(vec![(mixed(floats, 0.0), pair_config("unlike")), (mixed(floats, 4.0), pair_config("unlike"))])
            .await;
    // One tensor where the averager has two.
    let unlike = Lender::new(Some(vec![f32s(&[floats], vec![1.0; floats])]));
    let options = StepOptions::default().timeout(Duration::from_secs(5)).allow_retries(false);
    let results = step_all(&swarm.peers, |i| {
        if i == 0 { options.clone().lend_inputs(unlike.clone()) } else { options.clone() }
    })
    .await;
    assert!(matches!(&results[0], Err(Error::Tensor(_))), "{:?}", results[0]);
    let back = unlike.returned().await;
    assert_close(back[0].as_f32().unwrap(), &vec![1.0; floats], 0.0, "lent tensor untouched");
    assert_close(&own_f32(&swarm.peers[0]).await, &vec![0.0; floats], 0.0, "own tensors untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_round_that_fails_writes_nothing_anywhere() {
    let floats = 2_000;
    // Peer 0's all-reduce cannot finish: peer 1 never pulls its trigger.
    let impatient =
        AveragerConfig { allreduce_timeout: Some(Duration::from_millis(300)), ..pair_config("fails") };
    let swarm =
        swarm(vec![(mixed(floats, 0.0), impatient), (mixed(floats, 4.0), pair_config("fails"))]).await;
    let lender = Lender::new(Some(mixed(floats, 10.0)));
    let options = StepOptions::default().timeout(STEP_TIMEOUT).allow_retries(false).require_trigger(true);
    let lent = swarm.peers[0].step_background(options.clone().lend_inputs(lender.clone())).await.unwrap();
    let waiting = swarm.peers[1].step_background(options).await.unwrap();
    for control in [&lent, &waiting] {
        tokio::time::timeout(SCENARIO_TIMEOUT, control.wait_for_stage(Stage::AwaitingTrigger))
            .await
            .expect("the group forms");
    }
    lent.allow_allreduce();
    let result = tokio::time::timeout(SCENARIO_TIMEOUT, lent.result()).await.expect("the step ends");
    assert!(result.is_err(), "{result:?}");
    waiting.cancel();
    let back = lender.returned().await;
    assert_close(back[0].as_f32().unwrap(), &vec![10.0; floats], 0.0, "lent f32 untouched");
    assert_close(&f64_values(&back[1]), &vec![100.0; floats / 2], 0.0, "lent f64 untouched");
    assert_close(&own_f32(&swarm.peers[0]).await, &vec![0.0; floats], 0.0, "own tensors untouched");
}
