//! protocol 4.4 and 4.8: the deltas a sender collects (`average - local` per part) and their
//! application.
//!
//! **\[averager\]** all deltas are applied together after the all-reduce, never tensor by tensor
//! while it runs, so a failure midway cannot leave a half-updated set of tensors.

use super::partition::PartitionPlan;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorData};

/// Per part of the plan: the delta received for it, if any.
///
/// A part without a delta (its reducer failed, or this peer sent nothing) keeps the local values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Deltas {
    parts: Vec<Option<TensorData>>,
}

impl Deltas {
    /// No delta for any of `num_parts` parts.
    pub(crate) fn new(num_parts: usize) -> Self {
        Deltas { parts: vec![None; num_parts] }
    }

    /// Records the delta of plan part `index`.
    ///
    /// # Errors
    /// [`Error::Internal`] for an index outside the plan.
    pub(crate) fn set(&mut self, index: usize, delta: TensorData) -> Result<()> {
        let slot = self
            .parts
            .get_mut(index)
            .ok_or_else(|| Error::Internal(format!("no part {index} in the plan")))?;
        *slot = Some(delta);
        Ok(())
    }

    /// `tensor += alpha * delta` for every part that has a delta (protocol 4.8).
    ///
    /// # Errors
    /// [`Error::Tensor`] when a delta does not fit its part (dtype or length); nothing is applied
    /// then, because every delta is checked first.
    pub(crate) fn apply(&self, plan: &PartitionPlan, tensors: &mut [Tensor], alpha: f64) -> Result<()> {
        for (part, delta) in plan.parts().iter().zip(&self.parts) {
            let Some(delta) = delta else { continue };
            let tensor = tensors
                .get(part.tensor)
                .ok_or_else(|| Error::Tensor(format!("no tensor {} to apply a delta to", part.tensor)))?;
            if delta.len() != part.range.len() || delta.dtype() != tensor.dtype() {
                return Err(Error::Tensor(format!(
                    "delta of {} x {} does not fit part {:?} of a {} tensor",
                    delta.len(),
                    delta.dtype(),
                    part.range,
                    tensor.dtype()
                )));
            }
        }
        for (part, delta) in plan.parts().iter().zip(&self.parts) {
            if let Some(delta) = delta {
                tensors[part.tensor].data_mut().add_scaled_at(part.range.start, delta.as_slice(), alpha)?;
            }
        }
        Ok(())
    }
}
