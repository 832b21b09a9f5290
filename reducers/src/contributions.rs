//! What every robust reducer shares: it keeps each sender's contribution to a part, since none of
//! them can be computed as a running sum, and aggregates in `finish`.
//!
//! Memory is bounded by the part (at most `part_size_bytes` on the wire) times the group size:
//! one f64 lane per element per sender that contributed.

use averager_core::error::Result;
use averager_core::reduce::{PartAccumulator, PartOutcome, PartSpec};
use averager_core::tensor::{Tensor, TensorData, TensorView};

/// The positive-weight contributions to one part, as f64 lanes (complex64: interleaved real and
/// imaginary lanes, each aggregated on its own).
pub(crate) struct Contributions {
    /// The part's shape.
    spec: PartSpec,
    /// Lanes per contribution (`len`, or `2 * len` for complex64).
    pub(crate) lanes: usize,
    /// One row of `lanes` values per contribution with positive weight.
    pub(crate) rows: Vec<Vec<f64>>,
    /// The weight of each row.
    pub(crate) weights: Vec<f64>,
}

impl Contributions {
    pub(crate) fn new(spec: &PartSpec) -> Result<Self> {
        let lanes = spec.lanes()?;
        // `expected_senders` is the group size, which the matchmaker bounds; capped anyway so a
        // wild spec cannot reserve memory it never uses.
        let capacity = spec.expected_senders.min(64);
        Ok(Contributions {
            spec: spec.clone(),
            lanes,
            rows: Vec::with_capacity(capacity),
            weights: Vec::with_capacity(capacity),
        })
    }

    /// Checks and keeps one contribution (zero weight contributes nothing and is not kept).
    pub(crate) fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.spec.check(sender, part, weight)?;
        if weight == 0.0 {
            return Ok(());
        }
        self.rows.push(part.data().to_f64_lanes());
        self.weights.push(weight);
        Ok(())
    }

    /// The part made of `lanes` values, in the part's dtype (integers round to nearest).
    pub(crate) fn outcome(&self, lanes: &[f64]) -> Result<PartOutcome> {
        let data = TensorData::from_f64(self.spec.dtype, lanes)?;
        Ok(PartOutcome::Reduced(Tensor::new(vec![self.spec.len], data)?))
    }

    /// Per lane, the finite values with their weights (NaN is treated as missing, so one NaN
    /// cannot decide a coordinate), sorted by value; `scratch` is reused across lanes.
    pub(crate) fn sorted_column(&self, lane: usize, scratch: &mut Vec<(f64, f64)>) {
        scratch.clear();
        scratch.extend(
            self.rows.iter().zip(&self.weights).map(|(r, &w)| (r[lane], w)).filter(|(x, _)| !x.is_nan()),
        );
        scratch.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// A [`PartAccumulator`] that keeps the contributions and hands them to `aggregate` at the end.
pub(crate) struct Keeping<F> {
    pub(crate) contributions: Contributions,
    pub(crate) aggregate: F,
}

impl<F> PartAccumulator for Keeping<F>
where
    F: FnOnce(&Contributions) -> Vec<f64> + Send,
{
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.contributions.add(sender, part, weight)
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        let Keeping { contributions, aggregate } = *self;
        if contributions.rows.is_empty() {
            return Ok(PartOutcome::KeepLocal);
        }
        let lanes = aggregate(&contributions);
        contributions.outcome(&lanes)
    }
}

/// The weighted median of a column sorted by value: the smallest value whose cumulative weight
/// reaches half the total, averaged with the next one when it reaches exactly half (so equal
/// weights give the usual median of an even count). NaN for an empty column.
pub(crate) fn weighted_median(column: &[(f64, f64)]) -> f64 {
    let total: f64 = column.iter().map(|&(_, w)| w).sum();
    let half = total / 2.0;
    let mut cumulative = 0.0;
    for (i, &(x, w)) in column.iter().enumerate() {
        cumulative += w;
        if cumulative > half {
            return x;
        }
        if cumulative == half {
            // Exactly half the weight lies at or below x: the median sits between x and the next.
            return match column.get(i + 1) {
                Some(&(next, _)) => midpoint(x, next),
                None => x,
            };
        }
    }
    column.last().map_or(f64::NAN, |&(x, _)| x)
}

/// `(a + b) / 2` without overflowing to infinity for large finite values.
pub(crate) fn midpoint(a: f64, b: f64) -> f64 {
    a / 2.0 + b / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_median_of_small_columns() {
        let col = |xs: &[(f64, f64)]| xs.to_vec();
        assert!(weighted_median(&[]).is_nan());
        assert_eq!(weighted_median(&col(&[(3.0, 1.0)])), 3.0);
        assert_eq!(weighted_median(&col(&[(1.0, 1.0), (3.0, 1.0)])), 2.0);
        assert_eq!(weighted_median(&col(&[(1.0, 1.0), (2.0, 1.0), (9.0, 1.0)])), 2.0);
        // Heavy weight pulls the median onto its value.
        assert_eq!(weighted_median(&col(&[(1.0, 1.0), (2.0, 1.0), (9.0, 5.0)])), 9.0);
        assert_eq!(midpoint(f64::MAX, f64::MAX), f64::MAX);
    }
}
