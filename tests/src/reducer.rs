//! The conformance suite for [`Reducer`] plugins.
//!
//! Every case drives the reducer through [`PartReducer`], since that is how the core runs every
//! reducer (protocol 4.6). A plugin crate runs the whole suite with one line:
//!
//! ```
//! # use std::sync::Arc;
//! # use averager_core::reduce::{MeanReducer as MyReducer, Reducer};
//! averager_conformance::reducer_suite!(my_reducer, || Arc::new(MyReducer) as Arc<dyn Reducer>);
//! # fn main() {}
//! ```
//!
//! What a case checks depends on [`ReducerCapabilities::weighted_mean`]: a weighted-mean reducer
//! must give `sum(w * x) / sum(w)`; any other reducer (a robust aggregator) must give, per
//! coordinate, a value within the range of the contributions, and the common value when all
//! contributions are equal. Cases about weights and dtypes need `weighted_mean`: the suite macro reports them as ignored
//! for other reducers (called directly, they return `Ok` with nothing checked).
//!
//! All random data come from seeded generators, so a failure reproduces.
//!
//! [`ReducerCapabilities::weighted_mean`]: averager_core::reduce::ReducerCapabilities::weighted_mean

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::compression::{Compression, CompressionInfo, NoCompression};
use averager_core::reduce::PartReducer;
use averager_core::reduce::{PartOutcome, Reducer};
use averager_core::tensor::{DType, Tensor, TensorData};
use futures::poll;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::{Failure, Outcome, ensure};

/// How long any single wait in a case may take before the case fails as stalled.
const WAIT: Duration = Duration::from_secs(10);

/// Builds the reducer under test; implemented for every `Fn() -> Arc<dyn Reducer>` closure.
pub trait ReducerFactory: Send + Sync {
    /// A fresh reducer.
    fn build(&self) -> Arc<dyn Reducer>;
}

impl<F> ReducerFactory for F
where
    F: Fn() -> Arc<dyn Reducer> + Send + Sync,
{
    fn build(&self) -> Arc<dyn Reducer> {
        self()
    }
}

/// Expands to one `#[test]` per case of the reducer suite, in a module named `$name`.
///
/// `$factory` is an expression implementing [`ReducerFactory`](crate::reducer::ReducerFactory),
/// usually a closure `|| Arc::new(MyReducer) as Arc<dyn Reducer>`; names in scope where the macro
/// is called are visible to it.
#[macro_export]
///
/// The cases of weighted means need `weighted_mean` in the reducer's capabilities; a reducer
/// without it adds `lacks: [weighted_mean]`, and `cargo test` reports those cases as ignored.
macro_rules! reducer_suite {
    ($name:ident, $factory:expr $(, lacks: [$($lack:ident),* $(,)?])? $(,)?) => {
        $crate::__reducer_cases! { __suite_tests! { reducer, $name, $factory, [$($($lack),*)?], } }
    };
}

/// Whether the reducer declares `requirement` (only `weighted_mean` is known).
///
/// # Errors
/// A [`Failure`] for another name.
pub async fn declares(factory: &impl ReducerFactory, requirement: &str) -> Result<bool, Failure> {
    match requirement {
        "weighted_mean" => Ok(factory.build().capabilities().weighted_mean),
        other => Err(crate::unknown_requirement("reducer", other, &["weighted_mean"])),
    }
}

/// Lists every case once, for [`reducer_suite!`](crate::reducer_suite) and [`run_all`].
#[doc(hidden)]
#[macro_export]
macro_rules! __reducer_cases {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)* [
            concurrent_senders_get_the_aggregate,
            weighted_mean_uses_weights if weighted_mean,
            all_zero_weights_keep_local if weighted_mean,
            precision_is_kept_per_dtype if weighted_mean,
            banned_sender_counts_for_earlier_parts_only,
            banned_waiting_sender_does_not_stall,
            wrong_length_part_is_refused,
            finish_ends_pending_waits,
            encoded_parts_count_like_decoded_ones,
        ] }
    };
}

/// Runs every case in turn and returns each one's name and outcome.
pub async fn run_all(factory: &impl ReducerFactory) -> Vec<(&'static str, Outcome)> {
    crate::__reducer_cases! { __suite_run_all! { reducer, factory, } }
}

/// protocol 10.3 scenario 19: senders {1, 2, 4, 10} × parts {0, 1, 100} (part `i` is `[i]` random
/// f32 values) × sync probability {1, 0.1, 0}. Every sender submits each part as a spawned task
/// and awaits its tasks in random batches; every sender gets, for every part, the plain mean
/// (rtol 1e-3, atol 1e-5), or for other reducers a value within the contributions' range, equal to
/// the common value when every sender sends the same data.
pub async fn concurrent_senders_get_the_aggregate(factory: &impl ReducerFactory) -> Outcome {
    let weighted = factory.build().capabilities().weighted_mean;
    let mut seeds = StdRng::seed_from_u64(19);
    for num_senders in [1, 2, 4, 10] {
        for num_parts in [0, 1, 100] {
            for sync_prob in [1.0, 0.1, 0.0] {
                let identical_runs: &[bool] = if weighted { &[false] } else { &[false, true] };
                for &identical in identical_runs {
                    let seed: u64 = seeds.random();
                    let what = format!(
                        "{num_senders} senders, {num_parts} parts, sync probability {sync_prob}, \
                         identical data {identical}, seed {seed}"
                    );
                    let mut rng = StdRng::seed_from_u64(seed);
                    let data: Vec<Vec<Tensor>> = if identical {
                        let one = random_parts(&mut rng, num_parts);
                        vec![one; num_senders]
                    } else {
                        (0..num_senders).map(|_| random_parts(&mut rng, num_parts)).collect()
                    };
                    let pr =
                        Arc::new(new_reducer(factory, (0..num_parts).map(|i| (i, DType::F32)), num_senders)?);
                    let mut senders = Vec::new();
                    for (s, parts) in data.iter().enumerate() {
                        let sender_seed: u64 = rng.random();
                        senders.push(tokio::spawn(send_in_random_batches(
                            pr.clone(),
                            s,
                            parts.clone(),
                            sync_prob,
                            sender_seed,
                        )));
                    }
                    let mut results = Vec::new();
                    for (s, task) in senders.into_iter().enumerate() {
                        results.push(join(&format!("{what}: sender {s}"), task).await??);
                    }
                    for (s, got) in results.iter().enumerate() {
                        for (k, outcome) in got.iter().enumerate() {
                            let ctx = format!("{what}: sender {s}, part {k}");
                            let contributions: Vec<&Tensor> = data.iter().map(|d| &d[k]).collect();
                            let ones = vec![1.0; num_senders];
                            check_aggregate(weighted, outcome, &contributions, &ones, 1e-3, 1e-5, &ctx)?;
                        }
                    }
                    ensure!(pr.is_finished(), "{what}: the reducer is not finished after every part");
                }
            }
        }
    }
    Ok(())
}

/// A weighted-mean reducer gives `sum(w * x) / sum(w)` with unequal weights, one of them zero,
/// to every sender, including the one whose weight is zero. (Needs `weighted_mean`.)
pub async fn weighted_mean_uses_weights(factory: &impl ReducerFactory) -> Outcome {
    if !factory.build().capabilities().weighted_mean {
        return Ok(());
    }
    let weights = [0.5, 0.0, 2.0, 1.25];
    let lens = [3, 1, 17, 0, 5];
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    let data: Vec<Vec<Tensor>> =
        (0..weights.len()).map(|_| lens.iter().map(|&n| random_f32(&mut rng, n)).collect()).collect();
    let pr = Arc::new(new_reducer(factory, lens.iter().map(|&n| (n, DType::F32)), weights.len())?);
    let tasks: Vec<_> = (0..weights.len())
        .map(|s| tokio::spawn(send_all(pr.clone(), s, data[s].clone(), vec![weights[s]; lens.len()])))
        .collect();
    for (s, task) in tasks.into_iter().enumerate() {
        let got = join(&format!("sender {s}"), task).await??;
        for (k, outcome) in got.iter().enumerate() {
            let contributions: Vec<&Tensor> = data.iter().map(|d| &d[k]).collect();
            let ctx = format!("weights {weights:?}: sender {s}, part {k}");
            check_aggregate(true, outcome, &contributions, &weights, 1e-4, 1e-6, &ctx)?;
        }
    }
    Ok(())
}

/// A weighted-mean reducer answers [`PartOutcome::KeepLocal`] for a part whose weights are all
/// zero (protocol 4.6 **\[averager\]**: 0/0 keeps local values), and a part with a single nonzero weight
/// is that sender's values. (Needs `weighted_mean`.)
pub async fn all_zero_weights_keep_local(factory: &impl ReducerFactory) -> Outcome {
    if !factory.build().capabilities().weighted_mean {
        return Ok(());
    }
    let num_senders = 3;
    let len = 4;
    // Per part, per sender.
    let weights = [[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]];
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    let data: Vec<Vec<Tensor>> =
        (0..num_senders).map(|_| (0..weights.len()).map(|_| random_f32(&mut rng, len)).collect()).collect();
    let pr = Arc::new(new_reducer(factory, vec![(len, DType::F32); weights.len()], num_senders)?);
    let tasks: Vec<_> = (0..num_senders)
        .map(|s| {
            let w = weights.iter().map(|per_sender| per_sender[s]).collect();
            tokio::spawn(send_all(pr.clone(), s, data[s].clone(), w))
        })
        .collect();
    for (s, task) in tasks.into_iter().enumerate() {
        let got = join(&format!("sender {s}"), task).await??;
        for (k, outcome) in got.iter().enumerate() {
            let ctx = format!("sender {s}, part {k} with weights {:?}", weights[k]);
            if weights[k].iter().all(|&w| w == 0.0) {
                ensure!(
                    **outcome == PartOutcome::KeepLocal,
                    "{ctx}: all weights are zero, expected KeepLocal, got {outcome:?}"
                );
            } else {
                let contributions: Vec<&Tensor> = data.iter().map(|d| &d[k]).collect();
                check_aggregate(true, outcome, &contributions, &weights[k], 1e-6, 0.0, &ctx)?;
            }
        }
    }
    Ok(())
}

/// A weighted-mean reducer keeps each dtype's precision: f64 values near 1e17 average exactly,
/// i64 parts give the mean rounded to the nearest integer, and f16/bf16 parts come back in their
/// own dtype with the mean. (Needs `weighted_mean`.)
pub async fn precision_is_kept_per_dtype(factory: &impl ReducerFactory) -> Outcome {
    if !factory.build().capabilities().weighted_mean {
        return Ok(());
    }
    // Multiples of 64 near 1e17: every partial sum of four of them is exact in f64 (spacing 64
    // below 2^59), and so is the mean (spacing 16 near 1e17); f32 arithmetic would lose it all.
    let base = 1e17;
    let f64_parts: Vec<Vec<f64>> = [[0.0, 1.0, 3.0], [1.0, 2.0, 3.0], [2.0, 5.0, 3.0], [5.0, 0.0, 3.0]]
        .iter()
        .map(|js| js.iter().map(|j| base + 64.0 * j).collect())
        .collect();
    let f64_mean = vec![base + 128.0, base + 128.0, base + 192.0];
    // Means 2.25, -6.25 and 1333333338.75: never a tie, so the rounding is unambiguous.
    let i64_parts: Vec<Vec<i64>> = vec![
        vec![1, -5, 1_000_000_007],
        vec![2, -6, 1_000_000_008],
        vec![4, -8, 2_000_000_000],
        vec![2, -6, 1_333_333_340],
    ];
    let i64_mean = vec![2, -6, 1_333_333_339];
    let half_parts: Vec<Vec<f64>> = vec![
        vec![0.5, 1.25, -2.0, 3.0, 100.0],
        vec![1.5, 0.75, -4.0, 3.0, 200.0],
        vec![2.5, 1.0, -6.0, 3.0, 300.0],
        vec![3.5, 1.0, -8.0, 3.0, 400.0],
    ];
    let half_mean = vec![2.0, 1.0, -5.0, 3.0, 250.0];

    let num_senders = 4;
    let specs = vec![(3, DType::F64), (3, DType::I64), (5, DType::F16), (5, DType::BF16)];
    let mut data = Vec::new();
    for s in 0..num_senders {
        data.push(vec![
            Tensor::new(vec![3], TensorData::F64(f64_parts[s].clone()))?,
            Tensor::new(vec![3], TensorData::I64(i64_parts[s].clone()))?,
            Tensor::new(vec![5], TensorData::from_f64(DType::F16, &half_parts[s])?)?,
            Tensor::new(vec![5], TensorData::from_f64(DType::BF16, &half_parts[s])?)?,
        ]);
    }
    let pr = Arc::new(new_reducer(factory, specs.clone(), num_senders)?);
    let tasks: Vec<_> = (0..num_senders)
        .map(|s| tokio::spawn(send_all(pr.clone(), s, data[s].clone(), vec![1.0; specs.len()])))
        .collect();
    for (s, task) in tasks.into_iter().enumerate() {
        let got = join(&format!("sender {s}"), task).await??;
        let tensors = got
            .iter()
            .zip(&specs)
            .enumerate()
            .map(|(k, (outcome, &(len, dtype)))| {
                reduced(outcome, len, dtype, &format!("sender {s}, part {k}"))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let got64 = tensors[0].as_f64()?;
        ensure!(
            got64 == f64_mean.as_slice(),
            "sender {s}: f64 mean near 1e17 is {got64:?}, expected {f64_mean:?}"
        );
        let got_i64 = tensors[1].as_i64()?;
        ensure!(
            got_i64 == i64_mean.as_slice(),
            "sender {s}: i64 mean is {got_i64:?}, expected the rounded mean {i64_mean:?}"
        );
        for (t, name) in [(&tensors[2], "f16"), (&tensors[3], "bf16")] {
            let got = t.data().as_slice().to_f64_lanes();
            ensure!(
                close(&got, &half_mean, 1e-2, 1e-3),
                "sender {s}: {name} mean is {got:?}, expected {half_mean:?}"
            );
        }
    }
    Ok(())
}

/// A sender banned mid-way (protocol 4.7) still counts for the parts it contributed to, and gets
/// their results; later parts are reduced over the other senders only, and its later
/// submissions are refused.
pub async fn banned_sender_counts_for_earlier_parts_only(factory: &impl ReducerFactory) -> Outcome {
    let weighted = factory.build().capabilities().weighted_mean;
    let (num_senders, num_parts, len, banned_after) = (3, 6, 5, 3);
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    let data: Vec<Vec<Tensor>> =
        (0..num_senders).map(|_| (0..num_parts).map(|_| random_f32(&mut rng, len)).collect()).collect();
    let pr = Arc::new(new_reducer(factory, vec![(len, DType::F32); num_parts], num_senders)?);
    let others: Vec<_> = (0..2)
        .map(|s| tokio::spawn(send_all(pr.clone(), s, data[s].clone(), vec![1.0; num_parts])))
        .collect();

    let banned = 2;
    let mut banned_got = Vec::new();
    for (k, part) in data[banned].iter().enumerate().take(banned_after) {
        let view = part.view();
        let outcome =
            within(&format!("sender {banned}, part {k}"), pr.accumulate(banned, k, &view, 1.0)).await?;
        banned_got.push(outcome?);
    }
    pr.sender_failed(banned);
    let view = data[banned][banned_after].view();
    let late =
        within("a banned sender's submission", pr.accumulate(banned, banned_after, &view, 1.0)).await?;
    ensure!(late.is_err(), "a submission from a banned sender was accepted: {late:?}");

    let mut results = vec![banned_got];
    for (s, task) in others.into_iter().enumerate() {
        results.push(join(&format!("sender {s}"), task).await??);
    }
    for (got, s) in results.iter().zip([banned, 0, 1]) {
        for (k, outcome) in got.iter().enumerate() {
            let counted: &[usize] = if k < banned_after { &[0, 1, 2] } else { &[0, 1] };
            let contributions: Vec<&Tensor> = counted.iter().map(|&c| &data[c][k]).collect();
            let ctx =
                format!("sender {s}, part {k} (sender {banned} banned after part {})", banned_after - 1);
            check_aggregate(weighted, outcome, &contributions, &vec![1.0; counted.len()], 1e-4, 1e-6, &ctx)?;
        }
    }
    Ok(())
}

/// protocol 11.4: a sender banned while its submission of a later part waits for its turn is not
/// expected for that part, so the other senders' parts complete (the reference stalls here);
/// the part it did contribute to keeps its contribution.
pub async fn banned_waiting_sender_does_not_stall(factory: &impl ReducerFactory) -> Outcome {
    let weighted = factory.build().capabilities().weighted_mean;
    let (num_senders, num_parts, len) = (3, 4, 3);
    let mut rng = StdRng::seed_from_u64(0x5eed_0006);
    let data: Vec<Vec<Tensor>> =
        (0..num_senders).map(|_| (0..num_parts).map(|_| random_f32(&mut rng, len)).collect()).collect();
    let pr = Arc::new(new_reducer(factory, vec![(len, DType::F32); num_parts], num_senders)?);

    // Sender 2 contributes part 0 (added on the first poll, as part 0 is current) and starts
    // submitting part 1, which waits for part 0; then its handler is cancelled and it is banned.
    let (v0, v1) = (data[2][0].view(), data[2][1].view());
    let mut part0 = Box::pin(pr.accumulate(2, 0, &v0, 1.0));
    ensure!(poll!(&mut part0).is_pending(), "part 0 completed before the other senders sent it");
    let mut part1 = Box::pin(pr.accumulate(2, 1, &v1, 1.0));
    ensure!(poll!(&mut part1).is_pending(), "part 1 did not wait for part 0");
    drop(part1);
    pr.sender_failed(2);

    let others: Vec<_> = (0..2)
        .map(|s| tokio::spawn(send_all(pr.clone(), s, data[s].clone(), vec![1.0; num_parts])))
        .collect();
    let mut results = Vec::new();
    for (s, task) in others.into_iter().enumerate() {
        results.push(join(&format!("sender {s} (sender 2 banned while waiting on part 1)"), task).await??);
    }
    let banned_part0 = within("the banned sender's part 0", part0).await??;
    results.push(vec![banned_part0]);
    for (got, s) in results.iter().zip([0, 1, 2]) {
        for (k, outcome) in got.iter().enumerate() {
            let counted: &[usize] = if k == 0 { &[0, 1, 2] } else { &[0, 1] };
            let contributions: Vec<&Tensor> = counted.iter().map(|&c| &data[c][k]).collect();
            let ctx = format!("sender {s}, part {k} (sender 2 banned while waiting on part 1)");
            check_aggregate(weighted, outcome, &contributions, &vec![1.0; counted.len()], 1e-4, 1e-6, &ctx)?;
        }
    }
    within("the reducer to finish", pr.wait_finished()).await?;
    Ok(())
}

/// A part whose length (or dtype) differs from the spec is an error for its sender, which is
/// banned; the other senders still finish, reduced over themselves.
pub async fn wrong_length_part_is_refused(factory: &impl ReducerFactory) -> Outcome {
    let weighted = factory.build().capabilities().weighted_mean;
    let (num_senders, num_parts, len) = (3, 3, 4);
    for wrong in [random_f32(&mut StdRng::seed_from_u64(1), len - 1), Tensor::zeros(vec![len], DType::F64)?] {
        let what =
            format!("a part of {} x {} where {len} x float32 is expected", wrong.numel(), wrong.dtype());
        let mut rng = StdRng::seed_from_u64(0x5eed_0007);
        let data: Vec<Vec<Tensor>> =
            (0..num_senders).map(|_| (0..num_parts).map(|_| random_f32(&mut rng, len)).collect()).collect();
        let pr = Arc::new(new_reducer(factory, vec![(len, DType::F32); num_parts], num_senders)?);
        let good: Vec<_> = [0, 2]
            .into_iter()
            .map(|s| tokio::spawn(send_all(pr.clone(), s, data[s].clone(), vec![1.0; num_parts])))
            .collect();
        let view = wrong.view();
        let refused = within(&what, pr.accumulate(1, 0, &view, 1.0)).await?;
        ensure!(refused.is_err(), "{what} was accepted: {refused:?}");
        ensure!(pr.is_banned(1), "the sender of {what} was not banned");
        for (task, s) in good.into_iter().zip([0, 2]) {
            let got = join(&format!("sender {s} after {what} from sender 1"), task).await??;
            for (k, outcome) in got.iter().enumerate() {
                let contributions = [&data[0][k], &data[2][k]];
                let ctx = format!("sender {s}, part {k} (sender 1 sent {what})");
                check_aggregate(weighted, outcome, &contributions, &[1.0, 1.0], 1e-4, 1e-6, &ctx)?;
            }
        }
    }
    Ok(())
}

/// [`PartReducer::finish`] ends every pending wait (for a turn or for a result) with an error
/// promptly, later submissions are refused, and the reducer reports itself finished.
pub async fn finish_ends_pending_waits(factory: &impl ReducerFactory) -> Outcome {
    let (num_senders, len) = (3, 2);
    let pr = new_reducer(factory, vec![(len, DType::F32); 2], num_senders)?;
    let mut rng = StdRng::seed_from_u64(0x5eed_0008);
    let parts: Vec<Tensor> = (0..3).map(|_| random_f32(&mut rng, len)).collect();
    let views: Vec<_> = parts.iter().map(Tensor::view).collect();
    // Senders 0 and 1 contribute part 0 and wait for sender 2, who never comes; sender 0 also
    // waits for its turn on part 1.
    let mut waits = vec![
        Box::pin(pr.accumulate(0, 0, &views[0], 1.0)),
        Box::pin(pr.accumulate(1, 0, &views[1], 1.0)),
        Box::pin(pr.accumulate(0, 1, &views[2], 1.0)),
    ];
    for (i, wait) in waits.iter_mut().enumerate() {
        ensure!(poll!(wait).is_pending(), "wait {i} ended before any part could complete");
    }
    pr.finish();
    for (i, wait) in waits.into_iter().enumerate() {
        let outcome = within(&format!("wait {i} after finish()"), wait).await?;
        ensure!(outcome.is_err(), "wait {i} succeeded after finish(): {outcome:?}");
    }
    ensure!(pr.is_finished(), "is_finished() is false after finish()");
    within("wait_finished() after finish()", pr.wait_finished()).await?;
    let late = within("a submission after finish()", pr.accumulate(2, 0, &views[0], 1.0)).await?;
    ensure!(late.is_err(), "a submission after finish() was accepted: {late:?}");
    Ok(())
}

/// A part handed over encoded ([`PartReducer::accumulate_encoded`], how the core feeds received
/// parts; a reducer may decode them straight into its state through
/// [`PartAccumulator::add_encoded`](averager_core::reduce::PartAccumulator::add_encoded), or
/// leave that to the default, which decodes and calls `add`) counts like the same part handed
/// over decoded ([`PartReducer::accumulate`], how the core feeds its own parts), mixed in any
/// way; a message the codec cannot decode is refused and bans its sender without touching the
/// others' result. Three senders, weights 1, 0.5 and 2 (all 1 without `weighted_mean`), f32
/// parts of 5, 33 and 4 values; the results must match a second reducer fed only decoded parts
/// (rtol 1e-5, atol 1e-6: an f32 sum may replace an f64 one).
pub async fn encoded_parts_count_like_decoded_ones(factory: &impl ReducerFactory) -> Outcome {
    let weighted = factory.build().capabilities().weighted_mean;
    let weights = if weighted { [1.0, 0.5, 2.0] } else { [1.0; 3] };
    let lens = [5, 33, 4];
    let mut rng = StdRng::seed_from_u64(0x5eed_0009);
    let data: Vec<Vec<Tensor>> =
        (0..3).map(|_| lens.iter().map(|&n| random_f32(&mut rng, n)).collect()).collect();
    // Sender 0 sends encoded, sender 1 decoded, sender 2 encoded and then an undecodable last part.
    let hows = [[How::Encoded; 3], [How::Decoded; 3], [How::Encoded, How::Encoded, How::Undecodable]];
    let specs: Vec<(usize, DType)> = lens.iter().map(|&n| (n, DType::F32)).collect();
    let under_test = Arc::new(new_reducer(factory, specs.clone(), 3)?);
    let reference = Arc::new(new_reducer(factory, specs, 3)?);
    let tasks: Vec<_> = (0..3)
        .map(|s| {
            let (pr, parts, how, w) = (under_test.clone(), data[s].clone(), hows[s], weights[s]);
            tokio::spawn(async move { send_mixed(&pr, s, &parts, &how, w).await })
        })
        .collect();
    // The reference gets the same contributions decoded, and bans sender 2 where the other's
    // undecodable part did.
    let reference_tasks: Vec<_> = (0..3)
        .map(|s| {
            let (pr, mut parts, w) = (reference.clone(), data[s].clone(), weights[s]);
            let mut how = [How::Decoded; 3];
            if s == 2 {
                parts.truncate(2);
                how[2] = How::Undecodable;
            }
            tokio::spawn(async move { send_mixed(&pr, s, &parts, &how, w).await })
        })
        .collect();
    let mut got = Vec::new();
    for (s, task) in tasks.into_iter().enumerate() {
        got.push(join(&format!("sender {s}"), task).await?);
    }
    let mut want = Vec::new();
    for (s, task) in reference_tasks.into_iter().enumerate() {
        want.push(join(&format!("reference sender {s}"), task).await?);
    }
    for s in 0..3 {
        for k in 0..lens.len() {
            let ctx = format!("sender {s} ({:?}), part {k}", hows[s][k]);
            match (&got[s][k], want[s].get(k)) {
                (Ok(g), Some(Ok(w))) => {
                    let g = reduced(g, lens[k], DType::F32, &ctx)?.data().as_slice().to_f64_lanes();
                    let w = reduced(w, lens[k], DType::F32, &ctx)?.data().as_slice().to_f64_lanes();
                    ensure!(close(&g, &w, 1e-5, 1e-6), "{ctx}: got {g:?}, fed decoded {w:?}");
                }
                (Err(e), _) if hows[s][k] == How::Undecodable => {
                    ensure!(under_test.is_banned(s), "{ctx}: refused ({e}) but the sender is not banned");
                }
                (got, _) => return Err(Failure::new(format!("{ctx}: unexpected {got:?}"))),
            }
        }
    }
    Ok(())
}

/// How [`send_mixed`] hands a part over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// [`PartReducer::accumulate`].
    Decoded,
    /// [`PartReducer::accumulate_encoded`], without compression.
    Encoded,
    /// As `Encoded`, with the message cut short: the codec refuses it (after the parts given, the
    /// sender is banned).
    Undecodable,
}

/// Submits `parts` one after the other, each as `how` says; one result per part, and for a
/// reference sender whose last part is missing, a ban in its place.
async fn send_mixed(
    pr: &PartReducer,
    sender: usize,
    parts: &[Tensor],
    how: &[How],
    weight: f64,
) -> Vec<averager_core::Result<Arc<PartOutcome>>> {
    let codec = NoCompression;
    let mut results = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let info = CompressionInfo::for_tensor(0, &part.view());
        let outcome = match how[k] {
            How::Decoded => pr.accumulate(sender, k, &part.view(), weight).await,
            How::Encoded | How::Undecodable => {
                let mut wire = match codec.compress(&part.view(), &info) {
                    Ok(wire) => wire,
                    Err(e) => return vec![Err(e)],
                };
                if how[k] == How::Undecodable {
                    wire.buffer = wire.buffer.slice(..wire.buffer.len().saturating_sub(1));
                }
                pr.accumulate_encoded(sender, k, &codec, &wire, weight).await
            }
        };
        results.push(outcome);
    }
    if parts.len() < how.len() {
        pr.sender_failed(sender);
    }
    results
}

fn new_reducer(
    factory: &impl ReducerFactory,
    parts: impl IntoIterator<Item = (usize, DType)>,
    num_senders: usize,
) -> Result<PartReducer, Failure> {
    PartReducer::new(factory.build(), parts, num_senders)
        .map_err(|e| Failure::new(format!("PartReducer::new failed: {e}")))
}

/// Fails with a "stalled" message naming `what` when `fut` takes longer than [`WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| Failure::new(format!("{what}: still waiting after {WAIT:?} (reducer stalled)")))
}

async fn join<T>(what: &str, task: JoinHandle<T>) -> Result<T, Failure> {
    within(what, task).await?.map_err(|e| Failure::new(format!("{what}: task failed: {e}")))
}

type Results = Result<Vec<Arc<PartOutcome>>, Failure>;

/// Scenario 19's sender: one spawned task per part, awaited right away with probability
/// `sync_prob`, else left pending until a later flush (and at the end).
async fn send_in_random_batches(
    pr: Arc<PartReducer>,
    sender: usize,
    parts: Vec<Tensor>,
    sync_prob: f64,
    seed: u64,
) -> Results {
    let mut rng = StdRng::seed_from_u64(seed);
    let num_parts = parts.len();
    let mut results = Vec::with_capacity(num_parts);
    let mut pending = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        let pr = pr.clone();
        pending.push(tokio::spawn(async move { pr.accumulate(sender, k, &part.view(), 1.0).await }));
        if rng.random_bool(sync_prob) || k + 1 == num_parts {
            for (task, i) in pending.drain(..).zip(results.len()..) {
                let outcome = join(&format!("sender {sender}, part {i}"), task).await?;
                results.push(outcome.map_err(|e| Failure::new(format!("sender {sender}, part {i}: {e}")))?);
            }
        }
    }
    Ok(results)
}

/// Submits every part with its weight, all at once, and collects the results in part order.
async fn send_all(pr: Arc<PartReducer>, sender: usize, parts: Vec<Tensor>, weights: Vec<f64>) -> Results {
    let tasks: Vec<_> = parts
        .into_iter()
        .zip(weights)
        .enumerate()
        .map(|(k, (part, w))| {
            let pr = pr.clone();
            tokio::spawn(async move { pr.accumulate(sender, k, &part.view(), w).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for (k, task) in tasks.into_iter().enumerate() {
        let outcome = join(&format!("sender {sender}, part {k}"), task).await?;
        results.push(outcome.map_err(|e| Failure::new(format!("sender {sender}, part {k}: {e}")))?);
    }
    Ok(results)
}

fn random_f32(rng: &mut StdRng, len: usize) -> Tensor {
    let values = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_f32(vec![len], values).expect("len values fill the shape [len]")
}

/// Part `i` of `num_parts` has `i` values.
fn random_parts(rng: &mut StdRng, num_parts: usize) -> Vec<Tensor> {
    (0..num_parts).map(|i| random_f32(rng, i)).collect()
}

/// The reduced tensor of `outcome`, checked to have `len` elements of `dtype`.
fn reduced<'a>(outcome: &'a PartOutcome, len: usize, dtype: DType, ctx: &str) -> Result<&'a Tensor, Failure> {
    let PartOutcome::Reduced(t) = outcome else {
        return Err(Failure::new(format!("{ctx}: got KeepLocal where contributions had positive weight")));
    };
    ensure!(
        t.numel() == len && t.dtype() == dtype,
        "{ctx}: reduced part has {} x {} where {len} x {dtype} was expected",
        t.numel(),
        t.dtype()
    );
    Ok(t)
}

/// Checks `outcome` against `contributions`: the weighted mean when `weighted`, else per
/// coordinate within the contributions' range (and equal to them when they all agree).
fn check_aggregate(
    weighted: bool,
    outcome: &PartOutcome,
    contributions: &[&Tensor],
    weights: &[f64],
    rtol: f64,
    atol: f64,
    ctx: &str,
) -> Outcome {
    let Some(first) = contributions.first() else {
        return Err(Failure::new(format!("{ctx}: the check needs at least one contribution")));
    };
    let got = reduced(outcome, first.numel(), first.dtype(), ctx)?.data().as_slice().to_f64_lanes();
    let lanes: Vec<Vec<f64>> = contributions.iter().map(|t| t.data().as_slice().to_f64_lanes()).collect();
    if weighted {
        let total: f64 = weights.iter().sum();
        let want: Vec<f64> = (0..got.len())
            .map(|i| lanes.iter().zip(weights).map(|(x, w)| w * x[i]).sum::<f64>() / total)
            .collect();
        ensure!(close(&got, &want, rtol, atol), "{ctx}: got {got:?}, expected the weighted mean {want:?}");
    } else {
        for (i, &g) in got.iter().enumerate() {
            let lo = lanes.iter().map(|x| x[i]).fold(f64::INFINITY, f64::min);
            let hi = lanes.iter().map(|x| x[i]).fold(f64::NEG_INFINITY, f64::max);
            let slack = atol + rtol * lo.abs().max(hi.abs());
            ensure!(
                g >= lo - slack && g <= hi + slack,
                "{ctx}: coordinate {i} is {g}, outside the contributions' range [{lo}, {hi}]"
            );
        }
    }
    Ok(())
}

/// `|got - want| <= atol + rtol * |want|` element-wise, and the same length.
fn close(got: &[f64], want: &[f64], rtol: f64, atol: f64) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= atol + rtol * w.abs())
}
