//! Steps of one averager run one after another, each on the values its own `step()` call saw.
//!
//! The step at the head of the queue reads the user's buffers in place (`lender.rs`); otherwise
//! the core holds one set of tensors, a step's inputs are copied into it (again at
//! `allow_allreduce()` for a `require_trigger` step) and its result is written out when it
//! ends. Two steps queued back to back (`wait=False` twice, or two threads) would race on that
//! one set: the second step's copy in could land before the first one's all-reduce read its
//! inputs, or before its result was copied out. So each step takes a place in a [`StepQueue`] and
//! its round starts only once the step before it has *released* the core's tensors (its result
//! is in the user's buffers, or it ended without one). A step that has to wait keeps its inputs
//! in a snapshot of its own ([`Inputs::Staged`]), moved into the core without a copy when its
//! turn comes.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use ::averager::Tensor;
use tokio::sync::{oneshot, watch};

use crate::averager::Shared;

/// Where a step's inputs are until its all-reduce reads them.
pub(crate) enum Inputs {
    /// Still in the user's buffers, unread: the step's all-reduce may read them in place
    /// (`lender.rs`), unless a write through `get_tensors()` first copies them into the core.
    Unread,
    /// In the core's tensors: the step's turn has come (or the queue was empty at `step()`).
    InCore,
    /// A snapshot of the user's buffers, taken while an earlier step still used the core's
    /// tensors.
    Staged(Vec<Tensor>),
}

/// A step's inputs, shared by its copy task, its turn and `allow_allreduce()`. Lock order:
/// this, then the user lock, then the core's tensor lock.
pub(crate) type SharedInputs = Arc<tokio::sync::Mutex<Inputs>>;

/// Set once a step no longer needs the core's tensors. A dropped sender counts as set, so a step
/// that never started, or whose task ended with the runtime, cannot block the queue.
pub(crate) type Released = watch::Sender<bool>;

/// The order in which one averager's steps use its tensors.
#[derive(Default)]
pub(crate) struct StepQueue {
    /// The release signal of the step that joined last.
    last: Mutex<Option<watch::Receiver<bool>>>,
}

/// A step's place in the queue.
pub(crate) struct Place {
    /// The previous step, while it still holds the core's tensors.
    pub(crate) previous: Option<watch::Receiver<bool>>,
    /// This step's own release signal.
    pub(crate) released: Released,
}

fn is_released(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

impl StepQueue {
    /// Puts a new step at the end of the queue.
    pub(crate) fn join(&self) -> Place {
        let (released, rx) = watch::channel(false);
        let previous = self.last.lock().unwrap_or_else(PoisonError::into_inner).replace(rx);
        Place { previous: previous.filter(|p| !is_released(p)), released }
    }
}

/// The future the core's round waits for (`Averager::step_background_after`): the previous step
/// has released the tensors, and this step's staged inputs (if any) have been moved into them.
/// `passed` is dropped (or sent) once this is over, so the step's own release can follow it.
pub(crate) async fn turn(
    shared: Weak<Shared>,
    previous: Option<watch::Receiver<bool>>,
    inputs: SharedInputs,
    passed: oneshot::Sender<()>,
) {
    if let Some(mut previous) = previous {
        // An error means the previous step's sender is gone: released as well.
        let _ = previous.wait_for(|released| *released).await;
    }
    let mut slot = inputs.lock().await;
    // Unread inputs stay where they are (in the user's buffers, `lender.rs`).
    if matches!(*slot, Inputs::Staged(_))
        && let Inputs::Staged(staged) = std::mem::replace(&mut *slot, Inputs::InCore)
        && let Some(shared) = shared.upgrade()
    {
        let mut tensors = shared.averager.tensors().await;
        // Same count, shapes and dtypes: both were made from the buffers the averager was built
        // from (checked at `step()`). The core's old tensors are dropped here.
        for (core, mine) in tensors.iter_mut().zip(staged) {
            *core = mine;
        }
    }
    let _ = passed.send(());
}
