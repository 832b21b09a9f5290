//! The data path's reused buffers: one reply buffer per sender stream on the reducer side, one
//! delta buffer per span on the sender side, parts decoded straight into the accumulator; and
//! what a failure midway leaves in them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::deltas::{Deltas, SpanDeltas};
use super::tests::{Swarm, infos, settings};
use super::*;
use crate::compression::{Compression, CompressionInfo, NoCompression, WireTensor};
use crate::error::{Error, Result};
use crate::matchmaking::PeerMode;
use crate::reduce::{
    MeanReducer, PartAccumulator, PartOutcome, PartReducer, PartSpec, Reducer, ReducerCapabilities,
};
use crate::registry::Registry;
use crate::tensor::{DType, Tensor, TensorData, TensorSlice, TensorView};

/// Runs one all-reduce of `inputs` (one tensor list per peer, all nodes, weight 1) with
/// `reducers[i]` on peer `i`; returns each peer's tensors with its deltas applied, and the
/// reducers it reports as failed.
async fn run(
    inputs: &[Vec<Tensor>],
    part_size_bytes: usize,
    reducers: Vec<Arc<dyn Reducer>>,
) -> (Vec<Vec<Tensor>>, Vec<Vec<String>>, PartitionPlan) {
    let swarm = Swarm::new(inputs.len()).await;
    let modes = vec![PeerMode::Node; inputs.len()];
    let mut rounds = Vec::new();
    for (i, reducer) in reducers.into_iter().enumerate() {
        let round = AllReduceRound::with_shares(
            AllReduceInputs {
                group: swarm.group(&modes, i),
                tensors: Arc::new(inputs[i].clone().into()),
                infos: infos(&inputs[i]),
                codec: Arc::new(NoCompression),
                reducer,
                transport: swarm.transports[i].clone(),
                registry: Registry::global(),
                settings: settings(part_size_bytes, 1.0),
            },
            vec![1.0; inputs.len()],
        )
        .unwrap();
        swarm.routers[i].register(round.span());
        rounds.push(round);
    }
    let runs = futures::future::join_all(rounds.into_iter().map(AllReduceRound::run));
    let outcomes = tokio::time::timeout(Duration::from_secs(60), runs).await.expect("all-reduce hung");
    let (mut outputs, mut failed, mut plan) = (inputs.to_vec(), Vec::new(), None);
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.unwrap();
        outcome.deltas.apply(&outcome.plan, &mut outputs[i], 1.0).unwrap();
        failed.push(outcome.failed_reducers);
        plan = Some(outcome.plan);
    }
    (outputs, failed, plan.unwrap())
}

/// Peer `i`'s tensors: small integers plus `i`, so every mean over peers is exact in f32.
fn integer_tensors(i: usize, sizes: (usize, usize, usize)) -> Vec<Tensor> {
    let f32s = |n: usize| (0..n).map(|e| (e % 7) as f32 + i as f32).collect::<Vec<_>>();
    vec![
        Tensor::from_f32(vec![sizes.0], f32s(sizes.0)).unwrap(),
        Tensor::new(
            vec![sizes.1],
            TensorData::F64((0..sizes.1).map(|e| (e % 5) as f64 + i as f64).collect()),
        )
        .unwrap(),
        Tensor::from_f32(vec![sizes.2], f32s(sizes.2)).unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_parts_than_buffers_average_exactly() {
    // 16 f32 per part: about a hundred parts per span, all through one reply buffer per sender
    // stream and one delta buffer per span; the f64 tensor takes the path of other dtypes.
    let sizes = (4000, 300, 7);
    let inputs: Vec<Vec<Tensor>> = (0..3).map(|i| integer_tensors(i, sizes)).collect();
    let reducers = (0..3).map(|_| Arc::new(MeanReducer) as Arc<dyn Reducer>).collect();
    let (outputs, failed, plan) = run(&inputs, 64, reducers).await;
    assert!(plan.parts_of(0).len() > 50, "{} parts", plan.parts_of(0).len());
    let expected = integer_tensors(1, sizes);
    for (i, out) in outputs.iter().enumerate() {
        assert!(failed[i].is_empty(), "peer {i}: {:?}", failed[i]);
        assert_eq!(out, &expected, "peer {i}");
    }
}

/// The weighted mean through the old methods only (`add` and `finish`), failing to finish the
/// part of index `fail_at` (counted by `begin` calls).
#[derive(Debug)]
struct OldStyleMean {
    fail_at: Option<usize>,
    begun: AtomicUsize,
}

impl OldStyleMean {
    fn failing_at(fail_at: Option<usize>) -> Arc<dyn Reducer> {
        Arc::new(OldStyleMean { fail_at, begun: AtomicUsize::new(0) })
    }
}

impl Reducer for OldStyleMean {
    fn name(&self) -> &str {
        "old-style-mean"
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: true }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        let index = self.begun.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(OldStyleAccumulator {
            fails: self.fail_at == Some(index),
            inner: MeanReducer.begin(spec)?,
        }))
    }
}

struct OldStyleAccumulator {
    fails: bool,
    inner: Box<dyn PartAccumulator>,
}

impl PartAccumulator for OldStyleAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.inner.add(sender, part, weight)
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        if self.fails {
            return Err(Error::Reducer("this part fails on purpose".into()));
        }
        self.inner.finish()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reducer_with_only_the_old_methods_averages_the_same() {
    let sizes = (1000, 40, 3);
    let inputs: Vec<Vec<Tensor>> = (0..3).map(|i| integer_tensors(i, sizes)).collect();
    let reducers = (0..3).map(|_| OldStyleMean::failing_at(None)).collect();
    let (outputs, failed, _) = run(&inputs, 256, reducers).await;
    for (i, out) in outputs.iter().enumerate() {
        assert!(failed[i].is_empty(), "peer {i}: {:?}", failed[i]);
        assert_eq!(out, &integer_tensors(1, sizes), "peer {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_after_a_failed_part_keep_local_values() {
    // Peer 0's reducer fails its part 2: both peers keep their own values from there on in that
    // span (protocol 4.4), the parts before it and peer 1's whole span are averaged.
    let sizes = (512, 0, 0);
    let inputs: Vec<Vec<Tensor>> = (0..2).map(|i| integer_tensors(i, sizes)).collect();
    let (outputs, failed, plan) =
        run(&inputs, 64, vec![OldStyleMean::failing_at(Some(2)), OldStyleMean::failing_at(None)]).await;
    assert!(plan.parts_of(0).len() > 3);
    let mean = integer_tensors(0, sizes)[0].as_f32().unwrap().iter().map(|x| x + 0.5).collect::<Vec<_>>();
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(failed[i].len(), 1, "peer {i} reports peer 0's reducer: {:?}", failed[i]);
        let (got, local) = (out[0].as_f32().unwrap(), inputs[i][0].as_f32().unwrap());
        for (j, member_parts) in [plan.parts_of(0), plan.parts_of(1)].into_iter().enumerate() {
            for (k, part) in member_parts.iter().enumerate() {
                let want = if j == 0 && k >= 2 { local } else { &mean };
                assert_eq!(
                    &got[part.range.clone()],
                    &want[part.range.clone()],
                    "peer {i}, span {j}, part {k}"
                );
            }
        }
    }
}

/// An f32 part of `values`, encoded without compression.
fn encoded(values: &[f32]) -> WireTensor {
    let t = Tensor::from_f32(vec![values.len()], values.to_vec()).unwrap();
    NoCompression.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
}

/// The same message with its last value cut off: the codec must refuse it.
fn truncated(values: &[f32]) -> WireTensor {
    let mut wire = encoded(values);
    wire.buffer = wire.buffer.slice(..wire.buffer.len() - 4);
    wire
}

#[tokio::test]
async fn an_undecodable_part_mid_stream_bans_its_sender_and_leaves_the_sum_alone() {
    for reducer in [Arc::new(MeanReducer) as Arc<dyn Reducer>, OldStyleMean::failing_at(None)] {
        let pr = PartReducer::new(reducer.clone(), [(2, DType::F32); 3], 2).unwrap();
        let codec = NoCompression;
        let (a, b) = ([1.0, 2.0], [3.0, 6.0]);
        let part = |o: Arc<PartOutcome>| match o.as_ref() {
            PartOutcome::Reduced(t) => t.as_f32().unwrap().to_vec(),
            PartOutcome::KeepLocal => panic!("expected an average"),
        };
        let (wa, wb) = (encoded(&a), encoded(&b));
        let (r0, r1) = tokio::join!(
            pr.accumulate_encoded(0, 0, &codec, &wa, 1.0),
            pr.accumulate_encoded(1, 0, &codec, &wb, 1.0)
        );
        assert_eq!(part(r0.unwrap()), vec![2.0, 4.0], "{reducer:?}");
        assert_eq!(part(r1.unwrap()), vec![2.0, 4.0], "{reducer:?}");
        // Sender 1's part 1 cannot be decoded: it is banned, and part 1 is sender 0's alone.
        let bad = pr.accumulate_encoded(1, 1, &codec, &truncated(&b), 1.0).await;
        assert!(matches!(bad, Err(Error::Codec { .. })), "{reducer:?}: {bad:?}");
        assert!(pr.is_banned(1));
        let alone = pr.accumulate_encoded(0, 1, &codec, &encoded(&a), 1.0).await.unwrap();
        assert_eq!(part(alone), a.to_vec(), "{reducer:?}");
        // A part whose header disagrees with the plan is refused before anything is decoded.
        let wrong = pr.accumulate_encoded(0, 2, &codec, &encoded(&[1.0, 2.0, 3.0]), 1.0).await;
        assert!(matches!(wrong, Err(Error::Reducer(_))), "{reducer:?}: {wrong:?}");
    }
}

#[test]
fn a_reply_that_cannot_be_decoded_keeps_its_part_local() {
    let layouts = [TensorLayout { numel: 12, bytes_per_value: 4.0 }];
    let plan = PartitionPlan::new(&layouts, &[1.0], 16).unwrap();
    assert_eq!(plan.parts_of(0).len(), 3);
    let codec: Arc<dyn Compression> = Arc::new(NoCompression);
    // Decoded on arrival, the bad reply fails there; kept encoded, it fails when applied.
    for keep_encoded in [false, true] {
        let mut span = SpanDeltas::new(0, plan.parts_of(0), &[DType::F32], &Default::default()).unwrap();
        span.decode(0, &codec, encoded(&[1.0; 4]), keep_encoded).unwrap();
        let bad = span.decode(1, &codec, truncated(&[1.0; 4]), keep_encoded);
        assert_eq!(bad.is_err(), !keep_encoded);
        span.decode(2, &codec, encoded(&[2.0; 4]), keep_encoded).unwrap();
        assert!(span.has_delta(0) && span.has_delta(1) == keep_encoded && span.has_delta(2));
        let mut deltas = Deltas::new(plan.parts().len());
        deltas.add(span).unwrap();
        let mut tensors = vec![Tensor::from_f32(vec![12], vec![10.0; 12]).unwrap()];
        deltas.apply(&plan, &mut tensors, 0.5).unwrap();
        let want: Vec<f32> = [[10.5; 4], [10.0; 4], [11.0; 4]].concat();
        assert_eq!(tensors[0].as_f32().unwrap(), want.as_slice(), "keep_encoded {keep_encoded}");
    }
}

#[test]
fn replies_kept_encoded_become_deltas_for_a_result_target() {
    let layouts = [TensorLayout { numel: 8, bytes_per_value: 4.0 }];
    let plan = PartitionPlan::new(&layouts, &[1.0], 16).unwrap();
    let codec: Arc<dyn Compression> = Arc::new(NoCompression);
    let pool = Default::default();
    let mut span = SpanDeltas::new(0, plan.parts_of(0), &[DType::F32], &pool).unwrap();
    span.decode(0, &codec, encoded(&[1.5; 4]), true).unwrap();
    span.decode(1, &codec, truncated(&[1.0; 4]), true).unwrap();
    let mut deltas = Deltas::new(plan.parts().len());
    deltas.add(span).unwrap();
    let tensors = vec![Tensor::from_f32(vec![8], vec![0.0; 8]).unwrap()];
    // Kept encoded, a reply is no delta yet.
    assert!(deltas.update_parts(&plan).is_err());
    deltas.take_differences(&plan, &tensors).unwrap();
    let parts = deltas.update_parts(&plan).unwrap();
    assert_eq!(parts.len(), 1, "the undecodable reply is dropped");
    assert_eq!((parts[0].tensor, parts[0].offset), (0, 0));
    assert_eq!(parts[0].delta, TensorSlice::F32(&[1.5; 4]));
}

#[test]
fn the_own_spans_averages_are_applied_against_the_tensor_without_a_delta_buffer() {
    let layouts = [TensorLayout { numel: 8, bytes_per_value: 4.0 }];
    let plan = PartitionPlan::new(&layouts, &[1.0], 16).unwrap();
    let local: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let mut tensors = vec![Tensor::from_f32(vec![8], local.clone()).unwrap()];
    let mut span = SpanDeltas::new(0, plan.parts_of(0), &[DType::F32], &Default::default()).unwrap();
    let average = |v: f32| Arc::new(PartOutcome::Reduced(Tensor::from_f32(vec![4], vec![v; 4]).unwrap()));
    span.set_average(0, &average(10.0), TensorSlice::F32(&local[..4])).unwrap();
    span.set_average(1, &Arc::new(PartOutcome::KeepLocal), TensorSlice::F32(&local[4..])).unwrap();
    assert!(span.has_delta(0) && !span.has_delta(1));
    // An average that does not fit its part is refused when recorded.
    assert!(span.set_average(1, &average(1.0), TensorSlice::F32(&local[..3])).is_err());
    let mut deltas = Deltas::new(plan.parts().len());
    deltas.add(span).unwrap();
    deltas.apply(&plan, &mut tensors, 0.5).unwrap();
    let want: Vec<f32> = (0..8).map(|i| if i < 4 { (i as f32 + 10.0) / 2.0 } else { i as f32 }).collect();
    assert_eq!(tensors[0].as_f32().unwrap(), want.as_slice());
}
