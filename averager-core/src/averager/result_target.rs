//! **\[averager\]** a step's result delivered to the caller's own tensors
//! ([`StepOptions::apply_to`](super::StepOptions::apply_to)) instead of the averager's.
//!
//! A caller that keeps its tensors outside the averager (the Python binding: the user's numpy or
//! torch memory) would otherwise copy the averaged values out of the averager after every step,
//! on the step's critical path. With a [`ResultTarget`], the core hands it the step's update
//! (protocol 4.8: `alpha * (average - local)` per part) and the target adds it wherever it
//! wants, in the same pass the core would have spent updating its own tensors.
//!
//! Semantics: a step with a target leaves the averager's own tensors as they were when its
//! all-reduce began (its inputs); only the target sees the result. The target is called once per
//! successful step, after the averager's tensor lock is released (so a target may take its own
//! locks, and even read [`Averager::tensors`](super::Averager::tensors), without a lock-order
//! inversion), with every delta already checked against the plan: a part whose reducer failed
//! has no delta and keeps its local values. An AUX peer's target is never called (it averages
//! nothing of its own).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorSlice};

/// Where a step's update goes when given to [`StepOptions::apply_to`](super::StepOptions::apply_to).
///
/// ```
/// # use averager_core::averager::{ResultTarget, StepUpdate};
/// # use averager_core::tensor::Tensor;
/// # use async_trait::async_trait;
/// /// Adds every step's update to tensors kept behind the caller's own lock.
/// struct MyTensors(tokio::sync::Mutex<Vec<Tensor>>);
///
/// #[async_trait]
/// impl ResultTarget for MyTensors {
///     async fn apply(&self, update: &StepUpdate<'_>) -> averager_core::Result<()> {
///         update.add_to(&mut self.0.lock().await)
///     }
/// }
/// ```
/// (`tokio::sync::Mutex<Vec<Tensor>>` itself implements the trait that way.)
#[async_trait]
pub trait ResultTarget: Send + Sync {
    /// Applies one step's update: for every [`UpdatePart`],
    /// `tensor[offset..offset + delta.len()] += alpha * delta` (or whatever the target makes of
    /// it, e.g. `local + alpha * delta` to hold the averaged values rather than add the update).
    ///
    /// Should apply all parts or none: the update is checked against the averager's tensors
    /// before this call, so a target that checks its own tensors first (as
    /// [`StepUpdate::add_to`] does) cannot fail midway.
    ///
    /// # Errors
    /// Any error: the step then fails with it (and is not retried: the group already averaged).
    async fn apply(&self, update: &StepUpdate<'_>) -> Result<()>;
}

/// One part of a step's update.
#[derive(Debug, Clone, Copy)]
pub struct UpdatePart<'a> {
    /// Index of the tensor (in the order the averager was built with).
    pub tensor: usize,
    /// Flat offset of the part in that tensor, in elements.
    pub offset: usize,
    /// `average - local` for the part's elements, in the tensor's dtype.
    pub delta: TensorSlice<'a>,
}

/// A step's whole update: the parts that came back, each checked to fit its tensor (dtype and
/// range), and the averager's `averaging_alpha` they are scaled by.
#[derive(Debug)]
pub struct StepUpdate<'a> {
    parts: Vec<UpdatePart<'a>>,
    alpha: f64,
    dtypes: Vec<DType>,
    lens: Vec<usize>,
}

impl<'a> StepUpdate<'a> {
    /// An update of `parts` for tensors of `dtypes` and `lens` elements.
    ///
    /// # Errors
    /// [`Error::Tensor`] when a part names a tensor that does not exist, or does not fit it.
    pub(crate) fn new(
        parts: Vec<UpdatePart<'a>>,
        alpha: f64,
        dtypes: Vec<DType>,
        lens: Vec<usize>,
    ) -> Result<Self> {
        let update = StepUpdate { parts, alpha, dtypes, lens };
        for part in &update.parts {
            update.check(part)?;
        }
        Ok(update)
    }

    fn check(&self, part: &UpdatePart<'_>) -> Result<()> {
        let (Some(&dtype), Some(&len)) = (self.dtypes.get(part.tensor), self.lens.get(part.tensor)) else {
            return Err(Error::Tensor(format!("no tensor {} to apply a delta to", part.tensor)));
        };
        let end = part.offset.checked_add(part.delta.len());
        if part.delta.dtype() != dtype || end.is_none_or(|end| end > len) {
            return Err(Error::Tensor(format!(
                "delta of {} x {} at {} does not fit tensor {} ({len} x {dtype})",
                part.delta.len(),
                part.delta.dtype(),
                part.offset,
                part.tensor
            )));
        }
        Ok(())
    }

    /// The parts, in plan order (a part without a delta is absent).
    pub fn parts(&self) -> &[UpdatePart<'a>] {
        &self.parts
    }

    /// The factor every delta is scaled by (the averager's `averaging_alpha`).
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The dtypes of the averager's tensors, which the target's tensors are expected to have.
    pub fn dtypes(&self) -> &[DType] {
        &self.dtypes
    }

    /// The element counts of the averager's tensors.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Checks that `tensors` have the averager's dtypes and sizes.
    ///
    /// # Errors
    /// [`Error::Tensor`] naming the first tensor that differs (or a count that differs).
    pub fn check_like(&self, tensors: &[Tensor]) -> Result<()> {
        if tensors.len() != self.dtypes.len() {
            return Err(Error::Tensor(format!(
                "{} tensors to apply a step's result to, the averager has {}",
                tensors.len(),
                self.dtypes.len()
            )));
        }
        for (i, t) in tensors.iter().enumerate() {
            if t.dtype() != self.dtypes[i] || t.numel() != self.lens[i] {
                return Err(Error::Tensor(format!(
                    "tensor {i} is {} x {}, the averager's is {} x {}",
                    t.numel(),
                    t.dtype(),
                    self.lens[i],
                    self.dtypes[i]
                )));
            }
        }
        Ok(())
    }

    /// `tensor += alpha * delta` for every part, after checking that `tensors` are like the
    /// averager's ([`StepUpdate::check_like`]), so nothing is applied when they are not.
    ///
    /// # Errors
    /// As [`StepUpdate::check_like`].
    pub fn add_to(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.check_like(tensors)?;
        for part in &self.parts {
            tensors[part.tensor].data_mut().add_scaled_at(part.offset, part.delta, self.alpha)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ResultTarget for tokio::sync::Mutex<Vec<Tensor>> {
    /// Adds the update to the tensors under this lock ([`StepUpdate::add_to`]).
    async fn apply(&self, update: &StepUpdate<'_>) -> Result<()> {
        update.add_to(&mut self.lock().await)
    }
}

/// The target a step's options carry; `Debug` for [`StepOptions`](super::StepOptions)'s sake.
#[derive(Clone)]
pub(crate) struct Target(pub(crate) Arc<dyn ResultTarget>);

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResultTarget")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_do_not_fit_are_refused() {
        let delta = [1.0f32; 4];
        let part = |tensor, offset| UpdatePart { tensor, offset, delta: TensorSlice::F32(&delta) };
        let new = |p| StepUpdate::new(vec![p], 1.0, vec![DType::F32], vec![6]);
        assert!(new(part(0, 2)).is_ok());
        for bad in [part(0, 3), part(1, 0), part(0, usize::MAX)] {
            assert!(matches!(new(bad), Err(Error::Tensor(_))), "{bad:?}");
        }
        let f64s = StepUpdate::new(vec![part(0, 0)], 1.0, vec![DType::F64], vec![6]);
        assert!(matches!(f64s, Err(Error::Tensor(_))));
    }

    #[test]
    fn add_to_checks_every_tensor_before_changing_any() {
        let delta = [2.0f32; 2];
        let parts = vec![UpdatePart { tensor: 0, offset: 1, delta: TensorSlice::F32(&delta) }];
        let update = StepUpdate::new(parts, 0.5, vec![DType::F32], vec![4]).unwrap();
        let mut tensors = vec![Tensor::from_f32(vec![4], vec![0.0; 4]).unwrap()];
        update.add_to(&mut tensors).unwrap();
        assert_eq!(tensors[0].as_f32().unwrap(), &[0.0, 1.0, 1.0, 0.0]);
        let mut wrong = vec![Tensor::from_f32(vec![3], vec![0.0; 3]).unwrap()];
        assert!(matches!(update.add_to(&mut wrong), Err(Error::Tensor(_))));
        assert_eq!(wrong[0].as_f32().unwrap(), &[0.0; 3]);
    }
}
