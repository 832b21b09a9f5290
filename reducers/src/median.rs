//! The coordinate-wise (weighted) median: breaks down only when senders holding half the weight
//! lie, at the cost of a noisier estimate than the mean when nobody does.

use averager_core::error::Result;
use averager_core::reduce::{PartAccumulator, PartSpec, Reducer, ReducerCapabilities};

use crate::contributions::{Contributions, Keeping, weighted_median};

/// Per coordinate, the weighted median of the contributions (the mean of the two middle values
/// when they split the weight exactly in half, as with equal weights and an even count).
#[derive(Debug, Clone, Copy, Default)]
pub struct MedianReducer;

impl MedianReducer {
    /// The registry name.
    pub const NAME: &'static str = "median";
}

impl Reducer for MedianReducer {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: false }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        Ok(Box::new(Keeping { contributions: Contributions::new(spec)?, aggregate: median }))
    }
}

/// The coordinate-wise weighted median of every lane.
pub(crate) fn median(c: &Contributions) -> Vec<f64> {
    let mut column = Vec::with_capacity(c.rows.len());
    (0..c.lanes)
        .map(|lane| {
            c.sorted_column(lane, &mut column);
            weighted_median(&column)
        })
        .collect()
}
