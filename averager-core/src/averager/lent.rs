//! **\[averager\]** a step that averages tensors kept outside the averager where they are
//! ([`StepOptions::lend_inputs`](super::StepOptions::lend_inputs)).
//!
//! A caller whose tensors live in memory of its own (the Python binding: the user's numpy or
//! torch buffers) would otherwise copy them into the averager before every step and copy the
//! result back, two passes over every byte on the step's critical path. With an
//! [`InputLender`], the all-reduce reads the parts it sends straight from that memory and writes
//! the update into it, exactly as it does with the averager's own tensors.
//!
//! Semantics: the lender is asked once per all-reduce, as it begins (after matchmaking and the
//! trigger), before the averager's tensor lock is taken; it may decline (`None`), and the
//! all-reduce then reads the averager's own tensors as usual (a caller that copied its inputs in
//! instead, say). Lent tensors are read while the all-reduce runs and updated in place
//! (`tensor += alpha * (average - local)` per part, protocol 4.8) once it has succeeded, after
//! every message that borrowed their memory has been dropped; the averager's own tensors are
//! left as they were, and the step's [`ResultTarget`](super::ResultTarget) is not called. The
//! lent value is dropped when the update is written or the all-reduce fails: a lender that
//! holds a lock for as long as the memory is lent releases it then.

use async_trait::async_trait;

use crate::error::Result;
use crate::tensor::{TensorSliceMut, TensorView};

/// Tensors lent to one all-reduce: the same count, shapes and dtypes as the averager's.
///
/// The implementor promises that the memory behind the views stays valid, and that nothing but
/// [`LentTensors::slice_mut`]'s borrow writes it, for as long as the value lives.
pub trait LentTensors: Send + Sync {
    /// How many tensors there are.
    fn count(&self) -> usize;

    /// Tensor `index`, read-only and shaped; `None` out of range.
    fn view(&self, index: usize) -> Option<TensorView<'_>>;

    /// Tensor `index`'s elements, to write the update into; `None` out of range. The averager
    /// calls it only once the all-reduce is over and no view remains (`&mut self`).
    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>>;
}

/// Lends a step's inputs to its all-reduce ([`StepOptions::lend_inputs`](super::StepOptions::lend_inputs)).
#[async_trait]
pub trait InputLender: Send + Sync {
    /// The tensors the all-reduce about to begin should average in place, or `None` for the
    /// averager's own. Called once per all-reduce (a retried step asks again), before the
    /// averager's tensor lock is taken.
    ///
    /// # Errors
    /// Any error fails this attempt (the group is abandoned) and, being persistent unless it says
    /// otherwise, the step.
    async fn lend(&self) -> Result<Option<Box<dyn LentTensors>>>;
}

/// The lender a step's options carry; `Debug` for [`StepOptions`](super::StepOptions)'s sake.
#[derive(Clone)]
pub(crate) struct Lender(pub(crate) std::sync::Arc<dyn InputLender>);

impl std::fmt::Debug for Lender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputLender")
    }
}
