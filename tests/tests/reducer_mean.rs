//! The reducer suite against the built-in weighted mean, and a check that the suite catches
//! broken reducers.

use std::sync::Arc;

use averager_conformance::reducer::{self, ReducerFactory};
use averager_conformance::{Failure, Outcome, block_on_case, reducer_suite};
use averager_core::reduce::{
    MeanReducer, PartAccumulator, PartOutcome, PartSpec, Reducer, ReducerCapabilities,
};
use averager_core::tensor::{Tensor, TensorData, TensorView};
use averager_core::{Error, Result};

reducer_suite!(mean, || Arc::new(MeanReducer) as Arc<dyn Reducer>);
reducer_suite!(mean_through_old_methods, || Arc::new(OldMethodsOnly) as Arc<dyn Reducer>);

/// The built-in mean behind the old methods only (`add` and `finish`), as a reducer written
/// before `add_encoded` existed: received parts reach it through the default, decoded first.
#[derive(Debug)]
struct OldMethodsOnly;

impl Reducer for OldMethodsOnly {
    fn name(&self) -> &str {
        "mean-old-methods"
    }

    fn capabilities(&self) -> ReducerCapabilities {
        MeanReducer.capabilities()
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        Ok(Box::new(OldMethodsAccumulator(MeanReducer.begin(spec)?)))
    }
}

struct OldMethodsAccumulator(Box<dyn PartAccumulator>);

impl PartAccumulator for OldMethodsAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.0.add(sender, part, weight)
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        self.0.finish()
    }
}

/// How a deliberately broken reducer gets the mean wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Every contribution counts with weight 1 (zero weights included).
    IgnoresWeights,
    /// Sender 0's contributions are silently dropped.
    DropsSenderZero,
}

/// The mean with a flaw, still claiming to be an exact weighted mean.
#[derive(Debug)]
struct Broken(Flaw);

impl Reducer for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: true }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        Ok(Box::new(BrokenAccumulator { flaw: self.0, inner: MeanReducer.begin(spec)? }))
    }
}

struct BrokenAccumulator {
    flaw: Flaw,
    inner: Box<dyn PartAccumulator>,
}

impl PartAccumulator for BrokenAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        match self.flaw {
            Flaw::IgnoresWeights => self.inner.add(sender, part, 1.0),
            Flaw::DropsSenderZero if sender == 0 => Ok(()),
            Flaw::DropsSenderZero => self.inner.add(sender, part, weight),
        }
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        self.inner.finish()
    }
}

/// A robust aggregator: the per-coordinate median of the contributions with positive weight.
#[derive(Debug)]
struct Median {
    /// Deliberately wrong: answers twice the median.
    doubled: bool,
}

impl Reducer for Median {
    fn name(&self) -> &str {
        "median"
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: false }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        if !spec.dtype.is_real() {
            return Err(Error::Reducer(format!("median of {} is not defined", spec.dtype)));
        }
        Ok(Box::new(MedianAccumulator { spec: spec.clone(), doubled: self.doubled, rows: Vec::new() }))
    }
}

struct MedianAccumulator {
    spec: PartSpec,
    doubled: bool,
    rows: Vec<Vec<f64>>,
}

impl PartAccumulator for MedianAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        if part.numel() != self.spec.len || part.dtype() != self.spec.dtype || weight.is_nan() || weight < 0.0
        {
            return Err(Error::Reducer(format!("sender {sender}: refused")));
        }
        if weight > 0.0 {
            self.rows.push(part.data().to_f64_lanes());
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        if self.rows.is_empty() {
            return Ok(PartOutcome::KeepLocal);
        }
        let scale = if self.doubled { 2.0 } else { 1.0 };
        let median: Vec<f64> = (0..self.spec.len)
            .map(|i| {
                let mut column: Vec<f64> = self.rows.iter().map(|r| r[i]).collect();
                column.sort_by(f64::total_cmp);
                let n = column.len();
                scale * (column[(n - 1) / 2] + column[n / 2]) / 2.0
            })
            .collect();
        let data = TensorData::from_f64(self.spec.dtype, &median)?;
        Ok(PartOutcome::Reduced(Tensor::new(vec![self.spec.len], data)?))
    }
}

#[test]
fn a_correct_robust_reducer_passes_and_a_wrong_one_fails() {
    let good = || Arc::new(Median { doubled: false }) as Arc<dyn Reducer>;
    assert_eq!(run_all(&good), Ok(()));
    let bad = || Arc::new(Median { doubled: true }) as Arc<dyn Reducer>;
    assert!(block_on_case(reducer::concurrent_senders_get_the_aggregate(&bad)).is_err());
}

fn broken(flaw: Flaw) -> impl ReducerFactory {
    move || Arc::new(Broken(flaw)) as Arc<dyn Reducer>
}

#[test]
fn suite_catches_a_reducer_that_ignores_weights() {
    let f = broken(Flaw::IgnoresWeights);
    assert!(block_on_case(reducer::weighted_mean_uses_weights(&f)).is_err());
    assert!(block_on_case(reducer::all_zero_weights_keep_local(&f)).is_err());
    // Equal weights hide the flaw: the case about them still passes.
    assert!(block_on_case(reducer::concurrent_senders_get_the_aggregate(&f)).is_ok());
}

#[test]
fn suite_catches_a_reducer_that_drops_a_sender() {
    let f = broken(Flaw::DropsSenderZero);
    for (case, outcome) in [
        ("scenario 19", block_on_case(reducer::concurrent_senders_get_the_aggregate(&f))),
        ("weighted mean", block_on_case(reducer::weighted_mean_uses_weights(&f))),
        ("precision", block_on_case(reducer::precision_is_kept_per_dtype(&f))),
        ("banned sender", block_on_case(reducer::banned_sender_counts_for_earlier_parts_only(&f))),
        ("waiting banned sender", block_on_case(reducer::banned_waiting_sender_does_not_stall(&f))),
        ("wrong length", block_on_case(reducer::wrong_length_part_is_refused(&f))),
    ] {
        assert!(outcome.is_err(), "the {case} case missed a reducer that drops sender 0");
    }
}

/// Runs the whole suite, failing with the first failed case's name and message.
fn run_all(factory: &impl ReducerFactory) -> Outcome {
    block_on_case(async {
        let outcomes = reducer::run_all(factory).await;
        assert_eq!(outcomes.len(), 9, "one outcome per case");
        for (name, outcome) in outcomes {
            outcome.map_err(|failure| Failure::new(format!("{name}: {failure}")))?;
        }
        Ok(())
    })
}

#[test]
fn run_all_passes_for_the_mean() {
    assert_eq!(run_all(&|| Arc::new(MeanReducer) as Arc<dyn Reducer>), Ok(()));
}
