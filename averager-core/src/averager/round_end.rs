//! The end of an all-reduce: the round's tensors back (the averager's own, or lent ones once
//! nothing borrows them) and the update written into them, or handed to the step's target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Inner;
use super::lent::{InputLender, LentTensors};
use super::result_target::{ResultTarget, StepUpdate, UpdatePart};
use crate::allreduce::{AllReduceOutcome, RoundTensors};
use crate::error::{Error, Result};
use crate::matchmaking::PeerMode;
use crate::tensor::{DType, Tensor};

impl Inner {
    /// The end of a round on the averager's own tensors: the update goes into them, or to the
    /// step's `target` (with the averager's tensors keeping the round's inputs); the tensors go
    /// back under `guard` either way, which is released before the target runs.
    pub(super) async fn update_own(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Vec<Tensor>>,
        mut tensors: Vec<Tensor>,
        outcome: Result<AllReduceOutcome>,
        target: Option<&Arc<dyn ResultTarget>>,
    ) -> Result<AllReduceOutcome> {
        // An AUX peer has nothing to update, in its tensors or a target.
        let target = target.filter(|_| self.mode != PeerMode::Aux);
        let shapes = TensorShapes::of(&tensors);
        let outcome = outcome.and_then(|mut outcome| {
            log_failed_reducers(&outcome);
            if target.is_some() {
                // The target takes deltas; the own span's averages become deltas while the
                // round's inputs are at hand.
                outcome.deltas.take_differences(&outcome.plan, &tensors)?;
            } else if self.mode != PeerMode::Aux {
                outcome.deltas.apply(&outcome.plan, &mut tensors, self.config.averaging_alpha)?;
            }
            Ok(outcome)
        });
        *guard = tensors;
        // Released before the target runs: it may take its own locks (the Python binding's
        // user lock, which it always takes before this one).
        drop(guard);
        let outcome = outcome?;
        if let Some(target) = target {
            let parts = outcome.deltas.update_parts(&outcome.plan)?;
            self.apply_to_target(target, parts, shapes).await?;
        }
        Ok(outcome)
    }
}

/// Says which reducers' parts a successful round kept local, if any.
pub(super) fn log_failed_reducers(outcome: &AllReduceOutcome) {
    if !outcome.failed_reducers.is_empty() {
        tracing::info!(failed = ?outcome.failed_reducers, "averaged without the parts of failed reducers");
    }
}

/// What a step's options say about where its inputs come from and where its result goes.
#[derive(Default)]
pub(super) struct StepIo {
    /// [`StepOptions::apply_to`](super::StepOptions::apply_to)'s target.
    pub(super) target: Option<Arc<dyn ResultTarget>>,
    /// [`StepOptions::lend_inputs`](super::StepOptions::lend_inputs)'s lender.
    pub(super) lender: Option<Arc<dyn InputLender>>,
}

/// Lent tensors must have the averager's tensors' count, shapes and dtypes.
pub(super) fn check_lent(own: &[Tensor], lent: &dyn LentTensors) -> Result<()> {
    if lent.count() != own.len() {
        return Err(Error::Tensor(format!(
            "{} tensors lent, the averager holds {}",
            lent.count(),
            own.len()
        )));
    }
    for (i, tensor) in own.iter().enumerate() {
        let fits = lent.view(i).is_some_and(|v| v.dtype() == tensor.dtype() && v.shape() == tensor.shape());
        if !fits {
            return Err(Error::Tensor(format!(
                "lent tensor {i} is not a {} tensor of shape {:?}",
                tensor.dtype(),
                tensor.shape()
            )));
        }
    }
    Ok(())
}

/// The dtypes and element counts of the averager's tensors, which a target's update is checked
/// against.
struct TensorShapes {
    dtypes: Vec<DType>,
    lens: Vec<usize>,
}

impl TensorShapes {
    fn of(tensors: &[Tensor]) -> Self {
        TensorShapes {
            dtypes: tensors.iter().map(Tensor::dtype).collect(),
            lens: tensors.iter().map(Tensor::numel).collect(),
        }
    }
}

impl Inner {
    /// Hands an all-reduce's update to the step's target, every delta checked first. A failure
    /// is not retried (the group has averaged; another round would average again), and shutdown
    /// stops a target still waiting (for its own locks, say).
    async fn apply_to_target(
        &self,
        target: &Arc<dyn ResultTarget>,
        parts: Vec<UpdatePart<'_>>,
        shapes: TensorShapes,
    ) -> Result<()> {
        let update = StepUpdate::new(parts, self.config.averaging_alpha, shapes.dtypes, shapes.lens)?;
        tokio::select! {
            applied = target.apply(&update) => applied.map_err(Error::set_persistent),
            _ = self.shutdown.cancelled() => Err(Error::Cancelled("the averager shut down".into())),
        }
    }
}

/// How long [`take_back`] waits for the last holder of a part of the round's tensors before it
/// copies them instead.
///
/// The holder it waits for is a transport's task that wrote a part's last bytes and was then
/// preempted before it dropped the part: on a busy machine the reducer can answer that part, and
/// the round end, before the task runs again. Two peers averaging 16M floats each met this in 3
/// of 80 runs of 20 rounds (2 cores, 4 busy threads): the copy then doubled the peak RSS's
/// tensor share. A few scheduler ticks cover that wait; an encoding still running after a failed
/// round (the other holder) is not waited out.
pub(super) const OWNED_RECLAIM_LIMIT: Duration = Duration::from_millis(100);

/// The averager's own tensors back from the round: without a copy once no encoding task or
/// unsent part still holds them (at once, usually), else, after `limit`, a copy, so a slow
/// encoding or transport cannot block the step. (Lent tensors are not taken back: see
/// [`reclaim_lent`].)
pub(super) async fn take_back(tensors: Arc<RoundTensors>, limit: Duration) -> Vec<Tensor> {
    match unshared(tensors, limit).await {
        Ok(RoundTensors::Owned(tensors)) => tensors,
        Ok(lent) => lent.to_vec(),
        Err(shared) => {
            tracing::debug!(
                holders = Arc::strong_count(&shared) - 1,
                ?limit,
                "the round's tensors are still shared: copying them back"
            );
            shared.to_vec()
        }
    }
}

/// Lent tensors back from a successful round, to write its update into: once nothing borrows
/// them any more (a transport may still hold a part it did not send), for at most `limit`.
///
/// # Errors
/// [`Error::Timeout`] when they are still borrowed after `limit`: the update is then not written
/// (the memory is still being read), and the step fails.
pub(super) async fn reclaim_lent(tensors: Arc<RoundTensors>, limit: Duration) -> Result<RoundTensors> {
    unshared(tensors, limit)
        .await
        .map_err(|_| Error::timeout("parts of the lent tensors to be sent", limit).set_persistent())
}

/// `tensors` unwrapped once this is their last holder, checked every millisecond for at most
/// `limit`; still shared after that, they are given back as they are.
///
/// A holder is a part the transport has not dropped yet; nothing tells when it does, hence the
/// polling (the usual case, no other holder, costs one check).
async fn unshared(
    mut tensors: Arc<RoundTensors>,
    limit: Duration,
) -> std::result::Result<RoundTensors, Arc<RoundTensors>> {
    let started = Instant::now();
    loop {
        match Arc::try_unwrap(tensors) {
            Ok(tensors) => return Ok(tensors),
            Err(shared) if started.elapsed() < limit => {
                tensors = shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(shared) => return Err(shared),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::averager::LentTensors;
    use crate::tensor::{TensorSliceMut, TensorView};

    struct Lent(Vec<Tensor>);

    impl LentTensors for Lent {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn view(&self, index: usize) -> Option<TensorView<'_>> {
            self.0.get(index).map(Tensor::view)
        }
        fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
            self.0.get_mut(index).map(Tensor::as_slice_mut)
        }
    }

    fn lent() -> Arc<RoundTensors> {
        Arc::new(RoundTensors::Lent(Box::new(Lent(vec![Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap()]))))
    }

    #[tokio::test]
    async fn lent_tensors_come_back_once_nothing_borrows_them() {
        let tensors = lent();
        let borrowed = Arc::clone(&tensors);
        drop(borrowed);
        let back = reclaim_lent(tensors, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(back, RoundTensors::Lent(_)));
    }

    #[tokio::test]
    async fn lent_tensors_still_borrowed_fail_the_update_and_stay_alive_for_the_borrower() {
        let tensors = lent();
        let borrowed = Arc::clone(&tensors);
        let error = reclaim_lent(tensors, Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(error.kind(), crate::error::ErrorKind::Timeout, "{error}");
        assert!(!error.is_temporary());
        // The borrower (a transport still sending a part) keeps reading valid memory.
        assert_eq!(Arc::strong_count(&borrowed), 1);
        assert_eq!(borrowed.flat_view(0, 1..2).unwrap().data().to_f32().unwrap().as_ref(), &[2.0]);
    }

    #[tokio::test]
    async fn own_tensors_still_shared_after_the_limit_come_back_as_a_copy() {
        let tensor = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let at = tensor.as_f32().unwrap().as_ptr();
        let tensors = Arc::new(RoundTensors::Owned(vec![tensor]));
        let borrowed = Arc::clone(&tensors);
        let back = take_back(tensors, Duration::ZERO).await;
        assert_eq!(back[0].as_f32().unwrap(), &[1.0, 2.0]);
        assert_ne!(back[0].as_f32().unwrap().as_ptr(), at, "a copy");
        drop(borrowed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_tensors_come_back_without_a_copy_once_the_last_holder_lets_go() {
        let tensor = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let at = tensor.as_f32().unwrap().as_ptr();
        let tensors = Arc::new(RoundTensors::Owned(vec![tensor]));
        let borrowed = Arc::clone(&tensors);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            let _ = released.await;
            drop(borrowed);
        });
        // Shared when the wait begins; the holder lets go while it runs.
        let (back, _) = tokio::join!(take_back(tensors, Duration::from_secs(60)), async move {
            release.send(()).unwrap();
        });
        holder.await.unwrap();
        assert_eq!(back[0].as_f32().unwrap().as_ptr(), at, "the same memory, not a copy");
    }
}
